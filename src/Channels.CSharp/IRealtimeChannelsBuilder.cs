using Microsoft.Extensions.DependencyInjection;

namespace Realtime.Channels;

/// <summary>Returned by <c>AddRealtimeChannels</c>, for further configuration (a shared store, for example).</summary>
public interface IRealtimeChannelsBuilder
{
    /// <summary>The application's services.</summary>
    IServiceCollection Services { get; }
}

internal sealed class RealtimeChannelsBuilder(IServiceCollection services) : IRealtimeChannelsBuilder
{
    public IServiceCollection Services { get; } = services;
}

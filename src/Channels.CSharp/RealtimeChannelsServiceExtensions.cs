using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Realtime;
using Realtime.Channels;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the channels server's services.</summary>
public static class RealtimeChannelsServiceExtensions
{
    /// <summary>
    /// Adds channels to the Realtime server: the options, <see cref="IRealtimeChannels"/> (publishing from the app's code), and the in-memory <see cref="IChannelStore"/>
    /// and <see cref="IChannelPresence"/> unless others are registered (a shared store replaces them).
    /// Raises <see cref="RealtimeOptions.MaxTopicLength"/> to <see cref="ChannelTopics.MaxTopicLength"/>
    /// if it is lower, so every channel name fits in its topic.
    /// </summary>
    /// <param name="builder">What <c>AddRealtime</c> returned.</param>
    /// <param name="configure">Sets retention and limits. A value out of range fails the start with an
    /// <see cref="OptionsValidationException"/> naming it.</param>
    public static IRealtimeChannelsBuilder AddRealtimeChannels(this IRealtimeBuilder builder, Action<RealtimeChannelsOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var services = builder.Services;
        var options = services.AddOptions<RealtimeChannelsOptions>().ValidateOnStart();
        if (configure is not null) options.Configure(configure);
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<RealtimeChannelsOptions>, RealtimeChannelsOptionsValidation>());
        services.PostConfigure<RealtimeOptions>(o => o.MaxTopicLength = Math.Max(o.MaxTopicLength, ChannelTopics.MaxTopicLength));
        services.TryAddSingleton<IChannelStore>(provider =>
        {
            var channels = provider.GetRequiredService<IOptions<RealtimeChannelsOptions>>().Value;
            return new InMemoryChannelStore(channels.Retention, channels.MaxChannels, provider.GetService<TimeProvider>());
        });
        services.TryAddSingleton<IChannelPresence, InMemoryChannelPresence>();
        services.TryAddSingleton<ChannelHub>();
        services.TryAddSingleton<IRealtimeChannels>(provider => provider.GetRequiredService<ChannelHub>());
        return new RealtimeChannelsBuilder(services);
    }
}

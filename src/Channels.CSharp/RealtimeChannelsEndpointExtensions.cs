using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Realtime;
using Realtime.Channels;
using Realtime.Protocol;

namespace Microsoft.AspNetCore.Builder;

/// <summary>Maps channels endpoints beside ordinary routes.</summary>
public static class RealtimeChannelsEndpointExtensions
{
    /// <summary>
    /// Maps a channels endpoint at <paramref name="pattern"/>: a Realtime endpoint that speaks the channels
    /// subprotocol (<c>realtime.channels.v1.json</c> or <c>realtime.channels.v1.binary</c>; an upgrade
    /// offering neither is refused with 400) for subscribe with recovery, acknowledged publish,
    /// presence and requests (docs/channels-protocol.md). Needs <c>AddRealtime().AddRealtimeChannels()</c>.
    /// Also serves the browser client at <see cref="ChannelsClientEndpoint.ScriptPath"/> (see
    /// <see cref="ChannelsClientEndpoint.MapRealtimeChannelsClient"/>).
    /// </summary>
    /// <typeparam name="TData">The per-connection data type returned by <c>Attach</c>.</typeparam>
    /// <param name="endpoints">The application's routes.</param>
    /// <param name="pattern">The route pattern, for example <c>/channels</c>.</param>
    /// <param name="configure">Sets <c>Attach</c>, the authorization callbacks, presence information and request methods.</param>
    /// <param name="configureRealtime">Overrides the endpoint's <see cref="RealtimeOptions"/>. Its
    /// <see cref="RealtimeOptions.Subprotocols"/> are the two channels forms; its
    /// <see cref="RealtimeOptions.MaxPayloadLength"/> defaults to <see cref="RealtimeChannelsOptions.MaxDataBytes"/>
    /// plus 64 KiB (a larger message closes the connection with 1009; one with data over the limit but
    /// under this gets <c>too-large</c>).</param>
    public static IEndpointConventionBuilder MapRealtimeChannels<TData>(this IEndpointRouteBuilder endpoints, string pattern,
        Action<RealtimeChannelHandlers<TData>> configure, Action<RealtimeOptions>? configureRealtime = null)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentNullException.ThrowIfNull(pattern);
        ArgumentNullException.ThrowIfNull(configure);
        var services = endpoints.ServiceProvider;
        if (services.GetService<IOptions<RealtimeChannelsOptions>>() is null || services.GetService<IChannelStore>() is null)
            throw new InvalidOperationException("Call services.AddRealtime().AddRealtimeChannels() before MapRealtimeChannels.");
        var hub = services.GetService<ChannelHub>() ?? throw new InvalidOperationException("Call services.AddRealtime().AddRealtimeChannels() before MapRealtimeChannels.");
        hub.Start();
        var app = new RealtimeChannelHandlers<TData>();
        configure(app);
        var endpoint = new ChannelsEndpoint<TData>(hub, app);
        endpoints.MapRealtimeChannelsClient();
        return endpoints.MapRealtime(pattern, endpoint.Handlers(), options =>
        {
            options.Subprotocols = [ChannelSubprotocol.Json, ChannelSubprotocol.Binary];
            options.MaxPayloadLength = (int)Math.Min(int.MaxValue, (long)hub.Options.MaxDataBytes + (64 << 10));
            configureRealtime?.Invoke(options);
        });
    }
}

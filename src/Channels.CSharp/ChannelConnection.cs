using Microsoft.AspNetCore.Http;

namespace Realtime.Channels;

/// <summary>
/// A connection of a channels endpoint, as the app's callbacks see it: the data <c>Attach</c> returned
/// and the client id presence shows.
/// </summary>
/// <typeparam name="TData">The per-connection data type returned by <c>Attach</c>.</typeparam>
public sealed class ChannelConnection<TData>
{
    internal ChannelConnection(TData data) => Data = data;

    /// <summary>The data <c>Attach</c> returned for this connection.</summary>
    public TData Data { get; }

    /// <summary>The connection's client id (node id and connection id), as in <c>welcome</c> and presence.</summary>
    public string ClientId { get; internal set; } = "";

    /// <summary>The upgrade request's context (headers, user, address).</summary>
    public HttpContext HttpContext => Socket.HttpContext;

    /// <summary>The connection itself, for example to close it (sending outside the protocol would confuse clients).</summary>
    public RealtimeSocket Socket { get; internal set; } = null!;

    internal ChannelForm Form { get; set; } = ChannelForm.Json;

    /// <summary>The channels subscribed, each with whether join and leave events are sent for it.</summary>
    internal Dictionary<string, bool> Subscriptions { get; } = new(StringComparer.Ordinal);

    /// <summary>The connection's publishes queued and not yet acknowledged.</summary>
    internal PublishWindow Publishes { get; } = new();

    /// <summary>The channels whose presence holds this connection as a member.</summary>
    internal HashSet<string> Memberships { get; } = new(StringComparer.Ordinal);
}

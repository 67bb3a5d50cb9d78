using Realtime.Protocol;

namespace Realtime;

/// <summary>
/// The server-wide side of Realtime, from dependency injection: publish to topics, look up
/// connections, broadcast to an endpoint. Safe to use from any thread, including ordinary
/// ASP.NET routes and background services.
/// </summary>
/// <remarks>
/// Everything here is local: it sees this server's connections only. With a backplane (scale-out,
/// for example Realtime.Redis), <c>Publish</c> also reaches the topic's subscribers on the other
/// servers, but its return value, the counts and the connection lists are still this server's.
/// </remarks>
public interface IRealtimeServer
{
    /// <summary>
    /// Publishes a text message to every subscriber of the topic (on every server, with a backplane);
    /// returns how many of this server's connections it was queued to.
    /// </summary>
    /// <exception cref="ArgumentException">The topic is longer than <see cref="RealtimeOptions.MaxTopicLength"/> UTF-8 bytes.</exception>
    int Publish(string topic, string text, bool compress = false);

    /// <summary>
    /// Publishes a binary message to every subscriber of the topic (on every server, with a backplane);
    /// returns how many of this server's connections it was queued to.
    /// </summary>
    /// <exception cref="ArgumentException">The topic is longer than <see cref="RealtimeOptions.MaxTopicLength"/> UTF-8 bytes.</exception>
    int Publish(string topic, ReadOnlySpan<byte> data, bool compress = false);

    /// <summary>
    /// Publishes a message of the given kind to every subscriber of the topic (on every server, with a
    /// backplane); returns how many of this server's connections it was queued to.
    /// </summary>
    /// <exception cref="ArgumentException">The topic is longer than <see cref="RealtimeOptions.MaxTopicLength"/> UTF-8 bytes.</exception>
    int Publish(string topic, ReadOnlySpan<byte> data, MessageKind kind, bool compress = false);

    /// <summary>How many connections of this server are subscribed to the topic (local, not cluster-wide).</summary>
    int SubscriberCount(string topic);

    /// <summary>The topics with at least one subscriber on this server (local, not cluster-wide).</summary>
    IReadOnlyList<string> Topics { get; }

    /// <summary>How many connections are open on this server (local, not cluster-wide).</summary>
    int ConnectionCount { get; }

    /// <summary>A snapshot of the open connections of every endpoint of this server (local).</summary>
    IReadOnlyList<RealtimeSocket> Connections { get; }

    /// <summary>A snapshot of this server's open connections of the endpoint mapped at <paramref name="pattern"/> (local).</summary>
    IReadOnlyList<RealtimeSocket> ConnectionsOf(string pattern);

    /// <summary>Finds an open connection of this server by its <see cref="RealtimeSocket.Id"/> (ids are per server).</summary>
    bool TryGetConnection(long id, out RealtimeSocket connection);

    /// <summary>Sends a text message to every open connection of an endpoint on this server (local; not through a backplane), optionally all but one; returns how many it was queued to.</summary>
    int Broadcast(string pattern, string text, RealtimeSocket? except = null);

    /// <summary>Sends a binary message to every open connection of an endpoint on this server (local; not through a backplane), optionally all but one; returns how many it was queued to.</summary>
    int Broadcast(string pattern, ReadOnlySpan<byte> data, RealtimeSocket? except = null);
}

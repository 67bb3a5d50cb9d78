using Realtime.Protocol;

namespace Realtime;

/// <summary>
/// The server-wide side of Realtime, from dependency injection: publish to topics, look up
/// connections, broadcast to an endpoint. Safe to use from any thread, including ordinary
/// ASP.NET routes and background services.
/// </summary>
public interface IRealtimeServer
{
    /// <summary>Publishes a text message to every subscriber of the topic; returns how many it was queued to.</summary>
    int Publish(string topic, string text, bool compress = false);

    /// <summary>Publishes a binary message to every subscriber of the topic; returns how many it was queued to.</summary>
    int Publish(string topic, ReadOnlySpan<byte> data, bool compress = false);

    /// <summary>Publishes a message of the given kind to every subscriber of the topic.</summary>
    int Publish(string topic, ReadOnlySpan<byte> data, MessageKind kind, bool compress = false);

    /// <summary>How many connections of this server are subscribed to the topic.</summary>
    int SubscriberCount(string topic);

    /// <summary>The topics with at least one subscriber on this server.</summary>
    IReadOnlyList<string> Topics { get; }

    /// <summary>How many connections are open on this server.</summary>
    int ConnectionCount { get; }

    /// <summary>A snapshot of the open connections of every endpoint.</summary>
    IReadOnlyList<RealtimeSocket> Connections { get; }

    /// <summary>A snapshot of the open connections of the endpoint mapped at <paramref name="pattern"/>.</summary>
    IReadOnlyList<RealtimeSocket> ConnectionsOf(string pattern);

    /// <summary>Finds an open connection by its <see cref="RealtimeSocket.Id"/>.</summary>
    bool TryGetConnection(long id, out RealtimeSocket connection);

    /// <summary>Sends a text message to every open connection of an endpoint, optionally all but one; returns how many it was queued to.</summary>
    int Broadcast(string pattern, string text, RealtimeSocket? except = null);

    /// <summary>Sends a binary message to every open connection of an endpoint, optionally all but one; returns how many it was queued to.</summary>
    int Broadcast(string pattern, ReadOnlySpan<byte> data, RealtimeSocket? except = null);
}

using Realtime.Protocol;

namespace Realtime;

/// <summary>
/// Carries topic publishes between servers, so that several servers behind a load balancer act
/// as one (scale-out). Without one, nothing leaves the server. Register an implementation in
/// dependency injection (for example with the Realtime.Redis package).
/// </summary>
/// <remarks>
/// The server calls these members from publishing threads and while it holds a topic's lock,
/// so they must not block: queue the work and return. For one topic, <see cref="TopicActivated"/>
/// and <see cref="TopicDeactivated"/> alternate in the order its subscribers changed; for
/// different topics they may be called at the same time from different threads.
/// </remarks>
public interface IRealtimeBackplane
{
    /// <summary>Called once when the host starts, with the way in for messages from other servers.</summary>
    void Start(IRealtimeBackplaneReceiver receiver);

    /// <summary>
    /// A publish made on this server (already delivered to its own subscribers): carry it to the other
    /// servers. <paramref name="senderConnectionId"/> is the publishing connection (0 for a server-wide publish).
    /// </summary>
    void Publish(string topic, MessageKind kind, ReadOnlySpan<byte> payload, bool compress, long senderConnectionId);

    /// <summary>The topic got its first subscriber on this server: start receiving its messages from the others.</summary>
    void TopicActivated(string topic);

    /// <summary>The topic's last subscriber on this server left: stop receiving its messages.</summary>
    void TopicDeactivated(string topic);
}

/// <summary>How a backplane hands a message from another server to this server's subscribers.</summary>
public interface IRealtimeBackplaneReceiver
{
    /// <summary>
    /// Delivers a message published on another server to every subscriber of the topic on this server
    /// (the sender is not here, so nobody is skipped); returns how many it was queued to. Never blocks.
    /// </summary>
    int DeliverLocally(string topic, MessageKind kind, ReadOnlySpan<byte> payload, bool compress);
}

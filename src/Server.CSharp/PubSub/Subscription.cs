namespace Realtime;

/// <summary>
/// One subscriber's place in one topic: what a publish finds in the topic's array and what
/// <see cref="TopicRegistry{T}.Unsubscribe"/> ends.
/// </summary>
/// <remarks>
/// Why a publish never delivers after Unsubscribe returned, without Unsubscribe waiting for
/// publishes: a publish may still hold this entry after it left the topic, so the decision is made
/// at the moment a frame is queued, under the subscriber's send lock (the lock its queue already
/// takes), by reading <see cref="IsActive"/>. <see cref="End"/> clears the flag under that same lock,
/// so once it returns no queueing can still see the flag set. Nobody waits for anybody but that lock.
/// </remarks>
internal sealed class Subscription<T> where T : class
{
    private readonly object _sendLock;
    private bool _active = true;

    internal Subscription(T subscriber, object sendLock, TopicSubscribers<T> topic)
    {
        Subscriber = subscriber;
        _sendLock = sendLock;
        Topic = topic;
    }

    /// <summary>The subscriber (connection).</summary>
    public T Subscriber { get; }

    /// <summary>The topic it is in.</summary>
    public TopicSubscribers<T> Topic { get; }

    /// <summary>Its position in the topic's array; changed under the topic's lock only.</summary>
    internal int Slot;

    /// <summary>
    /// True until <see cref="End"/>. Read it under the subscriber's send lock to decide whether to
    /// queue; read without the lock it is only a hint for skipping early.
    /// </summary>
    public bool IsActive => Volatile.Read(ref _active);

    /// <summary>Ends the subscription: after this returns, a publish that reads <see cref="IsActive"/> under the send lock sees false.</summary>
    public void End()
    {
        lock (_sendLock) Volatile.Write(ref _active, false);
    }

    /// <summary>Ends it while the caller already holds the subscriber's send lock (see <see cref="Subscriptions{T}.EndAll"/>).</summary>
    internal void EndUnderSendLock() => Volatile.Write(ref _active, false);
}

namespace Realtime;

/// <summary>
/// The topics one subscriber (connection) is in, in the order it subscribed, each with its
/// <see cref="Subscription{T}"/>. Guarded by locking this object, taken before a topic's lock;
/// a connection that never subscribes holds only this small object.
/// </summary>
internal sealed class Subscriptions<T> where T : class
{
    private OrderedDictionary<string, Subscription<T>>? _topics;

    /// <summary>The subscriptions of <paramref name="subscriber"/>, whose frames are queued under <paramref name="sendLock"/>.</summary>
    public Subscriptions(T subscriber, object sendLock)
    {
        Subscriber = subscriber;
        SendLock = sendLock;
    }

    /// <summary>The subscriber (connection).</summary>
    public T Subscriber { get; }

    /// <summary>The lock the subscriber's queue takes to queue a frame: a subscription ends under it.</summary>
    public object SendLock { get; }

    /// <summary>Set when the connection has left: a late Subscribe must not bring it back. Under the lock.</summary>
    internal bool Closed;

    /// <summary>How many topics; under the lock.</summary>
    internal int Count => _topics?.Count ?? 0;

    /// <summary>Whether it is in the topic; under the lock.</summary>
    internal bool Contains(string topic) => _topics?.ContainsKey(topic) ?? false;

    /// <summary>Records a new subscription, last in order; under the lock.</summary>
    internal void Add(string topic, Subscription<T> subscription) =>
        (_topics ??= new(StringComparer.Ordinal)).Add(topic, subscription);

    /// <summary>Takes the subscription to the topic out, if there is one; under the lock.</summary>
    internal bool TryRemove(string topic, out Subscription<T> subscription)
    {
        subscription = null!;
        return _topics is not null && _topics.Remove(topic, out subscription!);
    }

    /// <summary>The topic names in subscription order, as a new array; under the lock.</summary>
    internal string[] Names() => _topics is null || _topics.Count == 0 ? [] : [.. _topics.Keys];

    /// <summary>Ends every subscription under one taking of the send lock and takes them all out, in order; under the lock.</summary>
    internal Subscription<T>[] EndAll()
    {
        if (_topics is null || _topics.Count == 0) return [];
        var all = _topics.Values.ToArray();
        lock (SendLock)
            foreach (var subscription in all) subscription.EndUnderSendLock();
        _topics.Clear();
        return all;
    }
}

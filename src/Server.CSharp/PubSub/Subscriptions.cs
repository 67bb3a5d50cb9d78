namespace Realtime;

/// <summary>
/// The topics one subscriber (connection) is in, in the order it subscribed, with their
/// <see cref="TopicSubscribers{T}"/>. Guarded by locking this object, taken before a topic's lock;
/// a connection that never subscribes holds only this small object.
/// </summary>
internal sealed class Subscriptions<T> where T : class
{
    private OrderedDictionary<string, TopicSubscribers<T>>? _topics;

    /// <summary>The topics, made on first need; use under the lock.</summary>
    internal OrderedDictionary<string, TopicSubscribers<T>> Topics => _topics ??= new(StringComparer.Ordinal);

    /// <summary>How many topics; under the lock.</summary>
    internal int Count => _topics?.Count ?? 0;

    /// <summary>Whether it is in the topic; under the lock.</summary>
    internal bool Contains(string topic) => _topics?.ContainsKey(topic) ?? false;

    /// <summary>Set when the connection has left: a late Subscribe must not bring it back.</summary>
    internal bool Closed;
}

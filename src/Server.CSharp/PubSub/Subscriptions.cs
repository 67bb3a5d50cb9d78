namespace Realtime;

/// <summary>
/// The topics one subscriber (connection) is in, in the order it subscribed, with their
/// <see cref="TopicSubscribers{T}"/>. Guarded by its own lock, taken before a topic's lock.
/// </summary>
internal sealed class Subscriptions<T> where T : class
{
    internal readonly object Gate = new();
    internal readonly OrderedDictionary<string, TopicSubscribers<T>> Topics = new(StringComparer.Ordinal);
    // Set when the connection has left: a late Subscribe must not bring it back.
    internal bool Closed;
}

using System.Collections.Concurrent;
using Realtime.Protocol;

namespace Realtime;

/// <summary>What <see cref="TopicRegistry{T}.Subscribe"/> did.</summary>
internal enum SubscribeOutcome
{
    Subscribed,
    AlreadySubscribed,
    TopicLimitReached,
    Closed,
}

/// <summary>
/// This server's topics: a concurrent map of topic name to <see cref="TopicSubscribers{T}"/>,
/// each with its own lock. There is no server-wide lock: subscribe and unsubscribe cost O(1)
/// amortized and contend only on their topic and their subscriber; a publish reads its topic's
/// snapshot without locking. The first-subscriber and last-subscriber-left hooks (the backplane's
/// channel subscriptions) run under the topic's lock, so for each topic they alternate in order.
/// </summary>
internal sealed class TopicRegistry<T> where T : class
{
    private readonly ConcurrentDictionary<string, TopicSubscribers<T>> _topics = new(StringComparer.Ordinal);
    private readonly Action<string>? _activated;
    private readonly Action<string>? _deactivated;
    private readonly Action<TopicSubscribers<T>> _retire;

    /// <summary>A registry calling <paramref name="activated"/> when a topic gets its first subscriber and <paramref name="deactivated"/> when its last leaves.</summary>
    public TopicRegistry(Action<string>? activated = null, Action<string>? deactivated = null)
    {
        _activated = activated;
        _deactivated = deactivated;
        _retire = topic => _topics.TryRemove(new KeyValuePair<string, TopicSubscribers<T>>(topic.Name, topic));
    }

    /// <summary>
    /// Subscribes within <paramref name="limits"/>, as the core's <c>Topics.admit</c> decides. O(1) amortized.
    /// </summary>
    /// <exception cref="ArgumentException">The core refused the name (null, or over MaxTopicLength).</exception>
    public SubscribeOutcome Subscribe(Subscriptions<T> subscriptions, T subscriber, string topic, Topics.TopicLimits limits)
    {
        lock (subscriptions)
        {
            if (subscriptions.Closed) return SubscribeOutcome.Closed;
            var admission = Topics.admit(limits, topic, topic is not null && subscriptions.Contains(topic), subscriptions.Count);
            if (admission.IsRefused) throw new ArgumentException($"invalid topic: {admission.code}", nameof(topic));
            if (admission.IsAlreadyIn) return SubscribeOutcome.AlreadySubscribed;
            if (admission.IsAtTopicLimit) return SubscribeOutcome.TopicLimitReached;
            while (true)
            {
                var subscribers = _topics.GetOrAdd(topic!, static name => new TopicSubscribers<T>(name));
                // A retired topic has already left the map (under its lock), so the next lookup finds a new one.
                if (!subscribers.TryAdd(subscriber, _activated)) continue;
                subscriptions.Topics.Add(topic!, subscribers);
                return SubscribeOutcome.Subscribed;
            }
        }
    }

    /// <summary>
    /// Unsubscribes; false when it was not subscribed. When it returns, no publish delivers to the
    /// subscriber from this topic any more. O(1) amortized plus waiting for publishes in flight on the topic.
    /// </summary>
    public bool Unsubscribe(Subscriptions<T> subscriptions, T subscriber, string topic)
    {
        lock (subscriptions)
        {
            if (!subscriptions.Contains(topic) || !subscriptions.Topics.Remove(topic, out var subscribers)) return false;
            subscribers.Remove(subscriber, waitForPublishes: true, _deactivated, _retire);
            return true;
        }
    }

    /// <summary>Removes the subscriber from all its topics and refuses it from now on (its connection closed). O(its topics).</summary>
    public void RemoveAll(Subscriptions<T> subscriptions, T subscriber)
    {
        lock (subscriptions)
        {
            subscriptions.Closed = true;
            if (subscriptions.Count == 0) return;
            foreach (var (_, subscribers) in subscriptions.Topics)
                subscribers.Remove(subscriber, waitForPublishes: false, _deactivated, _retire);
            subscriptions.Topics.Clear();
        }
    }

    /// <summary>Whether the subscriber is in the topic.</summary>
    public static bool IsSubscribed(Subscriptions<T> subscriptions, string topic)
    {
        lock (subscriptions) return subscriptions.Contains(topic);
    }

    /// <summary>The subscriber's topics, in the order it subscribed, as a new array.</summary>
    public static string[] TopicsOf(Subscriptions<T> subscriptions)
    {
        lock (subscriptions) return subscriptions.Count == 0 ? [] : [.. subscriptions.Topics.Keys];
    }

    /// <summary>How many subscribers the topic has (0 for an unknown topic).</summary>
    public int SubscriberCount(string topic) => _topics.TryGetValue(topic, out var subscribers) ? subscribers.Count : 0;

    /// <summary>The topics that have at least one subscriber, in ordinal order.</summary>
    public string[] Names()
    {
        var names = _topics.Where(pair => pair.Value.Count > 0).Select(pair => pair.Key).ToArray();
        Array.Sort(names, StringComparer.Ordinal);
        return names;
    }

    /// <summary>The topic's subscribers, or null when it has none; publish through <see cref="TopicSubscribers{T}.BeginPublish"/>.</summary>
    public TopicSubscribers<T>? Find(string topic) => _topics.TryGetValue(topic, out var subscribers) ? subscribers : null;
}

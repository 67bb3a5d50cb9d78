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
/// array without locking and without allocating. The first-subscriber and last-subscriber-left
/// hooks (the backplane's channel subscriptions) run under the topic's lock, so for each topic
/// they alternate in order.
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
    public SubscribeOutcome Subscribe(Subscriptions<T> subscriptions, string topic, Topics.TopicLimits limits)
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
                var subscription = new Subscription<T>(subscriptions.Subscriber, subscriptions.SendLock, subscribers);
                // A retired topic has already left the map (under its lock), so the next lookup finds a new one.
                if (!subscribers.TryAdd(subscription, _activated)) continue;
                subscriptions.Add(topic!, subscription);
                return SubscribeOutcome.Subscribed;
            }
        }
    }

    /// <summary>
    /// Unsubscribes; false when it was not subscribed. Once it returns, nothing more from the topic
    /// is queued to the subscriber (see <see cref="Subscription{T}"/>); it waits for no publish. O(1) amortized.
    /// </summary>
    public bool Unsubscribe(Subscriptions<T> subscriptions, string topic)
    {
        lock (subscriptions)
        {
            if (topic is null || !subscriptions.TryRemove(topic, out var subscription)) return false;
            subscription.End();
            subscription.Topic.Remove(subscription, _deactivated, _retire);
            return true;
        }
    }

    /// <summary>Removes the subscriber from all its topics and refuses it from now on (its connection closed). O(its topics).</summary>
    public void RemoveAll(Subscriptions<T> subscriptions)
    {
        lock (subscriptions)
        {
            subscriptions.Closed = true;
            foreach (var subscription in subscriptions.EndAll())
                subscription.Topic.Remove(subscription, _deactivated, _retire);
        }
    }

    /// <summary>Whether the subscriber is in the topic.</summary>
    public static bool IsSubscribed(Subscriptions<T> subscriptions, string topic)
    {
        lock (subscriptions) return topic is not null && subscriptions.Contains(topic);
    }

    /// <summary>The subscriber's topics, in the order it subscribed, as a new array.</summary>
    public static string[] TopicsOf(Subscriptions<T> subscriptions)
    {
        lock (subscriptions) return subscriptions.Names();
    }

    /// <summary>How many subscribers the topic has (0 for an unknown or null topic).</summary>
    public int SubscriberCount(string topic) => topic is not null && _topics.TryGetValue(topic, out var subscribers) ? subscribers.Count : 0;

    /// <summary>The topics that have at least one subscriber, in ordinal order.</summary>
    public string[] Names()
    {
        var names = _topics.Where(pair => pair.Value.Count > 0).Select(pair => pair.Key).ToArray();
        Array.Sort(names, StringComparer.Ordinal);
        return names;
    }

    /// <summary>The topic's subscribers, or null when it has none; a publish enumerates <see cref="TopicSubscribers{T}.Recipients"/>.</summary>
    public TopicSubscribers<T>? Find(string topic) => topic is not null && _topics.TryGetValue(topic, out var subscribers) ? subscribers : null;
}

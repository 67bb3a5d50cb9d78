namespace Realtime;

/// <summary>
/// One topic's subscribers on this server. Adding and removing are O(1) under the topic's own lock
/// (an array with swap-remove and a position index); a publish reads an immutable snapshot array
/// without locking, and only the first publish after a change rebuilds it (O(n), as the publish
/// itself is). A removal waits for the publishes that may still hold a snapshot with the removed
/// subscriber, so once it returns nothing more is delivered to it from this topic.
/// </summary>
internal sealed class TopicSubscribers<T> where T : class
{
    private readonly object _lock = new();
    private readonly Dictionary<T, int> _positions = new(ReferenceEqualityComparer.Instance);
    private T[] _members = new T[4];
    private int _count;
    // Null when the members changed since it was built.
    private T[]? _snapshot = [];
    // Publishes in progress, counted in one of two epochs: a removal flips the epoch twice and
    // waits for each count to drain, as user-space RCU's synchronize does.
    private readonly int[] _publishing = new int[2];
    private int _epoch;
    private bool _retired;

    public TopicSubscribers(string name) => Name = name;

    /// <summary>The topic's name.</summary>
    public string Name { get; }

    /// <summary>How many subscribers the topic has.</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>
    /// Adds a subscriber, calling <paramref name="firstSubscriber"/> under the topic's lock when it
    /// is the first. False when the topic was retired (emptied and left the registry): subscribe
    /// to the registry's current topic instead.
    /// </summary>
    public bool TryAdd(T subscriber, Action<string>? firstSubscriber)
    {
        lock (_lock)
        {
            if (_retired) return false;
            if (_positions.ContainsKey(subscriber)) return true;
            if (_count == _members.Length) Array.Resize(ref _members, _count * 2);
            _members[_count] = subscriber;
            _positions.Add(subscriber, _count);
            Volatile.Write(ref _count, _count + 1);
            Volatile.Write(ref _snapshot, null);
            if (_count == 1) firstSubscriber?.Invoke(Name);
            return true;
        }
    }

    /// <summary>
    /// Removes a subscriber. When it was the last, the topic retires: <paramref name="lastSubscriberLeft"/>
    /// runs under the topic's lock and then <paramref name="retire"/> takes the topic out of the
    /// registry, so a subscribe that comes later finds a new topic, ordered after this one. With
    /// <paramref name="waitForPublishes"/>, returns only when no publish can still deliver to it.
    /// </summary>
    public bool Remove(T subscriber, bool waitForPublishes, Action<string>? lastSubscriberLeft, Action<TopicSubscribers<T>> retire)
    {
        lock (_lock)
        {
            if (!_positions.Remove(subscriber, out int position)) return false;
            int last = _count - 1;
            if (position != last)
            {
                var moved = _members[last];
                _members[position] = moved;
                _positions[moved] = position;
            }
            _members[last] = null!;
            // Halving at a quarter keeps a shrunken topic's array proportional to it, still O(1) amortized.
            if (_members.Length > 16 && last < _members.Length / 4) Array.Resize(ref _members, _members.Length / 2);
            Volatile.Write(ref _count, last);
            Volatile.Write(ref _snapshot, null);
            if (last == 0)
            {
                _retired = true;
                lastSubscriberLeft?.Invoke(Name);
                retire(this);
            }
            if (waitForPublishes) WaitForPublishesInFlight();
            return true;
        }
    }

    /// <summary>
    /// The subscribers a publish delivers to; the caller must pass <paramref name="epoch"/> to
    /// <see cref="EndPublish"/> when done. Lock-free unless the members changed since the last publish.
    /// </summary>
    public T[] BeginPublish(out int epoch)
    {
        int e = Volatile.Read(ref _epoch);
        Interlocked.Increment(ref _publishing[e]);
        var snapshot = Volatile.Read(ref _snapshot);
        if (snapshot is not null)
        {
            epoch = e;
            return snapshot;
        }
        Interlocked.Decrement(ref _publishing[e]);
        lock (_lock)
        {
            snapshot = _snapshot ??= _members.AsSpan(0, _count).ToArray();
            // Entered under the lock, so no removal is between changing the members and waiting.
            epoch = _epoch;
            Interlocked.Increment(ref _publishing[epoch]);
            return snapshot;
        }
    }

    /// <summary>Ends a publish begun with <see cref="BeginPublish"/>.</summary>
    public void EndPublish(int epoch) => Interlocked.Decrement(ref _publishing[epoch]);

    /// <summary>Called under the lock after a removal: every publish that may hold an older snapshot has ended when it returns.</summary>
    private void WaitForPublishesInFlight()
    {
        for (int round = 0; round < 2; round++)
        {
            int previous = _epoch;
            Interlocked.Exchange(ref _epoch, 1 - previous);
            var spin = new SpinWait();
            while (Volatile.Read(ref _publishing[previous]) != 0) spin.SpinOnce();
        }
    }
}

namespace Realtime;

/// <summary>
/// One topic's subscribers on this server, in subscription order. Adding and removing cost O(1)
/// amortized under the topic's own lock; a publish reads the current array without locking and
/// without allocating (see <see cref="Recipients"/>).
/// </summary>
/// <remarks>
/// The array is append-only for readers: a subscriber goes into the next free slot, a removal only
/// empties its slot, so an entry never moves within an array a publish may be reading (no one is
/// missed or seen twice). When empty slots outnumber the subscribers, or the array is full, the
/// subscribers are copied in order into a new array sized twice their number, which replaces the
/// old one: a publish that still reads the old array sees the same entries, and ended ones are
/// refused when queued (see <see cref="Subscription{T}"/>). Each copy follows as many changes as
/// it copies entries, so the cost stays O(1) amortized and the array stays within a constant
/// factor of the topic's size as it grows and shrinks.
/// </remarks>
internal sealed class TopicSubscribers<T> where T : class
{
    private const int MinimumCapacity = 4;

    private readonly object _lock = new();
    private Subscription<T>?[] _slots = new Subscription<T>?[MinimumCapacity];
    // Slots handed out in _slots (subscribers and emptied slots); under the lock.
    private int _used;
    private int _count;
    private bool _retired;

    /// <summary>A topic with no subscriber yet.</summary>
    public TopicSubscribers(string name) => Name = name;

    /// <summary>The topic's name.</summary>
    public string Name { get; }

    /// <summary>How many subscribers the topic has.</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>The length of the array a publish reads, for tests of its bounds.</summary>
    internal int Capacity => Volatile.Read(ref _slots).Length;

    /// <summary>
    /// Adds the subscription last, calling <paramref name="firstSubscriber"/> under the topic's lock
    /// when it is the first. False when the topic was retired (emptied and taken out of the
    /// registry): subscribe to the registry's current topic instead.
    /// </summary>
    public bool TryAdd(Subscription<T> subscription, Action<string>? firstSubscriber)
    {
        lock (_lock)
        {
            if (_retired) return false;
            if (_used == _slots.Length) Repack(Math.Max(MinimumCapacity, 2 * (_count + 1)));
            subscription.Slot = _used;
            Volatile.Write(ref _slots[_used], subscription);
            _used++;
            Volatile.Write(ref _count, _count + 1);
            if (_count == 1) firstSubscriber?.Invoke(Name);
            return true;
        }
    }

    /// <summary>
    /// Removes an ended subscription. When it was the last, the topic retires:
    /// <paramref name="lastSubscriberLeft"/> runs under the topic's lock and then
    /// <paramref name="retire"/> takes the topic out of the registry, so a subscribe that comes
    /// later finds a new topic, whose first-subscriber call comes after this one.
    /// </summary>
    public void Remove(Subscription<T> subscription, Action<string>? lastSubscriberLeft, Action<TopicSubscribers<T>> retire)
    {
        lock (_lock)
        {
            Volatile.Write(ref _slots[subscription.Slot], null);
            Volatile.Write(ref _count, _count - 1);
            if (_count == 0)
            {
                _retired = true;
                lastSubscriberLeft?.Invoke(Name);
                retire(this);
            }
            else if (_used - _count > _count) Repack(Math.Max(MinimumCapacity, 2 * _count));
        }
    }

    /// <summary>Under the lock: copies the subscribers, in order, into a new array of <paramref name="capacity"/> slots, which replaces the old one.</summary>
    private void Repack(int capacity)
    {
        var slots = new Subscription<T>?[capacity];
        int next = 0;
        for (int i = 0; i < _used; i++)
        {
            var subscription = _slots[i];
            if (subscription is null) continue;
            subscription.Slot = next;
            slots[next++] = subscription;
        }
        _used = next;
        Volatile.Write(ref _slots, slots);
    }

    /// <summary>
    /// The subscriptions a publish from <paramref name="sender"/> (null for none) goes to, in
    /// subscription order, the sender left out. Lock-free and allocation-free. A subscription that
    /// ends meanwhile may still be enumerated: the queueing must check <see cref="Subscription{T}.IsActive"/>
    /// under the subscriber's send lock.
    /// </summary>
    public TopicRecipients<T> Recipients(T? sender) => new(Volatile.Read(ref _slots), sender);
}

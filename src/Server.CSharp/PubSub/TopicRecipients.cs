namespace Realtime;

/// <summary>
/// The recipients of one publish: a topic's array as it was when the publish began, without the
/// sender, emptied slots and subscriptions already seen to have ended. A struct over the topic's
/// own array, so creating and enumerating it does not allocate.
/// </summary>
internal readonly struct TopicRecipients<T> where T : class
{
    private readonly Subscription<T>?[] _slots;
    private readonly T? _sender;

    internal TopicRecipients(Subscription<T>?[] slots, T? sender)
    {
        _slots = slots;
        _sender = sender;
    }

    /// <summary>A non-allocating enumerator, for <c>foreach</c>.</summary>
    public Enumerator GetEnumerator() => new(_slots, _sender);

    /// <summary>Enumerates the recipients' subscriptions.</summary>
    public struct Enumerator
    {
        private readonly Subscription<T>?[] _slots;
        private readonly T? _sender;
        private int _index;

        internal Enumerator(Subscription<T>?[] slots, T? sender)
        {
            _slots = slots;
            _sender = sender;
            _index = -1;
            Current = null!;
        }

        /// <summary>The current recipient's subscription.</summary>
        public Subscription<T> Current { get; private set; }

        /// <summary>Moves to the next recipient; false when there is none.</summary>
        public bool MoveNext()
        {
            var slots = _slots;
            while (++_index < slots.Length)
            {
                var subscription = Volatile.Read(ref slots[_index]);
                // The sender is never a recipient of its own publish (docs/pubsub.md).
                if (subscription is null || !subscription.IsActive || ReferenceEquals(subscription.Subscriber, _sender)) continue;
                Current = subscription;
                return true;
            }
            return false;
        }
    }
}

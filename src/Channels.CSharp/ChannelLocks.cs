using System.Collections.Concurrent;

namespace Realtime.Channels;

/// <summary>
/// One lock per channel in use on this node, and how many of this node's connections are subscribed to
/// it. A channel's entry exists only while someone holds or awaits its lock or a connection is
/// subscribed, so the entries are bounded by the node's subscriptions and requests in flight.
/// </summary>
/// <remarks>
/// The last holder of an entry nobody else uses removes it under the lock and marks it retired; a
/// caller that found the entry just before and then acquired it sees the mark and retries on a fresh
/// entry, so two callers never hold two different locks of one channel at once.
/// </remarks>
internal sealed class ChannelLocks
{
    private readonly ConcurrentDictionary<string, Entry> _entries = new(StringComparer.Ordinal);

    /// <summary>How many channels have an entry (in use on this node).</summary>
    public int Count => _entries.Count;

    /// <summary>Called between finding a channel's entry and awaiting its lock: lets tests run the release that retires it there.</summary>
    internal Action? Found { get; set; }

    /// <summary>Whether the channel is locked, awaited or subscribed on this node.</summary>
    public bool IsInUse(string channel) => _entries.ContainsKey(channel);

    /// <summary>Holds the channel's lock until the returned value is disposed.</summary>
    public async ValueTask<Held> LockAsync(string channel)
    {
        while (true)
        {
            var entry = _entries.GetOrAdd(channel, static _ => new Entry());
            Found?.Invoke();
            Interlocked.Increment(ref entry.Users);
            await entry.Gate.WaitAsync().ConfigureAwait(false);
            if (!entry.Retired) return new Held(this, channel, entry);
            Interlocked.Decrement(ref entry.Users);
            entry.Gate.Release();
        }
    }

    private void Release(string channel, Entry entry)
    {
        // Under the lock: Users counts the holder and everyone who found this entry and awaits it.
        if (Interlocked.Decrement(ref entry.Users) == 0 && entry.Subscribers == 0)
        {
            entry.Retired = true;
            _entries.TryRemove(new KeyValuePair<string, Entry>(channel, entry));
        }
        entry.Gate.Release();
    }

    /// <summary>A channel's lock, held.</summary>
    public readonly struct Held : IDisposable
    {
        private readonly ChannelLocks _owner;
        private readonly string _channel;
        private readonly Entry _entry;

        internal Held(ChannelLocks owner, string channel, Entry entry)
        {
            _owner = owner;
            _channel = channel;
            _entry = entry;
        }

        /// <summary>Counts one more connection of this node subscribed to the channel: its entry stays.</summary>
        public void AddSubscriber() => _entry.Subscribers++;

        /// <summary>Counts one connection fewer; the entry goes with the last one when nobody else uses it.</summary>
        public void RemoveSubscriber()
        {
            if (_entry.Subscribers > 0) _entry.Subscribers--;
        }

        /// <summary>Releases the lock.</summary>
        public void Dispose() => _owner.Release(_channel, _entry);
    }

    internal sealed class Entry
    {
        public readonly SemaphoreSlim Gate = new(1, 1);
        public int Users;
        public int Subscribers;
        public bool Retired;
    }
}

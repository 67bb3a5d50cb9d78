using System.Collections.Concurrent;

namespace Realtime.Channels;

/// <summary>
/// The <see cref="ChannelSequencer"/> (lock and publish queue) of every channel in use on this node. A
/// channel's entry exists only while it is used: while someone holds or awaits its lock, a publish of this
/// node is queued or on its way, or a connection of this node is subscribed (each subscription holds a
/// use). So the entries are bounded by the node's subscriptions and requests in flight.
/// </summary>
/// <remarks>
/// The last user of an entry retires it (its use count goes from 0 to <see cref="Entry.Retired"/> in one
/// compare-and-swap) and removes it; a caller that found the entry just before cannot take a use of a
/// retired one and retries on a fresh entry, so two callers never hold two different locks of one
/// channel at once, and no publish is queued on a sequencer that is gone.
/// </remarks>
internal sealed class ChannelLocks
{
    private readonly ConcurrentDictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly Func<string, ChannelSequencer> _newSequencer;

    /// <summary>Entries whose sequencers <paramref name="newSequencer"/> makes.</summary>
    public ChannelLocks(Func<string, ChannelSequencer> newSequencer) => _newSequencer = newSequencer;

    /// <summary>How many channels have an entry (in use on this node).</summary>
    public int Count => _entries.Count;

    /// <summary>Called between finding a channel's entry and taking a use of it: lets tests retire it there.</summary>
    internal Action? Found { get; set; }

    /// <summary>Whether the channel is locked, awaited, published to or subscribed on this node.</summary>
    public bool IsInUse(string channel) => _entries.ContainsKey(channel);

    /// <summary>Holds the channel's lock (no batch of publishes on its way) until the returned value is disposed.</summary>
    public async ValueTask<Held> LockAsync(string channel)
    {
        var entry = Use(channel);
        try
        {
            var turn = await entry.Sequencer.LockAsync().ConfigureAwait(false);
            return new Held(this, channel, entry, turn);
        }
        catch
        {
            Release(channel, entry);
            throw;
        }
    }

    /// <summary>Queues a publish on the channel's sequencer (<see cref="ChannelSequencer.AppendAsync"/>); the entry stays until it ends.</summary>
    public Task<ChannelAppendResult> AppendAsync(string channel, byte[] data, string? key, bool inlineContinuation)
    {
        var entry = Use(channel);
        Task<ChannelAppendResult> appended;
        try
        {
            appended = entry.Sequencer.AppendAsync(data, key, inlineContinuation);
        }
        catch
        {
            Release(channel, entry);
            throw;
        }
        if (appended.IsCompleted) Release(channel, entry);
        else
            appended.ContinueWith(static (_, state) =>
            {
                var (locks, channel, entry) = ((ChannelLocks, string, Entry))state!;
                locks.Release(channel, entry);
            }, (this, channel, entry), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return appended;
    }

    private Entry Use(string channel)
    {
        while (true)
        {
            var entry = _entries.GetOrAdd(channel, static (name, locks) => new Entry(locks._newSequencer(name)), this);
            Found?.Invoke();
            if (entry.TryUse()) return entry;
            // Retired by its last user: make sure it is gone, then take a fresh one.
            _entries.TryRemove(new KeyValuePair<string, Entry>(channel, entry));
        }
    }

    private void Release(string channel, Entry entry)
    {
        if (Interlocked.Decrement(ref entry.Users) == 0 && Interlocked.CompareExchange(ref entry.Users, Entry.Retired, 0) == 0)
            _entries.TryRemove(new KeyValuePair<string, Entry>(channel, entry));
    }

    /// <summary>A channel's lock, held.</summary>
    public readonly struct Held : IDisposable
    {
        private readonly ChannelLocks _owner;
        private readonly string _channel;
        private readonly Entry _entry;
        private readonly ChannelSequencer.Turn _turn;

        internal Held(ChannelLocks owner, string channel, Entry entry, ChannelSequencer.Turn turn)
        {
            _owner = owner;
            _channel = channel;
            _entry = entry;
            _turn = turn;
        }

        /// <summary>Counts one more connection of this node subscribed to the channel: a use that keeps its entry.</summary>
        public void AddSubscriber() => Interlocked.Increment(ref _entry.Users);

        /// <summary>Counts one fewer (the caller's own use keeps the entry until it releases the lock).</summary>
        public void RemoveSubscriber() => Interlocked.Decrement(ref _entry.Users);

        /// <summary>Releases the lock.</summary>
        public void Dispose()
        {
            _turn.Dispose();
            _owner.Release(_channel, _entry);
        }
    }

    /// <summary>A channel's sequencer and its use count (negative once retired).</summary>
    internal sealed class Entry(ChannelSequencer sequencer)
    {
        /// <summary>The use count of a retired entry: no use can be taken any more.</summary>
        public const int Retired = int.MinValue;

        public readonly ChannelSequencer Sequencer = sequencer;
        public int Users;

        /// <summary>Takes a use unless the entry is retired.</summary>
        public bool TryUse()
        {
            var users = Volatile.Read(ref Users);
            while (users >= 0)
            {
                var seen = Interlocked.CompareExchange(ref Users, users + 1, users);
                if (seen == users) return true;
                users = seen;
            }
            return false;
        }
    }
}

using System.Security.Cryptography;
using Microsoft.FSharp.Core;
using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// Channel history in this process: a ring of publications per channel, trimmed by
/// <see cref="ChannelRetention"/> with the core's rules (<see cref="ChannelHistory"/>, <see cref="ChannelRecovery"/>,
/// <see cref="PublishKeys"/>). Positions are assigned under one lock per channel. Each channel's
/// epoch is chosen at random when this process first sees it, so clients of an earlier process are told
/// their position is not recovered. Every member completes synchronously. For one node only: several
/// nodes need a shared store (Realtime.Channels.Redis).
/// </summary>
/// <remarks>
/// Bounded: at most <see cref="MaxChannels"/> channels are held; a channel that holds nothing live (its
/// history and publish keys expired by age, no connection of this node subscribed) is forgotten by a sweep
/// every second (at most 1,000 channels looked at per sweep) and before a new channel is refused. A
/// client that comes back to a forgotten channel gets a new epoch, so it is told <c>not-recovered</c>
/// even if nothing was published meanwhile: never a silent loss.
/// </remarks>
public sealed class InMemoryChannelStore : IChannelStore, IDisposable
{
    /// <summary>How many channels one sweep looks at, at most.</summary>
    internal const int SweepBudget = 1_000;

    /// <summary>How often the idle channels are swept.</summary>
    internal static readonly TimeSpan SweepInterval = TimeSpan.FromSeconds(1);

    private readonly ChannelRetention _retention;
    private readonly TimeProvider _time;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, ChannelLog> _channels = new(StringComparer.Ordinal);
    private readonly ITimer _sweeper;
    private readonly object _sweeping = new();
    private IEnumerator<KeyValuePair<string, ChannelLog>>? _cursor;
    private int _count;

    /// <summary>A store that keeps what <paramref name="retention"/> allows, for at most 10,000 channels.</summary>
    /// <param name="retention">The bounds (read at every append and read, so later changes apply).</param>
    /// <param name="timeProvider">The clock for ages; the system clock when null.</param>
    public InMemoryChannelStore(ChannelRetention retention, TimeProvider? timeProvider = null)
        : this(retention, RealtimeChannelsOptions.DefaultMaxChannels, timeProvider)
    {
    }

    /// <summary>A store that keeps what <paramref name="retention"/> allows, for at most <paramref name="maxChannels"/> channels.</summary>
    /// <param name="retention">The bounds (read at every append and read, so later changes apply).</param>
    /// <param name="maxChannels">The most channels held at once (at least 1).</param>
    /// <param name="timeProvider">The clock for ages and for the sweeps; the system clock when null.</param>
    public InMemoryChannelStore(ChannelRetention retention, int maxChannels, TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(retention);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxChannels, 1);
        _retention = retention;
        MaxChannels = maxChannels;
        _time = timeProvider ?? TimeProvider.System;
        _sweeper = _time.CreateTimer(static state => ((InMemoryChannelStore)state!).Sweep(SweepBudget), this, SweepInterval, SweepInterval);
    }

    /// <summary>The most channels held at once; past it a new channel gets <see cref="ChannelCapacityException"/>.</summary>
    public int MaxChannels { get; }

    /// <summary>How many channels are held now.</summary>
    public int ChannelCount => Volatile.Read(ref _count);

    /// <summary>Called between finding a channel's log and locking it: lets tests run the sweep that forgets it there.</summary>
    internal Action? Found { get; set; }

    /// <summary>Whether a connection of this node uses the channel (the channels server sets it): such a channel is not forgotten.</summary>
    internal Func<string, bool> InUse { get; set; } = static _ => false;

    /// <inheritdoc/>
    public ValueTask<ChannelAppendResult> AppendAsync(string channel, ReadOnlyMemory<byte> data, string? key, CancellationToken cancellationToken = default)
    {
        var log = Enter(channel);
        try
        {
            var now = NowMilliseconds();
            var retention = _retention.ToCore();
            var keyLimits = new PublishKeys.KeyLimits(_retention.MaxKeys, retention.MaxAge);
            log.ForgetKeys(keyLimits, now);
            if (key is not null)
            {
                var found = log.Keys.TryGetValue(key, out var entry) ? FSharpValueOption<PublishKeys.Entry>.NewValueSome(entry) : FSharpValueOption<PublishKeys.Entry>.ValueNone;
                var verdict = PublishKeys.check(keyLimits, now, found);
                if (verdict.IsRepeat) return ValueTask.FromResult(new ChannelAppendResult(verdict.first, true));
            }
            var position = log.Append(data.ToArray(), now);
            if (key is not null) log.RememberKey(key, new PublishKeys.Entry(position, now));
            log.Trim(retention, now);
            return ValueTask.FromResult(new ChannelAppendResult(position, false));
        }
        finally
        {
            Monitor.Exit(log);
        }
    }

    /// <inheritdoc/>
    public ValueTask<ChannelHistoryRead> ReadAsync(string channel, ChannelPosition since, int limit, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(limit, 1);
        var log = Enter(channel);
        try
        {
            log.Trim(_retention.ToCore(), NowMilliseconds());
            var plan = ChannelRecovery.page(limit, ChannelRecovery.plan(log.Window, FSharpValueOption<ChannelPosition>.NewValueSome(since)));
            var publications = new List<ChannelPublication>((int)plan.Count);
            for (var offset = plan.From; offset <= plan.Through; offset++)
                publications.Add(new ChannelPublication(offset, log.DataAt(offset)));
            return ValueTask.FromResult(new ChannelHistoryRead(plan.Position, publications, plan.Recovery.IsRecovered));
        }
        finally
        {
            Monitor.Exit(log);
        }
    }

    /// <inheritdoc/>
    public ValueTask<ChannelPosition> GetPositionAsync(string channel, CancellationToken cancellationToken = default)
    {
        var log = Enter(channel);
        try
        {
            return ValueTask.FromResult(log.Window.Position);
        }
        finally
        {
            Monitor.Exit(log);
        }
    }

    /// <summary>Stops the sweeps.</summary>
    public void Dispose() => _sweeper.Dispose();

    /// <summary>
    /// Looks at up to <paramref name="budget"/> channels, going on from where the last sweep stopped,
    /// and forgets those that hold nothing live. Returns how many it forgot; when another sweep runs,
    /// 0 at once unless <paramref name="wait"/>, which waits for it first.
    /// </summary>
    internal int Sweep(int budget, bool wait = false)
    {
        if (wait) Monitor.Enter(_sweeping);
        else if (!Monitor.TryEnter(_sweeping)) return 0;
        try
        {
            var forgotten = 0;
            var restarted = false;
            for (var looked = 0; looked < budget; looked++)
            {
                _cursor ??= _channels.GetEnumerator();
                if (!_cursor.MoveNext())
                {
                    _cursor.Dispose();
                    _cursor = null;
                    if (restarted) break;
                    restarted = true;
                    continue;
                }
                var (channel, log) = _cursor.Current;
                if (TryForget(channel, log)) forgotten++;
            }
            return forgotten;
        }
        finally
        {
            Monitor.Exit(_sweeping);
        }
    }

    private bool TryForget(string channel, ChannelLog log)
    {
        lock (log)
        {
            if (log.Retired) return false;
            var now = NowMilliseconds();
            var retention = _retention.ToCore();
            log.ForgetKeys(new PublishKeys.KeyLimits(_retention.MaxKeys, retention.MaxAge), now);
            log.Trim(retention, now);
            if (!log.HoldsNothing || InUse(channel)) return false;
            // Retired under its lock: a caller that found this log before it left the map retries on a new one.
            log.Retired = true;
            _channels.TryRemove(new KeyValuePair<string, ChannelLog>(channel, log));
            Interlocked.Decrement(ref _count);
            return true;
        }
    }

    /// <summary>The channel's live log, locked (the caller exits the monitor).</summary>
    private ChannelLog Enter(string channel)
    {
        while (true)
        {
            var log = LogOf(channel);
            Found?.Invoke();
            Monitor.Enter(log);
            if (!log.Retired) return log;
            Monitor.Exit(log);
        }
    }

    private long NowMilliseconds() => (long)(_time.GetTimestamp() * (1000.0 / _time.TimestampFrequency));

    private ChannelLog LogOf(string channel)
    {
        if (_channels.TryGetValue(channel, out var log)) return log;
        if (!TryReserve())
        {
            Sweep(SweepBudget, wait: true);
            if (TryReserve()) return Add(channel);
            // Another caller may have added it meanwhile: that one is held already.
            if (_channels.TryGetValue(channel, out log)) return log;
            throw new ChannelCapacityException(channel, MaxChannels);
        }
        return Add(channel);
    }

    /// <summary>Adds a new log for the channel, a place reserved (or returns the one another caller added first).</summary>
    private ChannelLog Add(string channel)
    {
        var fresh = new ChannelLog(NewEpoch());
        var held = _channels.GetOrAdd(channel, fresh);
        if (!ReferenceEquals(held, fresh)) Interlocked.Decrement(ref _count);
        return held;
    }

    private bool TryReserve()
    {
        if (Interlocked.Increment(ref _count) <= MaxChannels) return true;
        Interlocked.Decrement(ref _count);
        return false;
    }

    private static string NewEpoch() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(6)).Replace('+', '-').Replace('/', '_');

    /// <summary>One channel's publications (a ring, oldest at <c>_head</c>, described by the core's window) and its remembered publish keys.</summary>
    private sealed class ChannelLog(string epoch)
    {
        private (byte[] Data, long Time)[] _ring = new (byte[], long)[8];
        private int _head;
        private readonly Queue<(string Key, long Time)> _keyOrder = new();

        public ChannelHistory.Window Window { get; private set; } = ChannelHistory.empty(epoch);

        public Dictionary<string, PublishKeys.Entry> Keys { get; } = new(StringComparer.Ordinal);

        private int Count => (int)Window.Count;

        /// <summary>Set under the lock when the log leaves the store's map; a retired log is never used again.</summary>
        public bool Retired { get; set; }

        /// <summary>No publication and no publish key held (after trimming at the current time).</summary>
        public bool HoldsNothing => Count == 0 && Keys.Count == 0 && _keyOrder.Count == 0;

        public ChannelPosition Append(byte[] data, long now)
        {
            if (Count == _ring.Length) Grow();
            _ring[(_head + Count) % _ring.Length] = (data, now);
            var (window, position) = ChannelHistory.append(Window, data.Length);
            Window = window;
            return position;
        }

        public ReadOnlyMemory<byte> DataAt(ulong offset) =>
            _ring[(_head + (int)(offset - Window.FirstOffset)) % _ring.Length].Data;

        public void Trim(ChannelHistory.Retention retention, long now)
        {
            while (Count > 0)
            {
                var oldest = _ring[_head];
                var (window, step) = ChannelHistory.trim(retention, now, Window, oldest.Data.Length, oldest.Time);
                if (step.IsKeep) return;
                Window = window;
                _ring[_head] = default;
                _head = (_head + 1) % _ring.Length;
            }
        }

        public void RememberKey(string key, PublishKeys.Entry entry)
        {
            Keys[key] = entry;
            _keyOrder.Enqueue((key, entry.Time));
        }

        public void ForgetKeys(PublishKeys.KeyLimits limits, long now)
        {
            while (_keyOrder.TryPeek(out var oldest) && PublishKeys.shouldForget(limits, now, _keyOrder.Count, oldest.Time))
            {
                _keyOrder.Dequeue();
                // A key published again (after it was forgotten by age) has a newer entry: keep that one.
                if (Keys.TryGetValue(oldest.Key, out var entry) && entry.Time == oldest.Time) Keys.Remove(oldest.Key);
            }
        }

        private void Grow()
        {
            var bigger = new (byte[], long)[_ring.Length * 2];
            for (var i = 0; i < Count; i++) bigger[i] = _ring[(_head + i) % _ring.Length];
            _ring = bigger;
            _head = 0;
        }
    }
}

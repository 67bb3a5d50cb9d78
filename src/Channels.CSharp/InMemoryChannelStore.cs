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
public sealed class InMemoryChannelStore : IChannelStore
{
    private readonly ChannelRetention _retention;
    private readonly TimeProvider _time;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, ChannelLog> _channels = new(StringComparer.Ordinal);

    /// <summary>A store that keeps what <paramref name="retention"/> allows.</summary>
    /// <param name="retention">The bounds (read at every append and read, so later changes apply).</param>
    /// <param name="timeProvider">The clock for ages; the system clock when null.</param>
    public InMemoryChannelStore(ChannelRetention retention, TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(retention);
        _retention = retention;
        _time = timeProvider ?? TimeProvider.System;
    }

    /// <inheritdoc/>
    public ValueTask<ChannelAppendResult> AppendAsync(string channel, ReadOnlyMemory<byte> data, string? key, CancellationToken cancellationToken = default)
    {
        var log = LogOf(channel);
        lock (log)
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
    }

    /// <inheritdoc/>
    public ValueTask<ChannelHistoryRead> ReadAsync(string channel, ChannelPosition since, int limit, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(limit, 1);
        var log = LogOf(channel);
        lock (log)
        {
            log.Trim(_retention.ToCore(), NowMilliseconds());
            var plan = ChannelRecovery.page(limit, ChannelRecovery.plan(log.Window, FSharpValueOption<ChannelPosition>.NewValueSome(since)));
            var publications = new List<ChannelPublication>((int)plan.Count);
            for (var offset = plan.From; offset <= plan.Through; offset++)
                publications.Add(new ChannelPublication(offset, log.DataAt(offset)));
            return ValueTask.FromResult(new ChannelHistoryRead(plan.Position, publications, plan.Recovery.IsRecovered));
        }
    }

    /// <inheritdoc/>
    public ValueTask<ChannelPosition> GetPositionAsync(string channel, CancellationToken cancellationToken = default)
    {
        var log = LogOf(channel);
        lock (log)
            return ValueTask.FromResult(log.Window.Position);
    }

    private long NowMilliseconds() => (long)(_time.GetTimestamp() * (1000.0 / _time.TimestampFrequency));

    private ChannelLog LogOf(string channel) => _channels.GetOrAdd(channel, static _ => new ChannelLog(NewEpoch()));

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

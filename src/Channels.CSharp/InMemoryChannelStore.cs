using System.Security.Cryptography;
using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// Channel history in this process: a ring of publications per channel, trimmed by
/// <see cref="ChannelRetention"/>. Positions are assigned under one lock per channel. Each channel's
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
            var now = _time.GetTimestamp();
            log.Trim(_retention, now, _time);
            if (key is not null && log.Keys.TryGetValue(key, out var first))
                return ValueTask.FromResult(new ChannelAppendResult(new ChannelPosition(log.Epoch, first), true));
            var offset = log.Append(data.ToArray(), key, now);
            log.Trim(_retention, now, _time);
            return ValueTask.FromResult(new ChannelAppendResult(new ChannelPosition(log.Epoch, offset), false));
        }
    }

    /// <inheritdoc/>
    public ValueTask<ChannelHistoryRead> ReadAsync(string channel, ChannelPosition since, int limit, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(limit, 1);
        var log = LogOf(channel);
        lock (log)
        {
            log.Trim(_retention, _time.GetTimestamp(), _time);
            var position = new ChannelPosition(log.Epoch, log.LastOffset);
            var sameEpoch = string.Equals(since.Epoch, log.Epoch, StringComparison.Ordinal);
            var firstHeld = log.LastOffset - (ulong)log.Count + 1;
            bool recovered;
            ulong from;
            if (sameEpoch && since.Offset <= log.LastOffset && since.Offset + 1 >= firstHeld)
            {
                recovered = true;
                from = since.Offset + 1;
            }
            else
            {
                recovered = sameEpoch && since.Offset == log.LastOffset;
                from = sameEpoch && since.Offset > log.LastOffset ? log.LastOffset + 1 : firstHeld;
            }
            var publications = new List<ChannelPublication>();
            for (var offset = from; offset <= log.LastOffset && publications.Count < limit; offset++)
                publications.Add(new ChannelPublication(offset, log.DataAt(offset)));
            return ValueTask.FromResult(new ChannelHistoryRead(position, publications, recovered));
        }
    }

    /// <inheritdoc/>
    public ValueTask<ChannelPosition> GetPositionAsync(string channel, CancellationToken cancellationToken = default)
    {
        var log = LogOf(channel);
        lock (log)
            return ValueTask.FromResult(new ChannelPosition(log.Epoch, log.LastOffset));
    }

    private ChannelLog LogOf(string channel) => _channels.GetOrAdd(channel, static _ => new ChannelLog(NewEpoch()));

    private static string NewEpoch() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(6)).Replace('+', '-').Replace('/', '_');

    /// <summary>One channel's publications: a ring, oldest at <c>_head</c>.</summary>
    private sealed class ChannelLog(string epoch)
    {
        private Entry[] _ring = new Entry[8];
        private int _head;
        private long _bytes;

        public string Epoch { get; } = epoch;
        public ulong LastOffset { get; private set; }
        public int Count { get; private set; }
        public Dictionary<string, ulong> Keys { get; } = new(StringComparer.Ordinal);

        public ulong Append(byte[] data, string? key, long timestamp)
        {
            if (Count == _ring.Length) Grow();
            var offset = ++LastOffset;
            _ring[(_head + Count) % _ring.Length] = new Entry(data, key, timestamp);
            Count++;
            _bytes += data.Length;
            if (key is not null) Keys[key] = offset;
            return offset;
        }

        public ReadOnlyMemory<byte> DataAt(ulong offset)
        {
            var index = (int)(offset - (LastOffset - (ulong)Count + 1));
            return _ring[(_head + index) % _ring.Length].Data;
        }

        public void Trim(ChannelRetention retention, long now, TimeProvider time)
        {
            while (Count > 0)
            {
                ref var oldest = ref _ring[_head];
                var tooMany = Count > retention.MaxCount;
                var tooBig = _bytes > retention.MaxBytes;
                var tooOld = time.GetElapsedTime(oldest.Timestamp, now) > retention.MaxAge;
                if (!tooMany && !tooBig && !tooOld) break;
                _bytes -= oldest.Data.Length;
                if (oldest.Key is not null) Keys.Remove(oldest.Key);
                oldest = default;
                _head = (_head + 1) % _ring.Length;
                Count--;
            }
        }

        private void Grow()
        {
            var bigger = new Entry[_ring.Length * 2];
            for (var i = 0; i < Count; i++) bigger[i] = _ring[(_head + i) % _ring.Length];
            _ring = bigger;
            _head = 0;
        }

        private readonly record struct Entry(byte[] Data, string? Key, long Timestamp);
    }
}

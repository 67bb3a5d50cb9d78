using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Realtime.Protocol;

namespace Realtime.Channels.Redis;

/// <summary>
/// Fills the publications a node's Redis pub/sub deliveries dropped (a subscriber connection killed or
/// reconnecting loses what was published meanwhile) on channels that then stay quiet. Clients find a
/// gap themselves when the next publication arrives (its offset is past their position) and recover it;
/// on a quiet channel nothing arrives, so the node watches instead: it wraps the Realtime backplane,
/// notes the highest offset it delivered per channel (its own publishes and those from other nodes),
/// compares it every <see cref="RedisChannelsOptions.GapCheckInterval"/> with the channel's last offset
/// in Redis, and when the difference stays for a whole interval delivers the missing publications from
/// the history to its local subscribers, in order. A client that had them already drops them as
/// duplicates (docs/channels-protocol.md: a lower offset is a duplicate).
/// </summary>
internal sealed class PublicationGapFiller : IRealtimeBackplane, IRealtimeBackplaneReceiver, IAsyncDisposable
{
    private const int ReadPage = 1_000;

    private readonly IRealtimeBackplane inner;
    private readonly RedisChannelStore store;
    private readonly TimeSpan interval;
    private readonly ILogger logger;
    private readonly ConcurrentDictionary<string, Watch> watches = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource stopping = new();
    private IRealtimeBackplaneReceiver? receiver;
    private Task loop = Task.CompletedTask;
    private long filled;

    public PublicationGapFiller(IRealtimeBackplane inner, RedisChannelStore store, TimeSpan interval, ILogger logger)
    {
        this.inner = inner;
        this.store = store;
        this.interval = interval;
        this.logger = logger;
    }

    /// <summary>How many publications this node delivered from history because their live delivery never came.</summary>
    public long FilledCount => Interlocked.Read(ref filled);

    public void Start(IRealtimeBackplaneReceiver receiver)
    {
        this.receiver = receiver;
        inner.Start(this);
        loop = Task.Run(CheckLoop);
    }

    public void Publish(string topic, MessageKind kind, ReadOnlySpan<byte> payload, bool compress, long senderConnectionId)
    {
        // This node's own publications go out in both forms: reading one of them (the binary) is enough.
        if (kind == MessageKind.Binary) Observe(topic, kind, payload, remote: false);
        inner.Publish(topic, kind, payload, compress, senderConnectionId);
    }

    public void TopicActivated(string topic)
    {
        if (ChannelOf(topic, out var channel, out var binary))
        {
            var watch = watches.GetOrAdd(channel, static _ => new Watch());
            bool first;
            lock (watch)
            {
                first = !watch.Json && !watch.Binary;
                if (binary) watch.Binary = true; else watch.Json = true;
            }
            // The channel's position now, as soon as possible: a delivery dropped after it is filled.
            if (first && receiver is not null) _ = Task.Run(() => CheckSafelyAsync(channel, watch));
        }
        inner.TopicActivated(topic);
    }

    public void TopicDeactivated(string topic)
    {
        if (ChannelOf(topic, out var channel, out var binary) && watches.TryGetValue(channel, out var watch))
        {
            lock (watch)
            {
                if (binary) watch.Binary = false; else watch.Json = false;
                if (!watch.Json && !watch.Binary) watches.TryRemove(new KeyValuePair<string, Watch>(channel, watch));
            }
        }
        inner.TopicDeactivated(topic);
    }

    public int DeliverLocally(string topic, MessageKind kind, ReadOnlySpan<byte> payload, bool compress)
    {
        Observe(topic, kind, payload, remote: true);
        return receiver!.DeliverLocally(topic, kind, payload, compress);
    }

    public async ValueTask DisposeAsync()
    {
        await stopping.CancelAsync().ConfigureAwait(false);
        try
        {
            await loop.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }

    private void Observe(string topic, MessageKind kind, ReadOnlySpan<byte> payload, bool remote)
    {
        if (!ChannelOf(topic, out var channel, out var binary) || !watches.TryGetValue(channel, out var watch)) return;
        // Another node's publication arrives in each form this node has subscribers of: read one of them,
        // the JSON form only when no binary one comes.
        if (remote && !binary && Volatile.Read(ref watch.Binary)) return;
        if (!PublicationFrames.TryReadPosition(payload, binary, out _, out var position)) return;
        lock (watch)
        {
            watch.AdoptIfNew(position.Epoch);
            if (watch.Epoch == position.Epoch) watch.Delivered = Math.Max(watch.Delivered, position.Offset);
        }
    }

    private async Task CheckLoop()
    {
        using var timer = new PeriodicTimer(interval);
        while (await timer.WaitForNextTickAsync(stopping.Token).ConfigureAwait(false))
        {
            // All channels at once: the reads are pipelined on the one connection.
            await Task.WhenAll(watches.Select(pair => CheckSafelyAsync(pair.Key, pair.Value))).ConfigureAwait(false);
        }
    }

    /// <summary>One check of a channel at a time, so that fills never interleave out of order.</summary>
    private async Task CheckSafelyAsync(string channel, Watch watch)
    {
        if (Interlocked.Exchange(ref watch.Checking, 1) == 1) return;
        try
        {
            await CheckAsync(channel, watch).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            logger.LoopFailed(e, "the gap check of channel " + channel);
        }
        finally
        {
            Volatile.Write(ref watch.Checking, 0);
        }
    }

    private async Task CheckAsync(string channel, Watch watch)
    {
        var peeked = await store.PeekPositionAsync(channel, stopping.Token).ConfigureAwait(false);
        ChannelPosition since;
        ulong upTo;
        lock (watch)
        {
            if (peeked is not { } position)
            {
                // No history yet: whatever this channel gets from now on is after this check.
                if (watch.Epoch is null) watch.New = true;
                return;
            }
            watch.AdoptIfNew(position.Epoch);
            if (watch.Epoch != position.Epoch)
            {
                // The first check of a channel (or its history was lost): what its subscribers have
                // came from their subscribe's history read; from here on this node watches.
                watch.Epoch = position.Epoch;
                watch.Delivered = position.Offset;
                watch.Behind = 0;
                return;
            }
            if (position.Offset <= watch.Delivered)
            {
                watch.Behind = 0;
                return;
            }
            // Behind: give the live delivery one interval to arrive before filling from history.
            if (watch.Behind != position.Offset)
            {
                watch.Behind = position.Offset;
                return;
            }
            since = new ChannelPosition(watch.Epoch, watch.Delivered);
            upTo = position.Offset;
        }
        await FillAsync(channel, watch, since, upTo).ConfigureAwait(false);
    }

    private async Task FillAsync(string channel, Watch watch, ChannelPosition since, ulong upTo)
    {
        while (since.Offset < upTo && !stopping.IsCancellationRequested)
        {
            var read = await store.ReadAsync(channel, since, ReadPage, stopping.Token).ConfigureAwait(false);
            if (read.Position.Epoch != since.Epoch || read.Publications.Count == 0) return;
            foreach (var publication in read.Publications)
            {
                if (publication.Offset > upTo) return;
                bool json, binary;
                lock (watch)
                {
                    if (publication.Offset <= watch.Delivered) continue;
                    watch.Delivered = publication.Offset;
                    json = watch.Json;
                    binary = watch.Binary;
                }
                var position = new ChannelPosition(since.Epoch, publication.Offset);
                if (json)
                    receiver!.DeliverLocally(ChannelTopics.Json(channel), MessageKind.Text, PublicationFrames.Write(channel, position, publication.Data.Span, binary: false), false);
                if (binary)
                    receiver!.DeliverLocally(ChannelTopics.Binary(channel), MessageKind.Binary, PublicationFrames.Write(channel, position, publication.Data.Span, binary: true), false);
                Interlocked.Increment(ref filled);
            }
            since = new ChannelPosition(since.Epoch, read.Publications[^1].Offset);
        }
    }

    private static bool ChannelOf(string topic, out string channel, out bool binary)
    {
        var json = ChannelTopics.Json("");
        var bin = ChannelTopics.Binary("");
        binary = topic.StartsWith(bin, StringComparison.Ordinal);
        if (binary || topic.StartsWith(json, StringComparison.Ordinal))
        {
            channel = topic[(binary ? bin : json).Length..];
            return true;
        }
        channel = "";
        return false;
    }

    /// <summary>What this node knows of one channel with local subscribers.</summary>
    private sealed class Watch
    {
        public bool Json;
        public bool Binary;
        public string? Epoch;
        public ulong Delivered;
        public ulong Behind;
        public int Checking;

        /// <summary>True when a check found no history: the first epoch seen is followed from offset 0.</summary>
        public bool New;

        public void AdoptIfNew(string epoch)
        {
            if (Epoch is null && New)
            {
                Epoch = epoch;
                New = false;
            }
        }
    }
}

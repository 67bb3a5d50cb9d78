using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// The node's side of every channel: one lock per channel that orders its appends (in batches, by a
/// <see cref="ChannelSequencer"/> while the channel has publishes queued), their fan-out and subscribes
/// with recovery; the fan-out of publications and presence events as frames encoded once per form; and
/// the leave events of members a shared presence reports dead.
/// </summary>
/// <remarks>
/// Why a subscriber misses nothing between its history read and its live subscription: a subscribe
/// takes the channel's lock, subscribes the connection to the channel's topic, reads the history after
/// its position and sends it, then <c>subscribed</c>; the publishes of this node are appended and fanned
/// out in batches, and a batch holds the same lock from its append to the end of its fan-out. So every publication of this node is either in the history read (appended
/// before the subscribe took the lock) or delivered live after the recovered ones (appended after), never
/// both and never neither. Publications appended by other nodes arrive live as soon as the topic is
/// subscribed; one that overtakes the history read is caught by the client's position check (a lower
/// offset is a duplicate it drops, a higher one a gap it recovers).
/// </remarks>
internal sealed class ChannelHub : IChannelPresenceListener, IRealtimeChannels
{
    private readonly ConcurrentDictionary<string, ChannelSequencer> _sequencers = new(StringComparer.Ordinal);
    private int _started;

    public ChannelHub(IRealtimeServer server, IChannelStore store, IChannelPresence presence, IOptions<RealtimeChannelsOptions> options, ILogger<ChannelHub> logger)
    {
        Server = server;
        Store = store;
        Presence = presence;
        Options = options.Value;
        Logger = logger;
        // The in-memory store forgets only channels no connection of this node uses.
        if (store is InMemoryChannelStore memory) memory.InUse = Locks.IsInUse;
    }

    /// <summary>The lock of every channel in use on this node, and its subscriber count.</summary>
    public ChannelLocks Locks { get; } = new();

    public IRealtimeServer Server { get; }

    public IChannelStore Store { get; }

    public IChannelPresence Presence { get; }

    public RealtimeChannelsOptions Options { get; }

    public ILogger Logger { get; }

    /// <summary>Starts the presence (once, when the first channels endpoint is mapped).</summary>
    public void Start()
    {
        if (Interlocked.Exchange(ref _started, 1) == 0) Presence.Start(this);
    }

    /// <summary>Holds the channel's lock until the returned value is disposed.</summary>
    public ValueTask<ChannelLocks.Held> LockAsync(string channel) => Locks.LockAsync(channel);

    /// <summary>Counts one subscriber of this node fewer on the channel, under its lock.</summary>
    public async Task RemoveSubscriberAsync(string channel)
    {
        using var held = await LockAsync(channel).ConfigureAwait(false);
        held.RemoveSubscriber();
    }

    /// <summary>
    /// Appends to the store and, unless the key was a duplicate, sends the publication to every subscriber;
    /// queued behind the channel's earlier publishes of this node, so positions follow the order of the calls.
    /// </summary>
    /// <param name="channel">The channel.</param>
    /// <param name="data">The publication's data.</param>
    /// <param name="key">The publisher's deduplication key, or null.</param>
    /// <param name="inlineContinuation">See <see cref="ChannelSequencer.TryAppend"/>.</param>
    public Task<ChannelAppendResult> AppendAndFanOutAsync(string channel, byte[] data, string? key, bool inlineContinuation = false)
    {
        while (true)
        {
            // A sequencer that emptied its queue retires and leaves the map; a caller that found it just
            // before retries on a fresh one, so one channel never has two batches on their way from this node.
            var sequencer = _sequencers.GetOrAdd(channel, static (name, hub) => new ChannelSequencer(hub, name), this);
            if (sequencer.TryAppend(data, key, inlineContinuation) is { } appended) return appended;
        }
    }

    /// <summary>Removes a sequencer that retired (its queue is empty); called by the sequencer itself.</summary>
    internal void Retire(string channel, ChannelSequencer sequencer) =>
        _sequencers.TryRemove(new KeyValuePair<string, ChannelSequencer>(channel, sequencer));

    /// <summary>How many channels have publishes of this node queued or on their way (a sequencer each).</summary>
    internal int SequencerCount => _sequencers.Count;

    /// <summary>Sends a publication to the channel's subscribers on every node, in each form. Called in position order.</summary>
    internal void FanOut(string channel, ChannelPosition position, ReadOnlySpan<byte> data)
    {
        Server.Publish(ChannelForm.Json.Topic(channel), ChannelForm.Json.EncodePublication(channel, position, data), MessageKind.Text);
        Server.Publish(ChannelForm.Binary.Topic(channel), ChannelForm.Binary.EncodePublication(channel, position, data), MessageKind.Binary);
    }

    /// <summary>Sends a join or leave event to the channel's presence watchers on every node.</summary>
    public void PublishPresence(string channel, ServerMessage message)
    {
        Server.Publish(ChannelForm.Json.PresenceTopic(channel), ChannelForm.Json.Encode(message), MessageKind.Text);
        Server.Publish(ChannelForm.Binary.PresenceTopic(channel), ChannelForm.Binary.Encode(message), MessageKind.Binary);
    }

    /// <inheritdoc/>
    public async ValueTask<ChannelPosition> PublishJsonAsync(string channel, ReadOnlyMemory<byte> json, string? key = null)
    {
        ArgumentNullException.ThrowIfNull(channel);
        if (!RealtimeChannelsOptions.WithinProtocolLimit(channel)) throw new ArgumentException("a channel name is 1 to 256 UTF-8 bytes", nameof(channel));
        if (!ChannelJson.isValue(json.Span)) throw new ArgumentException("the data must be one JSON value", nameof(json));
        if (key is not null && !PublishKeys.isValidKey(key)) throw new ArgumentException("a key is 1 to 64 UTF-8 bytes", nameof(key));
        var result = await AppendAndFanOutAsync(channel, json.ToArray(), key).ConfigureAwait(false);
        return result.Position;
    }

    /// <inheritdoc/>
    public ValueTask<ChannelPosition> PublishAsync<T>(string channel, T data, string? key = null) =>
        PublishJsonAsync(channel, System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(data, WebJson), key);

    /// <inheritdoc/>
    public ValueTask<IReadOnlyList<PresenceMember>> GetMembersAsync(string channel) => Presence.GetMembersAsync(channel);

    /// <summary>How the app's values become JSON: web defaults (camelCase names).</summary>
    public static readonly System.Text.Json.JsonSerializerOptions WebJson = new(System.Text.Json.JsonSerializerDefaults.Web);

    /// <inheritdoc/>
    public void MembersLeft(string channel, IReadOnlyList<PresenceMember> members)
    {
        foreach (var member in members) PublishPresence(channel, ServerMessage.NewLeave(channel, member));
    }
}

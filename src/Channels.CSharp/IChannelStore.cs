using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// Where channels keep their history and get their positions: in this process
/// (<see cref="InMemoryChannelStore"/>) or shared by every node (Realtime.Channels.Redis).
/// Every member is asynchronous because a shared store is remote; the in-memory one completes synchronously.
/// </summary>
/// <remarks>
/// A channel's positions are assigned at one serialization point (<see cref="AppendAsync"/>): offsets
/// 1, 2, 3, ... of one epoch, with no gaps, so every subscriber on every node sees one order.
/// Retention (<see cref="RealtimeChannelsOptions.Retention"/>: count, bytes and age, whichever is
/// reached first) trims the oldest publications. A store that loses a channel's history (a restart of
/// an in-memory store, Redis data removed) starts a new epoch for it at offset 1.
/// </remarks>
public interface IChannelStore
{
    /// <summary>
    /// Appends a publication to <paramref name="channel"/> at its next position. When
    /// <paramref name="key"/> is not null and a publication of this channel with the same key is still
    /// remembered, nothing is appended: the result carries the position the key got first, with
    /// <see cref="ChannelAppendResult.Duplicate"/> set.
    /// </summary>
    /// <param name="channel">The channel's name.</param>
    /// <param name="data">The publication's data (a JSON value's UTF-8 text); the store keeps its own copy.</param>
    /// <param name="key">The publisher's deduplication key, or null for none.</param>
    /// <param name="cancellationToken">Cancels the wait (the append may still happen).</param>
    ValueTask<ChannelAppendResult> AppendAsync(string channel, ReadOnlyMemory<byte> data, string? key, CancellationToken cancellationToken = default);

    /// <summary>
    /// Appends several publications to <paramref name="channel"/>, in the order given, at consecutive
    /// positions as if each were appended by <see cref="AppendAsync"/> in turn (a key seen before, also
    /// earlier in the same list, appends nothing). The channels server batches what one channel's
    /// publishers send while a previous append is on its way, so that a remote store pays one round trip
    /// per batch, not per publication. The default appends one at a time; a store whose serialization
    /// point is remote appends the whole list in one step.
    /// </summary>
    /// <param name="channel">The channel's name.</param>
    /// <param name="publications">What to append, oldest first (at least one).</param>
    /// <param name="cancellationToken">Cancels the wait (the appends may still happen).</param>
    /// <returns>One result per publication, in the same order.</returns>
    async ValueTask<IReadOnlyList<ChannelAppendResult>> AppendManyAsync(string channel, IReadOnlyList<ChannelAppendRequest> publications, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(publications);
        var results = new ChannelAppendResult[publications.Count];
        for (var i = 0; i < results.Length; i++)
            results[i] = await AppendAsync(channel, publications[i].Data, publications[i].Key, cancellationToken).ConfigureAwait(false);
        return results;
    }

    /// <summary>
    /// Reads the publications that follow <paramref name="since"/>, oldest first, at most
    /// <paramref name="limit"/> of them. When <paramref name="since"/> names another epoch, or history
    /// was trimmed past it, the oldest publications still held are returned and
    /// <see cref="ChannelHistoryRead.Recovered"/> is false.
    /// </summary>
    /// <param name="channel">The channel's name.</param>
    /// <param name="since">The position of the last publication the reader has (offset 0: none).</param>
    /// <param name="limit">The most publications to return (at least 1).</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask<ChannelHistoryRead> ReadAsync(string channel, ChannelPosition since, int limit, CancellationToken cancellationToken = default);

    /// <summary>
    /// The channel's current position: its epoch and the offset of its latest publication (0 before
    /// the first). A channel never seen before gets its epoch here.
    /// </summary>
    /// <param name="channel">The channel's name.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask<ChannelPosition> GetPositionAsync(string channel, CancellationToken cancellationToken = default);
}

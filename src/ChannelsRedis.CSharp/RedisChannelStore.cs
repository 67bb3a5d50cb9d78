using System.Security.Cryptography;
using Microsoft.FSharp.Core;
using Realtime.Protocol;
using StackExchange.Redis;

namespace Realtime.Channels.Redis;

/// <summary>
/// Channel history in Redis, shared by every node: positions are assigned in Redis by one script run per
/// append or batch of appends (the channel's one serialization point), publications are kept in a Redis Stream (entry id
/// <c>&lt;offset&gt;-0</c>) trimmed by the retention's count, bytes and age (the core's
/// <see cref="ChannelHistory"/> rules, on Redis's clock), and the last <see cref="ChannelRetention.MaxKeys"/>
/// publish keys within <see cref="ChannelRetention.MaxAge"/> are remembered so that a retry on any node
/// takes effect once. Any node can recover a client that was on
/// any other, and a node restart loses nothing within retention.
/// </summary>
public sealed class RedisChannelStore : IChannelStore
{
    private readonly RedisChannelsConnection connection;
    private readonly ChannelRetention retention;
    private readonly RedisChannelsOptions options;

    internal RedisChannelStore(RedisChannelsConnection connection, ChannelRetention retention, RedisChannelsOptions options)
    {
        this.connection = connection;
        this.retention = retention;
        this.options = options;
    }

    /// <inheritdoc />
    public async ValueTask<ChannelAppendResult> AppendAsync(string channel, ReadOnlyMemory<byte> data, string? key, CancellationToken cancellationToken = default)
    {
        var results = await AppendManyAsync(channel, [new ChannelAppendRequest(data, key)], cancellationToken).ConfigureAwait(false);
        return results[0];
    }

    /// <summary>
    /// Appends the publications in one script run: one round trip, and one step of Redis (the channel's
    /// serialization point) for the whole batch, so its offsets are consecutive in the order given.
    /// </summary>
    /// <inheritdoc />
    public async ValueTask<IReadOnlyList<ChannelAppendResult>> AppendManyAsync(string channel, IReadOnlyList<ChannelAppendRequest> publications, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(publications);
        ArgumentOutOfRangeException.ThrowIfZero(publications.Count);
        var database = await connection.DatabaseAsync().ConfigureAwait(false);
        var arguments = new RedisValue[7 + 2 * publications.Count];
        arguments[0] = NewEpoch();
        arguments[1] = retention.MaxCount;
        arguments[2] = retention.MaxBytes;
        arguments[3] = Milliseconds(retention.MaxAge);
        arguments[4] = Milliseconds(options.KeyExpiry);
        arguments[5] = Milliseconds(retention.MaxAge);
        arguments[6] = retention.MaxKeys;
        for (var i = 0; i < publications.Count; i++)
        {
            arguments[7 + 2 * i] = publications[i].Data;
            arguments[8 + 2 * i] = publications[i].Key ?? "";
        }
        var result = (RedisResult[])(await database.ScriptEvaluateAsync(HistoryScripts.Append, connection.Keys.History(channel), arguments)
            .WaitAsync(cancellationToken).ConfigureAwait(false))!;
        var epoch = (string)result[0]!;
        var appended = new ChannelAppendResult[publications.Count];
        for (var i = 0; i < appended.Length; i++)
            appended[i] = new ChannelAppendResult(new ChannelPosition(epoch, (ulong)result[1 + 2 * i]), (long)result[2 + 2 * i] == 1);
        return appended;
    }

    /// <inheritdoc />
    public async ValueTask<ChannelHistoryRead> ReadAsync(string channel, ChannelPosition since, int limit, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(limit, 1);
        var read = await ReadScriptAsync(channel, since.Epoch ?? "", since.Offset, limit, cancellationToken).ConfigureAwait(false);
        var publications = new ChannelPublication[(read.Length - 3) / 2];
        for (var i = 0; i < publications.Length; i++)
            publications[i] = new ChannelPublication((ulong)read[3 + 2 * i], (byte[])read[4 + 2 * i]!);
        // Offsets have no gaps, so what the script returns describes the history as the core's window:
        // whatever lies between the reader's position and the first offset held was trimmed.
        var window = ChannelHistory.restore((string)read[0]!, (ulong)read[2], (ulong)read[1], 0);
        var plan = ChannelRecovery.plan(window, FSharpValueOption<ChannelPosition>.NewValueSome(since));
        return new ChannelHistoryRead(window.Position, publications, plan.Recovery.IsRecovered);
    }

    /// <inheritdoc />
    public async ValueTask<ChannelPosition> GetPositionAsync(string channel, CancellationToken cancellationToken = default)
    {
        var read = await ReadScriptAsync(channel, "", 0, 0, cancellationToken).ConfigureAwait(false);
        return new ChannelPosition((string)read[0]!, (ulong)read[1]);
    }

    /// <summary>
    /// The channel's position as Redis holds it, with one plain read (no script, no trim, no epoch set):
    /// null when the channel has no history. For frequent checks.
    /// </summary>
    internal async Task<ChannelPosition?> PeekPositionAsync(string channel, CancellationToken cancellationToken)
    {
        var database = await connection.DatabaseAsync().ConfigureAwait(false);
        var values = await database.HashGetAsync(connection.Keys.History(channel)[0], [HistoryScripts.EpochField, HistoryScripts.LastField]).WaitAsync(cancellationToken).ConfigureAwait(false);
        if (values[0].IsNull || values[1].IsNull) return null;
        return new ChannelPosition((string)values[0]!, (ulong)values[1]);
    }

    private async ValueTask<RedisResult[]> ReadScriptAsync(string channel, string sinceEpoch, ulong sinceOffset, int limit, CancellationToken cancellationToken)
    {
        var database = await connection.DatabaseAsync().ConfigureAwait(false);
        return (RedisResult[])(await database.ScriptEvaluateAsync(
            HistoryScripts.Read,
            connection.Keys.History(channel),
            [
                NewEpoch(), sinceEpoch, sinceOffset, limit,
                retention.MaxCount, retention.MaxBytes, Milliseconds(retention.MaxAge), Milliseconds(options.KeyExpiry),
            ]).WaitAsync(cancellationToken).ConfigureAwait(false))!;
    }

    /// <summary>A duration as the scripts take it: whole milliseconds, as the core's retention counts them.</summary>
    private static long Milliseconds(TimeSpan span) => Math.Max(0, (long)span.TotalMilliseconds);

    /// <summary>A candidate epoch: used only if the channel has none in Redis yet (the script keeps the first).</summary>
    private static string NewEpoch()
    {
        Span<byte> bytes = stackalloc byte[9];
        RandomNumberGenerator.Fill(bytes);
        return Convert.ToBase64String(bytes).Replace('+', '-').Replace('/', '_');
    }
}

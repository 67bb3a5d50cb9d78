using System.Collections.Concurrent;
using System.Text;
using Microsoft.Extensions.Logging;
using Realtime.Protocol;
using StackExchange.Redis;

namespace Realtime.Channels.Redis;

/// <summary>
/// Presence shared by every node through Redis: each channel's members are a Redis hash (client id to
/// node and information), each node keeps a heartbeat key with a time to live, and every node looks for
/// nodes whose heartbeat expired and removes their members, reporting each removed member once across
/// the cluster (<see cref="IChannelPresenceListener.MembersLeft"/>). A crashed node's members leave at
/// most <see cref="RedisChannelsOptions.HeartbeatTimeout"/> + <see cref="RedisChannelsOptions.SweepInterval"/>
/// after its last heartbeat.
/// </summary>
public sealed class RedisChannelPresence : IChannelPresence, IAsyncDisposable
{
    private readonly RedisChannelsConnection connection;
    private readonly RedisChannelsOptions options;
    private readonly ILogger logger;
    private readonly string node;
    private readonly byte[] nodePrefix;
    private readonly ConcurrentDictionary<(string Channel, string Client), PresenceMember> local = new();
    private readonly CancellationTokenSource stopping = new();
    private IChannelPresenceListener? listener;
    private Task loops = Task.CompletedTask;
    private bool beating;

    internal RedisChannelPresence(RedisChannelsConnection connection, RedisChannelsOptions options, string node, ILogger logger)
    {
        if (node.Contains('\n')) throw new ArgumentException("A node id has no line breaks.", nameof(node));
        this.connection = connection;
        this.options = options;
        this.node = node;
        this.logger = logger;
        nodePrefix = Encoding.UTF8.GetBytes(node + "\n");
    }

    /// <summary>This node's id, the owner of the members it joins.</summary>
    public string NodeId => node;

    /// <inheritdoc />
    public void Start(IChannelPresenceListener listener)
    {
        ArgumentNullException.ThrowIfNull(listener);
        if (Interlocked.CompareExchange(ref this.listener, listener, null) is not null)
            throw new InvalidOperationException("RedisChannelPresence is started once.");
        loops = Task.WhenAll(Task.Run(HeartbeatLoop), Task.Run(SweepLoop));
    }

    /// <inheritdoc />
    public async ValueTask<bool> JoinAsync(string channel, PresenceMember member, CancellationToken cancellationToken = default)
    {
        local[(channel, member.Client)] = member;
        var database = await connection.DatabaseAsync().ConfigureAwait(false);
        // The node's list first: if this node dies between the two, the sweep finds an entry with no member
        // and removes nothing; the other order could leave a member that nobody removes.
        await database.SetAddAsync(connection.Keys.NodeMembers(node), NodeEntry(channel, member.Client)).WaitAsync(cancellationToken).ConfigureAwait(false);
        return await database.HashSetAsync(connection.Keys.Presence(channel), member.Client, Value(member)).WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public async ValueTask<PresenceMember?> LeaveAsync(string channel, string client, CancellationToken cancellationToken = default)
    {
        local.TryRemove((channel, client), out _);
        var database = await connection.DatabaseAsync().ConfigureAwait(false);
        var removed = await RemoveAsync(database, channel, client, "").WaitAsync(cancellationToken).ConfigureAwait(false);
        await database.SetRemoveAsync(connection.Keys.NodeMembers(node), NodeEntry(channel, client)).WaitAsync(cancellationToken).ConfigureAwait(false);
        return removed;
    }

    /// <inheritdoc />
    public async ValueTask<IReadOnlyList<PresenceMember>> GetMembersAsync(string channel, CancellationToken cancellationToken = default)
    {
        var database = await connection.DatabaseAsync().ConfigureAwait(false);
        var entries = await database.HashGetAllAsync(connection.Keys.Presence(channel)).WaitAsync(cancellationToken).ConfigureAwait(false);
        var members = new List<PresenceMember>(entries.Length);
        foreach (var entry in entries)
            if (Member(entry.Name!, entry.Value) is { } member) members.Add(member);
        return members;
    }

    /// <summary>Stops the heartbeat and removes it from Redis, so that the other nodes remove this node's remaining members at once.</summary>
    public async ValueTask DisposeAsync()
    {
        await StopLoopsAsync().ConfigureAwait(false);
        try
        {
            var database = await connection.DatabaseAsync().ConfigureAwait(false);
            await database.KeyDeleteAsync(connection.Keys.Heartbeat(node)).ConfigureAwait(false);
        }
        catch (RedisException)
        {
        }
    }

    /// <summary>Stops the heartbeat and sweep and leaves everything in Redis as it is: what a crash does.</summary>
    internal async Task StopLoopsAsync()
    {
        if (!stopping.IsCancellationRequested) await stopping.CancelAsync().ConfigureAwait(false);
        try
        {
            await loops.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }

    private async Task HeartbeatLoop()
    {
        using var timer = new PeriodicTimer(options.HeartbeatInterval);
        do
        {
            try
            {
                await BeatAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                logger.LoopFailed(e, "presence heartbeat");
            }
        }
        while (await timer.WaitForNextTickAsync(stopping.Token).ConfigureAwait(false));
    }

    /// <summary>Renews this node's heartbeat; if it had expired, puts this node's members back.</summary>
    internal async Task BeatAsync()
    {
        var database = await connection.DatabaseAsync().ConfigureAwait(false);
        var previous = await database.StringSetAndGetAsync(connection.Keys.Heartbeat(node), 1, options.HeartbeatTimeout).ConfigureAwait(false);
        await database.SetAddAsync(connection.Keys.Nodes, node).ConfigureAwait(false);
        if (previous.IsNull && beating)
        {
            // Another node declared this one dead (it was paused or cut off for longer than the timeout)
            // and removed its members: they are still connected here, so they are members again.
            var members = local.ToArray();
            foreach (var ((channel, client), member) in members)
            {
                await database.SetAddAsync(connection.Keys.NodeMembers(node), NodeEntry(channel, client)).ConfigureAwait(false);
                await database.HashSetAsync(connection.Keys.Presence(channel), client, Value(member)).ConfigureAwait(false);
            }
            logger.HeartbeatLost(node, members.Length);
        }
        beating = true;
    }

    private async Task SweepLoop()
    {
        using var timer = new PeriodicTimer(options.SweepInterval);
        while (await timer.WaitForNextTickAsync(stopping.Token).ConfigureAwait(false))
        {
            try
            {
                await SweepAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                logger.LoopFailed(e, "presence sweep");
            }
        }
    }

    /// <summary>Removes the members of every node whose heartbeat expired, and reports them.</summary>
    internal async Task SweepAsync()
    {
        var database = await connection.DatabaseAsync().ConfigureAwait(false);
        foreach (var other in await database.SetMembersAsync(connection.Keys.Nodes).ConfigureAwait(false))
        {
            var dead = (string)other!;
            if (dead == node || await database.KeyExistsAsync(connection.Keys.Heartbeat(dead)).ConfigureAwait(false)) continue;
            var left = new Dictionary<string, List<PresenceMember>>();
            var count = 0;
            foreach (var entry in await database.SetMembersAsync(connection.Keys.NodeMembers(dead)).ConfigureAwait(false))
            {
                var (channel, client) = ParseNodeEntry(entry!);
                if (await RemoveAsync(database, channel, client, dead).ConfigureAwait(false) is { } member)
                {
                    if (!left.TryGetValue(channel, out var list)) left[channel] = list = [];
                    list.Add(member);
                    count++;
                }
            }
            await database.KeyDeleteAsync(connection.Keys.NodeMembers(dead)).ConfigureAwait(false);
            await database.SetRemoveAsync(connection.Keys.Nodes, dead).ConfigureAwait(false);
            if (count > 0) logger.DeadNodeRemoved(dead, count);
            foreach (var (channel, members) in left)
                listener?.MembersLeft(channel, members);
        }
    }

    private async Task<PresenceMember?> RemoveAsync(IDatabase database, string channel, string client, string ownerNode)
    {
        var value = await database.ScriptEvaluateAsync(PresenceScripts.Leave, [connection.Keys.Presence(channel)], [client, ownerNode]).ConfigureAwait(false);
        return value.IsNull ? null : Member(client, (RedisValue)value);
    }

    private RedisValue Value(PresenceMember member)
    {
        var info = member.Info.Json.Span;
        var bytes = new byte[nodePrefix.Length + info.Length];
        nodePrefix.CopyTo(bytes, 0);
        info.CopyTo(bytes.AsSpan(nodePrefix.Length));
        return bytes;
    }

    private static PresenceMember? Member(string client, RedisValue value)
    {
        var bytes = (byte[])value!;
        var newline = Array.IndexOf(bytes, (byte)'\n');
        if (newline < 0) return null;
        return new PresenceMember(client, ChannelData.OfBytes(bytes.AsMemory(newline + 1)));
    }

    private static string NodeEntry(string channel, string client) => $"{channel.Length}:{channel}{client}";

    private static (string Channel, string Client) ParseNodeEntry(string entry)
    {
        var colon = entry.IndexOf(':');
        var length = int.Parse(entry.AsSpan(0, colon));
        return (entry.Substring(colon + 1, length), entry[(colon + 1 + length)..]);
    }
}

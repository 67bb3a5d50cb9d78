using StackExchange.Redis;

namespace Realtime.Channels.Redis;

/// <summary>
/// The Redis key names. A channel's keys share the hash tag <c>{channel}</c> so that its scripts touch one
/// Redis Cluster slot; a node's keys share <c>{node}</c>.
/// </summary>
internal sealed class RedisChannelKeys(string prefix)
{
    private readonly string root = $"realtime:channels:{prefix}:";

    /// <summary>The history keys in the order <see cref="HistoryScripts"/> takes them: position hash, stream, publish keys, their times.</summary>
    public RedisKey[] History(string channel)
    {
        var tag = root + "{" + channel + "}:";
        return [tag + "position", tag + "stream", tag + "keys", tag + "key-times"];
    }

    /// <summary>The channel's members: client id to the node and the member's information.</summary>
    public RedisKey Presence(string channel) => root + "{" + channel + "}:presence";

    /// <summary>Every node that has announced itself, live or not yet swept.</summary>
    public RedisKey Nodes => root + "nodes";

    /// <summary>The node's heartbeat: present while the node lives.</summary>
    public RedisKey Heartbeat(string node) => root + "node:{" + node + "}:heartbeat";

    /// <summary>The node's members (channel and client id), so that they can be removed when it dies.</summary>
    public RedisKey NodeMembers(string node) => root + "node:{" + node + "}:members";
}

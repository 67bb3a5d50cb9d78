namespace Realtime.Channels.Redis;

/// <summary>
/// The Lua script of presence: a member is a field of the channel's hash (client id to
/// <c>&lt;node&gt;\n&lt;information&gt;</c>).
/// </summary>
internal static class PresenceScripts
{
    /// <summary>
    /// Removes a member and returns its value (nil when it was not a member). KEYS[1] the channel's
    /// presence hash; ARGV[1] the client id; ARGV[2] a node id, or '' for any: with a node, the member is
    /// removed only if it is that node's, so that removing a dead node's members touches nothing else.
    /// Atomic, so when several nodes remove the same member only one gets it (and announces the leave).
    /// </summary>
    public const string Leave = """
        local value = redis.call('HGET', KEYS[1], ARGV[1])
        if not value then return false end
        if ARGV[2] ~= '' and string.sub(value, 1, #ARGV[2] + 1) ~= ARGV[2] .. '\n' then return false end
        redis.call('HDEL', KEYS[1], ARGV[1])
        return value
        """;
}

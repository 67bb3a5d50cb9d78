using StackExchange.Redis;

namespace Realtime.Redis;

/// <summary>Settings of the Redis backplane (<c>AddRedisBackplane</c>).</summary>
public sealed class RedisBackplaneOptions
{
    /// <summary>
    /// A StackExchange.Redis configuration string, for example <c>127.0.0.1:6379</c> or
    /// <c>redis1:6379,password=secret</c>. Ignored when <see cref="ConfigurationOptions"/> is set.
    /// </summary>
    public string? Configuration { get; set; }

    /// <summary>
    /// The StackExchange.Redis configuration, when a string is not enough. It is copied before use;
    /// the backplane sets <c>AbortOnConnectFail = false</c> (start even while Redis is down, and keep
    /// trying) and <c>BacklogPolicy = FailFast</c> (a publish while Redis is away fails at once and is
    /// reported, instead of waiting in a queue and arriving late, out of step with later ones).
    /// </summary>
    public ConfigurationOptions? ConfigurationOptions { get; set; }

    /// <summary>
    /// Separates the clusters (or applications) that share one Redis: a topic's channel is
    /// <c>realtime:{ChannelPrefix}:{topic}</c>. Every server of one cluster must use the same prefix.
    /// Default <c>default</c>.
    /// </summary>
    public string ChannelPrefix { get; set; } = "default";

    /// <summary>
    /// This server's id in the cluster, carried in every envelope it sends so that it can ignore its
    /// own envelopes when Redis hands them back. Must differ between servers. Default: 16 random hex
    /// digits, new at each start.
    /// </summary>
    public string? NodeId { get; set; }

    /// <summary>
    /// How many publishes may wait for Redis in this server's outgoing queue; past it, publishes to
    /// other servers are dropped and reported like a lost connection. Default 65,536.
    /// </summary>
    public int MaxQueuedPublishes { get; set; } = 65_536;

    /// <summary>
    /// The least time between two warnings about publishes that could not reach the other servers, or
    /// about unreadable envelopes (each warning says how many there were since the last). Default 10 s.
    /// </summary>
    public TimeSpan WarningInterval { get; set; } = TimeSpan.FromSeconds(10);
}

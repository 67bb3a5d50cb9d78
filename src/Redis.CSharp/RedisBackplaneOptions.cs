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
    /// The most publishes to the other servers that this server holds until Redis answers them:
    /// those waiting in its outgoing queue and those handed to Redis and not yet acknowledged, counted
    /// together. Past it (Redis slow, or a burst faster than Redis takes it), publishes to the other
    /// servers are dropped and reported like a lost connection (<see cref="RedisBackplane.PublishFailureCount"/>,
    /// a rate-limited warning); local delivery goes on and <c>Publish</c> never waits. At least 1.
    /// Default 65,536.
    /// </summary>
    public int MaxPublishesInFlight { get; set; } = 65_536;

    /// <summary>
    /// The most bytes of publishes to the other servers that this server holds until Redis answers
    /// them, counted like <see cref="MaxPublishesInFlight"/> (queued and handed to Redis together), as
    /// envelope bytes: the payload as published (compressed or not) plus its topic, the node id and a
    /// few bytes. Past it, publishes are dropped and reported the same way, so the memory a slow Redis
    /// makes this server hold stays under it. A publish whose envelope alone is bigger never reaches
    /// the other servers: keep it above the largest message you publish. At least 1. Default 64 MiB.
    /// </summary>
    public long MaxPublishBytesInFlight { get; set; } = 64L * 1024 * 1024;

    /// <summary>Former name of <see cref="MaxPublishesInFlight"/>, which now also counts what Redis has not yet answered.</summary>
    [Obsolete("Use MaxPublishesInFlight: it bounds the outgoing queue and the publishes Redis has not yet answered together.")]
    public int MaxQueuedPublishes
    {
        get => MaxPublishesInFlight;
        set => MaxPublishesInFlight = value;
    }

    /// <summary>
    /// The least time between two warnings about publishes that could not reach the other servers, or
    /// about unreadable envelopes (each warning says how many there were since the last). Default 10 s.
    /// </summary>
    public TimeSpan WarningInterval { get; set; } = TimeSpan.FromSeconds(10);
}

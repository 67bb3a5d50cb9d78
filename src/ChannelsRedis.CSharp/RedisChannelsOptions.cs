using StackExchange.Redis;

namespace Realtime.Channels.Redis;

/// <summary>
/// Settings of channel history and presence in Redis (<c>AddRealtimeChannels().AddRedis(...)</c>).
/// Retention (count, bytes, age, publish keys) and the node id come from <see cref="RealtimeChannelsOptions"/>.
/// </summary>
public sealed class RedisChannelsOptions
{
    /// <summary>
    /// A StackExchange.Redis configuration string, for example <c>127.0.0.1:6379</c>. Ignored when
    /// <see cref="ConfigurationOptions"/> is set.
    /// </summary>
    public string? Configuration { get; set; }

    /// <summary>
    /// The StackExchange.Redis configuration, when a string is not enough. It is copied before use, with
    /// <c>AbortOnConnectFail = false</c> (start while Redis is down and keep trying) and
    /// <c>BacklogPolicy = FailFast</c> (a publish while Redis is away fails at once, so its client retries
    /// it with its key, instead of taking effect late).
    /// </summary>
    public ConfigurationOptions? ConfigurationOptions { get; set; }

    /// <summary>
    /// Separates the clusters (or applications) that share one Redis: every key starts with
    /// <c>realtime:channels:{KeyPrefix}:</c>. Every node of one cluster must use the same prefix. No
    /// braces (they would change Redis Cluster's hash slots). Default <c>default</c>.
    /// </summary>
    public string KeyPrefix { get; set; } = "default";

    /// <summary>
    /// How long a channel's keys (position, history, publish keys) stay in Redis after its last publish or
    /// read. When they expire the channel starts a new epoch: subscribers that come back later are told
    /// <c>not-recovered</c>. Keep it longer than <see cref="ChannelRetention.MaxAge"/>. Default 1 day.
    /// </summary>
    public TimeSpan KeyExpiry { get; set; } = TimeSpan.FromDays(1);

    /// <summary>
    /// How long a node's heartbeat lives in Redis. A node that stops renewing it (crashed, or cut off from
    /// Redis) is declared dead when it expires, and its presence members leave. Default 5 s.
    /// </summary>
    public TimeSpan HeartbeatTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>How often a node renews its heartbeat. Default 1 s; less than <see cref="HeartbeatTimeout"/>.</summary>
    public TimeSpan HeartbeatInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// How often a node looks for dead nodes and removes their presence members. A crashed node's members
    /// leave at most <see cref="HeartbeatTimeout"/> + <see cref="SweepInterval"/> after its last heartbeat
    /// (6 s with the defaults), plus Redis round trips. Default 1 s.
    /// </summary>
    public TimeSpan SweepInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// How often a node compares, for each channel with subscribers on it, the last offset in Redis with
    /// the last publication it delivered, to fill what Redis pub/sub dropped on a channel that then stayed
    /// quiet (a delivery missing for a whole interval is filled from history). Default 1 s.
    /// </summary>
    public TimeSpan GapCheckInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Every problem of these settings (empty when they are valid), one sentence each naming the option and its range.</summary>
    internal List<string> Problems()
    {
        var problems = new List<string>();
        void Check(bool ok, string message)
        {
            if (!ok) problems.Add("RedisChannelsOptions." + message);
        }

        Check(Configuration is not null || ConfigurationOptions is not null, "Configuration or ConfigurationOptions must be set.");
        Check(!string.IsNullOrEmpty(KeyPrefix) && KeyPrefix.IndexOfAny(['{', '}']) < 0, $"KeyPrefix is \"{KeyPrefix}\"; it must be non-empty and without braces.");
        Check(KeyExpiry >= TimeSpan.FromSeconds(1), $"KeyExpiry is {KeyExpiry}; it must be at least 1 s.");
        Check(HeartbeatInterval >= TimeSpan.FromMilliseconds(10), $"HeartbeatInterval is {HeartbeatInterval}; it must be at least 10 ms.");
        Check(HeartbeatTimeout > HeartbeatInterval, $"HeartbeatTimeout is {HeartbeatTimeout}; it must be longer than HeartbeatInterval ({HeartbeatInterval}).");
        Check(SweepInterval >= TimeSpan.FromMilliseconds(10), $"SweepInterval is {SweepInterval}; it must be at least 10 ms.");
        Check(GapCheckInterval >= TimeSpan.FromMilliseconds(10), $"GapCheckInterval is {GapCheckInterval}; it must be at least 10 ms.");
        return problems;
    }

    /// <summary>Throws <see cref="Microsoft.Extensions.Options.OptionsValidationException"/> naming every problem.</summary>
    internal void Validate()
    {
        var problems = Problems();
        if (problems.Count > 0)
            throw new Microsoft.Extensions.Options.OptionsValidationException(nameof(RedisChannelsOptions), typeof(RedisChannelsOptions), problems);
    }
}

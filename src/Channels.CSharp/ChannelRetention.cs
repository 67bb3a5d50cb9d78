using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// How much of each channel's history is kept: the oldest publications are trimmed as soon as any one
/// bound is passed (the core's <see cref="ChannelHistory"/> rules). A client that comes back after its
/// position was trimmed is told (<c>not-recovered</c>). Publish keys are remembered for the last
/// <see cref="MaxKeys"/> publishes within <see cref="MaxAge"/>.
/// </summary>
public sealed class ChannelRetention
{
    /// <summary>The most publications kept per channel. Default 1,000.</summary>
    public int MaxCount { get; set; } = 1_000;

    /// <summary>The most bytes of data kept per channel (the publications' data only). Default 4 MiB.</summary>
    public long MaxBytes { get; set; } = 4 << 20;

    /// <summary>How long a publication (and a publish key) is kept. Default 5 minutes.</summary>
    public TimeSpan MaxAge { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>The most publish keys remembered per channel for deduplication. Default 1,000.</summary>
    public int MaxKeys { get; set; } = 1_000;

    /// <summary>The bounds as the core's value (age in milliseconds).</summary>
    public ChannelHistory.Retention ToCore() => new(MaxCount, MaxBytes, (long)MaxAge.TotalMilliseconds);
}

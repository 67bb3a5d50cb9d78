namespace Realtime.Channels;

/// <summary>
/// How much of each channel's history is kept: the oldest publications are trimmed as soon as any one
/// bound is passed. A client that comes back after its position was trimmed is told (<c>not-recovered</c>).
/// </summary>
public sealed class ChannelRetention
{
    /// <summary>The most publications kept per channel. Default 1,000.</summary>
    public int MaxCount { get; set; } = 1_000;

    /// <summary>The most bytes of data kept per channel (the publications' data only). Default 1 MiB.</summary>
    public long MaxBytes { get; set; } = 1 << 20;

    /// <summary>How long a publication is kept. Default 5 minutes.</summary>
    public TimeSpan MaxAge { get; set; } = TimeSpan.FromMinutes(5);
}

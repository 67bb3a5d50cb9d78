using System.Text;

namespace Realtime.Channels;

/// <summary>The channels server's settings (<c>AddRealtimeChannels</c>), shared by every channels endpoint and the store.</summary>
public sealed class RealtimeChannelsOptions
{
    /// <summary>How much history each channel keeps (count, bytes, age).</summary>
    public ChannelRetention Retention { get; set; } = new();

    /// <summary>The most channels one connection is subscribed to at once; past it a subscribe gets <c>rate-limited</c>. Default 100.</summary>
    public int MaxChannelsPerConnection { get; set; } = 100;

    /// <summary>The default of <see cref="MaxChannels"/>: 10,000.</summary>
    public const int DefaultMaxChannels = 10_000;

    /// <summary>
    /// The most channels the in-memory store holds on this node (with their history, epoch and publish
    /// keys); a subscribe or publish to a channel it does not hold yet gets <c>too-many-channels</c> until
    /// idle channels (nothing retained, no subscriber on this node) are forgotten. A shared store
    /// (Realtime.Channels.Redis) keeps its channels in Redis and ignores it. Default 10,000.
    /// </summary>
    public int MaxChannels { get; set; } = DefaultMaxChannels;

    /// <summary>The largest data of a publish or request, in UTF-8 bytes; larger gets <c>too-large</c>. Default 64 KiB.</summary>
    public int MaxDataBytes { get; set; } = 64 << 10;

    /// <summary>
    /// Which channel names exist; others get <c>unknown-channel</c>. Names are 1 to 256 UTF-8 bytes
    /// whatever the rule says (the protocol's limit). Default: any name without control characters.
    /// </summary>
    public Func<string, bool> ChannelNameRule { get; set; } = DefaultChannelNameRule;

    /// <summary>
    /// The most publishes of one connection that are appended and not yet acknowledged at once. A
    /// connection's publishes are not awaited one by one: while earlier ones are on their way to the store
    /// (a round trip to Redis), the next are read and queued behind them, and acknowledged in order. Past
    /// this many the connection is not read further until one is acknowledged, so a flooding client cannot
    /// grow server memory. Other messages (subscribe, presence, requests) wait until the connection's
    /// publishes before them are acknowledged. Default 64.
    /// </summary>
    public int MaxPublishesInFlight { get; set; } = 64;

    /// <summary>This node's name in client ids (<c>welcome</c>, presence). Default: random per start; must differ between nodes.</summary>
    public string NodeId { get; set; } = Convert.ToHexStringLower(Guid.NewGuid().ToByteArray().AsSpan(0, 4));

    /// <summary>The default <see cref="ChannelNameRule"/>: no control characters.</summary>
    /// <param name="channel">The name.</param>
    public static bool DefaultChannelNameRule(string channel)
    {
        foreach (var c in channel)
            if (char.IsControl(c)) return false;
        return true;
    }

    internal static bool WithinProtocolLimit(string channel) =>
        channel.Length > 0 && Encoding.UTF8.GetByteCount(channel) <= 256;
}

namespace Realtime.Channels;

/// <summary>
/// How publications and presence events reach subscribers on every node: the channels server encodes
/// each one once per form (JSON text, binary) and publishes the frame through
/// <see cref="IRealtimeServer.Publish(string, ReadOnlySpan{byte}, Realtime.Protocol.MessageKind, bool)"/>
/// to the topic of its channel and form, so the server frames it once for every local subscriber and a
/// backplane (Realtime.Redis) carries it to the other nodes unchanged. A connection is subscribed to
/// the topic of its form. Clients check positions (a lower offset is a duplicate, a higher one a gap
/// they recover from history), so a delivery the backplane drops is found and filled.
/// </summary>
public static class ChannelTopics
{
    /// <summary>The longest topic name these make: a channel name's 256 UTF-8 bytes plus the prefix.</summary>
    public const int MaxTopicLength = 256 + 8;

    /// <summary>The topic of a channel's publications in the JSON form.</summary>
    /// <param name="channel">The channel's name.</param>
    public static string Json(string channel) => "ch:j:" + channel;

    /// <summary>The topic of a channel's publications in the binary form.</summary>
    /// <param name="channel">The channel's name.</param>
    public static string Binary(string channel) => "ch:b:" + channel;

    /// <summary>The topic of a channel's join and leave events in the JSON form.</summary>
    /// <param name="channel">The channel's name.</param>
    public static string PresenceJson(string channel) => "cp:j:" + channel;

    /// <summary>The topic of a channel's join and leave events in the binary form.</summary>
    /// <param name="channel">The channel's name.</param>
    public static string PresenceBinary(string channel) => "cp:b:" + channel;
}

using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// One of the subprotocol's two forms (docs/channels-protocol.md, Negotiation): how a connection's
/// messages are read and written, and which frames and topics it uses.
/// </summary>
internal sealed class ChannelForm
{
    public static readonly ChannelForm Json = new(ChannelSubprotocol.Json, MessageKind.Text, ChannelTopics.Json, ChannelTopics.PresenceJson);
    public static readonly ChannelForm Binary = new(ChannelSubprotocol.Binary, MessageKind.Binary, ChannelTopics.Binary, ChannelTopics.PresenceBinary);

    private readonly Func<string, string> _topic;
    private readonly Func<string, string> _presenceTopic;

    private ChannelForm(string subprotocol, MessageKind kind, Func<string, string> topic, Func<string, string> presenceTopic)
    {
        Subprotocol = subprotocol;
        Kind = kind;
        _topic = topic;
        _presenceTopic = presenceTopic;
    }

    public string Subprotocol { get; }

    public MessageKind Kind { get; }

    public static ChannelForm? Of(string? subprotocol) => subprotocol switch
    {
        ChannelSubprotocol.Json => Json,
        ChannelSubprotocol.Binary => Binary,
        _ => null,
    };

    public string Topic(string channel) => _topic(channel);

    public string PresenceTopic(string channel) => _presenceTopic(channel);

    public bool TryDecode(ReadOnlyMemory<byte> bytes, out ClientMessage message)
    {
        var decoded = Kind == MessageKind.Text ? ChannelJson.decodeClient(bytes) : ChannelBinary.decodeClient(bytes);
        message = decoded.IsOk ? decoded.ResultValue : null!;
        return decoded.IsOk;
    }

    public byte[] Encode(ServerMessage message) =>
        Kind == MessageKind.Text ? ChannelJson.encodeServer(message) : ChannelBinary.encodeServer(message);

    /// <summary>A publication's frame, encoded from its parts.</summary>
    public byte[] EncodePublication(string channel, ChannelPosition position, ReadOnlySpan<byte> data) =>
        Kind == MessageKind.Text ? ChannelJson.encodePublication(channel, position, data) : ChannelBinary.encodePublication(channel, position, data);
}

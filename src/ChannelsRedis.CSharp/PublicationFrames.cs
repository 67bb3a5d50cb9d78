using System.Buffers;
using System.Text;
using System.Text.Json;
using Realtime.Protocol;

namespace Realtime.Channels.Redis;

/// <summary>
/// The <c>pub</c> message of docs/channels-protocol.md in its two forms, for the node-side gap filler:
/// reading a frame's channel and position without decoding the rest (any other message is not a
/// publication), and writing one. The binary writer stays here until the core's ChannelBinary is merged.
/// </summary>
internal static class PublicationFrames
{
    private const byte BinaryPublicationKind = 67;

    /// <summary>The channel and position of a publication frame; false for any other message (never throws).</summary>
    public static bool TryReadPosition(ReadOnlySpan<byte> frame, bool binary, out string channel, out ChannelPosition position)
    {
        channel = "";
        position = default;
        try
        {
            return binary ? TryReadBinary(frame, out channel, out position) : TryReadJson(frame, out channel, out position);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentException or FormatException)
        {
            return false;
        }
    }

    /// <summary>The frame of a publication: JSON text (the core's encoder) or binary.</summary>
    public static byte[] Write(string channel, ChannelPosition position, ReadOnlySpan<byte> data, bool binary) =>
        binary ? WriteBinary(channel, position, data) : ChannelJson.encodePublication(channel, position, data);

    private static bool TryReadJson(ReadOnlySpan<byte> frame, out string channel, out ChannelPosition position)
    {
        channel = "";
        position = default;
        var reader = new Utf8JsonReader(frame);
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject) return false;
        string? type = null, epoch = null, name = null;
        ulong offset = 0;
        var hasOffset = false;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            var property = reader.GetString();
            if (!reader.Read()) return false;
            switch (property)
            {
                case "type" when reader.TokenType == JsonTokenType.String: type = reader.GetString(); break;
                case "channel" when reader.TokenType == JsonTokenType.String: name = reader.GetString(); break;
                case "epoch" when reader.TokenType == JsonTokenType.String: epoch = reader.GetString(); break;
                case "offset" when reader.TokenType == JsonTokenType.Number: hasOffset = reader.TryGetUInt64(out offset); break;
                default: reader.Skip(); break;
            }
        }
        if (type != "pub" || name is null || epoch is null || !hasOffset) return false;
        channel = name;
        position = new ChannelPosition(epoch, offset);
        return true;
    }

    private static bool TryReadBinary(ReadOnlySpan<byte> frame, out string channel, out ChannelPosition position)
    {
        channel = "";
        position = default;
        if (frame.IsEmpty || frame[0] != BinaryPublicationKind) return false;
        var rest = frame[1..];
        if (!TryReadString(ref rest, out var name) || !TryReadString(ref rest, out var epoch) || !TryReadVarint(ref rest, out var offset)) return false;
        channel = name;
        position = new ChannelPosition(epoch, offset);
        return true;
    }

    private static bool TryReadVarint(ref ReadOnlySpan<byte> bytes, out ulong value)
    {
        value = 0;
        for (var i = 0; i < 10 && i < bytes.Length; i++)
        {
            value |= (ulong)(bytes[i] & 0x7F) << (7 * i);
            if ((bytes[i] & 0x80) == 0)
            {
                bytes = bytes[(i + 1)..];
                return true;
            }
        }
        return false;
    }

    private static bool TryReadString(ref ReadOnlySpan<byte> bytes, out string value)
    {
        value = "";
        if (!TryReadVarint(ref bytes, out var length) || length > (ulong)bytes.Length) return false;
        value = Encoding.UTF8.GetString(bytes[..(int)length]);
        bytes = bytes[(int)length..];
        return true;
    }

    private static byte[] WriteBinary(string channel, ChannelPosition position, ReadOnlySpan<byte> data)
    {
        var buffer = new ArrayBufferWriter<byte>(data.Length + channel.Length + 32);
        buffer.Write([BinaryPublicationKind]);
        WriteString(buffer, channel);
        WriteString(buffer, position.Epoch);
        WriteVarint(buffer, position.Offset);
        WriteVarint(buffer, (ulong)data.Length);
        buffer.Write(data);
        return buffer.WrittenSpan.ToArray();
    }

    private static void WriteString(ArrayBufferWriter<byte> buffer, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        WriteVarint(buffer, (ulong)bytes.Length);
        buffer.Write(bytes);
    }

    private static void WriteVarint(ArrayBufferWriter<byte> buffer, ulong value)
    {
        Span<byte> bytes = stackalloc byte[10];
        var length = 0;
        do
        {
            var b = (byte)(value & 0x7F);
            value >>= 7;
            bytes[length++] = value == 0 ? b : (byte)(b | 0x80);
        }
        while (value != 0);
        buffer.Write(bytes[..length]);
    }
}

using System.Buffers;
using System.Text;
using Microsoft.FSharp.Core;
using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// The binary form of docs/channels-protocol.md: a kind byte, then unsigned LEB128 varints and
/// length-prefixed strings and data. Every truncation and every trailing byte is an error.
/// </summary>
internal static class BinaryChannelCodec
{
    private static readonly UTF8Encoding StrictUtf8 = new(false, true);

    /// <summary>Reads one client message; false when it is not a valid one (never throws).</summary>
    public static bool TryDecode(ReadOnlyMemory<byte> bytes, out ClientMessage message)
    {
        message = null!;
        var at = 0;
        var span = bytes.Span;
        if (span.Length == 0) return false;
        var kind = span[at++];
        if (!TryVarint(span, ref at, out var id) || id is 0 or > uint.MaxValue) return false;
        string? channel, text;
        ReadOnlyMemory<byte> data;
        switch (kind)
        {
            case 1:
                if (!TryString(span, ref at, out channel) || at >= span.Length) return false;
                var flags = span[at++];
                if ((flags & ~3) != 0) return false;
                var since = FSharpValueOption<ChannelPosition>.ValueNone;
                if ((flags & 1) != 0)
                {
                    if (!TryString(span, ref at, out var epoch) || !TryVarint(span, ref at, out var offset)) return false;
                    since = FSharpValueOption<ChannelPosition>.NewValueSome(new ChannelPosition(epoch!, offset));
                }
                message = ClientMessage.NewSubscribe((uint)id, channel!, since, (flags & 2) != 0);
                break;
            case 2:
                if (!TryString(span, ref at, out channel)) return false;
                message = ClientMessage.NewUnsubscribe((uint)id, channel!);
                break;
            case 3:
                if (!TryString(span, ref at, out channel) || !TryString(span, ref at, out text) || !TryData(bytes, ref at, out data)) return false;
                message = ClientMessage.NewPublish((uint)id, channel!, text!, ChannelData.OfBytes(data));
                break;
            case 4:
                if (!TryString(span, ref at, out channel)) return false;
                message = ClientMessage.NewPresenceQuery((uint)id, channel!);
                break;
            case 5:
                if (!TryString(span, ref at, out text) || !TryData(bytes, ref at, out data)) return false;
                message = ClientMessage.NewRequest((uint)id, text!, ChannelData.OfBytes(data));
                break;
            default:
                return false;
        }
        return at == span.Length;
    }

    private static bool TryVarint(ReadOnlySpan<byte> span, ref int at, out ulong value)
    {
        value = 0;
        for (var shift = 0; shift < 64; shift += 7)
        {
            if (at >= span.Length) return false;
            var b = span[at++];
            if (shift == 63 && b > 1) return false;
            value |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return true;
        }
        return false;
    }

    private static bool TryLength(ReadOnlySpan<byte> span, ref int at, out int length)
    {
        length = 0;
        if (!TryVarint(span, ref at, out var value) || value > (ulong)(span.Length - at)) return false;
        length = (int)value;
        return true;
    }

    private static bool TryString(ReadOnlySpan<byte> span, ref int at, out string? text)
    {
        text = null;
        if (!TryLength(span, ref at, out var length)) return false;
        try
        {
            text = StrictUtf8.GetString(span.Slice(at, length));
        }
        catch (DecoderFallbackException)
        {
            return false;
        }
        at += length;
        return true;
    }

    private static bool TryData(ReadOnlyMemory<byte> bytes, ref int at, out ReadOnlyMemory<byte> data)
    {
        data = default;
        if (!TryLength(bytes.Span, ref at, out var length)) return false;
        data = bytes.Slice(at, length);
        at += length;
        return ChannelJson.isValue(data.Span);
    }

    /// <summary>Writes one server message in the binary form.</summary>
    public static byte[] Encode(ServerMessage message)
    {
        var buffer = new ArrayBufferWriter<byte>(64);
        switch (message)
        {
            case ServerMessage.Welcome m: Kind(buffer, 64); Varint(buffer, (ulong)m.version); String(buffer, m.client); break;
            case ServerMessage.Subscribed m:
                Kind(buffer, 65); Varint(buffer, m.id); String(buffer, m.channel); Position(buffer, m.position);
                Varint(buffer, m.recovery.IsFresh ? 0UL : m.recovery.IsRecovered ? 1UL : 2UL);
                break;
            case ServerMessage.Unsubscribed m: Kind(buffer, 66); Varint(buffer, m.id); String(buffer, m.channel); break;
            case ServerMessage.Publication m: Kind(buffer, 67); String(buffer, m.channel); Position(buffer, m.position); Data(buffer, m.data); break;
            case ServerMessage.Ack m: Kind(buffer, 68); Varint(buffer, m.id); String(buffer, m.channel); Position(buffer, m.position); break;
            case ServerMessage.Presence m:
                Kind(buffer, 69); Varint(buffer, m.id); String(buffer, m.channel); Varint(buffer, (ulong)m.members.Length);
                foreach (var member in m.members) { String(buffer, member.Client); Data(buffer, member.Info); }
                break;
            case ServerMessage.Join m: Kind(buffer, 70); String(buffer, m.channel); String(buffer, m.memberInfo.Client); Data(buffer, m.memberInfo.Info); break;
            case ServerMessage.Leave m: Kind(buffer, 71); String(buffer, m.channel); String(buffer, m.memberInfo.Client); Data(buffer, m.memberInfo.Info); break;
            case ServerMessage.Response m: Kind(buffer, 72); Varint(buffer, m.id); Data(buffer, m.data); break;
            case ServerMessage.Error m: Kind(buffer, 73); Varint(buffer, m.id); String(buffer, m.code.Code); String(buffer, m.message); break;
        }
        return buffer.WrittenSpan.ToArray();
    }

    private static void Kind(ArrayBufferWriter<byte> buffer, byte kind)
    {
        buffer.GetSpan(1)[0] = kind;
        buffer.Advance(1);
    }

    private static void Varint(ArrayBufferWriter<byte> buffer, ulong value)
    {
        var span = buffer.GetSpan(10);
        var at = 0;
        while (value >= 0x80)
        {
            span[at++] = (byte)(value | 0x80);
            value >>= 7;
        }
        span[at++] = (byte)value;
        buffer.Advance(at);
    }

    private static void String(ArrayBufferWriter<byte> buffer, string text)
    {
        var length = Encoding.UTF8.GetByteCount(text);
        Varint(buffer, (ulong)length);
        Encoding.UTF8.GetBytes(text, buffer.GetSpan(length));
        buffer.Advance(length);
    }

    private static void Data(ArrayBufferWriter<byte> buffer, ChannelData data)
    {
        Varint(buffer, (ulong)data.Json.Length);
        buffer.Write(data.Json.Span);
    }

    private static void Position(ArrayBufferWriter<byte> buffer, ChannelPosition position)
    {
        String(buffer, position.Epoch);
        Varint(buffer, position.Offset);
    }
}

using System.Buffers;
using System.Text;
using System.Text.Json;
using Microsoft.FSharp.Core;
using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// The JSON form of docs/channels-protocol.md: client messages read, server messages written.
/// <c>data</c> is kept as the exact bytes the sender wrote.
/// </summary>
internal static class JsonChannelCodec
{
    private static readonly JsonWriterOptions WriterOptions = new() { SkipValidation = true };

    /// <summary>Reads one client message; false when it is not a valid one (never throws).</summary>
    public static bool TryDecode(ReadOnlyMemory<byte> json, out ClientMessage message)
    {
        message = null!;
        try
        {
            return TryRead(json, out message);
        }
        catch (JsonException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }

    private static bool TryRead(ReadOnlyMemory<byte> json, out ClientMessage message)
    {
        message = null!;
        var reader = new Utf8JsonReader(json.Span, new JsonReaderOptions { MaxDepth = 64 });
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject) return false;
        string? type = null, channel = null, key = null, method = null, epoch = null;
        long id = -1;
        ulong offset = 0;
        bool hasSince = false, presence = false, hasData = false;
        ReadOnlyMemory<byte> data = default;
        while (reader.Read())
        {
            if (reader.TokenType == JsonTokenType.EndObject) break;
            if (reader.TokenType != JsonTokenType.PropertyName) return false;
            var name = reader.GetString();
            if (!reader.Read()) return false;
            switch (name)
            {
                case "type": if (reader.TokenType != JsonTokenType.String) return false; type = reader.GetString(); break;
                case "id": if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out id)) return false; break;
                case "channel": if (reader.TokenType != JsonTokenType.String) return false; channel = reader.GetString(); break;
                case "key": if (reader.TokenType != JsonTokenType.String) return false; key = reader.GetString(); break;
                case "method": if (reader.TokenType != JsonTokenType.String) return false; method = reader.GetString(); break;
                case "presence":
                    if (reader.TokenType is not (JsonTokenType.True or JsonTokenType.False)) return false;
                    presence = reader.GetBoolean();
                    break;
                case "since":
                    if (reader.TokenType == JsonTokenType.Null) break;
                    if (!TryReadPosition(ref reader, out epoch, out offset)) return false;
                    hasSince = true;
                    break;
                case "data":
                    var start = (int)reader.TokenStartIndex;
                    reader.Skip();
                    data = json[start..(int)reader.BytesConsumed];
                    hasData = true;
                    break;
                default:
                    reader.Skip();
                    break;
            }
        }
        if (reader.TokenType != JsonTokenType.EndObject || reader.Read()) return false;
        if (id is < 1 or > uint.MaxValue || type is null) return false;
        var requestId = (uint)id;
        switch (type)
        {
            case "subscribe" when channel is not null:
                message = ClientMessage.NewSubscribe(requestId, channel,
                    hasSince ? FSharpValueOption<ChannelPosition>.NewValueSome(new ChannelPosition(epoch!, offset)) : FSharpValueOption<ChannelPosition>.ValueNone, presence);
                return true;
            case "unsubscribe" when channel is not null:
                message = ClientMessage.NewUnsubscribe(requestId, channel);
                return true;
            case "publish" when channel is not null && key is not null && hasData:
                message = ClientMessage.NewPublish(requestId, channel, key, ChannelData.OfBytes(data));
                return true;
            case "presence" when channel is not null:
                message = ClientMessage.NewPresenceQuery(requestId, channel);
                return true;
            case "request" when method is not null:
                message = ClientMessage.NewRequest(requestId, method, hasData ? ChannelData.OfBytes(data) : ChannelData.Null);
                return true;
            default:
                return false;
        }
    }

    private static bool TryReadPosition(ref Utf8JsonReader reader, out string? epoch, out ulong offset)
    {
        epoch = null;
        offset = 0;
        var hasOffset = false;
        if (reader.TokenType != JsonTokenType.StartObject) return false;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            var name = reader.GetString();
            if (!reader.Read()) return false;
            if (name == "epoch" && reader.TokenType == JsonTokenType.String) epoch = reader.GetString();
            else if (name == "offset" && reader.TokenType == JsonTokenType.Number && reader.TryGetUInt64(out offset)) hasOffset = true;
            else if (name is "epoch" or "offset") return false;
            else reader.Skip();
        }
        return epoch is not null && hasOffset;
    }

    /// <summary>Writes one server message as JSON text.</summary>
    public static byte[] Encode(ServerMessage message)
    {
        var buffer = new ArrayBufferWriter<byte>(128);
        using (var writer = new Utf8JsonWriter(buffer, WriterOptions))
        {
            writer.WriteStartObject();
            switch (message)
            {
                case ServerMessage.Welcome m:
                    writer.WriteString("type", "welcome");
                    writer.WriteNumber("version", m.version);
                    writer.WriteString("client", m.client);
                    break;
                case ServerMessage.Subscribed m:
                    writer.WriteString("type", "subscribed");
                    writer.WriteNumber("id", m.id);
                    writer.WriteString("channel", m.channel);
                    WritePosition(writer, m.position);
                    writer.WriteString("recovery", m.recovery.IsFresh ? "fresh" : m.recovery.IsRecovered ? "recovered" : "not-recovered");
                    break;
                case ServerMessage.Unsubscribed m:
                    writer.WriteString("type", "unsubscribed");
                    writer.WriteNumber("id", m.id);
                    writer.WriteString("channel", m.channel);
                    break;
                case ServerMessage.Publication m:
                    writer.WriteString("type", "pub");
                    writer.WriteString("channel", m.channel);
                    WritePosition(writer, m.position);
                    WriteData(writer, m.data);
                    break;
                case ServerMessage.Ack m:
                    writer.WriteString("type", "ack");
                    writer.WriteNumber("id", m.id);
                    writer.WriteString("channel", m.channel);
                    WritePosition(writer, m.position);
                    break;
                case ServerMessage.Presence m:
                    writer.WriteString("type", "presence");
                    writer.WriteNumber("id", m.id);
                    writer.WriteString("channel", m.channel);
                    writer.WriteStartArray("members");
                    foreach (var member in m.members) WriteMember(writer, member);
                    writer.WriteEndArray();
                    break;
                case ServerMessage.Join m:
                    writer.WriteString("type", "join");
                    writer.WriteString("channel", m.channel);
                    writer.WritePropertyName("member");
                    WriteMember(writer, m.memberInfo);
                    break;
                case ServerMessage.Leave m:
                    writer.WriteString("type", "leave");
                    writer.WriteString("channel", m.channel);
                    writer.WritePropertyName("member");
                    WriteMember(writer, m.memberInfo);
                    break;
                case ServerMessage.Response m:
                    writer.WriteString("type", "response");
                    writer.WriteNumber("id", m.id);
                    WriteData(writer, m.data);
                    break;
                case ServerMessage.Error m:
                    writer.WriteString("type", "error");
                    writer.WriteNumber("id", m.id);
                    writer.WriteString("code", m.code.Code);
                    writer.WriteString("message", m.message);
                    break;
            }
            writer.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    private static void WritePosition(Utf8JsonWriter writer, ChannelPosition position)
    {
        writer.WriteString("epoch", position.Epoch);
        writer.WriteNumber("offset", position.Offset);
    }

    private static void WriteData(Utf8JsonWriter writer, ChannelData data)
    {
        writer.WritePropertyName("data");
        writer.WriteRawValue(data.Json.Span, skipInputValidation: true);
    }

    private static void WriteMember(Utf8JsonWriter writer, PresenceMember member)
    {
        writer.WriteStartObject();
        writer.WriteString("client", member.Client);
        WriteData(writer, member.Info);
        writer.WriteEndObject();
    }

    /// <summary>True when <paramref name="json"/> is one complete JSON value (what <c>data</c> must be).</summary>
    public static bool IsJsonValue(ReadOnlySpan<byte> json)
    {
        try
        {
            var reader = new Utf8JsonReader(json);
            if (!reader.Read()) return false;
            reader.Skip();
            return !reader.Read();
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>The UTF-8 byte count of a string, for limits.</summary>
    public static int Utf8Length(string text) => Encoding.UTF8.GetByteCount(text);
}

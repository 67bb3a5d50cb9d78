using System.Buffers;
using Realtime.Protocol;

namespace Realtime.Channels.Redis;

/// <summary>
/// The <c>pub</c> message of docs/channels-protocol.md in its two forms, for the node-side gap filler:
/// reading a frame's channel and position (any other message is not a publication) and writing one,
/// both through the core's codecs (<see cref="ChannelJson"/> and <see cref="ChannelBinary"/>).
/// </summary>
internal static class PublicationFrames
{
    /// <summary>The channel and position of a publication frame; false for any other message (never throws).</summary>
    public static bool TryReadPosition(ReadOnlySpan<byte> frame, bool binary, out string channel, out ChannelPosition position)
    {
        channel = "";
        position = default;
        // The core's decoders read memory; the frame is copied into a pooled buffer for the call
        // (the decoded data is a slice of it, and only the channel and position are kept).
        var buffer = ArrayPool<byte>.Shared.Rent(frame.Length);
        try
        {
            frame.CopyTo(buffer);
            var bytes = new ReadOnlyMemory<byte>(buffer, 0, frame.Length);
            var decoded = binary ? ChannelBinary.decodeServer(bytes) : ChannelJson.decodeServer(bytes);
            if (!decoded.IsOk || decoded.ResultValue is not ServerMessage.Publication publication) return false;
            channel = publication.channel;
            position = publication.position;
            return true;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>The frame of a publication in the JSON text form or the binary form.</summary>
    public static byte[] Write(string channel, ChannelPosition position, ReadOnlySpan<byte> data, bool binary) =>
        binary ? ChannelBinary.encodePublication(channel, position, data) : ChannelJson.encodePublication(channel, position, data);
}

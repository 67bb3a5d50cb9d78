using System.IO.Compression;
using System.Text;

namespace LoadGen;

/// <summary>
/// The message layout, ASCII text so that every server also validates UTF-8 as it would for chat:
/// [0,16) sequence number and [16,32) Stopwatch timestamp as 16 lowercase hex digits each,
/// [32,40) sender id as 8 hex digits, then a space and filler text up to the message size.
/// The varying fields start at multiples of 4, so in a masked frame they line up with the key.
/// </summary>
public static class Payload
{
    public const int MinSize = 48;
    public const int SeqAt = 0, TimeAt = 16, SenderAt = 32, FillerAt = 40;

    const string Lorem = "{\"user\":\"bench\",\"text\":\"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.\"} ";

    /// <summary>The plain payload with zeroed fields: patch the fields, keep the filler.</summary>
    public static byte[] Template(int size, int sender)
    {
        var bytes = new byte[size];
        for (int i = FillerAt; i < size; i++) bytes[i] = (byte)Lorem[(i - FillerAt) % Lorem.Length];
        bytes[FillerAt - 1] = (byte)' ';
        WriteHex(bytes.AsSpan(SeqAt, 16), 0);
        WriteHex(bytes.AsSpan(TimeAt, 16), 0);
        WriteHex(bytes.AsSpan(SenderAt, 8), (ulong)sender);
        return bytes;
    }

    static ReadOnlySpan<byte> HexDigits => "0123456789abcdef"u8;

    /// <summary>Writes the low 4*destination.Length bits of value as hex, most significant first.</summary>
    public static void WriteHex(Span<byte> destination, ulong value)
    {
        for (int i = destination.Length - 1; i >= 0; i--)
        {
            destination[i] = HexDigits[(int)(value & 0xF)];
            value >>= 4;
        }
    }

    /// <summary>Reads hex digits; returns false on a non-hex byte.</summary>
    public static bool TryReadHex(ReadOnlySpan<byte> source, out ulong value)
    {
        value = 0;
        foreach (byte b in source)
        {
            int d = b is >= (byte)'0' and <= (byte)'9' ? b - '0' : b is >= (byte)'a' and <= (byte)'f' ? b - 'a' + 10 : -1;
            if (d < 0) return false;
            value = (value << 4) | (uint)d;
        }
        return true;
    }

    /// <summary>Checks a received (plain) payload against the template's size and filler and reads its fields.</summary>
    public static bool TryRead(ReadOnlySpan<byte> payload, ReadOnlySpan<byte> template, out ulong seq, out long timestamp, out int sender)
    {
        seq = 0; timestamp = 0; sender = -1;
        if (payload.Length != template.Length) return false;
        if (!payload[FillerAt..].SequenceEqual(template[FillerAt..])) return false;
        if (!TryReadHex(payload.Slice(SeqAt, 16), out seq)) return false;
        if (!TryReadHex(payload.Slice(TimeAt, 16), out ulong t)) return false;
        if (!TryReadHex(payload.Slice(SenderAt, 8), out ulong s)) return false;
        timestamp = (long)t;
        sender = (int)s;
        return true;
    }

    /// <summary>The payload as a string, for the SignalR mode.</summary>
    public static string Text(ReadOnlySpan<byte> payload) => Encoding.ASCII.GetString(payload);
}

/// <summary>
/// permessage-deflate for the client (RFC 7692, no context takeover both ways): every message is
/// compressed on its own with raw DEFLATE level 1 and a sync flush whose 00 00 FF FF tail is
/// removed; every received message is inflated on its own after putting the tail back.
/// DeflateStream allocates per message: that is the price of the stock API (see the README).
/// </summary>
public sealed class DeflateCodec
{
    readonly MemoryStream output = new(1024);
    byte[] input = new byte[1024];

    /// <summary>Compresses payload; the result is valid until the next call.</summary>
    public ReadOnlySpan<byte> Compress(ReadOnlySpan<byte> payload)
    {
        output.SetLength(0);
        var deflate = new DeflateStream(output, CompressionLevel.Fastest, leaveOpen: true);
        deflate.Write(payload);
        deflate.Flush(); // Z_SYNC_FLUSH: ends with 00 00 FF FF
        int length = (int)output.Length;
        byte[] buffer = output.GetBuffer();
        deflate.Dispose();
        if (length >= 4 && buffer[length - 4] == 0 && buffer[length - 3] == 0 && buffer[length - 2] == 0xFF && buffer[length - 1] == 0xFF)
            length -= 4;
        return buffer.AsSpan(0, length);
    }

    /// <summary>Inflates a message into destination; returns the length, or -1 when it does not fit or is corrupt.</summary>
    public int Decompress(ReadOnlySpan<byte> compressed, Span<byte> destination)
    {
        int n = compressed.Length + 4;
        if (input.Length < n) input = new byte[Math.Max(n, input.Length * 2)];
        compressed.CopyTo(input);
        input[n - 4] = 0; input[n - 3] = 0; input[n - 2] = 0xFF; input[n - 1] = 0xFF;
        try
        {
            using var source = new MemoryStream(input, 0, n, writable: false);
            using var inflate = new DeflateStream(source, CompressionMode.Decompress);
            int total = 0;
            while (true)
            {
                if (total == destination.Length)
                {
                    // One more byte would not fit: too long for what we expect.
                    Span<byte> probe = stackalloc byte[1];
                    return inflate.Read(probe) == 0 ? total : -1;
                }
                int read = inflate.Read(destination[total..]);
                if (read == 0) return total;
                total += read;
            }
        }
        catch (InvalidDataException)
        {
            return -1;
        }
    }
}

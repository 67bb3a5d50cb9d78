using System.Buffers;
using System.Runtime.InteropServices;

namespace Realtime.Compression;

/// <summary>
/// Compresses whole messages for permessage-deflate (RFC 7692 §7.2.1): raw deflate, flushed at the
/// end of each message, with the trailing 0x00 0x00 0xFF 0xFF removed. With context takeover the
/// window carries over from message to message (better ratio, about 256 KiB of native state per
/// compressor); without it each message ends with a full flush, so nothing refers back across
/// messages and one compressor can serve every connection in turn.
/// Not thread-safe: one user at a time.
/// </summary>
internal sealed unsafe class MessageDeflater : IDisposable
{
    private static ReadOnlySpan<byte> Tail => [0x00, 0x00, 0xFF, 0xFF];

    private readonly bool _contextTakeover;
    private ZLibNative.ZStream* _stream;

    /// <summary>A compressor with the given window (9-15 bits) and context mode.</summary>
    public MessageDeflater(int windowBits, bool contextTakeover, int level = 6)
    {
        if (windowBits < 9 || windowBits > 15) throw new ArgumentOutOfRangeException(nameof(windowBits));
        _contextTakeover = contextTakeover;
        _stream = (ZLibNative.ZStream*)NativeMemory.AllocZeroed((nuint)sizeof(ZLibNative.ZStream));
        // memLevel 8 is zlib's default; a negative window asks for raw deflate (no zlib header).
        int result = ZLibNative.DeflateInit2(_stream, level, ZLibNative.Deflated, -windowBits, 8, ZLibNative.DefaultStrategy);
        if (result != ZLibNative.Ok)
        {
            NativeMemory.Free(_stream);
            _stream = null;
            throw new InvalidOperationException($"deflate initialisation failed ({result})");
        }
    }

    /// <summary>
    /// Compresses one message into a buffer rented from the shared pool; the caller returns it.
    /// Returns the compressed length (the pool buffer may be longer).
    /// </summary>
    public int Compress(ReadOnlySpan<byte> message, out byte[] rented)
    {
        ObjectDisposedException.ThrowIf(_stream is null, this);
        // Deflate's worst case is a little over the input; start there and grow if ever needed.
        int capacity = message.Length + (message.Length >> 10) + 64;
        rented = ArrayPool<byte>.Shared.Rent(capacity);
        int written = 0;
        int flush = _contextTakeover ? ZLibNative.SyncFlush : ZLibNative.FullFlush;
        fixed (byte* input = message)
        {
            _stream->NextIn = input;
            _stream->AvailIn = (uint)message.Length;
            while (true)
            {
                if (rented.Length - written < 16)
                {
                    byte[] grown = ArrayPool<byte>.Shared.Rent(rented.Length * 2);
                    rented.AsSpan(0, written).CopyTo(grown);
                    ArrayPool<byte>.Shared.Return(rented);
                    rented = grown;
                }
                fixed (byte* output = rented)
                {
                    _stream->NextOut = output + written;
                    _stream->AvailOut = (uint)(rented.Length - written);
                    int result = ZLibNative.Deflate(_stream, flush);
                    written = rented.Length - (int)_stream->AvailOut;
                    if (result != ZLibNative.Ok && result != ZLibNative.BufferError)
                        throw new InvalidOperationException($"deflate failed ({result})");
                }
                // Done once all input is taken and the flush left output space unused.
                if (_stream->AvailIn == 0 && _stream->AvailOut > 0) break;
            }
            _stream->NextIn = null;
            _stream->NextOut = null;
        }
        // RFC 7692 §7.2.1: remove the 4 octets 0x00 0x00 0xFF 0xFF that the flush ends with.
        if (written >= 4 && rented.AsSpan(written - 4, 4).SequenceEqual(Tail)) written -= 4;
        return written;
    }

    /// <summary>Frees the native state.</summary>
    public void Dispose()
    {
        if (_stream is null) return;
        ZLibNative.DeflateEnd(_stream);
        NativeMemory.Free(_stream);
        _stream = null;
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees the native state of a compressor that was never disposed.</summary>
    ~MessageDeflater() => Dispose();
}

using System.Buffers;
using System.Runtime.InteropServices;

namespace Realtime.Compression;

/// <summary>What inflating a chunk of a compressed message gave.</summary>
internal enum InflateStatus
{
    /// <summary>The chunk was inflated; more may follow.</summary>
    Ok,
    /// <summary>The inflated message passed the size limit; inflating stopped there.</summary>
    TooBig,
    /// <summary>The bytes are not valid deflate data.</summary>
    Corrupt,
}

/// <summary>
/// Inflates permessage-deflate messages chunk by chunk as they arrive (RFC 7692 §7.2.2), into a
/// pooled buffer that never grows past the size limit: a small message that would inflate past the
/// limit (a zip bomb) is stopped at the limit, not inflated in full. With context takeover one
/// inflater serves one connection for its lifetime; without it an inflater is reset after every
/// message and can be pooled. Not thread-safe.
/// </summary>
internal sealed unsafe class MessageInflater : IDisposable
{
    private static ReadOnlySpan<byte> Tail => [0x00, 0x00, 0xFF, 0xFF];

    private ZLibNative.ZStream* _stream;
    private byte[]? _output;
    private int _length;

    /// <summary>An inflater; a 15-bit window reads data compressed with any smaller window.</summary>
    public MessageInflater()
    {
        _stream = (ZLibNative.ZStream*)NativeMemory.AllocZeroed((nuint)sizeof(ZLibNative.ZStream));
        int result = ZLibNative.InflateInit2(_stream, -15);
        if (result != ZLibNative.Ok)
        {
            NativeMemory.Free(_stream);
            _stream = null;
            throw new InvalidOperationException($"inflate initialisation failed ({result})");
        }
    }

    /// <summary>The message inflated so far (valid until <see cref="Release"/>).</summary>
    public ReadOnlyMemory<byte> Output => _output.AsMemory(0, _length);

    /// <summary>
    /// Inflates one chunk of the current message; with <paramref name="final"/> the chunk ends the
    /// message and the flush tail that RFC 7692 §7.2.2 says to append is fed after it.
    /// </summary>
    public InflateStatus Inflate(ReadOnlySpan<byte> chunk, bool final, int maxLength)
    {
        // The output (with its byte past the limit) is one array.
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxLength, Array.MaxLength - 1);
        ObjectDisposedException.ThrowIf(_stream is null, this);
        var status = Feed(chunk, maxLength);
        if (status == InflateStatus.Ok && final) status = Feed(Tail, maxLength);
        return status;
    }

    private InflateStatus Feed(ReadOnlySpan<byte> input, int maxLength)
    {
        if (input.IsEmpty) return InflateStatus.Ok;
        fixed (byte* inputPointer = input)
        {
            _stream->NextIn = inputPointer;
            _stream->AvailIn = (uint)input.Length;
            try
            {
                while (true)
                {
                    // Room for one byte past the limit, so crossing it is seen without inflating more.
                    // In 64 bits: with maxLength near int.MaxValue, maxLength + 1 and the doubling must not wrap.
                    long capacity = (long)maxLength + 1;
                    _output ??= ArrayPool<byte>.Shared.Rent((int)Math.Min(Math.Max(input.Length * 4L, 1024), capacity));
                    if (_length == _output.Length)
                    {
                        if (_length > maxLength) return InflateStatus.TooBig;
                        byte[] grown = ArrayPool<byte>.Shared.Rent((int)Math.Min(_output.Length * 2L, capacity));
                        _output.AsSpan(0, _length).CopyTo(grown);
                        ArrayPool<byte>.Shared.Return(_output);
                        _output = grown;
                    }
                    int space = (int)Math.Min(_output.Length, capacity) - _length;
                    int result;
                    fixed (byte* outputPointer = _output)
                    {
                        _stream->NextOut = outputPointer + _length;
                        _stream->AvailOut = (uint)space;
                        result = ZLibNative.Inflate(_stream, ZLibNative.SyncFlush);
                        _length += space - (int)_stream->AvailOut;
                    }
                    if (_length > maxLength) return InflateStatus.TooBig;
                    if (result == ZLibNative.StreamEnd)
                    {
                        // The client ended its deflate stream (BFINAL); the next message starts a new one.
                        ZLibNative.InflateReset2(_stream, -15);
                        if (_stream->AvailIn == 0) return InflateStatus.Ok;
                        continue;
                    }
                    if (result != ZLibNative.Ok && result != ZLibNative.BufferError) return InflateStatus.Corrupt;
                    if (_stream->AvailIn == 0 && _stream->AvailOut > 0) return InflateStatus.Ok;
                    if (result == ZLibNative.BufferError && _stream->AvailOut > 0) return InflateStatus.Ok;
                }
            }
            finally
            {
                _stream->NextIn = null;
                _stream->NextOut = null;
            }
        }
    }

    /// <summary>Gives the output buffer back after a message was handled; <paramref name="reset"/> forgets the window (no context takeover).</summary>
    public void Release(bool reset)
    {
        if (_output is not null) ArrayPool<byte>.Shared.Return(_output);
        _output = null;
        _length = 0;
        if (reset && _stream is not null) ZLibNative.InflateReset2(_stream, -15);
    }

    /// <summary>Frees the native state.</summary>
    public void Dispose()
    {
        Release(reset: false);
        if (_stream is null) return;
        ZLibNative.InflateEnd(_stream);
        NativeMemory.Free(_stream);
        _stream = null;
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees the native state of an inflater that was never disposed.</summary>
    ~MessageInflater() => Dispose();
}

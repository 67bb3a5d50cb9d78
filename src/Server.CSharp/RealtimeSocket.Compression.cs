using System.Buffers;
using Realtime.Compression;
using Realtime.Protocol;

namespace Realtime;

// permessage-deflate (RFC 7692) for one connection, as negotiated in its handshake.
//
// Sending: without context takeover (the default) a thread's shared compressor serves every
// connection; with it the connection owns a compressor, used under the connection's lock so that
// the order of compression is the order on the wire, and a message is compressed only once it is
// sure to be queued (its window must match what the client inflates). Receiving: compressed
// payloads are inflated as they arrive, bounded by MaxPayloadLength, with a pooled inflater when
// the client resets its context after each message and a connection's own inflater when it does not.
public abstract partial class RealtimeSocket
{
    private readonly PerMessageDeflate.Parameters? _compression;
    private MessageDeflater? _deflater;
    private MessageInflater? _inflater;

    /// <summary>True when a message of this length goes out compressed: negotiated, and asked for or over the threshold.</summary>
    internal bool WantsCompression(bool compress, int length) =>
        _compression is not null && (compress || (_endpoint.Options.CompressionThreshold is { } threshold && length >= threshold));

    /// <summary>True when this connection can take a frame compressed once for many: no context takeover, full window.</summary>
    internal bool AcceptsSharedCompression => _compression is { ServerNoContextTakeover: true, ServerMaxWindowBits: 15 };

    // What zlib holds per stream with a 15-bit window and memLevel 8 (zlib's zconf.h: deflate
    // needs (1 << (windowBits + 2)) + (1 << (memLevel + 9)) bytes, inflate 1 << windowBits plus about
    // 7 KiB of state), counted against the server's budget while a connection holds one.
    internal const int DeflaterStateBytes = 260 * 1024;
    internal const int InflaterStateBytes = 40 * 1024;
    private bool _inflaterCounted;
    private bool _deflaterCounted;
    // Inflated bytes of the message being received, counted against the budget.
    private long _inflatedCounted;

    private SendResult SendCompressed(MessageKind kind, ReadOnlySpan<byte> payload, Subscription<RealtimeSocket>? subscription)
    {
        var parameters = _compression!;
        if (parameters.ServerNoContextTakeover)
        {
            int length = CompressorPool.SharedDeflater(parameters.ServerMaxWindowBits).Compress(payload, out byte[] compressed);
            try { return EnqueueCompressed(kind, compressed.AsSpan(0, length), subscription: subscription); }
            finally { ArrayPool<byte>.Shared.Return(compressed); }
        }
        lock (_sync)
        {
            // Before compressing: a message the context has seen must be sent.
            if (subscription is { IsActive: false }) return SendResult.Dropped;
            if (!_core.CanSend || _ended)
            {
                _server.Metrics.Queued(SendStatus.Dropped);
                return SendResult.Dropped;
            }
            // Judge admission on a bound of the compressed size, so nothing the compressor has seen is dropped.
            int bound = (int)Math.Min(int.MaxValue, payload.Length + (payload.Length >> 3) + 64L + Frame.MaxHeaderSize);
            var (_, verdict) = Backpressure.offer(_endpoint.Limits, _backpressure, bound);
            if (!Backpressure.isQueued(verdict)) return SendUncompressed(kind, payload, subscription);
            long ceiling = _server.Budget.CeilingFor(_backpressure.InBackpressure);
            if (_deflater is null)
            {
                if (!_server.Budget.TryReserve(DeflaterStateBytes, ceiling)) return SendUncompressed(kind, payload, subscription);
                _deflaterCounted = true;
                _deflater = new MessageDeflater(parameters.ServerMaxWindowBits, contextTakeover: true);
            }
            if (!_server.Budget.TryReserve(bound, ceiling)) return SendUncompressed(kind, payload, subscription);
            int length = _deflater.Compress(payload, out byte[] compressed);
            try { return EnqueueCompressed(kind, compressed.AsSpan(0, length), reservedBound: bound, subscription: subscription); }
            finally { ArrayPool<byte>.Shared.Return(compressed); }
        }
    }

    /// <summary>Sends without compression (always allowed, RFC 7692 §6): the ordinary path decides whether it fits.</summary>
    private SendResult SendUncompressed(MessageKind kind, ReadOnlySpan<byte> payload, Subscription<RealtimeSocket>? subscription)
    {
        Span<byte> header = stackalloc byte[Frame.MaxHeaderSize];
        int headerLength = Frame.writeHeader(Frame.header((Opcode)(byte)kind, payload.Length), header);
        return Enqueue(header[..headerLength], payload, subscription);
    }

    /// <summary>
    /// Queues an already compressed payload as one frame with RSV1 set (RFC 7692 §6). With
    /// <paramref name="reservedBound"/> the caller has already reserved that many bytes of the
    /// budget: the frame keeps what it needs and the rest is given back.
    /// </summary>
    internal SendResult EnqueueCompressed(MessageKind kind, ReadOnlySpan<byte> compressed, int reservedBound = 0, Subscription<RealtimeSocket>? subscription = null)
    {
        Span<byte> header = stackalloc byte[Frame.MaxHeaderSize];
        int headerLength = Frame.writeHeader(Frame.compressedHeader((Opcode)(byte)kind, compressed.Length), header);
        if (reservedBound == 0) return Enqueue(header[..headerLength], compressed, subscription);
        int total = headerLength + compressed.Length;
        _server.Budget.Release(reservedBound - total);
        var result = EnqueueData(header[..headerLength], compressed, null, subscription, reserved: true);
        if (!result.IsQueued) _server.Budget.Release(total);
        return result;
    }

    /// <summary>
    /// Inflates one chunk of a compressed message. Returns the whole inflated message when this chunk
    /// ended it, else null; fails the connection (1009, 1007) and returns null on bad data.
    /// </summary>
    private ReadOnlyMemory<byte>? InflateChunk(ReadOnlySpan<byte> chunk, MessageKind kind, bool messageEnd)
    {
        int limit = _endpoint.Options.EffectiveMaxPayloadLength;
        if (_inflater is null)
        {
            if (!_server.Budget.TryReserve(InflaterStateBytes))
            {
                FailMessage(ProtocolError.NewMessageTooBig(limit));
                return null;
            }
            _inflaterCounted = true;
            _inflater = _compression!.ClientNoContextTakeover ? CompressorPool.RentInflater() : new MessageInflater();
        }
        // The inflated bytes count against the server's budget as they grow: the message may grow
        // only as far as the budget has room, and past that it is too big, as past MaxPayloadLength.
        int before = _inflater.Output.Length;
        int room = (int)Math.Min(limit, before + _server.Budget.Available);
        var status = _inflater.Inflate(chunk, messageEnd, room);
        int grown = _inflater.Output.Length - before;
        if (status != InflateStatus.TooBig)
        {
            if (_server.Budget.TryReserve(grown)) _inflatedCounted += grown;
            else status = InflateStatus.TooBig;
        }
        switch (status)
        {
            case InflateStatus.TooBig:
                FailMessage(ProtocolError.NewMessageTooBig(room));
                ReleaseInflater();
                return null;
            case InflateStatus.Corrupt:
                FailMessage(ProtocolError.InvalidCompressedData);
                ReleaseInflater();
                return null;
        }
        if (!messageEnd) return null;
        var output = _inflater.Output;
        // RFC 6455 §8.1 holds for the inflated text (RFC 7692 §6: extensions sit below the message layer).
        if (kind == MessageKind.Text && !Utf8Validator.isValid(output.Span))
        {
            FailMessage(ProtocolError.InvalidUtf8);
            return null;
        }
        return output;
    }

    /// <summary>After a compressed message was handled: a pooled inflater goes back, an own one keeps its window.</summary>
    private void ReleaseInflater()
    {
        if (_inflater is null) return;
        _server.Budget.Release(_inflatedCounted);
        _inflatedCounted = 0;
        if (_compression!.ClientNoContextTakeover)
        {
            CompressorPool.ReturnInflater(_inflater);
            _inflater = null;
            ReleaseInflaterState();
        }
        else
        {
            _inflater.Release(reset: false);
        }
    }

    private void ReleaseInflaterState()
    {
        if (_inflaterCounted) _server.Budget.Release(InflaterStateBytes);
        _inflaterCounted = false;
    }

    /// <summary>Fails the connection for a message found bad after the core passed it on.</summary>
    private void FailMessage(ProtocolError error)
    {
        byte[] frame;
        lock (_sync)
        {
            var (core, closeFrame) = ConnectionModule.failMessage(_core, error);
            _core = core;
            frame = closeFrame;
            if (_sentCloseCode == 0)
            {
                _sentCloseCode = error.CloseCode;
                _sentCloseReason = error.Message;
            }
        }
        _server.Log.ProtocolViolation(Id, error.Code, error.CloseCode);
        EnqueueControl(frame);
    }

    /// <summary>Frees the connection's compression state once it has ended.</summary>
    private void DisposeCompression()
    {
        if (_inflater is not null)
        {
            _server.Budget.Release(_inflatedCounted);
            _inflatedCounted = 0;
            if (_compression!.ClientNoContextTakeover) CompressorPool.ReturnInflater(_inflater);
            else _inflater.Dispose();
            _inflater = null;
            ReleaseInflaterState();
        }
        lock (_sync)
        {
            _deflater?.Dispose();
            _deflater = null;
            if (_deflaterCounted) _server.Budget.Release(DeflaterStateBytes);
            _deflaterCounted = false;
        }
    }
}

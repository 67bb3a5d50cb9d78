using System.Buffers;
using Realtime.Compression;
using Realtime.Protocol;

namespace Realtime;

// permessage-deflate (RFC 7692) for one connection, as negotiated in its handshake.
//
// Sending: without context takeover (the default) a thread's shared compressor serves every
// connection; with it the connection owns a compressor, used under the connection's lock so that
// the order of compression is the order on the wire, and a message is compressed only once it is
// sure to be queued (its window must match what the client inflates). Either way the core frames
// the compressed message (RSV1) and judges it like any other. Receiving: compressed
// payloads are inflated as they arrive, bounded by MaxPayloadLength, with a pooled inflater when
// the client resets its context after each message and a connection's own inflater when it does not.
public abstract partial class RealtimeSocket
{
    // Null without permessage-deflate (most connections): they keep none of the fields below.
    private readonly CompressionState? _compressionState;

    /// <summary>The compression state, where the code runs only for a connection that negotiated permessage-deflate.</summary>
    private CompressionState Negotiated => _compressionState!;

    /// <summary>What a connection with permessage-deflate keeps for it: the parameters, its compressors and their budget counts.</summary>
    private sealed class CompressionState(PerMessageDeflate.Parameters parameters)
    {
        public readonly PerMessageDeflate.Parameters Parameters = parameters;
        public MessageDeflater? Deflater;
        public MessageInflater? Inflater;
        public bool InflaterCounted;
        public bool DeflaterCounted;
        // Inflated bytes of the message being received, counted against the budget.
        public long InflatedCounted;
    }

    /// <summary>True when a message of this length goes out compressed: negotiated, and asked for or over the threshold.</summary>
    private bool WantsCompression(bool compress, int length) =>
        _compressionState is not null && (compress || (_endpoint.Options.CompressionThreshold is { } threshold && length >= threshold));

    // What zlib holds per stream with a 15-bit window and memLevel 8 (zlib's zconf.h: deflate
    // needs (1 << (windowBits + 2)) + (1 << (memLevel + 9)) bytes, inflate 1 << windowBits plus about
    // 7 KiB of state), counted against the server's budget while a connection holds one.
    internal const int DeflaterStateBytes = 260 * 1024;
    internal const int InflaterStateBytes = 40 * 1024;

    private SendResult SendCompressed(MessageKind kind, ReadOnlySpan<byte> payload, Subscription<RealtimeSocket>? subscription)
    {
        var parameters = Negotiated.Parameters;
        if (parameters.ServerNoContextTakeover)
        {
            int length = CompressorPool.SharedDeflater(parameters.ServerMaxWindowBits).Compress(payload, out byte[] compressed);
            try { return EnqueueData(kind, compressed.AsSpan(0, length), compressed: true, shared: null, subscription); }
            finally { ArrayPool<byte>.Shared.Return(compressed); }
        }
        return SendCompressedWithContext(kind, payload, subscription);
    }

    /// <summary>
    /// With context takeover the message is compressed only once it is sure to be queued (its window
    /// must match what the client inflates): the core admits it once, at a bound of its compressed
    /// size, and the frame is settled at its real size after compressing, under the same lock so that
    /// the order of compression is the order on the wire. Not admitted, it goes uncompressed.
    /// </summary>
    private SendResult SendCompressedWithContext(MessageKind kind, ReadOnlySpan<byte> payload, Subscription<RealtimeSocket>? subscription)
    {
        Span<byte> header = stackalloc byte[Frame.MaxHeaderSize];
        int bound = (int)Math.Min(int.MaxValue - Frame.MaxHeaderSize, payload.Length + (payload.Length >> 3) + 64L);
        SendResult result;
        bool startWriter;
        lock (_sync)
        {
            // Before compressing: a message the context has seen must be sent.
            if (subscription is { IsActive: false }) return SendResult.Dropped;
            long ceiling = _server.Budget.CeilingFor(_core.InBackpressure);
            var before = _core.SendState;
            var (verdict, _) = ConnectionModule.send(ref _core, _endpoint.Limits, kind, bound, true, header);
            if (!Backpressure.isQueued(verdict)) return SendUncompressed(kind, payload, subscription);
            if (Negotiated.Deflater is null)
            {
                if (!_server.Budget.TryReserve(DeflaterStateBytes, ceiling)) return NotCompressed(before, kind, payload, subscription);
                Negotiated.DeflaterCounted = true;
                Negotiated.Deflater = new MessageDeflater(Negotiated.Parameters.ServerMaxWindowBits, contextTakeover: true);
            }
            int reserved = bound + Frame.MaxHeaderSize;
            if (!_server.Budget.TryReserve(reserved, ceiling)) return NotCompressed(before, kind, payload, subscription);
            int length = Negotiated.Deflater.Compress(payload, out byte[] compressed);
            try
            {
                var (total, headerLength) = ConnectionModule.settle(ref _core, kind, bound, length, header);
                _server.Budget.Release(reserved - total);
                Append(header[..headerLength]);
                Append(compressed.AsSpan(0, length));
                result = Verdict(verdict, total);
            }
            finally { ArrayPool<byte>.Shared.Return(compressed); }
            startWriter = TryBecomeWriter();
        }
        return Queued(result, startWriter, closeForBudget: false);
    }

    /// <summary>Under the lock: the budget had no room to compress what the core admitted; the admission is undone and the message goes uncompressed.</summary>
    private SendResult NotCompressed(Backpressure.State before, MessageKind kind, ReadOnlySpan<byte> payload, Subscription<RealtimeSocket>? subscription)
    {
        ConnectionModule.restoreSendState(ref _core, before);
        return SendUncompressed(kind, payload, subscription);
    }

    /// <summary>Sends without compression (always allowed, RFC 7692 §6): the ordinary path decides whether it fits.</summary>
    private SendResult SendUncompressed(MessageKind kind, ReadOnlySpan<byte> payload, Subscription<RealtimeSocket>? subscription) =>
        EnqueueData(kind, payload, compressed: false, shared: null, subscription);

    /// <summary>
    /// Inflates one chunk of a compressed message and hands the inflated bytes to the core, whose
    /// message rules (size, UTF-8) hold for it as for an uncompressed message. Returns the whole
    /// inflated message when this chunk ended it, else null; fails the connection (1009, 1007) and
    /// returns null on bad data.
    /// </summary>
    private ReadOnlyMemory<byte>? InflateChunk(ReadOnlySpan<byte> chunk, bool messageEnd)
    {
        int limit = _endpoint.Options.EffectiveMaxPayloadLength;
        if (Negotiated.Inflater is null)
        {
            if (!_server.Budget.TryReserve(InflaterStateBytes))
            {
                FailMessage(ProtocolError.NewMessageTooBig(limit));
                return null;
            }
            Negotiated.InflaterCounted = true;
            Negotiated.Inflater = Negotiated.Parameters.ClientNoContextTakeover ? CompressorPool.RentInflater() : new MessageInflater();
        }
        // The inflated bytes count against the server's budget as they grow: the message may grow
        // only as far as the budget has room, and past that it is too big, as past MaxPayloadLength.
        // The inflater stops one byte past `room`, so a message inflating past the limit costs no
        // more than the limit: that byte goes to the core, which refuses the message (1009); when
        // the budget set `room` below the limit, only the host knows why it stopped.
        int before = Negotiated.Inflater.Output.Length;
        int room = (int)Math.Min(limit, before + _server.Budget.Available);
        var status = Negotiated.Inflater.Inflate(chunk, messageEnd, room);
        int grown = Negotiated.Inflater.Output.Length - before;
        bool overBudget;
        if (status == InflateStatus.TooBig) overBudget = room < limit;
        else if (_server.Budget.TryReserve(grown))
        {
            Negotiated.InflatedCounted += grown;
            overBudget = false;
        }
        else overBudget = true;
        if (overBudget)
        {
            FailMessage(ProtocolError.NewMessageTooBig(room));
            ReleaseInflater();
            return null;
        }
        if (status == InflateStatus.Corrupt)
        {
            FailMessage(ProtocolError.InvalidCompressedData);
            ReleaseInflater();
            return null;
        }
        InflatedVerdict verdict;
        lock (_sync)
        {
            (_core, verdict) = ConnectionModule.inflated(_core, Negotiated.Inflater.Output.Span[before..], messageEnd);
        }
        if (!verdict.IsInflatedAccepted)
        {
            if (verdict.IsInflatedRefused) Failed(verdict.error, verdict.closeFrame);
            ReleaseInflater();
            return null;
        }
        // Not `messageEnd ? Output : null`: that null would become an empty message (byte[] converts to memory).
        if (!messageEnd) return null;
        return Negotiated.Inflater.Output;
    }

    /// <summary>After a compressed message was handled: a pooled inflater goes back, an own one keeps its window.</summary>
    private void ReleaseInflater()
    {
        if (_compressionState is not { Inflater: { } inflater } state) return;
        _server.Budget.Release(state.InflatedCounted);
        state.InflatedCounted = 0;
        if (state.Parameters.ClientNoContextTakeover)
        {
            CompressorPool.ReturnInflater(inflater);
            state.Inflater = null;
            ReleaseInflaterState();
        }
        else
        {
            inflater.Release(reset: false);
        }
    }

    private void ReleaseInflaterState()
    {
        if (Negotiated.InflaterCounted) _server.Budget.Release(InflaterStateBytes);
        Negotiated.InflaterCounted = false;
    }

    /// <summary>
    /// Fails the connection for a message found bad with what only the host knows: corrupt
    /// DEFLATE data, or no room left in the server's budget.
    /// </summary>
    private void FailMessage(ProtocolError error)
    {
        byte[] frame;
        lock (_sync)
        {
            var (core, closeFrame) = ConnectionModule.failMessage(_core, error);
            _core = core;
            frame = closeFrame;
        }
        Failed(error, frame);
    }

    /// <summary>The connection failed (RFC 6455 §7.1.7): log it and write the core's close frame, if any.</summary>
    private void Failed(ProtocolError error, byte[] closeFrame)
    {
        _server.Log.ProtocolViolation(Id, error.Code, error.CloseCode);
        EnqueueControl(closeFrame);
    }

    /// <summary>Frees the connection's compression state once it has ended.</summary>
    private void DisposeCompression()
    {
        if (_compressionState is not { } state) return;
        if (state.Inflater is { } inflater)
        {
            _server.Budget.Release(state.InflatedCounted);
            state.InflatedCounted = 0;
            if (state.Parameters.ClientNoContextTakeover) CompressorPool.ReturnInflater(inflater);
            else inflater.Dispose();
            state.Inflater = null;
            ReleaseInflaterState();
        }
        lock (_sync)
        {
            state.Deflater?.Dispose();
            state.Deflater = null;
            if (state.DeflaterCounted) _server.Budget.Release(DeflaterStateBytes);
            state.DeflaterCounted = false;
        }
    }
}

using Realtime.Compression;
using Realtime.Protocol;

namespace Realtime.Memory;

/// <summary>
/// One message on its way to many connections (a publish, a backplane delivery, a broadcast), like
/// SignalR's <c>SerializedHubMessage</c>: framed once, and compressed at most once per compression
/// parameter set, each form made when the first recipient that takes it asks for it. Recipients
/// get the same immutable, reference-counted bytes (<see cref="SharedFrame"/>); a recipient whose
/// compressor keeps its context between messages compresses for itself, since its window is its own.
/// Lives on the publisher's stack for the length of the fan-out; <see cref="Dispose"/> drops the
/// publisher's references.
/// </summary>
internal ref struct PreparedMessage
{
    // The windows a server compresses with (RFC 7692 §7.1.2.1; the negotiation never gives 8, which zlib refuses).
    private const int MinWindowBits = 9;
    private const int MaxWindowBits = 15;

    private readonly MemoryBudget _budget;
    private SharedFrame? _plain;
    private SharedFrame?[]? _compressed;

    /// <summary>A message of <paramref name="kind"/>; <paramref name="compress"/> is the sender's flag, as for a send.</summary>
    public PreparedMessage(MemoryBudget budget, MessageKind kind, ReadOnlySpan<byte> payload, bool compress)
    {
        _budget = budget;
        Kind = kind;
        Payload = payload;
        Compress = compress;
    }

    /// <summary>The message's kind.</summary>
    public MessageKind Kind { get; }

    /// <summary>The message as given, uncompressed; valid during the fan-out only.</summary>
    public ReadOnlySpan<byte> Payload { get; }

    /// <summary>The sender asked for compression (a recipient may also compress by its CompressionThreshold).</summary>
    public bool Compress { get; }

    /// <summary>How many compressed frames with the full window were made (at most one per message).</summary>
    public int FullWindowCompressions { get; private set; }

    /// <summary>The uncompressed frame, made on first need.</summary>
    public SharedFrame Plain() => _plain ??= SharedFrame.Create(_budget, Kind, Payload, compressed: false);

    /// <summary>The frame compressed without context takeover with a window of <paramref name="windowBits"/>, made on first need.</summary>
    public SharedFrame CompressedFor(int windowBits)
    {
        int bits = Math.Clamp(windowBits, MinWindowBits, MaxWindowBits);
        var frames = _compressed ??= new SharedFrame?[MaxWindowBits - MinWindowBits + 1];
        ref var frame = ref frames[bits - MinWindowBits];
        if (frame is null)
        {
            int length = CompressorPool.SharedDeflater(bits).Compress(Payload, out byte[] compressed);
            try { frame = SharedFrame.Create(_budget, Kind, compressed.AsSpan(0, length), compressed: true); }
            finally { System.Buffers.ArrayPool<byte>.Shared.Return(compressed); }
            if (bits == MaxWindowBits) FullWindowCompressions++;
        }
        return frame;
    }

    /// <summary>Queues the message to <paramref name="recipient"/> in the form it takes.</summary>
    public SendResult SendTo(RealtimeSocket recipient, Subscription<RealtimeSocket>? subscription = null) => recipient.SendPrepared(ref this, subscription);

    /// <summary>Drops the publisher's references: each frame goes back to the pool once its recipients have written it.</summary>
    public void Dispose()
    {
        _plain?.Release();
        _plain = null;
        if (_compressed is null) return;
        foreach (var frame in _compressed) frame?.Release();
        _compressed = null;
    }
}

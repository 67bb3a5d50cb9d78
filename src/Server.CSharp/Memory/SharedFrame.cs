using System.Buffers;
using Realtime.Protocol;

namespace Realtime.Memory;

/// <summary>
/// One immutable, reference-counted frame (header and payload) that a publish or broadcast queues
/// to all its recipients instead of a copy each. The publisher holds the first reference while it
/// hands the frame out; each recipient's outgoing queue takes one and releases it when the frame
/// was written or the connection ended. At zero the buffer goes back to the pool and its bytes
/// leave the server's budget, where they were counted once, when the first recipient took it.
/// </summary>
internal sealed class SharedFrame
{
    private readonly MemoryBudget _budget;
    private byte[]? _buffer;
    private int _references = 1;
    private bool _counted;

    private SharedFrame(MemoryBudget budget, byte[] buffer, int length, MessageKind kind, int payloadLength, bool compressed)
    {
        _budget = budget;
        _buffer = buffer;
        Length = length;
        Kind = kind;
        PayloadLength = payloadLength;
        Compressed = compressed;
    }

    /// <summary>
    /// Frames a whole message (the header from the core, RSV1 when <paramref name="compressed"/>)
    /// into a pooled buffer; the caller holds the first reference.
    /// </summary>
    public static SharedFrame Create(MemoryBudget budget, MessageKind kind, ReadOnlySpan<byte> payload, bool compressed)
    {
        Span<byte> header = stackalloc byte[Frame.MaxHeaderSize];
        int headerLength = ConnectionModule.writeDataHeader(kind, payload.Length, compressed, header);
        int length = headerLength + payload.Length;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        header[..headerLength].CopyTo(buffer);
        payload.CopyTo(buffer.AsSpan(headerLength));
        return new SharedFrame(budget, buffer, length, kind, payload.Length, compressed);
    }

    /// <summary>The kind of the message framed.</summary>
    public MessageKind Kind { get; }

    /// <summary>The length of the frame's payload (compressed, when <see cref="Compressed"/>).</summary>
    public int PayloadLength { get; }

    /// <summary>True when the payload is compressed (RSV1 set, RFC 7692 §6).</summary>
    public bool Compressed { get; }

    /// <summary>The frame's size on the wire.</summary>
    public int Length { get; }

    /// <summary>The frame's bytes; valid while a reference is held.</summary>
    public ReadOnlyMemory<byte> Bytes => _buffer.AsMemory(0, Length);

    /// <summary>
    /// Called by the publishing thread only, before it releases its own reference: takes a reference
    /// for a recipient if the server's budget allows under <paramref name="ceiling"/>. The first
    /// such reference counts the frame's bytes; later ones pass while the server holds no more
    /// than the ceiling (a recipient that is not keeping up may not keep a frame alive past it).
    /// </summary>
    public bool TryAddReference(long ceiling)
    {
        if (_counted)
        {
            if (_budget.Held > ceiling) return false;
        }
        else
        {
            if (!_budget.TryReserve(Length, ceiling)) return false;
            _counted = true;
        }
        Interlocked.Increment(ref _references);
        return true;
    }

    /// <summary>Drops one reference; the last one returns the buffer and the budget.</summary>
    public void Release()
    {
        int left = Interlocked.Decrement(ref _references);
        if (left > 0) return;
        if (left < 0) throw new InvalidOperationException("a shared frame was released more often than referenced");
        if (_counted) _budget.Release(Length);
        ArrayPool<byte>.Shared.Return(_buffer!);
        _buffer = null;
    }
}

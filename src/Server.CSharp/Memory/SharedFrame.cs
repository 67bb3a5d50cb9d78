using System.Buffers;

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

    private SharedFrame(MemoryBudget budget, byte[] buffer, int length)
    {
        _budget = budget;
        _buffer = buffer;
        Length = length;
    }

    /// <summary>Copies header and payload into a pooled buffer; the caller holds the first reference.</summary>
    public static SharedFrame Create(MemoryBudget budget, ReadOnlySpan<byte> header, ReadOnlySpan<byte> payload)
    {
        int length = header.Length + payload.Length;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        header.CopyTo(buffer);
        payload.CopyTo(buffer.AsSpan(header.Length));
        return new SharedFrame(budget, buffer, length);
    }

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

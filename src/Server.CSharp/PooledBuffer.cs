using System.Buffers;

namespace Realtime;

/// <summary>Growing a buffer rented from the shared pool: the one way the host accumulates bytes.</summary>
internal static class PooledBuffer
{
    /// <summary>
    /// Appends <paramref name="bytes"/> at <paramref name="length"/>, renting the buffer on first use
    /// (at least <paramref name="minimumCapacity"/>) and doubling it through the pool when full.
    /// </summary>
    public static void Append(ref byte[]? buffer, ref int length, ReadOnlySpan<byte> bytes, int minimumCapacity = 0)
    {
        if (bytes.IsEmpty) return;
        int needed = length + bytes.Length;
        if (buffer is null || buffer.Length < needed)
        {
            byte[] grown = ArrayPool<byte>.Shared.Rent(Math.Max(needed, Math.Max(minimumCapacity, (buffer?.Length ?? 0) * 2)));
            if (buffer is not null)
            {
                buffer.AsSpan(0, length).CopyTo(grown);
                ArrayPool<byte>.Shared.Return(buffer);
            }
            buffer = grown;
        }
        bytes.CopyTo(buffer.AsSpan(length));
        length = needed;
    }
}

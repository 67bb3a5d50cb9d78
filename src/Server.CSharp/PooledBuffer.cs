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
        // Callers bound what they append (MaxPayloadLength, MaxBufferedAmount) well inside an array.
        int needed = checked(length + bytes.Length);
        if (buffer is null || buffer.Length < needed)
        {
            // Doubling is computed in 64 bits and capped at the largest array, so it cannot wrap around.
            long doubled = Math.Min((long)(buffer?.Length ?? 0) * 2, Array.MaxLength);
            byte[] grown = ArrayPool<byte>.Shared.Rent((int)Math.Max(needed, Math.Max(minimumCapacity, doubled)));
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

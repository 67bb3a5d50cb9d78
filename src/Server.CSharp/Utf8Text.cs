using System.Buffers;
using System.Text;

namespace Realtime;

/// <summary>Encodes a string as UTF-8 without allocating, for the sends and publishes that take text.</summary>
internal static class Utf8Text
{
    /// <summary>Runs an action on a string's UTF-8 bytes.</summary>
    public delegate TResult Action<TState, TResult>(ReadOnlySpan<byte> utf8, TState state);

    /// <summary>Encodes <paramref name="text"/> on the stack (up to 512 bytes) or in a pooled buffer, and runs the action on the bytes.</summary>
    public static TResult With<TState, TResult>(string text, TState state, Action<TState, TResult> action)
    {
        int length = Encoding.UTF8.GetByteCount(text);
        if (length <= 512)
        {
            Span<byte> small = stackalloc byte[length];
            Encoding.UTF8.GetBytes(text, small);
            return action(small, state);
        }
        byte[] rented = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            int written = Encoding.UTF8.GetBytes(text, rented);
            return action(rented.AsSpan(0, written), state);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }
}

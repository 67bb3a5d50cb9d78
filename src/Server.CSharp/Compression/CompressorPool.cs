using System.Collections.Concurrent;

namespace Realtime.Compression;

/// <summary>
/// Compression state that connections share instead of owning (uWebSockets' "shared compressor"):
/// without context takeover a compressor or inflater holds nothing between messages, so one per
/// thread (compressors) or a small pool (inflaters, held for the length of one message) serves
/// every connection, and an idle connection costs no compression memory at all.
/// </summary>
internal static class CompressorPool
{
    private const int MaxPooledInflaters = 64;

    // Index: window bits 9-15. Compress() never awaits, so thread-local use is safe.
    [ThreadStatic] private static MessageDeflater?[]? s_deflaters;

    private static readonly ConcurrentBag<MessageInflater> s_inflaters = new();
    private static int s_pooledInflaters;

    /// <summary>This thread's no-context-takeover compressor for the given window.</summary>
    public static MessageDeflater SharedDeflater(int windowBits)
    {
        var deflaters = s_deflaters ??= new MessageDeflater?[16];
        return deflaters[windowBits] ??= new MessageDeflater(windowBits, contextTakeover: false);
    }

    /// <summary>An inflater for one message; give it back with <see cref="ReturnInflater"/>.</summary>
    public static MessageInflater RentInflater()
    {
        if (s_inflaters.TryTake(out var inflater))
        {
            Interlocked.Decrement(ref s_pooledInflaters);
            return inflater;
        }
        return new MessageInflater();
    }

    /// <summary>Resets an inflater and keeps it for the next message, or frees it when the pool is full.</summary>
    public static void ReturnInflater(MessageInflater inflater)
    {
        inflater.Release(reset: true);
        if (Interlocked.Increment(ref s_pooledInflaters) <= MaxPooledInflaters)
        {
            s_inflaters.Add(inflater);
            return;
        }
        Interlocked.Decrement(ref s_pooledInflaters);
        inflater.Dispose();
    }
}

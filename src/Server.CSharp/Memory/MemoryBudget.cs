namespace Realtime.Memory;

/// <summary>
/// The server-wide count of the bytes connections hold (<see cref="RealtimeOptions.MaxServerBufferedBytes"/>):
/// queued outgoing frames (a shared frame once), unfinished incoming messages and compression state.
/// Every reservation is paired with one release of the same size at the place the bytes are let go,
/// so the count returns to zero when every connection has ended. Lock-free: one compare-and-swap
/// per reservation, one atomic add per release.
/// </summary>
internal sealed class MemoryBudget
{
    private long _held;

    /// <summary>A budget of <paramref name="limit"/> bytes.</summary>
    public MemoryBudget(long limit)
    {
        Limit = limit;
        // A connection that is not keeping up may use three quarters of the budget; the last
        // quarter stays for connections that read what they are sent.
        SlowConsumerLimit = limit - limit / 4;
    }

    /// <summary>The most bytes held at once.</summary>
    public long Limit { get; }

    /// <summary>The most bytes held at once when a connection already in a backpressure episode asks for more.</summary>
    public long SlowConsumerLimit { get; }

    /// <summary>The bytes held now.</summary>
    public long Held => Volatile.Read(ref _held);

    /// <summary>The bytes that may still be reserved under <see cref="Limit"/>.</summary>
    public long Available => Math.Max(0, Limit - Held);

    /// <summary>The ceiling a connection works under: the slow-consumer limit while it is in backpressure.</summary>
    public long CeilingFor(bool inBackpressure) => inBackpressure ? SlowConsumerLimit : Limit;

    /// <summary>Reserves <paramref name="bytes"/> if the total stays at or below <paramref name="ceiling"/>.</summary>
    public bool TryReserve(long bytes, long ceiling)
    {
        if (bytes <= 0) return true;
        long held = Volatile.Read(ref _held);
        while (true)
        {
            if (bytes > ceiling - held) return false;
            long seen = Interlocked.CompareExchange(ref _held, held + bytes, held);
            if (seen == held) return true;
            held = seen;
        }
    }

    /// <summary>Reserves <paramref name="bytes"/> if the total stays within the budget.</summary>
    public bool TryReserve(long bytes) => TryReserve(bytes, Limit);

    /// <summary>Gives back bytes reserved earlier.</summary>
    public void Release(long bytes)
    {
        if (bytes > 0) Interlocked.Add(ref _held, -bytes);
    }
}

namespace Realtime.Redis;

/// <summary>
/// What the backplane holds of its publishes to the other servers until Redis answers them (waiting
/// in the outgoing queue, or handed to StackExchange.Redis), bounded in count and in bytes. Reserving
/// never waits: past either bound it refuses, and the publish is dropped. Safe from any thread; neither
/// figure ever passes its bound, not even for a moment (a reservation is checked before it is added).
/// </summary>
internal sealed class InFlightBudget
{
    private readonly int _maxCount;
    private readonly long _maxBytes;
    private int _count;
    private long _bytes;

    /// <param name="maxCount">The most publishes held at once (at least 1).</param>
    /// <param name="maxBytes">The most envelope bytes held at once (at least 1).</param>
    public InFlightBudget(int maxCount, long maxBytes)
    {
        _maxCount = maxCount;
        _maxBytes = maxBytes;
    }

    /// <summary>Publishes held now.</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Envelope bytes held now.</summary>
    public long Bytes => Interlocked.Read(ref _bytes);

    private const string CountReached = "MaxPublishesInFlight reached: Redis has not answered that many publishes yet";
    private const string BytesReached = "MaxPublishBytesInFlight reached: Redis has not answered that many bytes of publishes yet";

    /// <summary>
    /// False, and which bound, when a publish of at least <paramref name="bytes"/> bytes would be
    /// refused now: a check before the envelope is made, so a burst that cannot be held does not
    /// allocate one for each.
    /// </summary>
    public bool MightFit(long bytes, out string refusal)
    {
        refusal = Count >= _maxCount ? CountReached : bytes > _maxBytes - Bytes ? BytesReached : "";
        return refusal.Length == 0;
    }

    /// <summary>Holds one publish of <paramref name="bytes"/> bytes, or says which bound refused it.</summary>
    public bool TryReserve(int bytes, out string refusal)
    {
        int count = Volatile.Read(ref _count);
        while (true)
        {
            if (count >= _maxCount)
            {
                refusal = CountReached;
                return false;
            }
            int seen = Interlocked.CompareExchange(ref _count, count + 1, count);
            if (seen == count) break;
            count = seen;
        }
        long held = Interlocked.Read(ref _bytes);
        while (true)
        {
            if (bytes > _maxBytes - held)
            {
                Interlocked.Decrement(ref _count);
                refusal = BytesReached;
                return false;
            }
            long seen = Interlocked.CompareExchange(ref _bytes, held + bytes, held);
            if (seen == held) break;
            held = seen;
        }
        refusal = "";
        return true;
    }

    /// <summary>Lets go of one publish of <paramref name="bytes"/> bytes: Redis answered it, or it was dropped.</summary>
    public void Release(int bytes)
    {
        Interlocked.Add(ref _bytes, -bytes);
        Interlocked.Decrement(ref _count);
    }
}

namespace LoadGen;

/// <summary>
/// The shared bookkeeping of fanout and chat: who sends, who receives, and for every
/// (receiver, sender) pair the next sequence number expected. A sender may send message k only
/// while k &lt; (the least next-expected over its receivers) + window, so a correct server never
/// has to drop anything; every receiver checks each sender's sequence for loss and order.
/// Counters are plain fields written by one thread and read by others with Volatile.
/// </summary>
public sealed class Mesh
{
    public readonly int Clients;
    public readonly bool[] IsSender, IsReceiver;
    public readonly int Window;
    readonly long[] next;          // [receiver * Clients + sender]
    readonly long[] sent;          // per sender
    readonly long[] delivered;     // per receiver, all senders
    readonly long[] lost, disorder, bad, self, plain;
    readonly int[] waiting;        // per sender: 1 while it waits for its window to open
    readonly SemaphoreSlim[] wake;
    readonly int[] receivers;

    public Mesh(int clients, Func<int, bool> isSender, Func<int, bool> isReceiver, int window)
    {
        Clients = clients;
        Window = window;
        IsSender = Enumerable.Range(0, clients).Select(isSender).ToArray();
        IsReceiver = Enumerable.Range(0, clients).Select(isReceiver).ToArray();
        receivers = Enumerable.Range(0, clients).Where(i => IsReceiver[i]).ToArray();
        next = new long[clients * clients];
        sent = new long[clients];
        delivered = new long[clients];
        lost = new long[clients]; disorder = new long[clients]; bad = new long[clients]; self = new long[clients]; plain = new long[clients];
        waiting = new int[clients];
        wake = Enumerable.Range(0, clients).Select(_ => new SemaphoreSlim(0)).ToArray();
    }

    /// <summary>Checks one received payload (already inflated) at receiver r.</summary>
    public void Receive(int r, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> template, bool wasCompressed, bool deflate)
    {
        if (deflate && !wasCompressed) plain[r]++;
        if (!Payload.TryRead(payload, template, out ulong seq, out _, out int sender) || sender < 0 || sender >= Clients)
        {
            bad[r]++;
            return;
        }
        if (sender == r) { self[r]++; return; }
        ref long expected = ref next[r * Clients + sender];
        long s = (long)seq;
        if (s == expected) { }
        else if (s > expected) lost[r] += s - expected;
        else { disorder[r]++; return; }
        Volatile.Write(ref expected, s + 1);
        delivered[r]++;
    }

    /// <summary>After a batch of receives at r: wakes senders that wait for their window.</summary>
    public void Progress(int r)
    {
        for (int s = 0; s < Clients; s++)
            if (Volatile.Read(ref waiting[s]) == 1 && Interlocked.Exchange(ref waiting[s], 0) == 1)
                wake[s].Release();
    }

    /// <summary>How many more messages sender s may send now (0 when its window is shut).</summary>
    public long Allowed(int s)
    {
        long min = long.MaxValue;
        foreach (int r in receivers)
        {
            if (r == s) continue;
            long n = Volatile.Read(ref next[r * Clients + s]);
            if (n < min) min = n;
        }
        if (min == long.MaxValue) return 0;
        return min + Window - sent[s];
    }

    public long Sent(int s) => sent[s];
    public void AddSent(int s, int n) => sent[s] += n;

    /// <summary>Waits until a receiver reports progress (or a short timeout, as a safety net).</summary>
    public async Task WaitForWindowAsync(int s)
    {
        Interlocked.Exchange(ref waiting[s], 1);
        if (Allowed(s) > 0) return;
        await wake[s].WaitAsync(50);
    }

    /// <summary>How many messages receiver r has got so far.</summary>
    public long Delivered(int r) => Volatile.Read(ref delivered[r]);

    public long TotalDelivered()
    {
        long sum = 0;
        for (int r = 0; r < Clients; r++) sum += Volatile.Read(ref delivered[r]);
        return sum;
    }

    public long Lost => lost.Sum();
    public long Disorder => disorder.Sum();
    public long Bad => bad.Sum();
    public long Self => self.Sum();
    public long Plain => plain.Sum();
}

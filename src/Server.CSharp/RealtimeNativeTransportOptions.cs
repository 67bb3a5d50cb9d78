namespace Realtime;

/// <summary>Options of the native Linux transport (<c>UseRealtimeNativeTransport</c>).</summary>
public sealed class RealtimeNativeTransportOptions
{
    /// <summary>How many event-loop threads hold connections; 0 (the default) means one per core.</summary>
    public int EventLoops { get; set; }

    /// <summary>
    /// After this many connections were accepted, once the transport then stays quiet (no accept and no
    /// event on any loop) for <see cref="ReclaimQuietPeriod"/>, the GC is asked once for a compacting
    /// collection that returns free memory to the system, at most once a minute: the garbage of the
    /// burst's handshakes otherwise stays committed while the server is idle. 0 turns it off; the
    /// default is 1,000.
    /// </summary>
    public int ReclaimAfterAccepting { get; set; } = 1000;

    /// <summary>How long the transport must stay quiet after a burst before memory is reclaimed (default 1 s).</summary>
    public TimeSpan ReclaimQuietPeriod { get; set; } = TimeSpan.FromSeconds(1);
}

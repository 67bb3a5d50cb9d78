using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;

namespace Realtime.Native;

/// <summary>
/// Gives back the memory an accept burst left committed. Each upgrade makes a few KB of garbage
/// (the request's context, features and pipeline state); after a burst the server is idle, no
/// collection runs, and the GC keeps the regions that garbage filled (tens of MB at 10,000
/// connections). Once at least <see cref="RealtimeNativeTransportOptions.ReclaimAfterAccepting"/>
/// connections were accepted and a whole check interval then passed with no accept and no event on
/// any loop, it asks the GC once for a compacting collection that decommits free space
/// (<see cref="GCCollectionMode.Aggressive"/>) and glibc to trim its arenas (<c>malloc_trim</c>), and
/// not again within <see cref="MinimumInterval"/>.
/// It starts only after an interval in which nothing was read or accepted, so it does not interrupt
/// flowing traffic; a message that arrives during the pause (measured and logged) waits for it.
/// </summary>
internal sealed partial class BurstMemoryReclaimer : IDisposable
{
    /// <summary>The shortest time between two reclaims.</summary>
    public static readonly TimeSpan MinimumInterval = TimeSpan.FromMinutes(1);

    private readonly Func<long> _accepted;
    private readonly Func<long> _activity;
    private readonly int _burst;
    private readonly ILogger _logger;
    private readonly ITimer _timer;
    private readonly object _checking = new();
    private long _acceptedAtReclaim;
    private long _lastAccepted;
    private long _lastActivity = -1;
    private long _lastReclaimAt = long.MinValue;
    private int _reclaims;

    /// <param name="accepted">Connections accepted so far.</param>
    /// <param name="activity">A count that grows whenever any loop handles an event.</param>
    /// <param name="burst">Accepts since the last reclaim that make a burst (at least 1).</param>
    /// <param name="interval">How long the transport must stay quiet; also the period of the check.</param>
    /// <param name="logger">Where each reclaim is logged (event 80), with its pause.</param>
    public BurstMemoryReclaimer(Func<long> accepted, Func<long> activity, int burst, TimeSpan interval, ILogger logger)
    {
        _accepted = accepted;
        _activity = activity;
        _burst = Math.Max(1, burst);
        _logger = logger;
        _timer = TimeProvider.System.CreateTimer(static state => ((BurstMemoryReclaimer)state!).Check(), this, interval, interval);
    }

    /// <summary>How many times memory was reclaimed.</summary>
    public int Reclaims => Volatile.Read(ref _reclaims);

    /// <summary>The pause of the last reclaim (the blocking collection).</summary>
    public TimeSpan LastPause { get; private set; }

    /// <summary>One check: reclaims when a burst has ended and the last interval was quiet.</summary>
    public void Check()
    {
        if (!Monitor.TryEnter(_checking)) return;
        try
        {
            long accepted = _accepted(), activity = _activity();
            bool quiet = accepted == _lastAccepted && activity == _lastActivity;
            _lastAccepted = accepted;
            _lastActivity = activity;
            long now = Environment.TickCount64;
            if (!quiet || accepted - _acceptedAtReclaim < _burst) return;
            if (_lastReclaimAt != long.MinValue && now - _lastReclaimAt < (long)MinimumInterval.TotalMilliseconds) return;
            Reclaim(accepted, now);
        }
        finally
        {
            Monitor.Exit(_checking);
        }
    }

    private void Reclaim(long accepted, long now)
    {
        long committedBefore = GC.GetGCMemoryInfo().TotalCommittedBytes;
        var watch = Stopwatch.StartNew();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        watch.Stop();
        TrimNativeHeap();
        long committedAfter = GC.GetGCMemoryInfo().TotalCommittedBytes;
        LastPause = watch.Elapsed;
        _logger.MemoryReclaimedAfterBurst(accepted - _acceptedAtReclaim, watch.Elapsed.TotalMilliseconds, committedBefore >> 10, committedAfter >> 10);
        _acceptedAtReclaim = accepted;
        _lastReclaimAt = now;
        Interlocked.Increment(ref _reclaims);
    }

    private static bool _noMallocTrim;

    /// <summary>Returns the C heap's free pages to the system (glibc; elsewhere nothing happens).</summary>
    private static void TrimNativeHeap()
    {
        if (_noMallocTrim) return;
        try { MallocTrim(0); }
        catch (EntryPointNotFoundException) { _noMallocTrim = true; }
        catch (DllNotFoundException) { _noMallocTrim = true; }
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    public void Dispose() => _timer.Dispose();
}

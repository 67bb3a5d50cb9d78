namespace Realtime.Native;

/// <summary>The native transport's event loops (one per core by default); new connections are spread over them in turn.</summary>
internal sealed class EventLoops : IDisposable
{
    private readonly EventLoop[] _loops;
    private int _next = -1;

    public EventLoops(int count)
    {
        _loops = new EventLoop[Math.Max(1, count)];
        for (int i = 0; i < _loops.Length; i++) _loops[i] = new EventLoop(i);
    }

    public int Count => _loops.Length;

    /// <summary>The loop that accepts on the listeners.</summary>
    public EventLoop First => _loops[0];

    /// <summary>How many connections were given to a loop (accepted) so far.</summary>
    public long Assigned => (uint)(Volatile.Read(ref _next) + 1);

    /// <summary>The sum of the loops' <see cref="EventLoop.BusyTurns"/>: it stays put while the transport is quiet.</summary>
    public long BusyTurns
    {
        get
        {
            long sum = 0;
            foreach (var loop in _loops) sum += loop.BusyTurns;
            return sum;
        }
    }

    /// <summary>The loop the next connection goes to.</summary>
    public EventLoop Next() => _loops[(int)((uint)Interlocked.Increment(ref _next) % (uint)_loops.Length)];

    public void Dispose()
    {
        foreach (var loop in _loops) loop.Dispose();
    }
}

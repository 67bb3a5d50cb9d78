using System.Buffers;
using System.Collections.Concurrent;

namespace Realtime.Native;

/// <summary>What an event loop calls when the kernel reports readiness of a descriptor it watches.</summary>
internal interface ILoopMember
{
    /// <summary>Called on the loop's thread with the epoll event bits.</summary>
    void OnEvents(uint events);

    /// <summary>Called on the loop's thread once a second while the member asked for ticks.</summary>
    void OnSecond(long now);

    /// <summary>Called on the loop's thread when the loop stops with the member still in it.</summary>
    void OnLoopStopped();
}

/// <summary>
/// One thread with one epoll set, as uWebSockets' loop: it waits for readiness, reads every
/// connection it holds into one receive buffer of its own, and runs the work other threads post to
/// it (woken through an eventfd). A connection's descriptor is registered with exactly one loop and
/// every change to its registration is made on that loop's thread.
/// </summary>
internal sealed unsafe class EventLoop : IDisposable
{
    /// <summary>The size of the per-loop receive buffer: one read takes at most this much.</summary>
    public const int ReceiveBufferSize = 64 * 1024;

    private const int MaxEvents = 256;

    private readonly int _epoll;
    private readonly int _wake;
    private readonly Thread _thread;
    private readonly ConcurrentQueue<(Action<object?> Work, object? State)> _posted = new();
    private readonly Dictionary<int, ILoopMember> _members = new();
    private readonly HashSet<ILoopMember> _ticking = new();
    // Loop thread only: writers claimed by this loop's own handlers, run once this turn's events are dispatched.
    private readonly Queue<IThreadPoolWorkItem> _deferred = new();
    private int _wakePending;
    private volatile bool _stopping;
    private byte[] _buffer = GC.AllocateUninitializedArray<byte>(ReceiveBufferSize, pinned: true);
    private long _lastSecond = Environment.TickCount64;

    public EventLoop(int index)
    {
        _epoll = Libc.EpollCreate1(Libc.EpollCloexec);
        if (_epoll < 0) throw new IOException($"epoll_create1 failed (errno {Libc.LastError})");
        _wake = Libc.EventFd(0, Libc.EfdNonblock | Libc.EfdCloexec);
        if (_wake < 0 || !Libc.Control(_epoll, Libc.EpollCtlAdd, _wake, Libc.EpollIn))
        {
            Libc.Close(_epoll);
            throw new IOException($"eventfd failed (errno {Libc.LastError})");
        }
        Index = index;
        _thread = new Thread(Run) { IsBackground = true, Name = $"Realtime epoll {index}" };
        // Without the starting thread's execution context: upgrade pipelines start on this thread and
        // must not inherit async-local state (an Activity, a logging scope) from whoever made the loop.
        _thread.UnsafeStart();
    }

    public int Index { get; }

    // Written by the loop's thread only; read by BurstMemoryReclaimer to tell a quiet transport.
    private long _busyTurns;

    /// <summary>How many turns of the loop had events (readiness or posted work); from any thread.</summary>
    public long BusyTurns => Volatile.Read(ref _busyTurns);

    /// <summary>True on this loop's own thread.</summary>
    public bool IsCurrent => Thread.CurrentThread == _thread;

    /// <summary>The loop's receive buffer: valid for one read, on the loop's thread only.</summary>
    public byte[] Buffer => _buffer;

    /// <summary>
    /// Gives the receive buffer to a connection whose handler went asynchronous while its message still
    /// lies in it; the loop goes on with a new one. The connection returns it to the pool when done.
    /// </summary>
    public byte[] TakeBuffer()
    {
        var taken = _buffer;
        _buffer = ArrayPool<byte>.Shared.Rent(ReceiveBufferSize);
        return taken;
    }

    /// <summary>Runs <paramref name="work"/> on the loop's thread, soon; from any thread.</summary>
    public void Post(Action<object?> work, object? state)
    {
        _posted.Enqueue((work, state));
        if (Interlocked.Exchange(ref _wakePending, 1) == 0)
        {
            ulong one = 1;
            Libc.Write(_wake, (byte*)&one, sizeof(ulong));
        }
    }

    /// <summary>
    /// On the loop's thread: runs <paramref name="work"/> on this thread once the events of this turn
    /// have been dispatched, as uWebSockets flushes its corked sockets after each loop iteration: a
    /// writer claimed by a handler of this loop (a publish to a neighbour, a Drain) then writes without
    /// a hop to another thread, and everything sent to one connection in the turn goes out together.
    /// </summary>
    public void Defer(IThreadPoolWorkItem work) => _deferred.Enqueue(work);

    /// <summary>On the loop's thread: watches <paramref name="fd"/> for <paramref name="events"/> on behalf of <paramref name="member"/>.</summary>
    public bool Add(int fd, uint events, ILoopMember member)
    {
        if (!Libc.Control(_epoll, Libc.EpollCtlAdd, fd, events)) return false;
        _members[fd] = member;
        return true;
    }

    /// <summary>On the loop's thread: changes what <paramref name="fd"/> is watched for.</summary>
    public bool Modify(int fd, uint events) => Libc.Control(_epoll, Libc.EpollCtlMod, fd, events);

    /// <summary>On the loop's thread: stops watching <paramref name="fd"/> (before it is closed or handed on).</summary>
    public void Remove(int fd)
    {
        if (_members.Remove(fd)) Libc.Control(_epoll, Libc.EpollCtlDel, fd, 0);
    }

    /// <summary>On the loop's thread: calls <see cref="ILoopMember.OnSecond"/> on the member once a second, or no more.</summary>
    public void Tick(ILoopMember member, bool on)
    {
        if (on) _ticking.Add(member);
        else _ticking.Remove(member);
    }

    private void Run()
    {
        var events = stackalloc Libc.EpollEvent[MaxEvents];
        while (!_stopping)
        {
            int timeout = _deferred.Count > 0 ? 0 : _ticking.Count > 0 ? 1000 : -1;
            int count = Libc.EpollWait(_epoll, events, MaxEvents, timeout);
            if (count < 0 && Libc.LastError != Libc.EIntr) break;
            if (count > 0) Volatile.Write(ref _busyTurns, _busyTurns + 1);
            for (int i = 0; i < count; i++)
            {
                int fd = (int)events[i].Data;
                if (fd == _wake)
                {
                    ulong value;
                    Libc.Read(_wake, (byte*)&value, sizeof(ulong));
                    Volatile.Write(ref _wakePending, 0);
                    continue;
                }
                if (_members.TryGetValue(fd, out var member)) Dispatch(member, events[i].Events);
            }
            RunDeferred();
            RunPosted();
            RunDeferred();
            if (_ticking.Count > 0) TickMembers();
        }
        RunPosted();
        RunDeferred();
        foreach (var member in _members.Values.ToArray()) Dispatch(member, 0, stopped: true);
        RunDeferred();
        _members.Clear();
    }

    private static void Dispatch(ILoopMember member, uint events, bool stopped = false)
    {
        try
        {
            if (stopped) member.OnLoopStopped();
            else member.OnEvents(events);
        }
        catch (Exception exception)
        {
            // A member's failure must not end the loop its neighbours run on.
            System.Diagnostics.Debug.Fail(exception.ToString());
        }
    }

    private void RunDeferred()
    {
        // Bounded like RunPosted: what the deferred work defers again runs after the next (non-blocking) wait.
        for (int i = _deferred.Count; i > 0 && _deferred.TryDequeue(out var work); i--)
        {
            try { work.Execute(); }
            catch (Exception exception) { System.Diagnostics.Debug.Fail(exception.ToString()); }
        }
    }

    private void RunPosted()
    {
        // Bounded: work posted while this runs waits for the next turn, after the next wait for events.
        for (int i = _posted.Count; i > 0 && _posted.TryDequeue(out var item); i--)
        {
            try { item.Work(item.State); }
            catch (Exception exception) { System.Diagnostics.Debug.Fail(exception.ToString()); }
        }
        if (!_posted.IsEmpty && Interlocked.Exchange(ref _wakePending, 1) == 0)
        {
            ulong one = 1;
            Libc.Write(_wake, (byte*)&one, sizeof(ulong));
        }
    }

    private void TickMembers()
    {
        long now = Environment.TickCount64;
        if (now - _lastSecond < 1000) return;
        _lastSecond = now;
        foreach (var member in _ticking.ToArray())
        {
            try { member.OnSecond(now); }
            catch (Exception exception) { System.Diagnostics.Debug.Fail(exception.ToString()); }
        }
    }

    /// <summary>Stops the loop (members still in it get <see cref="ILoopMember.OnLoopStopped"/>) and closes its descriptors.</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        Post(static _ => { }, null);
        if (!IsCurrent) _thread.Join(TimeSpan.FromSeconds(5));
        Libc.Close(_wake);
        Libc.Close(_epoll);
    }
}

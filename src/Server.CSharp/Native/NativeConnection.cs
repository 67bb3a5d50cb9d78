using Microsoft.AspNetCore.Connections;
using Realtime.Direct;

namespace Realtime.Native;

/// <summary>
/// One accepted TCP connection held by an event loop: a file descriptor and what the connection is
/// in the middle of, nothing more. It starts by peeking at its first request head
/// (<see cref="NativeHandshakes"/>): anything that is not a Realtime upgrade is handed on to Kestrel
/// unread; an upgrade runs the application's pipeline, starting on the loop's thread, and, after a 101 from a
/// Realtime endpoint, its <see cref="RealtimeSocket"/> reads through the loop
/// (<c>NativeConnection.Receive.cs</c>) and writes straight to the socket (<c>NativeConnection.Send.cs</c>).
/// Every change to the descriptor's epoll registration, and its close, happen on the loop's thread;
/// sends may come from any thread and are serialised with the close by a lock, so a descriptor number
/// reused after the close is never written to.
/// </summary>
internal sealed partial class NativeConnection : ILoopMember
{
    private enum Stage { Handshake, Pipeline, Open, Closed }

    private readonly NativeTransportFactory _factory;
    private readonly NativeListener _listener;
    private readonly EventLoop _loop;
    private readonly int _fd;
    // The loop thread's view: the stage, and what the descriptor is registered for.
    private Stage _stage;
    private uint _interest;
    private long _headDeadline;
    // The request's connection context, until the connection outlives its request.
    private NativeConnectionContext? _context;
    private volatile bool _outlivesRequest;

    public NativeConnection(NativeTransportFactory factory, NativeListener listener, EventLoop loop, int fd)
    {
        _factory = factory;
        _listener = listener;
        _loop = loop;
        _fd = fd;
    }

    /// <summary>The event loop that holds the connection.</summary>
    public EventLoop Loop => _loop;

    /// <summary>The application's root services.</summary>
    public IServiceProvider Services => _factory.Handshakes.Services;

    /// <summary>True once an open WebSocket took the connection over from its upgrade request.</summary>
    public bool OutlivesRequest => _outlivesRequest;

    /// <summary>
    /// Called after Open by the connection's <see cref="RealtimeSocket"/>: the request may end now
    /// without ending the connection, which the socket closes when it is done with it.
    /// </summary>
    public void OutliveRequest() => _outlivesRequest = true;

    /// <summary>Registers the new descriptor with its loop (from the accepting loop's thread).</summary>
    public void Adopt()
    {
        if (_loop.IsCurrent) Register();
        else _loop.Post(static state => ((NativeConnection)state!).Register(), this);
    }

    private void Register()
    {
        _interest = HandshakeInterest;
        if (!_loop.Add(_fd, _interest, this))
        {
            _stage = Stage.Closed;
            Libc.Close(_fd);
            return;
        }
        _headDeadline = Environment.TickCount64 + (long)_factory.Handshakes.HeadTimeout.TotalMilliseconds;
        _loop.Tick(this, true);
    }

    // Edge-triggered while the head is awaited (peeked bytes stay readable) and while the pipeline runs.
    private const uint HandshakeInterest = Libc.EpollIn | Libc.EpollRdHup | Libc.EpollEt;

    public void OnEvents(uint events)
    {
        switch (_stage)
        {
            case Stage.Handshake:
                OnHandshakeReadable();
                break;
            case Stage.Pipeline:
                if ((events & (Libc.EpollOut | Libc.EpollErr | Libc.EpollHup)) != 0) FlushUnsent();
                // The client ended or reset the connection while its upgrade request runs: the request
                // is aborted (RequestAborted), as Kestrel aborts a request whose connection ends.
                if ((events & (Libc.EpollRdHup | Libc.EpollErr | Libc.EpollHup)) != 0) _context?.Closed();
                break;
            case Stage.Open:
                if ((events & (Libc.EpollOut | Libc.EpollErr | Libc.EpollHup)) != 0) FlushUnsent();
                if (_stage == Stage.Open && (events & (Libc.EpollIn | Libc.EpollRdHup | Libc.EpollErr | Libc.EpollHup)) != 0) OnReadable();
                break;
        }
    }

    public void OnSecond(long now)
    {
        // RequestHeadersTimeout (or HandshakeTimeout): no complete head in time; closed quietly, as Kestrel does.
        if (_stage == Stage.Handshake && now > _headDeadline) CloseOnLoop();
    }

    public void OnLoopStopped() => CloseOnLoop();

    /// <summary>Peeks at what arrived of the first request head and decides the connection's path.</summary>
    private unsafe void OnHandshakeReadable()
    {
        var buffer = _loop.Buffer;
        nint read;
        fixed (byte* bytes = buffer) read = Libc.Recv(_fd, bytes, buffer.Length, Libc.MsgPeek);
        if (read < 0 && Libc.LastError is Libc.EAgain or Libc.EIntr) return;
        if (read <= 0)
        {
            CloseOnLoop();
            return;
        }
        var peeked = buffer.AsSpan(0, (int)read);
        switch (_factory.Handshakes.Inspect(peeked, out int headLength))
        {
            case NativeHandshakes.Verdict.NeedMore when read < buffer.Length:
                return;
            case NativeHandshakes.Verdict.Complete:
                var context = new NativeConnectionContext(this, _fd);
                if (_factory.Handshakes.Take(context, peeked[..headLength]) is { } features)
                {
                    fixed (byte* bytes = buffer) read = Libc.Recv(_fd, bytes, headLength, 0);
                    if (read != headLength)
                    {
                        CloseOnLoop();
                        return;
                    }
                    _context = context;
                    _stage = Stage.Pipeline;
                    _loop.Tick(this, false);
                    // The pipeline starts here, on the loop's thread, as handlers run (and as Bun answers an
                    // upgrade on its loop): it leaves the thread only at its first await that does not
                    // complete at once, and goes on where that completes (ConfigureAwait(false): not the loop
                    // unless the loop completed it).
                    // A hop to the thread pool for every handshake cost a wakeup and its spinning workers.
                    _ = RunPipelineAsync(features);
                    return;
                }
                HandOn();
                return;
            default:
                HandOn();
                return;
        }
    }

    /// <summary>Kestrel's from here: the descriptor leaves the loop with every byte still unread.</summary>
    private void HandOn()
    {
        _stage = Stage.Closed;
        _loop.Tick(this, false);
        _loop.Remove(_fd);
        _listener.HandOn(_fd);
    }

    /// <summary>
    /// Runs the upgrade request through the application, as Kestrel would; the connection ends with it,
    /// unless an open WebSocket took it over (<see cref="OutliveRequest"/>): then the request's
    /// connection context is let go too, and the socket closes the connection when it ends.
    /// </summary>
    private async Task RunPipelineAsync(DirectConnectionFeatures features)
    {
        var handshakes = _factory.Handshakes;
        try
        {
            if (await handshakes.Application!.ProcessRequestAsync(features).ConfigureAwait(false) is { } failure)
                handshakes.Server?.Log.DirectRequestFailed(failure, _context!.ConnectionId);
        }
        catch (Exception exception) when (exception is IOException or ConnectionAbortedException or ConnectionResetException or OperationCanceledException)
        {
            handshakes.Server?.Log.TransportEnded(0, exception.Message);
        }
        finally
        {
            if (_outlivesRequest) _context = null;
            else Close();
        }
    }

    /// <summary>Ends the connection: from any thread; the descriptor is closed on the loop.</summary>
    public void Close()
    {
        if (_loop.IsCurrent) CloseOnLoop();
        else _loop.Post(static state => ((NativeConnection)state!).CloseOnLoop(), this);
    }

    private void CloseOnLoop()
    {
        if (_stage == Stage.Closed) return;
        _stage = Stage.Closed;
        _loop.Tick(this, false);
        _loop.Remove(_fd);
        TaskCompletionSource? unsent;
        lock (SendLock)
        {
            _closed = true;
            Libc.Close(_fd);
            unsent = _sent;
            _sent = null;
            _unsent = default;
        }
        unsent?.TrySetException(new IOException("the connection was closed"));
        EndReading(null);
        Volatile.Read(ref _context)?.Closed();
    }

    /// <summary>Drops the TCP connection (any thread): the loop then sees it end.</summary>
    public void Abort()
    {
        lock (SendLock)
        {
            if (!_closed) Libc.Shutdown(_fd, Libc.ShutRdWr);
        }
        Volatile.Read(ref _context)?.Closed();
    }

    /// <summary>On the loop: registers the descriptor for what its stage and pending work need.</summary>
    private void UpdateInterest()
    {
        if (_stage == Stage.Closed) return;
        uint wanted = _stage == Stage.Open && _reading && !_paused ? Libc.EpollIn | Libc.EpollRdHup
            : _stage == Stage.Open ? Libc.EpollEt
            : HandshakeInterest;
        if (_wantOut) wanted |= Libc.EpollOut;
        if (wanted == _interest) return;
        _interest = wanted;
        _loop.Modify(_fd, wanted);
    }
}

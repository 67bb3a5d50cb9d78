using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;

namespace Realtime.Native;

/// <summary>
/// One bound TCP listener of the native transport. Its descriptor is watched by the first event loop,
/// which accepts every pending connection (non-blocking, close-on-exec) and gives each to a loop in
/// turn. Connections handed on to Kestrel come out of <see cref="AcceptAsync"/>.
/// </summary>
internal sealed class NativeListener : IConnectionListener, ILoopMember
{
    private readonly NativeTransportFactory _factory;
    private readonly Socket _socket;
    private readonly int _fd;
    private readonly EventLoop _loop;
    private readonly Channel<ConnectionContext> _handedOn = Channel.CreateUnbounded<ConnectionContext>(new UnboundedChannelOptions { SingleReader = false, SingleWriter = false });
    private int _unbound;

    public NativeListener(NativeTransportFactory factory, Socket socket, bool takesConnections)
    {
        _factory = factory;
        TakesConnections = takesConnections;
        _socket = socket;
        _fd = (int)socket.Handle;
        _loop = factory.Loops.First;
        EndPoint = socket.LocalEndPoint!;
    }

    public EndPoint EndPoint { get; }

    /// <summary>
    /// False for a listener whose connection pipeline has more than Kestrel's HTTP/1.1 server (TLS,
    /// other middleware): each of its connections goes to Kestrel as soon as it is accepted.
    /// </summary>
    public bool TakesConnections { get; }

    public void Start() => _loop.Post(static state =>
    {
        var listener = (NativeListener)state!;
        if (Volatile.Read(ref listener._unbound) == 0) listener._loop.Add(listener._fd, Libc.EpollIn, listener);
    }, this);

    /// <summary>The next connection that is Kestrel's to serve; null once unbound.</summary>
    public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            if (await _handedOn.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false) && _handedOn.Reader.TryRead(out var connection))
                return connection;
        }
        catch (OperationCanceledException)
        {
        }
        return null;
    }

    /// <summary>Called by a connection's loop: Kestrel serves this one.</summary>
    public void HandOn(int fd)
    {
        var connection = _factory.HandOff(fd);
        if (!_handedOn.Writer.TryWrite(connection)) _ = connection.DisposeAsync();
    }

    public unsafe void OnEvents(uint events)
    {
        byte* address = stackalloc byte[128];
        // Bounded, so one busy listener cannot starve the loop's connections.
        for (int i = 0; i < 256; i++)
        {
            int length = 128;
            int fd = Libc.Accept4(_fd, address, &length, Libc.SockNonblock | Libc.SockCloexec);
            if (fd < 0)
            {
                int error = Libc.LastError;
                if (error == Libc.EIntr) continue;
                // Out of descriptors: the pending connection would wake the loop again at once.
                // Stop watching the listener for a second (the backlog holds the connections meanwhile).
                if (error is Libc.EMFile or Libc.ENFile) PauseAccepting();
                return;
            }
            // Descriptors are numbered lowest first, so a high one means the process is nearly out:
            // the runtime itself aborts when it cannot get one, so the last ones are kept for it.
            if (fd >= _factory.DescriptorCeiling)
            {
                Libc.Close(fd);
                PauseAccepting();
                return;
            }
            if (_factory.NoDelay)
            {
                int on = 1;
                Libc.SetSockOpt(fd, Libc.IpProtoTcp, Libc.TcpNoDelay, &on, sizeof(int));
            }
            if (!TakesConnections)
            {
                HandOn(fd);
                continue;
            }
            var connection = new NativeConnection(_factory, this, _factory.Loops.Next(), fd);
            connection.Adopt();
        }
    }

    private void PauseAccepting()
    {
        _loop.Modify(_fd, 0);
        _loop.Tick(this, true);
    }

    public void OnSecond(long now)
    {
        _loop.Tick(this, false);
        if (Volatile.Read(ref _unbound) == 0) _loop.Modify(_fd, Libc.EpollIn);
    }

    public void OnLoopStopped() => Unbind();

    public ValueTask UnbindAsync(CancellationToken cancellationToken = default)
    {
        if (_loop.IsCurrent) Unbind();
        else _loop.Post(static state => ((NativeListener)state!).Unbind(), this);
        _handedOn.Writer.TryComplete();
        return ValueTask.CompletedTask;
    }

    private void Unbind()
    {
        if (Interlocked.Exchange(ref _unbound, 1) != 0) return;
        _loop.Remove(_fd);
        _socket.Dispose();
        _handedOn.Writer.TryComplete();
    }

    public async ValueTask DisposeAsync()
    {
        await UnbindAsync().ConfigureAwait(false);
        while (_handedOn.Reader.TryRead(out var connection)) await connection.DisposeAsync().ConfigureAwait(false);
    }
}

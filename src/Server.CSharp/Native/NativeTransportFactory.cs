using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Realtime.Native;

/// <summary>
/// Kestrel's transport when <c>UseRealtimeNativeTransport</c> is on: it binds the app's TCP listeners
/// itself and accepts on them from its event loops. A connection whose first request is a WebSocket
/// upgrade to a Realtime endpoint stays on its loop (see <see cref="NativeConnection"/>); every other
/// connection is handed to Kestrel's own socket transport, untouched, through
/// <see cref="SocketConnectionContextFactory"/>. Endpoints that are not TCP (Unix sockets, named pipes)
/// are left to the socket transport (<see cref="CanBind"/>).
/// </summary>
internal sealed class NativeTransportFactory : IConnectionListenerFactory, IConnectionListenerFactorySelector, IDisposable
{
    private readonly SocketTransportOptions _sockets;
    private readonly Lazy<EventLoops> _loops;
    private readonly SocketConnectionContextFactory _handOff;

    private readonly PlainListeners _plain;

    public NativeTransportFactory(IOptions<SocketTransportOptions> sockets, IOptions<RealtimeNativeTransportOptions> options,
        ILoggerFactory loggers, IServiceProvider services, PlainListeners plain)
    {
        _sockets = sockets.Value;
        _plain = plain;
        int count = options.Value.EventLoops > 0 ? options.Value.EventLoops : Environment.ProcessorCount;
        int burst = options.Value.ReclaimAfterAccepting;
        var quietPeriod = options.Value.ReclaimQuietPeriod > TimeSpan.Zero ? options.Value.ReclaimQuietPeriod : TimeSpan.FromSeconds(1);
        _loops = new Lazy<EventLoops>(() =>
        {
            var loops = new EventLoops(count);
            if (burst > 0)
                Reclaimer = new BurstMemoryReclaimer(() => loops.Assigned, () => loops.BusyTurns, burst, quietPeriod,
                    loggers.CreateLogger("Realtime.NativeTransport"));
            return loops;
        });
        _handOff = new SocketConnectionContextFactory(
            new SocketConnectionFactoryOptions
            {
                IOQueueCount = _sockets.IOQueueCount,
                WaitForDataBeforeAllocatingBuffer = _sockets.WaitForDataBeforeAllocatingBuffer,
                MaxReadBufferSize = _sockets.MaxReadBufferSize,
                MaxWriteBufferSize = _sockets.MaxWriteBufferSize,
                UnsafePreferInlineScheduling = _sockets.UnsafePreferInlineScheduling,
            },
            loggers.CreateLogger("Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets"));
        Handshakes = new NativeHandshakes(services);
    }

    /// <summary>What decides, for a first request, whether the connection stays native.</summary>
    public NativeHandshakes Handshakes { get; }

    public EventLoops Loops => _loops.Value;

    /// <summary>What gives back the memory an accept burst left committed (null when turned off or before the loops start).</summary>
    public BurstMemoryReclaimer? Reclaimer { get; private set; }

    public bool NoDelay => _sockets.NoDelay;

    /// <summary>
    /// Connections whose descriptor would be at or above this are refused: the last
    /// <see cref="ReservedDescriptors"/> of RLIMIT_NOFILE stay for the runtime and Kestrel.
    /// </summary>
    public int DescriptorCeiling { get; } = Math.Max(ReservedDescriptors, Libc.OpenFilesLimit() - ReservedDescriptors);

    private const int ReservedDescriptors = 256;

    /// <summary>TCP endpoints only, and only where the native transport runs.</summary>
    public bool CanBind(EndPoint endpoint) => Libc.IsSupported && endpoint is IPEndPoint;

    public ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        if (endpoint is not IPEndPoint) throw new NotSupportedException("the native transport binds TCP endpoints only");
        Socket socket;
        try
        {
            socket = _sockets.CreateBoundListenSocket(endpoint);
        }
        catch (SocketException exception) when (exception.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            throw new AddressInUseException(exception.Message, exception);
        }
        socket.Listen(_sockets.Backlog);
        socket.Blocking = false;
        var listener = new NativeListener(this, socket, takesConnections: _plain.IsPlain(endpoint));
        listener.Start();
        return new ValueTask<IConnectionListener>(listener);
    }

    /// <summary>A connection that is not a Realtime upgrade, as Kestrel's socket transport would have made it.</summary>
    public ConnectionContext HandOff(int fd)
    {
        var socket = new Socket(new SafeSocketHandle(fd, ownsHandle: true));
        return _handOff.Create(socket);
    }

    public void Dispose()
    {
        Reclaimer?.Dispose();
        if (_loops.IsValueCreated) _loops.Value.Dispose();
        _handOff.Dispose();
    }
}

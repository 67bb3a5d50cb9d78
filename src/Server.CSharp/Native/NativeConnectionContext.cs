using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http.Features;

namespace Realtime.Native;

/// <summary>
/// The connection a natively accepted upgrade request runs on, for <see cref="Direct.DirectConnectionFeatures"/>:
/// its addresses, a lifetime token, and a transport whose output sends the response straight to the
/// socket. Its input is empty: the request head was read by the loop, and after a 101 the loop reads
/// the frames itself (<see cref="NativeConnection"/>).
/// </summary>
internal sealed class NativeConnectionContext : ConnectionContext
{
    private static long _lastId;
    private readonly NativeConnection _connection;
    private CancellationTokenSource? _closed;
    private bool _ended;
    private IDictionary<object, object?>? _items;

    public NativeConnectionContext(NativeConnection connection, int fd)
    {
        _connection = connection;
        ConnectionId = "native-" + Interlocked.Increment(ref _lastId).ToString("x");
        RemoteEndPoint = Libc.EndPointOf(fd, peer: true);
        LocalEndPoint = Libc.EndPointOf(fd, peer: false);
        Transport = new Pipe(EmptyPipeReader.Instance, new NativeResponseWriter(connection));
    }

    /// <summary>The native connection under this context.</summary>
    public NativeConnection Connection => _connection;

    public override string ConnectionId { get; set; }

    public override IFeatureCollection Features { get; } = new FeatureCollection(0);

    public override IDictionary<object, object?> Items
    {
        get => _items ??= new Dictionary<object, object?>();
        set => _items = value;
    }

    public override IDuplexPipe Transport { get; set; }

    public override EndPoint? RemoteEndPoint { get; set; }

    public override EndPoint? LocalEndPoint { get; set; }

    public override CancellationToken ConnectionClosed
    {
        get
        {
            if (Volatile.Read(ref _closed) is { } closed) return closed.Token;
            Interlocked.CompareExchange(ref _closed, new CancellationTokenSource(), null);
            // Asked for after the connection ended: the token is cancelled already.
            if (Volatile.Read(ref _ended)) Cancel(_closed!);
            return _closed!.Token;
        }
        set => throw new NotSupportedException();
    }

    public override void Abort(ConnectionAbortedException abortReason) => _connection.Abort();

    /// <summary>The connection ended: requests waiting on it are aborted.</summary>
    internal void Closed()
    {
        Volatile.Write(ref _ended, true);
        if (Volatile.Read(ref _closed) is { } closed) Cancel(closed);
    }

    private static void Cancel(CancellationTokenSource closed)
    {
        try { closed.Cancel(); }
        catch (AggregateException)
        {
            // A callback registered by the application threw; the connection is over either way.
        }
    }

    private sealed class Pipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input => input;

        public PipeWriter Output => output;
    }
}

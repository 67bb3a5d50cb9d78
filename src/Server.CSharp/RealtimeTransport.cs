using System.IO.Pipelines;

namespace Realtime;

/// <summary>
/// What carries a connection's bytes: the stream returned by Kestrel's HTTP upgrade, or, for a
/// connection accepted directly by <see cref="Direct.DirectConnectionMiddleware"/>, the connection's
/// own transport pipes (no HTTP layer between them and the socket), or, for a connection held by the
/// native transport's event loop, its descriptor (read by the loop, written through <see cref="Native.NativeConnection.SendAsync"/>).
/// </summary>
internal readonly struct RealtimeTransport
{
    private RealtimeTransport(Stream? stream, IDuplexPipe? pipe, Native.NativeConnection? native = null)
    {
        Stream = stream;
        Pipe = pipe;
        Native = native;
    }

    public Native.NativeConnection? Native { get; }

    public Stream? Stream { get; }

    public IDuplexPipe? Pipe { get; }

    public static RealtimeTransport FromStream(Stream stream) => new(stream, null);

    public static RealtimeTransport FromPipe(IDuplexPipe pipe) => new(null, pipe);

    public static RealtimeTransport FromNative(Native.NativeConnection native) => new(null, null, native);
}

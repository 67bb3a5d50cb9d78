using BenchmarkDotNet.Attributes;
using Microsoft.AspNetCore.Http;
using Realtime;
using Realtime.Native;

namespace Micro;

/// <summary>
/// A native-transport connection as its event loop holds it after the 101: one end of a Unix
/// socketpair read and written by the host's own code (so every send is a real send(2)), and the
/// other end, the "client", which the benchmarks drain. The socket is the host's RealtimeSocket
/// over that connection, with the given handlers.
/// </summary>
sealed unsafe class NativePair : IDisposable
{
    readonly EventLoop loop = new(0);
    readonly int server, client;
    readonly byte[] drained = GC.AllocateUninitializedArray<byte>(256 * 1024, pinned: true);

    public NativePair(RealtimeServer realtime, RealtimeHandlers<int> handlers)
    {
        int* fds = stackalloc int[2];
        if (Libc.SocketPair(Libc.AfUnix, Libc.SockStream | Libc.SockNonblock | Libc.SockCloexec, 0, fds) != 0)
            throw new IOException($"socketpair failed (errno {Libc.LastError})");
        server = fds[0];
        client = fds[1];
        // The handshake stage's collaborators (factory, listener) are not used after the 101.
        Connection = new NativeConnection(null!, null!, loop, server);
        var endpoint = new RealtimeEndpoint<int>(realtime, "/bench", new RealtimeOptions(), handlers);
        Socket = new RealtimeSocket<int>(realtime, endpoint, handlers, new DefaultHttpContext(),
            RealtimeTransport.FromNative(Connection), null, null, 0);
    }

    public NativeConnection Connection { get; }

    public RealtimeSocket<int> Socket { get; }

    /// <summary>Reads what the server sent until <paramref name="expected"/> bytes arrived (bounded: 10 s).</summary>
    public void Drain(long expected)
    {
        long got = 0;
        long started = Environment.TickCount64;
        while (got < expected)
        {
            nint read;
            fixed (byte* bytes = drained) read = Libc.Recv(client, bytes, drained.Length, Libc.MsgDontWait);
            if (read > 0) got += read;
            else if (read == 0) throw new IOException("the server end closed");
            else if (Environment.TickCount64 - started > 10_000) throw new TimeoutException($"{got} of {expected} bytes after 10 s");
            else Thread.SpinWait(20);
        }
    }

    public void Dispose()
    {
        Libc.Close(client);
        Libc.Close(server);
        loop.Dispose();
    }
}

/// <summary>
/// The native receive path: 100 masked 32-byte text frames in the loop's buffer, fed to the socket's
/// receive step as the loop does after one recv, each delivered to a Message handler (per message).
/// The frames' mask key is zero, so unmasking in place leaves the buffer as it was and the same
/// bytes are fed on every call.
/// </summary>
[MemoryDiagnoser]
public class NativeReceive
{
    const int Messages = 100;
    RealtimeServer realtime = null!;
    NativePair pair = null!;
    byte[] frames = [];
    int delivered;

    [Params(32, 1024)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        realtime = Sockets.Server();
        pair = new NativePair(realtime, new RealtimeHandlers<int> { Message = (_, message) => delivered += message.Data.Length });
        frames = ZeroKeyFrames(Messages, Size);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        pair.Dispose();
        realtime.Dispose();
    }

    [Benchmark(OperationsPerInvoke = Messages, Description = "native receive: loop buffer → Message handler (per message)")]
    public int Receive()
    {
        delivered = 0;
        if (!pair.Socket.ReceiveNativeAsync(frames).IsCompletedSuccessfully) throw new InvalidOperationException("the receive step went asynchronous");
        if (delivered != Messages * Size) throw new InvalidOperationException($"{delivered} payload bytes delivered");
        return delivered;
    }

    /// <summary>`count` client text frames of `size` bytes of ASCII, masked with the key 0.</summary>
    public static byte[] ZeroKeyFrames(int count, int size)
    {
        int header = size < 126 ? 2 : 4;
        int frameSize = header + 4 + size;
        var buffer = new byte[count * frameSize];
        for (int f = 0; f < count; f++)
        {
            var frame = buffer.AsSpan(f * frameSize, frameSize);
            frame[0] = 0x81;
            if (size < 126) frame[1] = (byte)(0x80 | size);
            else
            {
                frame[1] = 0x80 | 126;
                frame[2] = (byte)(size >> 8);
                frame[3] = (byte)size;
            }
            for (int i = 0; i < size; i++) frame[header + 4 + i] = (byte)('a' + i % 26);
        }
        return buffer;
    }
}

/// <summary>
/// The native send path as an echo handler takes it: 100 frames in one read, each sent back by its
/// Message handler; the replies are corked while the read is dispatched and handed to the kernel in
/// one send(2) on the connection's socketpair, which the benchmark then drains (per message).
/// </summary>
[MemoryDiagnoser]
public class NativeEcho
{
    const int Messages = 100;
    RealtimeServer realtime = null!;
    NativePair pair = null!;
    byte[] frames = [];
    long replyBytes;

    [Params(32, 1024)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        realtime = Sockets.Server();
        pair = new NativePair(realtime, new RealtimeHandlers<int> { Message = (ws, message) => ws.Send(message) });
        frames = NativeReceive.ZeroKeyFrames(Messages, Size);
        replyBytes = Messages * (Size + (Size < 126 ? 2 : 4));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        pair.Dispose();
        realtime.Dispose();
    }

    [Benchmark(OperationsPerInvoke = Messages, Description = "native echo: read → handler → Send → one send(2) (per message)")]
    public long Echo()
    {
        if (!pair.Socket.ReceiveNativeAsync(frames).IsCompletedSuccessfully) throw new InvalidOperationException("the receive step went asynchronous");
        pair.Drain(replyBytes);
        return replyBytes;
    }
}

/// <summary>
/// The native send path from outside the loop (a route, a timer, another connection's handler):
/// 100 RealtimeSocket.Send calls in one Cork, written by the connection's writer on the thread pool
/// with send(2) to the socketpair, drained by the benchmark (per message).
/// </summary>
[MemoryDiagnoser]
public class NativeSend
{
    const int Messages = 100;
    RealtimeServer realtime = null!;
    NativePair pair = null!;
    byte[] payload = [];
    Action sendAll = null!;
    long frameBytes;

    [Params(32, 1024)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        realtime = Sockets.Server();
        pair = new NativePair(realtime, new RealtimeHandlers<int>());
        payload = new byte[Size];
        new Random(42).NextBytes(payload);
        frameBytes = Messages * (Size + (Size < 126 ? 2 : 4));
        var socket = pair.Socket;
        sendAll = () =>
        {
            for (int i = 0; i < Messages; i++)
                if (!socket.Send(payload).IsQueued) throw new InvalidOperationException("a send was not queued");
        };
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        pair.Dispose();
        realtime.Dispose();
    }

    [Benchmark(OperationsPerInvoke = Messages, Description = "native send: Send ×100 corked → writer → send(2) (per message)")]
    public long Send()
    {
        pair.Socket.Cork(sendAll);
        pair.Drain(frameBytes);
        Sockets.WaitUntilWritten(realtime);
        return frameBytes;
    }
}

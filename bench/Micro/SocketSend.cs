using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging.Abstractions;
using BenchmarkDotNet.Attributes;
using Realtime;

namespace Micro;

/// <summary>A transport that takes every write at once and keeps nothing: the cost measured is the host's, not a network's.</summary>
sealed class DiscardStream : Stream
{
    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => 0;
    public override long Position { get => 0; set { } }
    public override void Flush() { }
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public override int Read(byte[] buffer, int offset, int count) => 0;
    public override long Seek(long offset, SeekOrigin origin) => 0;
    public override void SetLength(long value) { }
    public override void Write(byte[] buffer, int offset, int count) { }
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => Task.CompletedTask;
}

/// <summary>
/// Open connections without a network: the host's own server, endpoint and sockets, each writing to a
/// <see cref="DiscardStream"/>. Only constructors and the public API are used, so the benchmarks
/// compile against the host however its send path is built inside.
/// </summary>
static class Sockets
{
    public static RealtimeServer Server() =>
        new(NullLogger<RealtimeServer>.Instance, new RealtimeOptions());

    public static RealtimeSocket Open(RealtimeServer server, string pattern = "/bench")
    {
        var endpoint = new RealtimeEndpoint<int>(server, pattern, new RealtimeOptions(), new RealtimeHandlers<int>());
        var socket = new RealtimeSocket<int>(server, endpoint, new RealtimeHandlers<int>(), new DefaultHttpContext(),
            RealtimeTransport.FromStream(new DiscardStream()), null, null, 0);
        server.Register(socket);
        return socket;
    }

    /// <summary>Waits (bounded) until the writers have handed every queued byte to the transport.</summary>
    public static void WaitUntilWritten(IRealtimeServer server)
    {
        var spin = new SpinWait();
        long started = Environment.TickCount64;
        while (server.BufferedBytes != 0)
        {
            if (Environment.TickCount64 - started > 10_000) throw new TimeoutException($"{server.BufferedBytes} bytes still queued after 10 s");
            spin.SpinOnce();
        }
    }
}

/// <summary>RealtimeSocket.Send(byte[]) of 100 messages in one corked batch, written to a discarding transport (per message).</summary>
[MemoryDiagnoser]
public class SocketSend
{
    const int Messages = 100;
    RealtimeServer server = null!;
    RealtimeSocket socket = null!;
    byte[] payload = [];
    Action sendAll = null!;

    [Params(32, 4096)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        server = Sockets.Server();
        socket = Sockets.Open(server);
        payload = new byte[Size];
        new Random(42).NextBytes(payload);
        sendAll = () =>
        {
            for (int i = 0; i < Messages; i++)
                if (!socket.Send(payload).IsQueued) throw new InvalidOperationException("a send was not queued");
        };
    }

    [GlobalCleanup]
    public void Cleanup() => server.Dispose();

    [Benchmark(OperationsPerInvoke = Messages, Description = "RealtimeSocket.Send(byte[]) + write (per message)")]
    public long Send()
    {
        socket.Cork(sendAll);
        Sockets.WaitUntilWritten(server);
        return socket.BufferedAmount;
    }
}

/// <summary>IRealtimeServer.Publish of one 32-byte binary message to every subscriber of a topic, until all have written it.</summary>
[MemoryDiagnoser]
public class ServerPublish
{
    RealtimeServer server = null!;
    IRealtimeServer realtime = null!;
    readonly byte[] payload = new byte[32];

    [Params(100, 1000)]
    public int Subscribers { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        server = Sockets.Server();
        realtime = server;
        for (int i = 0; i < Subscribers; i++) Sockets.Open(server).Subscribe("room");
        new Random(42).NextBytes(payload);
    }

    [GlobalCleanup]
    public void Cleanup() => server.Dispose();

    [Benchmark(Description = "IRealtimeServer.Publish(topic, 32 B) + every write")]
    public int Publish()
    {
        int queued = realtime.Publish("room", payload);
        if (queued != Subscribers) throw new InvalidOperationException($"queued to {queued} of {Subscribers}");
        Sockets.WaitUntilWritten(realtime);
        return queued;
    }
}

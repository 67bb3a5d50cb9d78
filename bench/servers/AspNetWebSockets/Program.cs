// Peer server for the Realtime benchmarks: plain ASP.NET Core System.Net.WebSockets.
//   /echo    every message goes back to its sender, same kind, same bytes.
//   /fanout  every message goes to every OTHER /fanout connection: the receiver copies the message
//            once and queues it on each other connection's unbounded channel; one writer task per
//            connection drains its channel with SendAsync, so a slow client does not block the others.
// permessage-deflate offers are accepted (DangerousEnableCompression, no server context takeover);
// System.Net.WebSockets then compresses every send on such a connection.
// Usage: AspNetWebSockets --urls http://127.0.0.1:PORT [--tls CERT.pem KEY.pem]
using System.Buffers;
using System.Collections.Concurrent;
using System.Net.WebSockets;
using System.Security.Cryptography.X509Certificates;
using System.Threading.Channels;

string? certPath = null, keyPath = null;
int tlsAt = Array.IndexOf(args, "--tls");
if (tlsAt >= 0)
{
    certPath = args[tlsAt + 1];
    keyPath = args[tlsAt + 2];
    args = args.Take(tlsAt).Concat(args.Skip(tlsAt + 3)).ToArray();
}

var builder = WebApplication.CreateBuilder(args);
builder.Logging.SetMinimumLevel(LogLevel.Warning);
if (certPath is not null && keyPath is not null)
{
    var certificate = X509Certificate2.CreateFromPemFile(certPath, keyPath);
    builder.WebHost.ConfigureKestrel(kestrel => kestrel.ConfigureHttpsDefaults(https => https.ServerCertificate = certificate));
    string urls = builder.Configuration["urls"] ?? "http://127.0.0.1:5000";
    builder.WebHost.UseUrls(urls.Replace("http://", "https://", StringComparison.OrdinalIgnoreCase));
}

var app = builder.Build();
app.UseWebSockets(new WebSocketOptions { KeepAliveInterval = TimeSpan.FromMinutes(2) });

var fanout = new ConcurrentDictionary<Peer, byte>();
const int MaxMessage = 64 * 1024 * 1024;

app.Map("/echo", async context =>
{
    if (!context.WebSockets.IsWebSocketRequest) { context.Response.StatusCode = 400; return; }
    using var socket = await context.WebSockets.AcceptWebSocketAsync(AcceptContext());
    var buffer = new MessageBuffer();
    try
    {
        while (true)
        {
            var (type, length) = await ReceiveMessage(socket, buffer);
            if (type == WebSocketMessageType.Close) break;
            await socket.SendAsync(buffer.Array.AsMemory(0, length), type, true, context.RequestAborted);
        }
        await CloseQuietly(socket);
    }
    catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException) { }
    finally { buffer.Dispose(); }
});

app.Map("/fanout", async context =>
{
    if (!context.WebSockets.IsWebSocketRequest) { context.Response.StatusCode = 400; return; }
    using var socket = await context.WebSockets.AcceptWebSocketAsync(AcceptContext());
    var peer = new Peer(socket);
    fanout[peer] = 0;
    var writer = peer.WriteLoop(context.RequestAborted);
    var buffer = new MessageBuffer();
    try
    {
        while (true)
        {
            var (type, length) = await ReceiveMessage(socket, buffer);
            if (type == WebSocketMessageType.Close) break;
            var message = new Outgoing(buffer.Array.AsSpan(0, length).ToArray(), type);
            foreach (var other in fanout.Keys)
                if (!ReferenceEquals(other, peer)) other.Queue.Writer.TryWrite(message);
        }
    }
    catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException) { }
    finally
    {
        fanout.TryRemove(peer, out _);
        peer.Queue.Writer.TryComplete();
        buffer.Dispose();
    }
    await writer;
    await CloseQuietly(socket);
});

app.MapGet("/", () => "ASP.NET Core WebSockets echo server: /echo and /fanout");
app.Run();

static WebSocketAcceptContext AcceptContext() =>
    new() { DangerousEnableCompression = true, DisableServerContextTakeover = true };

// Receives one whole message into the buffer (growing it from the pool when needed).
static async Task<(WebSocketMessageType Type, int Length)> ReceiveMessage(WebSocket socket, MessageBuffer buffer)
{
    int length = 0;
    while (true)
    {
        if (length == buffer.Array.Length)
        {
            if (length >= MaxMessage) throw new WebSocketException("message too big");
            buffer.Grow(length);
        }
        var result = await socket.ReceiveAsync(buffer.Array.AsMemory(length), CancellationToken.None);
        if (result.MessageType == WebSocketMessageType.Close) return (WebSocketMessageType.Close, 0);
        length += result.Count;
        if (result.EndOfMessage) return (result.MessageType, length);
    }
}

static async Task CloseQuietly(WebSocket socket)
{
    try
    {
        if (socket.State is WebSocketState.Open or WebSocketState.CloseReceived)
            await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, CancellationToken.None);
    }
    catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException) { }
}

sealed class MessageBuffer : IDisposable
{
    public byte[] Array { get; private set; } = ArrayPool<byte>.Shared.Rent(16 * 1024);

    public void Grow(int keep)
    {
        byte[] bigger = ArrayPool<byte>.Shared.Rent(Array.Length * 2);
        Array.AsSpan(0, keep).CopyTo(bigger);
        ArrayPool<byte>.Shared.Return(Array);
        Array = bigger;
    }

    public void Dispose() => ArrayPool<byte>.Shared.Return(Array);
}

readonly record struct Outgoing(byte[] Data, WebSocketMessageType Type);

sealed class Peer(WebSocket socket)
{
    public Channel<Outgoing> Queue { get; } = Channel.CreateUnbounded<Outgoing>(new UnboundedChannelOptions { SingleReader = true });

    public async Task WriteLoop(CancellationToken aborted)
    {
        try
        {
            await foreach (var message in Queue.Reader.ReadAllAsync(aborted))
                await socket.SendAsync(message.Data, message.Type, true, aborted);
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException) { }
    }
}

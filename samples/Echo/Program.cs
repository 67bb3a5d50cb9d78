// The fixed contract that outside conformance and throughput tools measure:
//   /echo    every text or binary message goes back to its sender, same kind, same bytes.
//   /fanout  every message goes to every other connection on /fanout (a topic publish that skips the sender).
//   /channels  the channels protocol (docs/channels-protocol.md), every channel open to everyone; with --redis,
//            histories, positions and presence are in that Redis, shared by every Echo node on it.
// Run: dotnet run -c Release --project samples/Echo -- --urls http://127.0.0.1:PORT
// With --tls, the same URLs are served over HTTPS (wss://) with a self-signed certificate made at start.
// On Linux the listeners are Realtime's native epoll transport (UseRealtimeNativeTransport): WebSocket
// connections stay on its event loops, everything else (and TLS) goes on to Kestrel. --managed keeps
// Kestrel's socket transport, with connections accepted directly by Realtime's connection middleware;
// --route (which implies --managed) sends them through the route.
// With --redis HOST:PORT, /fanout spans every Echo node on that Redis: a message sent on one node
// reaches every other /fanout connection on every node, the sender excluded, in order per sender.
// With --inline, handlers run on the socket transport's I/O thread instead of the thread pool
// (Kestrel's UnsafePreferInlineScheduling; start the process with
// DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 as well). Only for handlers that never block:
// see the README's "Inline I/O" section for what it gains and costs.
using Realtime;

bool tls = args.Contains("--tls");
// By default the listeners accept WebSocket connections directly (UseRealtimeDirectConnections):
// no HTTP middleware runs for them, which this sample has none of. --route takes them through the
// ordinary ASP.NET route instead (Kestrel's HTTP upgrade), for comparison.
bool direct = !args.Contains("--route");
bool inline = args.Contains("--inline");
// --inline is a setting of Kestrel's socket transport, so it implies --managed too.
bool native = !args.Contains("--managed") && direct && !inline;
args = args.Where(a => a is not ("--tls" or "--route" or "--inline" or "--managed")).ToArray();
// On the native transport (plain listeners) handlers run on the event loops and the thread pool is
// nearly idle: after each rare work item (a timer's tick) its workers would spin, calling sched_yield
// on the loops' cores, before they sleep (see BENCHMARKS-pinned.md, "Echo profile"). Set before the
// thread pool first runs; TLS listeners stay on Kestrel's thread-pool path, where the spin pays off.
if (native && !tls) AppContext.SetData("System.Threading.ThreadPool.UnfairSemaphoreSpinLimit", 0);

var builder = WebApplication.CreateBuilder(args);
string[] urls = (builder.Configuration["urls"] ?? "http://127.0.0.1:5000").Split(';', StringSplitOptions.RemoveEmptyEntries);
if (tls)
{
    // --tls means every listening address speaks TLS, whatever scheme --urls gave. The listeners are
    // configured here so that direct connections sit after TLS and see the decrypted bytes.
    var certificate = SelfSignedCertificate.Create("Realtime Echo");
    builder.WebHost.UseUrls();
    builder.WebHost.ConfigureKestrel(kestrel =>
    {
        foreach (var url in urls)
        {
            var address = new Uri(url.Replace("https://", "http://", StringComparison.OrdinalIgnoreCase));
            var ip = address.Host == "localhost" ? System.Net.IPAddress.Loopback : System.Net.IPAddress.Parse(address.Host);
            kestrel.Listen(ip, address.Port, listen =>
            {
                listen.UseHttps(certificate);
                if (direct) listen.UseRealtimeDirectConnections();
            });
        }
    });
}
else if (direct)
{
    builder.WebHost.UseRealtimeDirectConnections();
}
if (inline) builder.WebHost.UseSockets(sockets => sockets.UnsafePreferInlineScheduling = true);
if (native) builder.WebHost.UseRealtimeNativeTransport();
builder.Logging.SetMinimumLevel(LogLevel.Warning);
var realtime = builder.Services.AddRealtime(options =>
{
    // Large enough for the conformance suites' biggest messages (16 MiB), with room to echo them.
    options.MaxPayloadLength = 64 * 1024 * 1024;
    options.MaxBufferedAmount = 256L * 1024 * 1024;
    options.BackpressureLimit = 1024 * 1024;
    // Accept permessage-deflate offers; what arrives compressed goes back compressed.
    options.PerMessageDeflate = true;
});
string? redis = builder.Configuration["redis"] is { Length: > 0 } configured ? configured : null;
if (redis is not null) realtime.AddRedisBackplane(redis);
// After the backplane: AddRedis keeps it and puts its gap filler in front (docs/channels-redis.md).
var channels = realtime.AddRealtimeChannels();
if (redis is not null) channels.AddRedis(redis);

var app = builder.Build();

app.MapRealtime("/echo", new RealtimeHandlers<object?>
{
    Message = (ws, message) => ws.Send(message),
});

const string FanoutTopic = "fanout";
app.MapRealtime("/fanout", new RealtimeHandlers<object?>
{
    Open = ws => ws.Subscribe(FanoutTopic),
    Message = (ws, message) => ws.Publish(FanoutTopic, message.Data.Span, message.Kind, message.Compressed),
});

// No authorization callbacks: every connection may subscribe, publish and see presence in every channel.
app.MapRealtimeChannels<object?>("/channels", _ => { });

app.MapGet("/", () => "Realtime echo server: /echo, /fanout and /channels");

app.Run();

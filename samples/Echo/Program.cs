// The fixed contract that outside conformance and throughput tools measure:
//   /echo    every text or binary message goes back to its sender, same kind, same bytes.
//   /fanout  every message goes to every other connection on /fanout (a topic publish that skips the sender).
// Run: dotnet run -c Release --project samples/Echo -- --urls http://127.0.0.1:PORT
// With --tls, the same URLs are served over HTTPS (wss://) with a self-signed certificate made at start.
// With --redis HOST:PORT, /fanout spans every Echo node on that Redis: a message sent on one node
// reaches every other /fanout connection on every node, the sender excluded, in order per sender.
using Realtime;

bool tls = args.Contains("--tls");
args = args.Where(a => a != "--tls").ToArray();

var builder = WebApplication.CreateBuilder(args);
if (tls)
{
    var certificate = SelfSignedCertificate.Create();
    builder.WebHost.ConfigureKestrel(kestrel => kestrel.ConfigureHttpsDefaults(https => https.ServerCertificate = certificate));
    // --tls means every listening address speaks TLS, whatever scheme --urls gave.
    string urls = builder.Configuration["urls"] ?? "http://127.0.0.1:5000";
    builder.WebHost.UseUrls(urls.Replace("http://", "https://", StringComparison.OrdinalIgnoreCase));
}
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
if (builder.Configuration["redis"] is { Length: > 0 } redis) realtime.AddRedisBackplane(redis);

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

app.MapGet("/", () => "Realtime echo server: /echo and /fanout");

app.Run();

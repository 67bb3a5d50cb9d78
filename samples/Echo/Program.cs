// The fixed contract that outside conformance and throughput tools measure:
//   /echo    every text or binary message goes back to its sender, same kind, same bytes.
//   /fanout  every message goes to every other connection on /fanout (a topic publish that skips the sender).
// Run: dotnet run -c Release --project samples/Echo -- --urls http://127.0.0.1:PORT
using Realtime;

var builder = WebApplication.CreateBuilder(args);
builder.Logging.SetMinimumLevel(LogLevel.Warning);
builder.Services.AddRealtime(options =>
{
    // Large enough for the conformance suites' biggest messages (16 MiB), with room to echo them.
    options.MaxPayloadLength = 64 * 1024 * 1024;
    options.MaxBufferedAmount = 256L * 1024 * 1024;
    options.BackpressureLimit = 1024 * 1024;
});

var app = builder.Build();

app.MapRealtime("/echo", new RealtimeHandlers<object?>
{
    Message = (ws, message) => ws.Send(message.Data.Span, message.Kind),
});

const string FanoutTopic = "fanout";
app.MapRealtime("/fanout", new RealtimeHandlers<object?>
{
    Open = ws => ws.Subscribe(FanoutTopic),
    Message = (ws, message) => ws.Publish(FanoutTopic, message.Data.Span, message.Kind),
});

app.MapGet("/", () => "Realtime echo server: /echo and /fanout");

app.Run();

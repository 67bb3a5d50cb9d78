// The chat demo of the seeds: rooms as topics, a name from the query string, join and leave
// notices, "stop" closes the socket, "whoami" tells the sender its address as the app saw it,
// /greet beside the WebSocket endpoint on the same port.
// Run: dotnet run --project samples/Chat   (then open the printed URL in two browser windows)
// Two nodes as one: add --redis HOST:PORT to each, the second with --urls http://127.0.0.1:5081.
// Behind nginx: --behind-proxy 127.0.0.1 (see BehindProxy.cs and the README's Deployment section).
// Any option from configuration: --Realtime:MaxConnectionsPerAddress 2, or a "Realtime" section.
using Realtime;

var builder = WebApplication.CreateBuilder(args);
if (string.IsNullOrEmpty(builder.Configuration["urls"]) && string.IsNullOrEmpty(builder.Configuration["ASPNETCORE_URLS"]))
    builder.WebHost.UseUrls("http://127.0.0.1:5080");
var realtime = builder.Services.AddRealtime(options => options.IdleTimeout = TimeSpan.FromSeconds(60));
builder.Services.Configure<RealtimeOptions>(builder.Configuration.GetSection("Realtime"));
if (builder.Configuration["redis"] is { Length: > 0 } redis) realtime.AddRedisBackplane(redis);
string? proxies = builder.Configuration[BehindProxy.Key];
if (!string.IsNullOrEmpty(proxies)) builder.Services.Configure<ForwardedHeadersOptions>(options => BehindProxy.Configure(options, proxies));

var app = builder.Build();
if (!string.IsNullOrEmpty(proxies)) app.UseForwardedHeaders();
app.UseDefaultFiles();
app.UseStaticFiles();

app.MapGet("/greet", () => "Hello World!");

// An ordinary route that talks to the sockets: announce something in a room.
app.MapPost("/rooms/{room}/announce", async (string room, HttpRequest request, IRealtimeServer realtime) =>
{
    // Topic names are bounded (RealtimeOptions.MaxTopicLength, in UTF-8 bytes): check what clients send.
    if (room.Length > 40) return Results.BadRequest("a room is at most 40 characters");
    using var reader = new StreamReader(request.Body);
    var text = await reader.ReadToEndAsync();
    int delivered = realtime.Publish(RoomTopic(room), $"announcement: {text}");
    return Results.Ok(new { delivered });
});

app.MapRealtime("/chat", new RealtimeHandlers<ChatUser>
{
    Attach = http =>
    {
        string name = http.Request.Query["name"].ToString().Trim();
        string room = http.Request.Query["room"].ToString().Trim();
        if (name.Length > 40 || room.Length > 40) return Attachment<ChatUser>.Reject(400, "name and room are at most 40 characters");
        return new ChatUser(name.Length == 0 ? $"guest" : name, room.Length == 0 ? "lobby" : room, http.Request.IsHttps ? "wss" : "ws");
    },
    Open = ws =>
    {
        ws.Send("connected to WebSocket server");
        ws.Subscribe(RoomTopic(ws.Data.Room));
        ws.Publish(RoomTopic(ws.Data.Room), $"{ws.Data.Name} joined {ws.Data.Room}");
    },
    Message = (ws, message) =>
    {
        if (message.IsText && message.Text == "stop")
        {
            ws.Close(1000, "stop requested");
            return;
        }
        if (message.IsText && message.Text == "whoami")
        {
            // To the sender only: the address and scheme the app saw (the client's, behind a trusted proxy).
            ws.Send($"you are {ws.Data.Name} in {ws.Data.Room}, connected from {ws.RemoteAddress} over {ws.Data.Scheme}");
            return;
        }
        // Everyone in the room sees the message, the sender included (as in the seed's broadcast).
        app.Services.GetRequiredService<IRealtimeServer>().Publish(RoomTopic(ws.Data.Room), $"{ws.Data.Name}: {message}");
    },
    Close = (ws, code, reason) => ws.Publish(RoomTopic(ws.Data.Room), $"{ws.Data.Name} left {ws.Data.Room}"),
});

app.Lifetime.ApplicationStarted.Register(() =>
{
    foreach (var url in app.Urls) Console.WriteLine($"Chat is running: open {url}/ in two browser windows.");
});

app.Run();

static string RoomTopic(string room) => $"room:{room}";

/// <summary>Who is on the other end of a chat socket, and whether it came over TLS (Scheme "wss") or not ("ws"), as the app saw the upgrade request.</summary>
internal sealed record ChatUser(string Name, string Room, string Scheme);

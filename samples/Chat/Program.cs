// The chat demo of the seeds. The page (wwwroot/index.html) runs on channels (/channels, package
// Realtime.Channels): each room is a channel whose history lets a page that reconnects recover what it
// missed, exactly once and in order, and whose presence shows who is in the room. The raw endpoint of
// the seeds stays at /chat: rooms as topics, a name from the query string, join and leave notices,
// "stop" closes the socket, "whoami" tells the sender its address as the app saw it; /greet beside
// them on the same port.
// Run: dotnet run --project samples/Chat   (then open the printed URL in two browser windows)
// Two nodes as one: add --redis HOST:PORT to each, the second with --urls http://127.0.0.1:5081: the
// backplane joins their topics, and channel history and presence live in Redis, so a page recovers
// from any node and across a node's restart.
// Behind nginx: --behind-proxy 127.0.0.1 (see BehindProxy.cs and the README's Deployment section).
// Any option from configuration: --Realtime:MaxConnectionsPerAddress 2, or a "Realtime" section.
// With --tls it serves HTTPS (a self-signed certificate made at start) with Kestrel's defaults, HTTP/1.1
// and HTTP/2: a browser then loads the page over HTTP/2 and opens its wss:// socket on that same
// connection (RFC 8441). Every address, given as http:// or https://, is served over TLS.
// With --native (Linux) the plain listeners are Realtime's native epoll transport (see samples/Echo and
// the README's "Native transport"); TLS listeners stay on Kestrel's.
using Realtime;
using Realtime.Channels;

bool tls = args.Contains("--tls");
bool native = args.Contains("--native");
args = args.Where(a => a is not ("--tls" or "--native")).ToArray();

var builder = WebApplication.CreateBuilder(args);
string urls = builder.Configuration["urls"] is { Length: > 0 } given ? given
    : builder.Configuration["ASPNETCORE_URLS"] is { Length: > 0 } environment ? environment
    : "http://127.0.0.1:5080";
if (tls)
{
    var certificate = SelfSignedCertificate.Create("Realtime Chat");
    builder.WebHost.ConfigureKestrel(kestrel => kestrel.ConfigureHttpsDefaults(https => https.ServerCertificate = certificate));
    urls = urls.Replace("http://", "https://", StringComparison.OrdinalIgnoreCase);
}
builder.WebHost.UseUrls(urls.Split(';', StringSplitOptions.RemoveEmptyEntries));
if (native) builder.WebHost.UseRealtimeNativeTransport();
var realtime = builder.Services.AddRealtime(options => options.IdleTimeout = TimeSpan.FromSeconds(60));
builder.Services.Configure<RealtimeOptions>(builder.Configuration.GetSection("Realtime"));
var channels = realtime.AddRealtimeChannels();
if (builder.Configuration["redis"] is { Length: > 0 } redis)
{
    realtime.AddRedisBackplane(redis);
    channels.AddRedis(redis);
}
string? proxies = builder.Configuration[BehindProxy.Key];
if (!string.IsNullOrEmpty(proxies)) builder.Services.Configure<ForwardedHeadersOptions>(options => BehindProxy.Configure(options, proxies));

var app = builder.Build();
if (!string.IsNullOrEmpty(proxies)) app.UseForwardedHeaders();
app.UseDefaultFiles();
app.UseStaticFiles();

app.MapGet("/greet", () => "Hello World!");

// An ordinary route that talks to the sockets: announce something in a room, to the raw endpoint's
// topic and to the pages' channel (with a position and history, like a page's message).
app.MapPost("/rooms/{room}/announce", async (string room, HttpRequest request, IRealtimeServer realtime, IRealtimeChannels channels) =>
{
    // Topic names are bounded (RealtimeOptions.MaxTopicLength, in UTF-8 bytes): check what clients send.
    if (room.Length > 40) return Results.BadRequest("a room is at most 40 characters");
    using var reader = new StreamReader(request.Body);
    var text = await reader.ReadToEndAsync();
    int delivered = realtime.Publish(RoomTopic(room), $"announcement: {text}");
    var position = await channels.PublishAsync(RoomTopic(room), new { name = "announcement", text });
    return Results.Ok(new { delivered, offset = position.Offset });
});

// The page's endpoint: a connection may subscribe, publish and see presence in its own room only.
app.MapRealtimeChannels<ChatUser>("/channels", handlers =>
{
    handlers.Attach = AttachUser;
    handlers.CanSubscribe = (connection, channel) => channel == RoomTopic(connection.Data.Room);
    handlers.CanPublish = (connection, channel) => channel == RoomTopic(connection.Data.Room);
    handlers.CanSeePresence = (connection, channel) => channel == RoomTopic(connection.Data.Room);
    handlers.PresenceInfo = connection => new { name = connection.Data.Name };
    handlers.Requests["greeting"] = (connection, _) =>
        ValueTask.FromResult<object?>($"connected to WebSocket server over {connection.HttpContext.Request.Protocol}");
    handlers.Requests["whoami"] = (connection, _) =>
        ValueTask.FromResult<object?>($"you are {connection.Data.Name} in {connection.Data.Room}, connected from {connection.Socket.RemoteAddress} over {connection.Data.Scheme}");
});

app.MapRealtime("/chat", new RealtimeHandlers<ChatUser>
{
    Attach = AttachUser,
    Open = ws =>
    {
        ws.Send($"connected to WebSocket server over {ws.HttpContext.Request.Protocol}");
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

static Attachment<ChatUser> AttachUser(HttpContext http)
{
    string name = http.Request.Query["name"].ToString().Trim();
    string room = http.Request.Query["room"].ToString().Trim();
    if (name.Length > 40 || room.Length > 40) return Attachment<ChatUser>.Reject(400, "name and room are at most 40 characters");
    return new ChatUser(name.Length == 0 ? "guest" : name, room.Length == 0 ? "lobby" : room, http.Request.IsHttps ? "wss" : "ws");
}

/// <summary>Who is on the other end of a chat socket, and whether it came over TLS (Scheme "wss") or not ("ws"), as the app saw the upgrade request.</summary>
internal sealed record ChatUser(string Name, string Room, string Scheme);

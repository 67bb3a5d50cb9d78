// A dev server for a folder of static files, with live reload and a small plugin.
// Run: dotnet run --project samples/DevServer -- ./site   (then open the printed URL; edit the files)
//      Options: --urls http://127.0.0.1:PORT
//               --allowed-hosts mybox.lan,192.168.1.20   (more Host names it answers to: a LAN or a container)
//               --native   (Linux: the listeners are Realtime's native epoll transport, see the README)
using System.Reflection;
using Realtime;

bool native = args.Contains("--native");
args = args.Where(a => a != "--native").ToArray();
string folder = args.FirstOrDefault(a => !a.StartsWith('-') && !IsOptionValue(a)) ?? "site";
string root = ResolveFolder(folder);

var builder = WebApplication.CreateBuilder(args.Where(a => a != folder).ToArray());
if (native) builder.WebHost.UseRealtimeNativeTransport();
if (string.IsNullOrEmpty(builder.Configuration["urls"]) && string.IsNullOrEmpty(builder.Configuration["ASPNETCORE_URLS"]))
    builder.WebHost.UseUrls("http://127.0.0.1:8000");
builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
builder.Services.AddRealtime();

var app = builder.Build();

// Closed to other sites by default: localhost names and the addresses it listens on only.
string[] allowedHosts = (builder.Configuration["allowed-hosts"] ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

var devServer = app.UseRealtimeDevServer(root, watch: true, allowedHosts: allowedHosts, plugins: new[]
{
    new RealtimePlugin
    {
        Name = "hello",
        InjectWebSocket = true,
        // Greets each page in its console when it connects, and answers its "hello" requests.
        ServerStart = ctx =>
        {
            ctx.WebSockets.Opened += socket => ctx.WebSockets.SendConsoleLogTo(socket, "Hello from the Realtime dev server!");
            ctx.WebSockets.Message += e =>
            {
                if (e.Type == "hello" && e.ExpectsResponse) e.Respond(new { greeting = $"Hello, {e.Data.GetProperty("name").GetString()}!", at = DateTimeOffset.Now });
            };
        },
        // A virtual module: nothing on disk.
        Serve = ctx => ctx.Path == "/virtual/version.js" ? $"export const version = '{typeof(RealtimePlugin).Assembly.GetName().Version}';" : null,
    },
});

app.Lifetime.ApplicationStarted.Register(() =>
{
    foreach (var url in app.Urls) Console.WriteLine($"Serving {devServer.RootPath} at {url}/ with live reload.");
});

app.Run();

// `--urls X` style options: their value is not the folder.
bool IsOptionValue(string arg)
{
    int at = Array.IndexOf(args, arg);
    return at > 0 && args[at - 1].StartsWith("--") && !args[at - 1].Contains('=');
}

static string ResolveFolder(string folder)
{
    if (Directory.Exists(folder)) return Path.GetFullPath(folder);
    string? project = Assembly.GetEntryAssembly()?
        .GetCustomAttributes<AssemblyMetadataAttribute>().FirstOrDefault(a => a.Key == "ProjectDirectory")?.Value;
    if (project is not null && !Path.IsPathRooted(folder) && Directory.Exists(Path.Combine(project, folder)))
        return Path.GetFullPath(Path.Combine(project, folder));
    Console.Error.WriteLine($"No folder {folder}.");
    Environment.Exit(2);
    return folder;
}

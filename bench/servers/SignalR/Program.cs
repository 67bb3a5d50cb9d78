// Peer server for the Realtime benchmarks: an ASP.NET Core SignalR hub at /hub (JSON protocol,
// WebSockets transport; clients skip negotiation).
//   Echo(message)    → the caller gets "echo" with the same string.
//   Fanout(message)  → every OTHER connection (Clients.Others) gets "fanout" with the same string.
// permessage-deflate: SignalR has no option to negotiate it, so the compressed cells are n/a.
// Usage: SignalRServer --urls http://127.0.0.1:PORT [--tls CERT.pem KEY.pem]
using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.SignalR;

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
builder.Services.AddSignalR(options =>
{
    options.MaximumReceiveMessageSize = 64 * 1024 * 1024;
    // The idle-connections scenario holds silent connections for longer than the 30 s default.
    options.ClientTimeoutInterval = TimeSpan.FromMinutes(10);
    options.KeepAliveInterval = TimeSpan.FromMinutes(2);
});

var app = builder.Build();
app.MapHub<BenchHub>("/hub");
app.MapGet("/", () => "SignalR echo server: hub at /hub with Echo and Fanout");
app.Run();

/// <summary>The benchmark hub: Echo answers the caller, Fanout reaches everyone else.</summary>
public sealed class BenchHub : Hub
{
    /// <summary>Sends the message back to the caller.</summary>
    public Task Echo(string message) => Clients.Caller.SendAsync("echo", message);

    /// <summary>Sends the message to every other connection.</summary>
    public Task Fanout(string message) => Clients.Others.SendAsync("fanout", message);
}

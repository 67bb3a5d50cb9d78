using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.StaticFiles;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.FileProviders;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Realtime.DevServer;

namespace Realtime;

/// <summary>
/// A dev server inside an ASP.NET Core app (made by <c>app.UseRealtimeDevServer(...)</c>): serves a
/// folder of static files, runs <see cref="RealtimePlugin"/>s, injects the browser client into HTML
/// pages and carries the plugins' messages over an ordinary Realtime endpoint.
/// </summary>
public sealed class RealtimeDevServer
{
    /// <summary>Where the browser client (an ES module, an embedded resource of Realtime.DevServer) is served.</summary>
    public const string ClientPath = "/__realtime__/client.js";

    /// <summary>The Realtime endpoint the browser client connects to.</summary>
    public const string WebSocketPath = "/__realtime__/ws";

    private static readonly Lazy<byte[]> s_client = new(() => Resource("Realtime.DevServer.client.js"));
    private readonly PhysicalFileProvider _files;
    private readonly FileExtensionContentTypeProvider _types = new();
    private readonly ILoggerFactory _loggers;
    private readonly ILogger _logger;
    private readonly Dictionary<RealtimePlugin, ILogger> _pluginLoggers = [];
    private readonly DevServerAccess _access;
    private readonly DevServerPaths _paths;

    internal RealtimeDevServer(string rootPath, IReadOnlyList<RealtimePlugin> plugins, DevServerWebSockets webSockets, ILoggerFactory loggers, DevServerAccess access, IReadOnlyList<string> allowedHosts)
    {
        RootPath = rootPath;
        Plugins = plugins;
        WebSockets = webSockets;
        AllowedHosts = allowedHosts;
        _access = access;
        _paths = new DevServerPaths(rootPath);
        _loggers = loggers;
        _logger = loggers.CreateLogger("Realtime.DevServer");
        _files = new PhysicalFileProvider(rootPath);
        foreach (var plugin in plugins) _pluginLoggers[plugin] = loggers.CreateLogger("Realtime.DevServer." + plugin.Name);
    }

    /// <summary>The full path of the folder served.</summary>
    public string RootPath { get; }

    /// <summary>The plugins, in the order their hooks run (the built-in watch plugin last when enabled).</summary>
    public IReadOnlyList<RealtimePlugin> Plugins { get; }

    /// <summary>
    /// The hosts allowed besides localhost names and the addresses the server listens on (the
    /// <c>allowedHosts</c> of <c>UseRealtimeDevServer</c>; <c>"*"</c> allows any).
    /// </summary>
    public IReadOnlyList<string> AllowedHosts { get; }

    /// <summary>The web-sockets manager the plugins receive.</summary>
    public DevServerWebSockets WebSockets { get; }

    /// <summary>True when a plugin sets <see cref="RealtimePlugin.InjectWebSocket"/>: HTML pages get the client.</summary>
    public bool InjectsClient => Plugins.Any(p => p.InjectWebSocket);

    /// <summary>
    /// Inserts <paramref name="tag"/> into an HTML page: before the last <c>&lt;/body&gt;</c>, else
    /// before the last <c>&lt;/head&gt;</c>, else at the end.
    /// </summary>
    public static string InjectIntoHtml(string html, string tag)
    {
        ArgumentNullException.ThrowIfNull(html);
        ArgumentNullException.ThrowIfNull(tag);
        int at = html.LastIndexOf("</body>", StringComparison.OrdinalIgnoreCase);
        if (at < 0) at = html.LastIndexOf("</head>", StringComparison.OrdinalIgnoreCase);
        return at < 0 ? html + tag : html.Insert(at, tag);
    }

    internal static byte[] Resource(string name)
    {
        using var stream = typeof(RealtimeDevServer).Assembly.GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"Embedded resource {name} is missing from Realtime.DevServer.");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }

    internal ILogger LoggerOf(RealtimePlugin plugin) => _pluginLoggers[plugin];

    internal void Start(IServiceProvider services, CancellationToken stopping)
    {
        _logger.Serving(RootPath, string.Join(", ", Plugins.Select(p => p.Name)));
        foreach (var plugin in Plugins)
            if (plugin.ServerStart is { } start)
                Run(plugin, nameof(RealtimePlugin.ServerStart), () => start(new DevServerStartContext(WebSockets, services, LoggerOf(plugin), RootPath, stopping)));
    }

    internal void Stop(IServiceProvider services, CancellationToken stopping)
    {
        foreach (var plugin in Plugins)
            if (plugin.ServerStop is { } stop)
                Run(plugin, nameof(RealtimePlugin.ServerStop), () => stop(new DevServerStartContext(WebSockets, services, LoggerOf(plugin), RootPath, stopping)));
    }

    private void Run(RealtimePlugin plugin, string hook, Action action)
    {
        try
        {
            action();
        }
        catch (Exception exception)
        {
            _logger.HookFailed(exception, plugin.Name, hook);
        }
    }

    /// <summary>
    /// The middleware: a request with a Host the dev server does not answer to gets 403; then the
    /// client, the plugins' Serve hooks, then the static files; anything else goes on.
    /// </summary>
    internal async Task InvokeAsync(HttpContext http, RequestDelegate next)
    {
        var request = http.Request;
        if (!_access.IsHostAllowed(request))
        {
            _logger.HostRefused(request.Host.Value ?? "", request.Path.Value ?? "");
            await RefuseAsync(http, "Host not allowed: this dev server answers to localhost and the addresses it listens on (see allowedHosts).");
            return;
        }
        if (http.GetEndpoint() is not null || !(HttpMethods.IsGet(request.Method) || HttpMethods.IsHead(request.Method)))
        {
            await next(http);
            return;
        }
        string path = request.Path.HasValue ? request.Path.Value! : "/";

        if (path == ClientPath)
        {
            await WriteAsync(http, "text/javascript; charset=utf-8", s_client.Value);
            return;
        }

        foreach (var plugin in Plugins)
        {
            if (plugin.Serve is not { } serve) continue;
            var context = new DevServerRequestContext(http, path, WebSockets, LoggerOf(plugin), null);
            string? body;
            try
            {
                body = serve(context);
            }
            catch (Exception exception)
            {
                _logger.HookFailed(exception, plugin.Name, nameof(RealtimePlugin.Serve));
                http.Response.StatusCode = StatusCodes.Status500InternalServerError;
                return;
            }
            if (body is null) continue;
            string type = context.ContentType ?? TypeOf(path) ?? "text/plain; charset=utf-8";
            await WriteTextAsync(http, path, type, body);
            return;
        }

        if (DevServerPaths.HasDotSegment(path))
        {
            http.Response.StatusCode = StatusCodes.Status404NotFound;
            return;
        }

        var file = _files.GetFileInfo(path);
        if (file.Exists && file.IsDirectory)
        {
            if (!path.EndsWith('/'))
            {
                http.Response.Redirect(request.PathBase + path + "/" + request.QueryString);
                return;
            }
            path += "index.html";
            file = _files.GetFileInfo(path);
        }
        else if (!file.Exists && path.EndsWith('/'))
        {
            path += "index.html";
            file = _files.GetFileInfo(path);
        }
        if (!file.Exists || file.IsDirectory || file.PhysicalPath is null)
        {
            await next(http);
            return;
        }
        if (!_paths.IsInside(file.PhysicalPath))
        {
            http.Response.StatusCode = StatusCodes.Status404NotFound;
            return;
        }

        string contentType = TypeOf(path) ?? "application/octet-stream";
        if (IsText(contentType))
        {
            string? text = await ReadTextAsync(file.PhysicalPath, http.RequestAborted);
            if (text is null)
            {
                await next(http);
                return;
            }
            await WriteTextAsync(http, path, contentType, text);
        }
        else
        {
            NoCache(http.Response);
            http.Response.ContentType = contentType;
            http.Response.ContentLength = file.Length;
            if (!HttpMethods.IsHead(request.Method)) await http.Response.SendFileAsync(file, http.RequestAborted);
        }
    }

    private async Task WriteTextAsync(HttpContext http, string path, string contentType, string body)
    {
        foreach (var plugin in Plugins)
        {
            if (plugin.Transform is not { } transform) continue;
            var context = new DevServerTransformContext(http, path, WebSockets, LoggerOf(plugin), contentType, body);
            try
            {
                body = transform(context) ?? body;
                contentType = context.ContentType ?? contentType;
            }
            catch (Exception exception)
            {
                _logger.HookFailed(exception, plugin.Name, nameof(RealtimePlugin.Transform));
                http.Response.StatusCode = StatusCodes.Status500InternalServerError;
                return;
            }
        }
        if (contentType.StartsWith("text/html", StringComparison.OrdinalIgnoreCase) && InjectsClient)
            body = InjectIntoHtml(body, $"<script type=\"module\" src=\"{http.Request.PathBase}{ClientPath}\"></script>");
        await WriteAsync(http, contentType, Encoding.UTF8.GetBytes(body));
    }

    private static async Task RefuseAsync(HttpContext http, string reason)
    {
        http.Response.StatusCode = StatusCodes.Status403Forbidden;
        await WriteAsync(http, "text/plain; charset=utf-8", Encoding.UTF8.GetBytes(reason));
    }

    private static async Task WriteAsync(HttpContext http, string contentType, byte[] body)
    {
        NoCache(http.Response);
        http.Response.ContentType = contentType;
        http.Response.ContentLength = body.Length;
        if (!HttpMethods.IsHead(http.Request.Method)) await http.Response.Body.WriteAsync(body, http.RequestAborted);
    }

    // Pages and modules change while developing: the browser asks again every time.
    private static void NoCache(HttpResponse response) => response.Headers.CacheControl = "no-cache";

    private string? TypeOf(string path)
    {
        if (!_types.TryGetContentType(path, out var type)) return null;
        return IsText(type) && !type.Contains("charset", StringComparison.OrdinalIgnoreCase) ? type + "; charset=utf-8" : type;
    }

    private static bool IsText(string contentType) =>
        contentType.StartsWith("text/", StringComparison.OrdinalIgnoreCase)
        || contentType.Contains("javascript", StringComparison.OrdinalIgnoreCase)
        || contentType.Contains("json", StringComparison.OrdinalIgnoreCase)
        || contentType.Contains("xml", StringComparison.OrdinalIgnoreCase);

    // An editor may be writing the file right now: a few short retries.
    private static async Task<string?> ReadTextAsync(string physicalPath, CancellationToken cancel)
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                return await File.ReadAllTextAsync(physicalPath, cancel);
            }
            catch (FileNotFoundException)
            {
                return null;
            }
            catch (IOException) when (attempt < 5)
            {
                await Task.Delay(20, cancel);
            }
        }
    }

    // Checked here as well as in the middleware, so that however a socket is accepted it passes both.
    private Attachment<object?> Admit(HttpContext http)
    {
        var request = http.Request;
        if (!_access.IsHostAllowed(request))
        {
            _logger.HostRefused(request.Host.Value ?? "", request.Path.Value ?? "");
            return Attachment<object?>.Reject(StatusCodes.Status403Forbidden, "Host not allowed");
        }
        if (!DevServerAccess.IsOriginAllowed(request))
        {
            _logger.OriginRefused(request.Headers.Origin.ToString(), request.Host.Value ?? "");
            return Attachment<object?>.Reject(StatusCodes.Status403Forbidden, "Origin not allowed: only the dev server's own pages may connect");
        }
        return Attachment<object?>.Accept(null);
    }

    internal RealtimeHandlers<object?> Handlers() => new()
    {
        Attach = Admit,
        Open = WebSockets.Add,
        Message = WebSockets.Receive,
        Close = (ws, _, _) => WebSockets.Remove(ws),
    };
}

using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Realtime;

/// <summary>What <see cref="RealtimePlugin.ServerStart"/> and <see cref="RealtimePlugin.ServerStop"/> receive.</summary>
public sealed class DevServerStartContext
{
    internal DevServerStartContext(DevServerWebSockets webSockets, IServiceProvider services, ILogger logger, string rootPath, CancellationToken stopping)
    {
        WebSockets = webSockets;
        Services = services;
        Logger = logger;
        RootPath = rootPath;
        Stopping = stopping;
    }

    /// <summary>The web-sockets manager: send to the browsers, listen to their messages.</summary>
    public DevServerWebSockets WebSockets { get; }

    /// <summary>The application's services.</summary>
    public IServiceProvider Services { get; }

    /// <summary>A logger for this plugin (category <c>Realtime.DevServer.{Name}</c>).</summary>
    public ILogger Logger { get; }

    /// <summary>The full path of the folder of static files the dev server serves.</summary>
    public string RootPath { get; }

    /// <summary>Canceled when the application starts stopping (for timers and background work a plugin starts).</summary>
    public CancellationToken Stopping { get; }
}

/// <summary>What <see cref="RealtimePlugin.Serve"/> receives: one request.</summary>
public class DevServerRequestContext
{
    internal DevServerRequestContext(HttpContext httpContext, string path, DevServerWebSockets webSockets, ILogger logger, string? contentType)
    {
        HttpContext = httpContext;
        Path = path;
        WebSockets = webSockets;
        Logger = logger;
        ContentType = contentType;
    }

    /// <summary>The request path (without the query), for example <c>/foo.js</c>.</summary>
    public string Path { get; }

    /// <summary>The HTTP context of the request.</summary>
    public HttpContext HttpContext { get; }

    /// <summary>The request's services.</summary>
    public IServiceProvider Services => HttpContext.RequestServices;

    /// <summary>The web-sockets manager.</summary>
    public DevServerWebSockets WebSockets { get; }

    /// <summary>A logger for this plugin (category <c>Realtime.DevServer.{Name}</c>).</summary>
    public ILogger Logger { get; }

    /// <summary>
    /// The response's content type. In <see cref="RealtimePlugin.Serve"/> it starts null (the type
    /// then comes from the path's extension); set it to choose another.
    /// </summary>
    public string? ContentType { get; set; }
}

/// <summary>What <see cref="RealtimePlugin.Transform"/> receives: a text response about to be sent.</summary>
public sealed class DevServerTransformContext : DevServerRequestContext
{
    internal DevServerTransformContext(HttpContext httpContext, string path, DevServerWebSockets webSockets, ILogger logger, string contentType, string body)
        : base(httpContext, path, webSockets, logger, contentType)
    {
        Body = body;
    }

    /// <summary>The body as served so far (after the previous plugins' transforms).</summary>
    public string Body { get; }
}

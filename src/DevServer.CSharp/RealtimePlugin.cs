namespace Realtime;

/// <summary>
/// A dev-server plugin, written as C# lambdas (the hooks of @web/dev-server plugins). Every hook is
/// optional. Hooks run in the order the plugins were given; an exception in a hook is logged and
/// does not stop the server.
/// </summary>
public sealed class RealtimePlugin
{
    /// <summary>The plugin's name, used in logs (logger category <c>Realtime.DevServer.{Name}</c>).</summary>
    public string Name { get; init; } = "plugin";

    /// <summary>
    /// When any plugin sets this, the dev server injects its browser client
    /// (<see cref="RealtimeDevServer.ClientPath"/>) into every HTML page it serves, and the pages
    /// connect to <see cref="RealtimeDevServer.WebSocketPath"/>.
    /// </summary>
    public bool InjectWebSocket { get; init; }

    /// <summary>Runs once when the server has started, with the web-sockets manager, the app's services and a logger.</summary>
    public Action<DevServerStartContext>? ServerStart { get; init; }

    /// <summary>Runs once when the server is stopping, before the open sockets are closed.</summary>
    public Action<DevServerStartContext>? ServerStop { get; init; }

    /// <summary>
    /// Answers a GET or HEAD request with content (a virtual module such as <c>/foo.js</c>, a virtual
    /// page, ...), or returns null to leave the request to the next plugin and then to the static files.
    /// The content type comes from the path's extension unless the hook sets
    /// <see cref="DevServerRequestContext.ContentType"/>.
    /// </summary>
    public Func<DevServerRequestContext, string?>? Serve { get; init; }

    /// <summary>
    /// Rewrites a text response the dev server serves (static file or a <see cref="Serve"/> answer):
    /// returns the new body, or null to keep <see cref="DevServerTransformContext.Body"/>. Transforms
    /// run in plugin order, each seeing the previous one's result, before the client is injected.
    /// </summary>
    public Func<DevServerTransformContext, string?>? Transform { get; init; }

    /// <inheritdoc />
    public override string ToString() => $"RealtimePlugin {Name}";
}

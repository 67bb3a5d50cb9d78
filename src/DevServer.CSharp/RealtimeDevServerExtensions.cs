using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Realtime;
using Realtime.DevServer;

namespace Microsoft.AspNetCore.Builder
{
    /// <summary>Adds the Realtime dev server to an application.</summary>
    public static class RealtimeDevServerExtensions
    {
        /// <summary>
        /// Serves the static files of <paramref name="root"/> (index.html for folders, no caching),
        /// runs <paramref name="plugins"/> (their <c>Serve</c> answers first), injects the browser
        /// client into HTML pages when a plugin sets <c>InjectWebSocket</c>, and maps the client's
        /// WebSocket endpoint at <see cref="RealtimeDevServer.WebSocketPath"/> with
        /// <c>MapRealtime</c>. Routes the app maps take precedence over the files. Needs
        /// <c>builder.Services.AddRealtime()</c>.
        /// <para>
        /// Closed to other sites: a request (page, file or socket) whose <c>Host</c> is not a
        /// localhost name (<c>localhost</c>, <c>*.localhost</c>, 127.0.0.0/8, <c>[::1]</c>), an
        /// address the server listens on, or one of <paramref name="allowedHosts"/> gets 403, and so
        /// does a socket whose <c>Origin</c> is not the dev server's own. Names starting with a
        /// dot (<c>/.git/config</c>, <c>/.env</c>) and symbolic links leading out of the folder
        /// are not served (404).
        /// </para>
        /// </summary>
        /// <param name="app">The application.</param>
        /// <param name="root">The folder to serve; a relative path is relative to the content root.</param>
        /// <param name="plugins">The plugins, in the order their hooks run.</param>
        /// <param name="watch">
        /// Adds the built-in watch plugin (<see cref="RealtimePlugins.Watch"/>): pages reload when a
        /// file they use changes, stylesheets are swapped in place.
        /// </param>
        /// <param name="allowedHosts">
        /// More host names the dev server answers to, on any port, for a LAN or a container (for
        /// example <c>"mybox.lan"</c>, <c>"192.168.1.20"</c>, <c>"*.example.test"</c> for its
        /// subdomains). <c>"*"</c> allows any host: unsafe, it lets any site that points its own
        /// name at this machine (DNS rebinding) read the files and use the socket from its pages.
        /// </param>
        /// <returns>The dev server, whose <see cref="RealtimeDevServer.WebSockets"/> routes may use too.</returns>
        /// <exception cref="ArgumentException">An allowed host is empty or not a host name or IP address.</exception>
        public static RealtimeDevServer UseRealtimeDevServer(this WebApplication app, string root, IEnumerable<RealtimePlugin>? plugins = null, bool watch = false, IEnumerable<string>? allowedHosts = null)
        {
            ArgumentNullException.ThrowIfNull(app);
            ArgumentNullException.ThrowIfNull(root);
            var server = app.Services.GetService<IRealtimeServer>()
                ?? throw new InvalidOperationException("Call builder.Services.AddRealtime() before UseRealtimeDevServer.");
            string rootPath = Path.GetFullPath(Path.Combine(app.Environment.ContentRootPath, root));
            if (!Directory.Exists(rootPath)) throw new DirectoryNotFoundException($"The dev server's root folder {rootPath} does not exist.");

            var list = (plugins ?? []).ToList();
            if (list.Any(p => p is null)) throw new ArgumentException("A plugin is null.", nameof(plugins));
            if (watch) list.Add(RealtimePlugins.Watch());

            var loggers = app.Services.GetRequiredService<ILoggerFactory>();
            var webSockets = new DevServerWebSockets(server, loggers.CreateLogger("Realtime.DevServer"));
            var hosts = DevServerAccess.Validate(allowedHosts);
            var access = new DevServerAccess(app.Services.GetService<IServer>(), hosts);
            var devServer = new RealtimeDevServer(rootPath, list, webSockets, loggers, access, hosts);

            app.MapRealtime(RealtimeDevServer.WebSocketPath, devServer.Handlers());
            app.Use((context, next) => devServer.InvokeAsync(context, next));

            var lifetime = app.Lifetime;
            lifetime.ApplicationStarted.Register(() => devServer.Start(app.Services, lifetime.ApplicationStopping));
            lifetime.ApplicationStopping.Register(() => devServer.Stop(app.Services, lifetime.ApplicationStopping));
            return devServer;
        }
    }
}

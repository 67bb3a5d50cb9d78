using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Realtime;

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
        /// </summary>
        /// <param name="app">The application.</param>
        /// <param name="root">The folder to serve; a relative path is relative to the content root.</param>
        /// <param name="plugins">The plugins, in the order their hooks run.</param>
        /// <param name="watch">
        /// Adds the built-in watch plugin (<see cref="RealtimePlugins.Watch"/>): pages reload when a
        /// file they use changes, stylesheets are swapped in place.
        /// </param>
        /// <returns>The dev server, whose <see cref="RealtimeDevServer.WebSockets"/> routes may use too.</returns>
        public static RealtimeDevServer UseRealtimeDevServer(this WebApplication app, string root, IEnumerable<RealtimePlugin>? plugins = null, bool watch = false)
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
            var devServer = new RealtimeDevServer(rootPath, list, webSockets, loggers);

            app.MapRealtime(RealtimeDevServer.WebSocketPath, devServer.Handlers());
            app.Use((context, next) => devServer.InvokeAsync(context, next));

            var lifetime = app.Lifetime;
            lifetime.ApplicationStarted.Register(() => devServer.Start(app.Services, lifetime.ApplicationStopping));
            lifetime.ApplicationStopping.Register(() => devServer.Stop(app.Services, lifetime.ApplicationStopping));
            return devServer;
        }
    }
}

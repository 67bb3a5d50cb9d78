using Realtime.DevServer;

namespace Realtime;

/// <summary>Built-in dev-server plugins.</summary>
public static class RealtimePlugins
{
    /// <summary>Where <see cref="Watch"/> serves the module that reloads pages (a virtual module, an embedded resource).</summary>
    public const string ReloadModulePath = "/__realtime__/reload.js";

    private static readonly Lazy<string> s_reload = new(() => System.Text.Encoding.UTF8.GetString(RealtimeDevServer.Resource("Realtime.DevServer.reload.js")));

    /// <summary>
    /// Live reload, built on the plugin API: watches the served folder and, once changes have
    /// settled for <paramref name="debounce"/> (100 ms by default), sends every page an import of
    /// <see cref="ReloadModulePath"/> with the changed paths. A page reloads when it uses a changed
    /// file (the page itself, or anything it loaded); a changed stylesheet linked by the page is
    /// swapped in place without a reload.
    /// </summary>
    public static RealtimePlugin Watch(TimeSpan? debounce = null)
    {
        var delay = debounce ?? TimeSpan.FromMilliseconds(100);
        if (delay < TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(debounce));
        FileWatch? watch = null;
        return new RealtimePlugin
        {
            Name = "realtime-watch",
            InjectWebSocket = true,
            ServerStart = context => watch = new FileWatch(context, delay),
            ServerStop = _ => watch?.Dispose(),
            Serve = context => context.Path == ReloadModulePath ? s_reload.Value : null,
        };
    }

    /// <summary>A FileSystemWatcher on the root whose changes are gathered and sent once they settle.</summary>
    private sealed class FileWatch : IDisposable
    {
        private readonly DevServerStartContext _context;
        private readonly TimeSpan _delay;
        private readonly FileSystemWatcher _watcher;
        private readonly Timer _timer;
        private readonly HashSet<string> _changed = new(StringComparer.Ordinal);
        private readonly object _sync = new();

        public FileWatch(DevServerStartContext context, TimeSpan delay)
        {
            _context = context;
            _delay = delay;
            _timer = new Timer(_ => Flush());
            _watcher = new FileSystemWatcher(context.RootPath)
            {
                IncludeSubdirectories = true,
                NotifyFilter = NotifyFilters.FileName | NotifyFilters.DirectoryName | NotifyFilters.LastWrite | NotifyFilters.Size,
            };
            _watcher.Changed += (_, e) => Changed(e.FullPath);
            _watcher.Created += (_, e) => Changed(e.FullPath);
            _watcher.Deleted += (_, e) => Changed(e.FullPath);
            _watcher.Renamed += (_, e) => { Changed(e.OldFullPath); Changed(e.FullPath); };
            _watcher.Error += (_, e) => context.Logger.WatcherError(e.GetException().Message);
            _watcher.EnableRaisingEvents = true;
        }

        private void Changed(string fullPath)
        {
            string relative = Path.GetRelativePath(_context.RootPath, fullPath);
            if (relative.StartsWith("..", StringComparison.Ordinal) || Path.IsPathRooted(relative)) return;
            string urlPath = "/" + relative.Replace(Path.DirectorySeparatorChar, '/');
            lock (_sync)
            {
                _changed.Add(urlPath);
                _timer.Change(_delay, Timeout.InfiniteTimeSpan);
            }
        }

        private void Flush()
        {
            string[] paths;
            lock (_sync)
            {
                paths = [.. _changed.Order(StringComparer.Ordinal)];
                _changed.Clear();
            }
            if (paths.Length == 0) return;
            _context.Logger.FilesChanged(string.Join(", ", paths));
            _context.WebSockets.SendImport(ReloadModulePath, [paths]);
        }

        public void Dispose()
        {
            _watcher.Dispose();
            _timer.Dispose();
        }
    }
}

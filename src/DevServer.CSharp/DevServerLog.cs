using Microsoft.Extensions.Logging;

namespace Realtime.DevServer;

/// <summary>The dev server's log messages (category <c>Realtime.DevServer</c>), event ids from 100.</summary>
internal static partial class DevServerLog
{
    [LoggerMessage(EventId = 100, Level = LogLevel.Warning, Message = "Dropped a message from dev-server socket {Id} ({Code}): {Reason} Message: {Preview}")]
    public static partial void MessageDropped(this ILogger logger, long id, string code, string reason, string preview);

    [LoggerMessage(EventId = 101, Level = LogLevel.Error, Message = "A message handler failed on a \"{Type}\" message from dev-server socket {Id}")]
    public static partial void MessageHandlerFailed(this ILogger logger, Exception exception, string type, long id);

    [LoggerMessage(EventId = 102, Level = LogLevel.Error, Message = "A {Event} handler failed for dev-server socket {Id}")]
    public static partial void SocketHandlerFailed(this ILogger logger, Exception exception, string @event, long id);

    [LoggerMessage(EventId = 103, Level = LogLevel.Error, Message = "Plugin {Plugin} failed in {Hook}")]
    public static partial void HookFailed(this ILogger logger, Exception exception, string plugin, string hook);

    [LoggerMessage(EventId = 104, Level = LogLevel.Information, Message = "Dev server serving {Root} (plugins: {Plugins})")]
    public static partial void Serving(this ILogger logger, string root, string plugins);

    [LoggerMessage(EventId = 105, Level = LogLevel.Debug, Message = "Files changed: {Paths}")]
    public static partial void FilesChanged(this ILogger logger, string paths);

    [LoggerMessage(EventId = 106, Level = LogLevel.Warning, Message = "File watcher error: {Detail}")]
    public static partial void WatcherError(this ILogger logger, string detail);

    [LoggerMessage(EventId = 107, Level = LogLevel.Warning, Message = "Refused a request for {Path} with Host {Host} (403): the dev server answers to localhost names, the addresses it listens on and its allowedHosts")]
    public static partial void HostRefused(this ILogger logger, string host, string path);

    [LoggerMessage(EventId = 108, Level = LogLevel.Warning, Message = "Refused a dev-server socket from Origin {Origin} to Host {Host} (403): only the dev server's own pages may connect")]
    public static partial void OriginRefused(this ILogger logger, string origin, string host);
}

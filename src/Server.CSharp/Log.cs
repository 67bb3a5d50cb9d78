using Microsoft.Extensions.Logging;

namespace Realtime;

/// <summary>
/// Every log message of the host, with stable event ids (documented in the README). Per-message
/// work logs nothing; connection lifecycle events are Debug.
/// </summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 1, Level = LogLevel.Debug, Message = "Connection {Id} opened on {Endpoint} from {Remote}")]
    public static partial void ConnectionOpened(this ILogger logger, long id, string endpoint, string? remote);

    [LoggerMessage(EventId = 2, Level = LogLevel.Debug, Message = "Connection {Id} closed with {Code} {Reason}")]
    public static partial void ConnectionClosed(this ILogger logger, long id, int code, string reason);

    [LoggerMessage(EventId = 3, Level = LogLevel.Debug, Message = "Handshake on {Endpoint} rejected with {Status} ({Code}): {Reason}")]
    public static partial void HandshakeRejected(this ILogger logger, string endpoint, int status, string code, string reason);

    [LoggerMessage(EventId = 4, Level = LogLevel.Debug, Message = "Connection {Id} broke the protocol ({Code}); closing with {CloseCode}")]
    public static partial void ProtocolViolation(this ILogger logger, long id, string code, int closeCode);

    [LoggerMessage(EventId = 5, Level = LogLevel.Error, Message = "{Handler} handler failed on connection {Id} of {Endpoint}; closing with 1011")]
    public static partial void HandlerFailed(this ILogger logger, Exception exception, string handler, long id, string endpoint);

    [LoggerMessage(EventId = 6, Level = LogLevel.Error, Message = "Attach failed on {Endpoint}; answered 500")]
    public static partial void AttachFailed(this ILogger logger, Exception exception, string endpoint);

    [LoggerMessage(EventId = 7, Level = LogLevel.Debug, Message = "Connection {Id} transport ended: {Detail}")]
    public static partial void TransportEnded(this ILogger logger, long id, string detail);

    [LoggerMessage(EventId = 8, Level = LogLevel.Debug, Message = "Connection {Id} write failed: {Detail}")]
    public static partial void TransportWriteFailed(this ILogger logger, long id, string detail);

    [LoggerMessage(EventId = 9, Level = LogLevel.Debug, Message = "Connection {Id} idle timeout; closing with 1001")]
    public static partial void IdleTimeout(this ILogger logger, long id);

    [LoggerMessage(EventId = 10, Level = LogLevel.Warning, Message = "Connection {Id} on {Endpoint} reached its buffer limit; closing with 1008")]
    public static partial void BackpressureLimitClose(this ILogger logger, long id, string endpoint);

    [LoggerMessage(EventId = 11, Level = LogLevel.Information, Message = "Shutting down: closing {Count} connections with 1001")]
    public static partial void ShutdownStarted(this ILogger logger, int count);

    [LoggerMessage(EventId = 12, Level = LogLevel.Warning, Message = "Shutdown timeout: {Count} connections still open were dropped")]
    public static partial void ShutdownTimedOut(this ILogger logger, int count);

    [LoggerMessage(EventId = 14, Level = LogLevel.Debug, Message = "Connection {Id} on {Endpoint} is in {Limit} topics (MaxTopicsPerConnection); a further subscribe was refused")]
    public static partial void TopicLimitReached(this ILogger logger, long id, string endpoint, int limit);

    [LoggerMessage(EventId = 15, Level = LogLevel.Debug, Message = "Handshake on {Endpoint} abandoned by the client: {Detail}")]
    public static partial void HandshakeAbandoned(this ILogger logger, string endpoint, string detail);

    [LoggerMessage(EventId = 13, Level = LogLevel.Error, Message = "Unexpected failure on connection {Id}")]
    public static partial void UnexpectedFailure(this ILogger logger, Exception exception, long id);

    [LoggerMessage(EventId = 16, Level = LogLevel.Error, Message = "The application failed on a directly accepted request on connection {ConnectionId}")]
    public static partial void DirectRequestFailed(this ILogger logger, Exception exception, string connectionId);

    [LoggerMessage(EventId = 17, Level = LogLevel.Warning, Message = "Direct connections are off: the server did not start through Realtime's capture of the application (IServer is not Kestrel's, or was registered after AddRealtime); every connection takes Kestrel's ordinary path")]
    public static partial void DirectConnectionsOff(this ILogger logger);

    [LoggerMessage(EventId = 20, Level = LogLevel.Warning, Message = "Connection {Id} on {Endpoint} would pass the server's memory budget; closing with 1008")]
    public static partial void BudgetLimitClose(this ILogger logger, long id, string endpoint);

    [LoggerMessage(EventId = 21, Level = LogLevel.Debug, Message = "Connection {Id} sent no payload of its unfinished message for longer than the idle timeout, but other frames; closing with 1008")]
    public static partial void MessageTimeout(this ILogger logger, long id);

    [LoggerMessage(EventId = 80, Level = LogLevel.Information, Message = "Memory reclaimed after {Accepted} connections were accepted: a {PauseMs:0.0} ms compacting collection, GC committed {BeforeKiB} KiB → {AfterKiB} KiB")]
    public static partial void MemoryReclaimedAfterBurst(this ILogger logger, long accepted, double pauseMs, long beforeKiB, long afterKiB);
}

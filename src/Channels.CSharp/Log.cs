using Microsoft.Extensions.Logging;

namespace Realtime.Channels;

/// <summary>The channels server's log messages, with stable event ids (200-229, 235-239).</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 200, Level = LogLevel.Debug, Message = "Channels: connection {ClientId} sent a message that is not one of the {Subprotocol} protocol")]
    public static partial void BadMessage(this ILogger logger, string clientId, string subprotocol);

    [LoggerMessage(EventId = 201, Level = LogLevel.Error, Message = "Channels: handling {Kind} for {ClientId} on {Channel} failed")]
    public static partial void HandlingFailed(this ILogger logger, Exception exception, string kind, string clientId, string channel);

    [LoggerMessage(EventId = 202, Level = LogLevel.Error, Message = "Channels: the request handler for {Method} failed for {ClientId}")]
    public static partial void RequestFailed(this ILogger logger, Exception exception, string method, string clientId);

    [LoggerMessage(EventId = 203, Level = LogLevel.Warning, Message = "Channels: removing {ClientId} from the presence of {Channel} after it disconnected failed")]
    public static partial void LeaveFailed(this ILogger logger, Exception exception, string clientId, string channel);

    [LoggerMessage(EventId = 204, Level = LogLevel.Debug, Message = "Channels: refused an upgrade to {Path} that offered neither channels subprotocol")]
    public static partial void NoSubprotocol(this ILogger logger, string path);

    [LoggerMessage(EventId = 235, Level = LogLevel.Debug, Message = "Channels: refused {Channel} to {ClientId}: the store holds {MaxChannels} channels, its most")]
    public static partial void TooManyChannels(this ILogger logger, string clientId, string channel, int maxChannels);
}

using Microsoft.Extensions.Logging;

namespace Realtime.Redis;

/// <summary>The Redis backplane's log messages, with stable event ids (100-199, documented in the README).</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 101, Level = LogLevel.Information, Message = "Redis backplane: node {NodeId} connecting to {Endpoints} (channels realtime:{Prefix}:<topic>)")]
    public static partial void Connecting(this ILogger logger, string nodeId, string endpoints, string prefix);

    [LoggerMessage(EventId = 102, Level = LogLevel.Warning, Message = "Redis backplane: connection to {Endpoint} lost ({FailureType}); publishes reach this server's subscribers only until it returns")]
    public static partial void ConnectionLost(this ILogger logger, string endpoint, string failureType);

    [LoggerMessage(EventId = 103, Level = LogLevel.Information, Message = "Redis backplane: connection to {Endpoint} restored")]
    public static partial void ConnectionRestored(this ILogger logger, string endpoint);

    [LoggerMessage(EventId = 104, Level = LogLevel.Warning, Message = "Redis backplane: {Count} publishes could not be carried to the other servers since the last report ({Reason}); they reached this server's subscribers only ({Total} in all)")]
    public static partial void PublishesLost(this ILogger logger, long count, string reason, long total);

    [LoggerMessage(EventId = 105, Level = LogLevel.Warning, Message = "Redis backplane: ignored {Count} unreadable envelopes since the last report (last on {Channel}: {Code}; {Total} in all)")]
    public static partial void UnreadableEnvelopes(this ILogger logger, long count, string channel, string code, long total);

    [LoggerMessage(EventId = 106, Level = LogLevel.Debug, Message = "Redis backplane: subscribing to {Channel} failed ({Detail}); retrying while the topic has subscribers")]
    public static partial void SubscribeFailed(this ILogger logger, string channel, string detail);

    [LoggerMessage(EventId = 107, Level = LogLevel.Error, Message = "Redis backplane: unexpected failure in {Loop}")]
    public static partial void LoopFailed(this ILogger logger, Exception exception, string loop);
}

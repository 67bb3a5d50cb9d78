using Microsoft.Extensions.Logging;

namespace Realtime.Channels.Redis;

/// <summary>Log messages of channels on Redis, with stable event ids (240-259, documented in the README).</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 240, Level = LogLevel.Information, Message = "Channels on Redis: node {DeadNode} stopped renewing its heartbeat; removed its {Count} presence members")]
    public static partial void DeadNodeRemoved(this ILogger logger, string deadNode, int count);

    [LoggerMessage(EventId = 241, Level = LogLevel.Warning, Message = "Channels on Redis: node {NodeId} found its heartbeat gone (it was paused, or cut off from Redis, for longer than the heartbeat timeout); registered its {Count} presence members again")]
    public static partial void HeartbeatLost(this ILogger logger, string nodeId, int count);

    [LoggerMessage(EventId = 242, Level = LogLevel.Warning, Message = "Channels on Redis: {Loop} failed; retrying")]
    public static partial void LoopFailed(this ILogger logger, Exception exception, string loop);
}

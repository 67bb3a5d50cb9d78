using Microsoft.AspNetCore.Http;

namespace Realtime;

/// <summary>
/// The outcome of <c>Attach</c>: the data to attach to the connection, or a rejection answered
/// with an HTTP status before the upgrade. A <typeparamref name="TData"/> value converts to it
/// implicitly, so <c>Attach = request => new User(...)</c> compiles as written.
/// </summary>
/// <typeparam name="TData">The per-connection data type.</typeparam>
public readonly struct Attachment<TData>
{
    private Attachment(TData data, int status, string? reason)
    {
        Data = data;
        RejectStatus = status;
        RejectReason = reason;
    }

    /// <summary>The attached data (default when rejected).</summary>
    public TData Data { get; }

    /// <summary>The HTTP status of a rejection; 0 when accepted.</summary>
    public int RejectStatus { get; }

    /// <summary>The response body of a rejection.</summary>
    public string? RejectReason { get; }

    /// <summary>True when the upgrade is refused.</summary>
    public bool IsRejected => RejectStatus != 0;

    /// <summary>Accepts the connection with this data.</summary>
    public static Attachment<TData> Accept(TData data) => new(data, 0, null);

    /// <summary>Refuses the upgrade with an HTTP status (400-599) and a short reason.</summary>
    public static Attachment<TData> Reject(int status, string? reason = null)
    {
        if (status < 400 || status > 599) throw new ArgumentOutOfRangeException(nameof(status), "a rejection is a 4xx or 5xx status");
        return new(default!, status, reason);
    }

    /// <summary>Accepts the connection with this data.</summary>
    public static implicit operator Attachment<TData>(TData data) => Accept(data);
}

/// <summary>
/// The handlers of one endpoint, declared once and shared by all its connections (as in Bun).
/// Handlers of one connection never run at the same time and run in order: <c>Attach</c>,
/// <c>Open</c>, then <c>Message</c> and <c>Drain</c>, then <c>Close</c> once. Every handler is optional.
/// </summary>
/// <typeparam name="TData">The per-connection data type, available as <see cref="RealtimeSocket{TData}.Data"/>.</typeparam>
public sealed class RealtimeHandlers<TData>
{
    /// <summary>Runs before the upgrade with the HTTP request: returns the connection's data, or a rejection.</summary>
    public Func<HttpContext, Attachment<TData>>? Attach { get; init; }

    /// <summary>Asynchronous form of <see cref="Attach"/> (used when set).</summary>
    public Func<HttpContext, ValueTask<Attachment<TData>>>? AttachAsync { get; init; }

    /// <summary>Runs once the connection is open.</summary>
    public Action<RealtimeSocket<TData>>? Open { get; init; }

    /// <summary>Runs for each message. The connection is not read further until it returns.</summary>
    public Action<RealtimeSocket<TData>, RealtimeMessage>? Message { get; init; }

    /// <summary>
    /// Asynchronous form of <see cref="Message"/> (used when set): the connection is not read further
    /// until the task completes, so a flooding client cannot grow server memory.
    /// </summary>
    public Func<RealtimeSocket<TData>, RealtimeMessage, Task>? MessageAsync { get; init; }

    /// <summary>
    /// Runs once when the connection has ended, with a close code and reason: the server's own when
    /// it started the closing handshake (<c>Close</c>, a failed handler, a protocol error, idle
    /// timeout, shutdown), else the client's, or 1006 when the transport ended without a close frame.
    /// </summary>
    public Action<RealtimeSocket<TData>, int, string>? Close { get; init; }

    /// <summary>Runs when the outgoing buffer falls back under the backpressure limit after a send reported backpressure.</summary>
    public Action<RealtimeSocket<TData>>? Drain { get; init; }

    /// <summary>Runs when a ping arrives (the pong is sent automatically).</summary>
    public Action<RealtimeSocket<TData>, ReadOnlyMemory<byte>>? Ping { get; init; }

    /// <summary>Runs when a pong arrives.</summary>
    public Action<RealtimeSocket<TData>, ReadOnlyMemory<byte>>? Pong { get; init; }
}

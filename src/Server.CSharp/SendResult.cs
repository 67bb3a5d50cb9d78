namespace Realtime;

/// <summary>What happened to a message given to <c>Send</c>.</summary>
public enum SendStatus
{
    /// <summary>The message was dropped: the connection is closing or closed, or its buffer is full.</summary>
    Dropped = 0,
    /// <summary>The message was queued and the outgoing buffer is under the backpressure limit.</summary>
    Sent = 1,
    /// <summary>The message was queued, but the outgoing buffer is now over the backpressure limit: wait for <c>Drain</c>.</summary>
    Backpressure = 2,
}

/// <summary>
/// The result of a send: the status and, when queued, the number of bytes put on the wire for it
/// (frame header included). <see cref="ToInt32"/> gives Bun's number: bytes, -1 for backpressure, 0 for dropped.
/// </summary>
public readonly record struct SendResult(SendStatus Status, int Bytes)
{
    /// <summary>A dropped message.</summary>
    public static SendResult Dropped => new(SendStatus.Dropped, 0);

    /// <summary>True when the message was queued (sent or under backpressure).</summary>
    public bool IsQueued => Status != SendStatus.Dropped;

    /// <summary>Bun's encoding of a send result: the byte count when sent, -1 under backpressure, 0 when dropped.</summary>
    public int ToInt32() => Status switch
    {
        SendStatus.Sent => Bytes,
        SendStatus.Backpressure => -1,
        _ => 0,
    };
}

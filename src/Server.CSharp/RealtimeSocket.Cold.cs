using System.IO.Pipelines;

namespace Realtime;

// What most connections on the native transport never use, kept out of the connection object so
// that an idle connection does not carry it: the stream or pipes of the other transports (made with
// the connection there), the assembly of a fragmented message, and the wait handles of a close, a
// pong backlog or a Drain that overlaps a read (made on first use).
public abstract partial class RealtimeSocket
{
    private sealed class ColdState
    {
        /// <summary>The stream Kestrel's HTTP upgrade returned, when the connection is read through it.</summary>
        public Stream? Stream;

        /// <summary>The connection's own pipes, when it was accepted directly.</summary>
        public IDuplexPipe? Pipe;

        /// <summary>Ends a stream's receive loop without aborting the transport (after the idle-timeout close frame).</summary>
        public CancellationTokenSource? Receiving;

        /// <summary>The message being assembled from fragments (pooled) and its length so far.</summary>
        public byte[]? Message;
        public int MessageLength;

        /// <summary>Completed when the writer goes idle, when a writer took the pending control frames, when a Drain left the handler gate.</summary>
        public TaskCompletionSource? WriterIdle;
        public TaskCompletionSource? ControlTaken;
        public TaskCompletionSource? GateFreed;
    }

    private ColdState? _cold;

    /// <summary>The cold state, made on first use (from any thread).</summary>
    private ColdState Cold =>
        Volatile.Read(ref _cold)
        ?? Interlocked.CompareExchange(ref _cold, new ColdState(), null)
        ?? _cold!;

    /// <summary>The upgrade's stream, unless the connection is native or accepted directly.</summary>
    private Stream? TransportStream => _cold?.Stream;

    /// <summary>The connection's own pipes, when it was accepted directly.</summary>
    private IDuplexPipe? TransportPipe => _cold?.Pipe;

    /// <summary>Under the lock: takes the waiter for pending control frames, if any.</summary>
    private TaskCompletionSource? TakeControlTaken()
    {
        if (_cold is not { } cold) return null;
        var taken = cold.ControlTaken;
        cold.ControlTaken = null;
        return taken;
    }
}

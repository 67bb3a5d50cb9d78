using System.Buffers;
using Realtime.Memory;
using Realtime.Protocol;

namespace Realtime;

// The outgoing side of a connection.
//
// Sends from any thread copy their frame into one pending buffer under the connection's lock and
// return at once with the core's backpressure verdict. One writer at a time (the receive loop
// after a batch of handler calls, or a thread-pool work item for sends from elsewhere) swaps the
// pending buffer out and writes it to the transport, so every send made meanwhile goes out in the
// same write. Nothing ever waits for a slow client except that client's own writer. Buffers are
// rented while there is something to write and returned when the connection goes idle.
public abstract partial class RealtimeSocket
{
    private const int MinimumPendingBuffer = 4096;
    private const int KeptSpareBuffer = 64 * 1024;
    private const int MaxControlBacklog = 1024 * 1024;

    private byte[]? _pending;
    private int _pendingLength;
    private int _pendingControlBytes;
    private byte[]? _spare;
    // Frames shared with other recipients, each with the position in _pending it goes before.
    private List<SharedEntry>? _pendingShared;
    private List<SharedEntry>? _spareShared;
    private int _pendingSharedBytes;
    private bool _writing;
    private int _corks;
    private bool _stopReceivingWhenFlushed;
    // For the idle close's backstop (see AbortUnlessEnded): a writer took the close frame, a writer
    // is inside a transport write, and the close frame was handed over with nothing left after it.
    private bool _closeTaken;
    private bool _inWrite;
    private bool _closeHandedOver;
    private TaskCompletionSource? _writerIdle;
    private TaskCompletionSource? _controlTaken;

    // Handlers of one connection never overlap: the receive loop and a writer that reports Drain
    // take turns through this gate (0 free, 1 taken). A Drain that finds the gate taken is left
    // pending and run by whoever leaves the gate. The receive loop that finds it taken (a Drain runs
    // on a writer's thread) does not spin: it waits on a task that the Drain's runner completes when
    // it leaves the gate, so a Drain handler that blocks costs the receive loop no CPU.
    private int _handlerGate;
    private int _drainPending;
    private bool _closeDispatched;
    private TaskCompletionSource? _gateFreed;

    /// <summary>Sends a data frame; for a publish, <paramref name="subscription"/> is the topic subscription it goes through (see <see cref="EnqueueData"/>).</summary>
    internal SendResult SendFrame(MessageKind kind, ReadOnlySpan<byte> payload, bool compress, Subscription<RealtimeSocket>? subscription = null) =>
        WantsCompression(compress, payload.Length) ? SendCompressed(kind, payload, subscription) : SendUncompressed(kind, payload, subscription);

    /// <summary>
    /// Queues a message prepared for many recipients in the form this connection takes: the shared
    /// plain frame, the shared frame compressed with its window, or (when its compressor keeps its
    /// context) compressed for itself.
    /// </summary>
    internal SendResult SendPrepared(ref PreparedMessage message, Subscription<RealtimeSocket>? subscription = null)
    {
        if (!WantsCompression(message.Compress, message.Payload.Length)) return EnqueueShared(message.Plain(), subscription);
        if (Negotiated.Parameters.ServerNoContextTakeover) return EnqueueShared(message.CompressedFor(Negotiated.Parameters.ServerMaxWindowBits), subscription);
        return SendCompressed(message.Kind, message.Payload, subscription);
    }

    /// <summary>Queues a reference to a frame shared with other recipients, under the same rules as any send.</summary>
    internal SendResult EnqueueShared(SharedFrame frame, Subscription<RealtimeSocket>? subscription = null) => EnqueueData(frame.Kind, default, frame.Compressed, frame, subscription);

    /// <summary>
    /// The one way data messages are queued: the core's send step frames the message (or judges the
    /// <paramref name="shared"/> frame, already framed the same way) and decides it under the
    /// connection's backpressure limits; the server's budget has the last word. A publish passes the
    /// <paramref name="subscription"/> it goes through: an ended one queues nothing (and is no send,
    /// so it is not counted).
    /// </summary>
    private SendResult EnqueueData(MessageKind kind, ReadOnlySpan<byte> payload, bool compressed, SharedFrame? shared, Subscription<RealtimeSocket>? subscription = null)
    {
        // A shared frame is framed already: no header to write, and no stack buffer for one.
        Span<byte> header = shared is null ? stackalloc byte[Frame.MaxHeaderSize] : default;
        int payloadLength = shared?.PayloadLength ?? payload.Length;
        SendResult result;
        bool startWriter;
        bool closeForBudget = false;
        lock (_sync)
        {
            // Under the lock Subscription.End takes: once Unsubscribe returned, this is false.
            if (subscription is { IsActive: false }) return SendResult.Dropped;
            // A connection already behind (in a backpressure episode) may fill less of the budget,
            // so the ones that keep up still find room.
            long ceiling = _server.Budget.CeilingFor(_core.InBackpressure);
            var before = _core.SendState;
            var (verdict, headerLength) = shared is null
                ? ConnectionModule.send(ref _core, _endpoint.Limits, kind, payloadLength, compressed, header)
                : (ConnectionModule.sendFramed(ref _core, _endpoint.Limits, shared.Length), 0);
            // In 64 bits: a payload within 14 bytes of int.MaxValue must not wrap into a small size.
            int total = shared?.Length ?? (int)Math.Min(int.MaxValue, (long)headerLength + payloadLength);
            result = Verdict(verdict, total);
            if (result.IsQueued && !(shared is null ? _server.Budget.TryReserve(total, ceiling) : shared.TryAddReference(ceiling)))
            {
                // The server's budget has the last word: what the core admitted is not queued after all.
                ConnectionModule.restoreSendState(ref _core, before);
                closeForBudget = _endpoint.Options.CloseOnBackpressureLimit;
                result = SendResult.Dropped;
            }
            else if (result.IsQueued)
            {
                if (shared is null)
                {
                    Append(header[..headerLength]);
                    Append(payload);
                }
                else
                {
                    (_pendingShared ??= new List<SharedEntry>()).Add(new SharedEntry(_pendingLength, shared));
                    _pendingSharedBytes += shared.Length;
                }
            }
            else if (verdict.IsCloseForLimit)
            {
                // Closed before the lock is let go, so no later send is queued after the refused one.
                _server.Log.BackpressureLimitClose(Id, _endpoint.Pattern);
                CloseLocally(CloseCode.PolicyViolation, "backpressure limit");
            }
            startWriter = result.IsQueued && TryBecomeWriter();
        }
        return Queued(result, startWriter, closeForBudget);
    }

    /// <summary>The core's verdict as the result a send returns, with the frame's size on the wire.</summary>
    private static SendResult Verdict(Backpressure.SendResult verdict, int total) =>
        verdict.IsSent ? new SendResult(SendStatus.Sent, total)
        : verdict.IsBackpressure ? new SendResult(SendStatus.Backpressure, total)
        : SendResult.Dropped;

    /// <summary>After a data message was queued or not, outside the lock: metrics, a close for the budget, the writer.</summary>
    private SendResult Queued(SendResult result, bool startWriter, bool closeForBudget)
    {
        _server.Metrics.Queued(result.Status);
        if (closeForBudget)
        {
            _server.Log.BudgetLimitClose(Id, _endpoint.Pattern);
            CloseLocally(CloseCode.PolicyViolation, "server memory budget");
        }
        if (startWriter) ScheduleWriter();
        return result;
    }

    /// <summary>Queues a control frame made by the core (pong, close): never dropped, not counted against the limits.</summary>
    private void EnqueueControl(byte[] frame)
    {
        if (frame.Length == 0) return;
        bool startWriter;
        lock (_sync)
        {
            if (_core.HasEnded || !_core.CanWrite) return;
            Append(frame);
            _pendingControlBytes += frame.Length;
            startWriter = TryBecomeWriter();
        }
        if (startWriter) ScheduleWriter();
    }

    /// <summary>A frame shared with other recipients, queued at <paramref name="Offset"/> of the pending bytes.</summary>
    private readonly record struct SharedEntry(int Offset, SharedFrame Frame);

    /// <summary>Under the lock: anything queued, own bytes or shared frames.</summary>
    private bool HasPending => _pendingLength > 0 || _pendingSharedBytes > 0;

    private void Append(ReadOnlySpan<byte> bytes) => PooledBuffer.Append(ref _pending, ref _pendingLength, bytes, MinimumPendingBuffer);

    /// <summary>Under the lock: claims the writer role when there is something to write and nobody holds it.</summary>
    private bool TryBecomeWriter()
    {
        if (_writing || _corks > 0 || !HasPending || !_core.CanWrite) return false;
        _writing = true;
        return true;
    }

    private WriterWorkItem? _writerWorkItem;

    // Only the thread that just claimed the writer role schedules, so the lazy creation does not race.
    // On the native transport's own loop thread (a handler of a neighbour on the same loop, a Drain)
    // the loop writes it after this turn's events, with no hop to the thread pool.
    private void ScheduleWriter()
    {
        var work = _writerWorkItem ??= new WriterWorkItem(this);
        if (_native is { } native && native.Loop.IsCurrent) native.Loop.Defer(work);
        else ThreadPool.UnsafeQueueUserWorkItem(work, preferLocal: false);
    }

    /// <summary>Runs the writer on the thread pool without allocating per run (and without making the socket itself a work item).</summary>
    private sealed class WriterWorkItem(RealtimeSocket socket) : IThreadPoolWorkItem
    {
        public void Execute() => _ = socket.WriteLoopAsync();
    }

    private void CorkIncrement()
    {
        lock (_sync) _corks++;
    }

    private void Uncork()
    {
        bool startWriter;
        lock (_sync)
        {
            _corks--;
            startWriter = TryBecomeWriter();
        }
        if (startWriter) ScheduleWriter();
    }

    /// <summary>Uncorks and, when there is something to write and no writer, writes it on this thread.</summary>
    private Task UncorkAndFlushInline()
    {
        bool startWriter;
        lock (_sync)
        {
            _corks--;
            startWriter = TryBecomeWriter();
        }
        return startWriter ? WriteLoopAsync() : Task.CompletedTask;
    }

    /// <summary>The writer: runs while there are pending bytes; exactly one runs at a time.</summary>
    private async Task WriteLoopAsync()
    {
        while (true)
        {
            byte[]? chunk;
            int length;
            int controlBytes;
            List<SharedEntry>? shared;
            int sharedBytes;
            bool stopReceiving;
            TaskCompletionSource? controlTaken;
            lock (_sync)
            {
                stopReceiving = _stopReceivingWhenFlushed;
                // Either way no control frame is left pending below: a receive loop held back by them may go on.
                controlTaken = _controlTaken;
                _controlTaken = null;
                if (!HasPending || !_core.CanWrite)
                {
                    if (stopReceiving && _core.CanWrite) _closeHandedOver = true;
                    _writing = false;
                    ReleaseIdleBuffers();
                    _writerIdle?.TrySetResult();
                    chunk = null;
                    length = 0;
                    controlBytes = 0;
                    shared = null;
                    sharedBytes = 0;
                }
                else
                {
                    _inWrite = true;
                    if (stopReceiving) _closeTaken = true;
                    chunk = _pending;
                    length = _pendingLength;
                    controlBytes = _pendingControlBytes;
                    _pendingLength = 0;
                    _pendingControlBytes = 0;
                    if (length > 0)
                    {
                        _pending = _spare;
                        _spare = null;
                    }
                    else chunk = null;
                    sharedBytes = _pendingSharedBytes;
                    shared = sharedBytes > 0 ? _pendingShared : null;
                    if (shared is not null)
                    {
                        _pendingShared = _spareShared;
                        _spareShared = null;
                        _pendingSharedBytes = 0;
                    }
                }
            }
            controlTaken?.TrySetResult();
            if (length == 0 && sharedBytes == 0)
            {
                // Ending the receive loop lets Kestrel send what it was given, then close the TCP
                // connection; aborting instead would drop the bytes still in its output pipe.
                if (stopReceiving) StopReceiving();
                return;
            }

            try
            {
                if (shared is null) await WriteToTransportAsync(chunk.AsMemory(0, length)).ConfigureAwait(false);
                else await WriteWithSharedAsync(chunk, length, shared, length + sharedBytes).ConfigureAwait(false);
                _server.Metrics.BytesSent(length + sharedBytes);
            }
            catch (Exception exception)
            {
                if (chunk is not null) ArrayPool<byte>.Shared.Return(chunk);
                ReleaseWritten(length - controlBytes, shared);
                _server.Log.TransportWriteFailed(Id, exception.Message);
                lock (_sync)
                {
                    _core = ConnectionModule.writingStopped(_core);
                    _writing = false;
                    ReleaseIdleBuffers();
                    _writerIdle?.TrySetResult();
                    controlTaken = _controlTaken;
                    _controlTaken = null;
                }
                controlTaken?.TrySetResult();
                AbortTransport();
                return;
            }

            ReleaseWritten(length - controlBytes, shared);
            bool drain;
            lock (_sync)
            {
                _inWrite = false;
                // The core reports no Drain once a close frame was sent or the connection ended.
                drain = ConnectionModule.flushed(ref _core, _endpoint.Limits, length - controlBytes + sharedBytes).IsDrain;
                if (chunk is not null)
                {
                    if (_spare is null && chunk.Length <= KeptSpareBuffer) _spare = chunk;
                    else ArrayPool<byte>.Shared.Return(chunk);
                }
                if (shared is not null) _spareShared ??= shared;
            }
            if (drain) RequestDrain();
        }
    }

    /// <summary>After a batch was written (or failed): its own data bytes leave the budget and its shared frames are released.</summary>
    private void ReleaseWritten(int dataBytes, List<SharedEntry>? shared)
    {
        _server.Budget.Release(dataBytes);
        if (shared is null) return;
        foreach (var entry in shared) entry.Frame.Release();
        shared.Clear();
    }

    /// <summary>
    /// Writes to the transport that is not a pipe: the native connection's own send (no stream object
    /// per connection for it), or the upgrade's stream.
    /// </summary>
    private ValueTask WriteStreamAsync(ReadOnlyMemory<byte> bytes) =>
        _native is { } native ? native.SendAsync(bytes) : _transport!.WriteAsync(bytes);

    /// <summary>Hands one batch of frames to the transport; completes when the transport has taken it.</summary>
    private ValueTask WriteToTransportAsync(ReadOnlyMemory<byte> bytes)
    {
        if (_pipe is null) return WriteStreamAsync(bytes);
        var output = _pipe.Output;
        output.Write(bytes.Span);
        return FlushPipeAsync(output);
    }

    private static ValueTask FlushPipeAsync(System.IO.Pipelines.PipeWriter output)
    {
        var flush = output.FlushAsync();
        return flush.IsCompletedSuccessfully ? CheckFlushed(flush.Result) : AwaitFlushAsync(flush);

        static async ValueTask AwaitFlushAsync(ValueTask<System.IO.Pipelines.FlushResult> pending) =>
            await CheckFlushed(await pending.ConfigureAwait(false)).ConfigureAwait(false);

        static ValueTask CheckFlushed(System.IO.Pipelines.FlushResult result) =>
            result.IsCompleted || result.IsCanceled
                ? ValueTask.FromException(new IOException("the connection's output was closed"))
                : ValueTask.CompletedTask;
    }

    /// <summary>
    /// Writes a batch holding shared frames: the connection's own bytes and the shared frames in
    /// queue order. A batch of up to <see cref="WriteSlice"/> bytes is gathered (into the pipe's
    /// memory, or a pooled scratch buffer for a stream) and written at once, without allocating.
    /// A larger one is handed over in pieces of at most that size, each taken by the transport
    /// before the next, so a client that does not read makes the transport copy one piece while
    /// the rest stays in the one shared copy.
    /// </summary>
    private ValueTask WriteWithSharedAsync(byte[]? chunk, int length, List<SharedEntry> shared, int total)
    {
        if (total > WriteSlice) return WriteSlicedAsync(chunk, length, shared);
        if (_pipe is { } pipe)
        {
            Gather(pipe.Output.GetSpan(total), chunk, length, shared);
            pipe.Output.Advance(total);
            return FlushPipeAsync(pipe.Output);
        }
        // One shared frame alone (a subscriber that keeps up): the stream takes it as it is.
        if (length == 0 && shared.Count == 1) return WriteStreamAsync(shared[0].Frame.Bytes);
        byte[] scratch = ArrayPool<byte>.Shared.Rent(total);
        Gather(scratch, chunk, length, shared);
        var write = WriteStreamAsync(scratch.AsMemory(0, total));
        if (write.IsCompletedSuccessfully)
        {
            ArrayPool<byte>.Shared.Return(scratch);
            return ValueTask.CompletedTask;
        }
        return ReturnAfterAsync(write, scratch);

        static async ValueTask ReturnAfterAsync(ValueTask pending, byte[] scratch)
        {
            try { await pending.ConfigureAwait(false); }
            finally { ArrayPool<byte>.Shared.Return(scratch); }
        }
    }

    /// <summary>Copies the batch's pieces, in queue order, into <paramref name="into"/>.</summary>
    private static void Gather(Span<byte> into, byte[]? chunk, int length, List<SharedEntry> shared)
    {
        int position = 0;
        int written = 0;
        foreach (var entry in shared)
        {
            var own = chunk.AsSpan(position, entry.Offset - position);
            own.CopyTo(into[written..]);
            written += own.Length;
            position = entry.Offset;
            entry.Frame.Bytes.Span.CopyTo(into[written..]);
            written += entry.Frame.Length;
        }
        chunk.AsSpan(position, length - position).CopyTo(into[written..]);
    }

    private async ValueTask WriteSlicedAsync(byte[]? chunk, int length, List<SharedEntry> shared)
    {
        var writer = new SlicedWriter(this);
        try
        {
            int position = 0;
            foreach (var entry in shared)
            {
                await writer.PutAsync(chunk.AsMemory(position, entry.Offset - position)).ConfigureAwait(false);
                position = entry.Offset;
                await writer.PutAsync(entry.Frame.Bytes).ConfigureAwait(false);
            }
            await writer.PutAsync(chunk.AsMemory(position, length - position)).ConfigureAwait(false);
            await writer.FlushAsync().ConfigureAwait(false);
        }
        finally
        {
            writer.Dispose();
        }
    }

    private const int WriteSlice = 64 * 1024;

    /// <summary>
    /// Gathers pieces into writes of up to <see cref="WriteSlice"/> bytes: into the pipe's own
    /// memory on a direct connection, else into a pooled scratch buffer for the stream (a piece of
    /// a whole slice goes to the stream as it is).
    /// </summary>
    private sealed class SlicedWriter(RealtimeSocket socket) : IDisposable
    {
        private byte[]? _scratch;
        private int _gathered;

        public async ValueTask PutAsync(ReadOnlyMemory<byte> bytes)
        {
            while (!bytes.IsEmpty)
            {
                if (socket._pipe is null && _gathered == 0 && bytes.Length >= WriteSlice)
                {
                    await socket.WriteStreamAsync(bytes[..WriteSlice]).ConfigureAwait(false);
                    bytes = bytes[WriteSlice..];
                    continue;
                }
                int take = Math.Min(bytes.Length, WriteSlice - _gathered);
                if (socket._pipe is { } pipe) pipe.Output.Write(bytes.Span[..take]);
                else bytes.Span[..take].CopyTo((_scratch ??= ArrayPool<byte>.Shared.Rent(WriteSlice)).AsSpan(_gathered));
                _gathered += take;
                bytes = bytes[take..];
                if (_gathered == WriteSlice) await FlushAsync().ConfigureAwait(false);
            }
        }

        public ValueTask FlushAsync()
        {
            if (_gathered == 0) return ValueTask.CompletedTask;
            int gathered = _gathered;
            _gathered = 0;
            return socket._pipe is { } pipe
                ? FlushPipeAsync(pipe.Output)
                : socket.WriteStreamAsync(_scratch.AsMemory(0, gathered));
        }

        public void Dispose()
        {
            if (_scratch is not null) ArrayPool<byte>.Shared.Return(_scratch);
            _scratch = null;
        }
    }

    /// <summary>
    /// Under the lock: null when the receive loop may read on, else a task that completes when a
    /// writer has taken the pending control frames. Pongs are never dropped and not counted against
    /// the send limits, so a client that sends pings without reading (while the connection's writer
    /// is stuck behind it) would otherwise make them pile up in server memory without bound; once
    /// more than <see cref="RealtimeOptions.BackpressureLimit"/> of them (at most 1 MiB, so that data
    /// and control frames together stay within one array) are pending, the loop stops reading and
    /// TCP holds the client back, as it does for a slow message handler.
    /// </summary>
    private Task? ControlBacklog()
    {
        if (_pendingControlBytes <= Math.Min(_endpoint.Options.BackpressureLimit, MaxControlBacklog) || !_core.CanWrite) return null;
        _controlTaken ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        return _controlTaken.Task;
    }

    /// <summary>Under the lock, with no writer running: gives the buffers back to the pool.</summary>
    private void ReleaseIdleBuffers()
    {
        if (_pendingLength == 0 && _pending is not null)
        {
            ArrayPool<byte>.Shared.Return(_pending);
            _pending = null;
        }
        if (_spare is not null)
        {
            ArrayPool<byte>.Shared.Return(_spare);
            _spare = null;
        }
        if (!_core.CanWrite && HasPending)
        {
            // Nothing will write these any more: their bytes leave the budget here.
            ReleaseWritten(_pendingLength - _pendingControlBytes, _pendingShared);
            if (_pending is not null) ArrayPool<byte>.Shared.Return(_pending);
            _pending = null;
            _pendingLength = 0;
            _pendingControlBytes = 0;
            _pendingSharedBytes = 0;
        }
    }

    /// <summary>Waits (bounded) until everything queued has been handed to the transport.</summary>
    private async Task FlushRemainingAsync(TimeSpan timeout)
    {
        Task wait;
        lock (_sync)
        {
            if (_writing)
            {
                _writerIdle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _writerIdle.Task;
            }
            else if (TryBecomeWriter()) wait = WriteLoopAsync();
            else return;
        }
        try
        {
            await wait.WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // The client stopped reading; drop it rather than wait any longer.
            AbortTransport();
        }
    }

    /// <summary>Takes the handler gate; completes at once unless a Drain handler is running.</summary>
    private ValueTask EnterHandlersAsync() =>
        Interlocked.CompareExchange(ref _handlerGate, 1, 0) == 0 ? ValueTask.CompletedTask : WaitForGateAsync();

    private async ValueTask WaitForGateAsync()
    {
        while (true)
        {
            Task freed;
            lock (_sync)
            {
                // Tried under the lock, so a Drain leaving the gate after this either lets this
                // succeed or finds the waiter below and wakes it.
                if (Interlocked.CompareExchange(ref _handlerGate, 1, 0) == 0) return;
                freed = (_gateFreed ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
            }
            await freed.ConfigureAwait(false);
        }
    }

    /// <summary>Called by a Drain's runner after it left the gate: wakes the receive loop if it waits.</summary>
    private void WakeGateWaiter()
    {
        TaskCompletionSource? freed;
        lock (_sync)
        {
            freed = _gateFreed;
            _gateFreed = null;
        }
        freed?.TrySetResult();
    }

    private void ExitHandlers()
    {
        Volatile.Write(ref _handlerGate, 0);
        if (Volatile.Read(ref _drainPending) != 0) RunPendingDrain();
    }

    private void RequestDrain()
    {
        _server.Metrics.Drain();
        Volatile.Write(ref _drainPending, 1);
        RunPendingDrain();
    }

    private void RunPendingDrain()
    {
        while (Volatile.Read(ref _drainPending) != 0 && Interlocked.CompareExchange(ref _handlerGate, 1, 0) == 0)
        {
            try
            {
                if (Interlocked.Exchange(ref _drainPending, 0) != 0 && !_closeDispatched)
                {
                    try { OnDrain(); }
                    catch (Exception exception) { HandlerFailed(exception, "Drain"); }
                }
            }
            finally
            {
                Volatile.Write(ref _handlerGate, 0);
                WakeGateWaiter();
            }
        }
    }
}

using System.Buffers;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Realtime.Protocol;

namespace Realtime;

// The incoming side of a connection: one loop per connection reads, feeds the core, and calls
// the handlers in order.
//
// While idle, the loop waits with a zero-byte read, so it holds no receive buffer. When bytes
// arrive it rents a buffer, reads, and drives the core until it needs more data (a directly
// accepted connection reads its transport pipe instead, whose memory is the receive buffer). Payloads are
// unmasked in place; a message that arrived whole in one read is handed to the handler straight
// from the receive buffer, others are assembled in a pooled buffer. The loop does not read again
// until the message handler (and its task) has finished, so a client that floods a slow handler
// is held back by TCP, not by server memory. Sends made by handlers during one batch are corked
// and written together when the batch ends.
public abstract partial class RealtimeSocket
{
    private byte[]? _message;
    private int _messageLength;
    private bool _messageInProgress;
    // The server's clock (ms) at the last read, and at the last read that brought payload bytes of
    // an unfinished message (0 when none): set by the receive loop, read by Tick.
    private long _lastReadAt;
    private long _messageProgressAt;

    // Ends a stream's receive loop without aborting the transport (after the idle-timeout close
    // frame). It never gets a timer or wait handle, so it needs no Dispose. A pipe's loop has none:
    // it is stopped with CancelPendingRead, so its reads register nothing.
    private readonly CancellationTokenSource? _receiving;

    /// <summary>
    /// Runs the connection from open to close, then gives back the connection slot the endpoint
    /// reserved for it; never throws.
    /// </summary>
    internal async Task RunAsync()
    {
        if (await OpenAsync().ConfigureAwait(false)) await RunOpenAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// The native transport's run: Open within the request, then the request ends (its context,
    /// features, services scope and the middleware frames awaiting it are released) while the loop
    /// goes on reading the connection, which keeps only a <see cref="RequestSnapshot"/> of the request.
    /// Nothing waits for the connection's end meanwhile (no task, no async frame, no execution context
    /// of the request): the loop calls <see cref="NativeReadingEnded"/> when reading is over.
    /// </summary>
    internal async Task OpenAndOutliveRequestAsync(Native.NativeConnection native)
    {
        if (!await OpenAsync().ConfigureAwait(false)) return;
        native.OutliveRequest();
        KeepSnapshotOfRequest();
        native.StartReading(this);
    }

    /// <summary>The native transport's reading ended (once, any thread): the connection finishes on the thread pool.</summary>
    internal void NativeReadingEnded(Exception? failure) =>
        ThreadPool.UnsafeQueueUserWorkItem(
            static state => _ = state.socket.FinishNativeRunAsync(state.failure), (socket: this, failure), preferLocal: false);

    private async Task FinishNativeRunAsync(Exception? failure)
    {
        if (failure is not null) LogRunFailure(failure);
        await FinishRunAsync().ConfigureAwait(false);
    }

    /// <summary>Registers the connection and runs Open; false (the connection finished) when it ended there.</summary>
    private async Task<bool> OpenAsync()
    {
        _server.Register(this);
        _server.Metrics.ConnectionOpened(_endpoint.Pattern);
        // Guarded: the address's string would otherwise be made for every upgrade, logged or not.
        if (_server.Log.IsEnabled(Microsoft.Extensions.Logging.LogLevel.Debug))
            _server.Log.ConnectionOpened(Id, _endpoint.Pattern, RemoteAddress?.ToString());
        try
        {
            await RunHandlerAsync(static socket => socket.OnOpen(), "Open").ConfigureAwait(false);
            await UncorkAndFlushInline().ConfigureAwait(false);
            return true;
        }
        catch (Exception exception)
        {
            LogRunFailure(exception);
        }
        await FinishRunAsync().ConfigureAwait(false);
        return false;
    }

    /// <summary>Reads the open connection until it ends, then finishes it; never throws.</summary>
    private async Task RunOpenAsync()
    {
        try
        {
            await ReceiveLoopAsync().ConfigureAwait(false);
        }
        catch (Exception exception)
        {
            LogRunFailure(exception);
        }
        await FinishRunAsync().ConfigureAwait(false);
    }

    private void LogRunFailure(Exception exception)
    {
        if (exception is IOException or OperationCanceledException or ObjectDisposedException
            or ConnectionAbortedException or ConnectionResetException)
            _server.Log.TransportEnded(Id, exception.Message);
        else
            _server.Log.UnexpectedFailure(exception, Id);
    }

    /// <summary>Finishes the connection, gives its slot back and, once it outlived its request, closes its descriptor.</summary>
    private async Task FinishRunAsync()
    {
        try
        {
            await FinishAsync().ConfigureAwait(false);
        }
        finally
        {
            _server.ReleaseSlot(RemoteAddress);
            if (_native is { OutlivesRequest: true } native) native.Close();
            _server.RunFinished();
        }
    }

    /// <summary>Open runs corked (the caller flushes after); any handler exception closes with 1011.</summary>
    private async ValueTask RunHandlerAsync(Action<RealtimeSocket> handler, string name)
    {
        CorkIncrement();
        await EnterHandlersAsync().ConfigureAwait(false);
        try { handler(this); }
        catch (Exception exception) { HandlerFailed(exception, name); }
        finally { ExitHandlers(); }
    }

    private Task ReceiveLoopAsync() =>
        _pipe is { } pipe ? ReceivePipeLoopAsync(pipe.Input) : ReceiveStreamLoopAsync(_transport!);

    /// <summary>
    /// The native transport's receive step, on its loop thread: feeds one read to the core and runs the
    /// handlers. The bytes are the loop's buffer; a task that is not complete on return keeps them.
    /// </summary>
    internal Task ReceiveNativeAsync(Memory<byte> received)
    {
        _server.Metrics.BytesReceived(received.Length);
        return ProcessAsync(received);
    }

    /// <summary>For the native transport's loop, after a batch: as <see cref="ShouldStopReading"/>.</summary>
    internal bool NativeReadingStops(out Task? controlBacklog) => ShouldStopReading(out controlBacklog);

    /// <summary>
    /// True when the loop must stop (the connection is over); otherwise <paramref name="controlBacklog"/>
    /// is a task to wait for before reading on when pongs are piling up (see <see cref="ControlBacklog"/>).
    /// </summary>
    private bool ShouldStopReading(out Task? controlBacklog)
    {
        lock (_sync)
        {
            controlBacklog = null;
            if (!_core.ShouldRead) return true;
            controlBacklog = ControlBacklog();
            return false;
        }
    }

    private async Task ReceiveStreamLoopAsync(Stream transport)
    {
        int bufferSize = _endpoint.Options.ReceiveBufferSize;
        while (true)
        {
            if (ShouldStopReading(out var controlBacklog)) return;
            if (controlBacklog is not null)
            {
                // Pongs the client has not taken yet: read no further until a writer has them.
                await controlBacklog.WaitAsync(_receiving!.Token).ConfigureAwait(false);
                continue;
            }
            // Wait for data without holding a buffer: idle connections cost no receive memory.
            await transport.ReadAsync(Memory<byte>.Empty, _receiving!.Token).ConfigureAwait(false);
            byte[] buffer = ArrayPool<byte>.Shared.Rent(bufferSize);
            try
            {
                int read = await transport.ReadAsync(buffer.AsMemory(0, bufferSize), _receiving!.Token).ConfigureAwait(false);
                if (read == 0) return;
                _server.Metrics.BytesReceived(read);
                await ProcessAsync(buffer.AsMemory(0, read)).ConfigureAwait(false);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    /// <summary>
    /// The same loop over the connection's own input pipe: frames are decoded and unmasked where the
    /// transport put them, with no copy into a buffer of ours. While idle the transport waits with a
    /// zero-byte receive and the pipe holds no memory.
    /// </summary>
    private async Task ReceivePipeLoopAsync(System.IO.Pipelines.PipeReader input)
    {
        while (true)
        {
            if (ShouldStopReading(out var controlBacklog)) return;
            if (controlBacklog is not null)
            {
                // StopReceiving completes it too.
                await controlBacklog.ConfigureAwait(false);
                continue;
            }
            // While idle the loop waits here; what it keeps meanwhile is only this method's state,
            // so a batch is processed in a method of its own.
            if (await ProcessReadAsync(input, await input.ReadAsync().ConfigureAwait(false)).ConfigureAwait(false)) return;
        }
    }

    /// <summary>Processes what one pipe read returned and gives it back to the pipe; true when the loop must stop.</summary>
    private async Task<bool> ProcessReadAsync(System.IO.Pipelines.PipeReader input, System.IO.Pipelines.ReadResult result)
    {
        var buffer = result.Buffer;
        try
        {
            if (!buffer.IsEmpty)
            {
                _server.Metrics.BytesReceived(buffer.Length);
                foreach (var segment in buffer)
                {
                    // The core keeps what it needs of a frame split across segments.
                    await ProcessAsync(System.Runtime.InteropServices.MemoryMarshal.AsMemory(segment)).ConfigureAwait(false);
                    if (ShouldStopReading(out _)) return true;
                }
            }
            return result.IsCompleted || result.IsCanceled;
        }
        finally
        {
            input.AdvanceTo(buffer.End);
        }
    }

    /// <summary>
    /// Feeds one read to the core and acts on every event it returns. Whole uncompressed messages
    /// whose handler completes at once (the echo's hot path) are delivered without an async step;
    /// from the first event that needs more, <see cref="ProcessRestAsync"/> goes on. Replies sent
    /// meanwhile stay corked and go out in one write at the end.
    /// </summary>
    private Task ProcessAsync(Memory<byte> buffer)
    {
        long now = _server.Now();
        Volatile.Write(ref _lastReadAt, now);
        int position = 0;
        CorkIncrement();
        try
        {
            while (true)
            {
                var step = NextEvent(buffer.Span, position, now, out int consumed, out bool deliver);
                int sliceStart = position;
                position += consumed;
                if (step.Tag == ConnectionEvent.Tags.NeedMoreData) return UncorkAndFlushInline();
                if (step.Tag != ConnectionEvent.Tags.MessageData || !TryDeliverWhole(buffer, sliceStart, step, deliver, out var pending))
                    return ProcessRestAsync(buffer, position, now, step, sliceStart, deliver, default, handlerRunning: false);
                if (!pending.IsCompletedSuccessfully)
                    return ProcessRestAsync(buffer, position, now, default, 0, false, pending, handlerRunning: true);
                ExitHandlers();
            }
        }
        catch (Exception exception)
        {
            return FlushThenFailAsync(exception);
        }
    }

    /// <summary>One receive step of the core from <paramref name="position"/>: the event, the bytes it consumed, and whether data may still be delivered.</summary>
    private ConnectionEvent NextEvent(ReadOnlySpan<byte> buffer, int position, long now, out int consumed, out bool deliver)
    {
        lock (_sync)
        {
            var found = ConnectionModule.receiveInPlace(ref _core, buffer.Slice(position), now, out consumed);
            // After our close frame, the client's data is read only to reach its close frame.
            deliver = _core.CanSend;
            return found;
        }
    }

    /// <summary>
    /// The hot path of <see cref="OnMessageDataAsync"/> and <see cref="DeliverAsync"/> together, for a
    /// whole uncompressed message that arrived in this read when the handler gate is free: false (and
    /// nothing done, the payload still masked) otherwise. On true the gate is held: the caller leaves
    /// it once <paramref name="pending"/> (the handler's task) is done.
    /// </summary>
    private bool TryDeliverWhole(Memory<byte> buffer, int sliceStart, in ConnectionEvent data, bool deliver, out ValueTask pending)
    {
        pending = default;
        if (data.compressed || !data.messageEnd || _messageInProgress || !deliver) return false;
        if (Interlocked.CompareExchange(ref _handlerGate, 1, 0) != 0) return false;
        var payload = buffer.Slice(sliceStart + data.payloadStart, data.length);
        Masking.applyInPlace(data.maskKey, data.maskOffset, payload.Span);
        TrackUnfinishedMessage(messageEnd: true, data.length);
        _server.Metrics.MessageReceived();
        try { pending = OnMessageAsync(new RealtimeMessage(data.kind, payload, compressed: false)); }
        catch (Exception exception) { HandlerFailed(exception, "Message"); }
        return true;
    }

    /// <summary>
    /// The rest of a read, asynchronously: first the handler still running (<paramref name="handlerRunning"/>)
    /// or the event <paramref name="step"/> the fast path left, then every further event.
    /// </summary>
    private async Task ProcessRestAsync(Memory<byte> buffer, int position, long now, ConnectionEvent step, int sliceStart, bool deliver, ValueTask handler, bool handlerRunning)
    {
        try
        {
            if (handlerRunning) await FinishHandlerAsync(handler).ConfigureAwait(false);
            else if (await HandleEventAsync(buffer, sliceStart, step, deliver).ConfigureAwait(false)) return;
            while (true)
            {
                step = NextEvent(buffer.Span, position, now, out int consumed, out deliver);
                sliceStart = position;
                position += consumed;
                if (step.Tag == ConnectionEvent.Tags.NeedMoreData) return;
                if (await HandleEventAsync(buffer, sliceStart, step, deliver).ConfigureAwait(false)) return;
            }
        }
        finally
        {
            await UncorkAndFlushInline().ConfigureAwait(false);
        }
    }

    /// <summary>Acts on one event of the core; true when nothing more of this read is to be processed.</summary>
    private async ValueTask<bool> HandleEventAsync(Memory<byte> buffer, int sliceStart, ConnectionEvent step, bool deliver)
    {
        switch (step.Tag)
        {
            case ConnectionEvent.Tags.MessageData:
                await OnMessageDataAsync(buffer, sliceStart, step, deliver).ConfigureAwait(false);
                return false;
            case ConnectionEvent.Tags.PingReceived:
                EnqueueControl(step.pong);
                if (deliver) await DispatchControlAsync(step.pingPayload, isPing: true).ConfigureAwait(false);
                return false;
            case ConnectionEvent.Tags.PongReceived:
                if (deliver) await DispatchControlAsync(step.pongPayload, isPing: false).ConfigureAwait(false);
                return false;
            case ConnectionEvent.Tags.CloseReceived:
                EnqueueControl(step.reply);
                return true;
            case ConnectionEvent.Tags.ProtocolViolation:
                Failed(step.error, step.closeFrame);
                return true;
            default:
                return true;
        }
    }

    /// <summary>A Message handler went asynchronous: <see cref="AwaitHandlerUncorkedAsync"/>, then the gate is left.</summary>
    private async ValueTask FinishHandlerAsync(ValueTask pending)
    {
        try
        {
            await AwaitHandlerUncorkedAsync(pending).ConfigureAwait(false);
        }
        finally
        {
            ExitHandlers();
        }
    }

    /// <summary>A Message handler went asynchronous: what it sent so far goes out while it works; its failure closes with 1011.</summary>
    private async ValueTask AwaitHandlerUncorkedAsync(ValueTask pending)
    {
        Uncork();
        try { await pending.ConfigureAwait(false); }
        catch (Exception exception) { HandlerFailed(exception, "Message"); }
        finally { CorkIncrement(); }
    }

    private async Task FlushThenFailAsync(Exception exception)
    {
        await UncorkAndFlushInline().ConfigureAwait(false);
        System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(exception);
    }

    private async ValueTask OnMessageDataAsync(Memory<byte> buffer, int sliceStart, ConnectionEvent data, bool deliver)
    {
        var payload = buffer.Span.Slice(sliceStart + data.payloadStart, data.length);
        Masking.applyInPlace(data.maskKey, data.maskOffset, payload);
        if (!deliver)
        {
            ResetMessage();
            return;
        }
        TrackUnfinishedMessage(data.messageEnd, data.length);
        if (data.compressed)
        {
            var inflated = InflateChunk(payload, data.messageEnd);
            if (inflated is null) return;
            try
            {
                await DeliverAsync(data.kind, inflated.Value, compressed: true).ConfigureAwait(false);
            }
            finally
            {
                ReleaseInflater();
            }
            return;
        }
        if (!_messageInProgress && data.messageEnd)
        {
            // The whole message arrived in this read: hand it over without copying.
            await DeliverAsync(data.kind, buffer.Slice(sliceStart + data.payloadStart, data.length), compressed: false).ConfigureAwait(false);
            return;
        }
        if (!AppendToMessage(payload))
        {
            // The server's budget has no room for the rest: the message is too big for now (1009).
            FailMessage(ProtocolError.NewMessageTooBig(_messageLength + _server.Budget.Available));
            ResetMessage();
            return;
        }
        _messageInProgress = true;
        if (data.messageEnd)
        {
            try
            {
                await DeliverAsync(data.kind, _message.AsMemory(0, _messageLength), compressed: false).ConfigureAwait(false);
            }
            finally
            {
                ResetMessage();
            }
        }
    }

    /// <summary>
    /// Adds a fragment to the message being assembled, counting it against the server's budget;
    /// false when the budget has no room. The core already refused anything over MaxPayloadLength.
    /// </summary>
    private bool AppendToMessage(ReadOnlySpan<byte> chunk)
    {
        if (!_server.Budget.TryReserve(chunk.Length)) return false;
        PooledBuffer.Append(ref _message, ref _messageLength, chunk);
        return true;
    }

    /// <summary>
    /// Notes when an unfinished message (compressed or not) last made progress, for <see cref="Tick"/>:
    /// a client may keep a message open with empty continuation frames (or pings), which count as
    /// activity, so the idle timeout alone would never end it while it pins what was assembled or
    /// inflated so far.
    /// </summary>
    private void TrackUnfinishedMessage(bool messageEnd, int length)
    {
        if (messageEnd) Volatile.Write(ref _messageProgressAt, 0);
        else if (length > 0 || Volatile.Read(ref _messageProgressAt) == 0)
            Volatile.Write(ref _messageProgressAt, Math.Max(1, Volatile.Read(ref _lastReadAt)));
    }

    private void ResetMessage()
    {
        _server.Budget.Release(_messageLength);
        if (_message is not null) ArrayPool<byte>.Shared.Return(_message);
        _message = null;
        _messageLength = 0;
        _messageInProgress = false;
    }

    private async ValueTask DeliverAsync(MessageKind kind, ReadOnlyMemory<byte> data, bool compressed)
    {
        _server.Metrics.MessageReceived();
        await EnterHandlersAsync().ConfigureAwait(false);
        try
        {
            ValueTask pending;
            try
            {
                pending = OnMessageAsync(new RealtimeMessage(kind, data, compressed));
            }
            catch (Exception exception)
            {
                HandlerFailed(exception, "Message");
                return;
            }
            if (!pending.IsCompletedSuccessfully) await AwaitHandlerUncorkedAsync(pending).ConfigureAwait(false);
        }
        finally
        {
            ExitHandlers();
        }
    }

    private async ValueTask DispatchControlAsync(byte[] payload, bool isPing)
    {
        await EnterHandlersAsync().ConfigureAwait(false);
        try
        {
            if (isPing) OnPing(payload);
            else OnPong(payload);
        }
        catch (Exception exception)
        {
            HandlerFailed(exception, isPing ? "Ping" : "Pong");
        }
        finally
        {
            ExitHandlers();
        }
    }

    /// <summary>A handler threw: log it and close the connection with 1011 (RFC 6455 §7.4.1).</summary>
    private void HandlerFailed(Exception exception, string handler)
    {
        _server.Log.HandlerFailed(exception, handler, Id, _endpoint.Pattern);
        CloseLocally(CloseCode.InternalError, "internal error");
    }

    internal void CloseLocally(ushort code, string reason)
    {
        byte[]? frame = null;
        lock (_sync)
        {
            var (core, request) = ConnectionModule.close(_core, code, reason, _server.Now());
            _core = core;
            if (request.IsSendCloseFrame) frame = request.closeFrame;
        }
        if (frame is not null) EnqueueControl(frame);
    }

    /// <summary>Called by the server's timer: keep-alive pings, idle and closing-handshake timeouts.</summary>
    internal void Tick(long now)
    {
        if (MessageTimedOut(now))
        {
            _server.Log.MessageTimeout(Id);
            CloseLocally(CloseCode.PolicyViolation, "message timeout");
        }
        TickAction action;
        lock (_sync)
        {
            var (core, due) = ConnectionModule.tick(_core, now);
            _core = core;
            action = due;
        }
        switch (action.Tag)
        {
            case TickAction.Tags.SendPing:
                EnqueueControl(action.pingFrame);
                break;
            case TickAction.Tags.IdleTimedOut:
                _server.Log.IdleTimeout(Id);
                // Once the close frame is handed to Kestrel the connection ends without waiting for
                // the silent client's answer; a vanished peer may never take the frame at all, so
                // the transport is aborted after the close timeout unless it was handed over.
                lock (_sync) _stopReceivingWhenFlushed = true;
                EnqueueControl(action.idleCloseFrame);
                ArmCloseBackstop();
                break;
            case TickAction.Tags.CloseHandshakeTimedOut:
                AbortTransport();
                break;
        }
    }

    /// <summary>
    /// True once, when an unfinished message has had no payload for longer than the idle timeout
    /// while the client kept sending other frames (off when the idle timeout is): it is then closed
    /// with 1008, as docs/limits.md says. A client gone silent is the idle timeout's (1001).
    /// </summary>
    private bool MessageTimedOut(long now)
    {
        long progress = Volatile.Read(ref _messageProgressAt);
        long timeout = (long)_endpoint.Options.IdleTimeout.TotalMilliseconds;
        if (progress == 0 || timeout <= 0 || now - progress <= timeout || Volatile.Read(ref _lastReadAt) <= progress) return false;
        return Interlocked.CompareExchange(ref _messageProgressAt, 0, progress) == progress;
    }

    /// <summary>Ends the receive loop: the connection finishes and Kestrel closes the TCP connection after sending what it holds.</summary>
    private void StopReceiving()
    {
        if (_native is not null)
        {
            _native.StopReading();
            TaskCompletionSource? taken;
            lock (_sync)
            {
                taken = _controlTaken;
                _controlTaken = null;
            }
            taken?.TrySetResult();
            return;
        }
        if (_pipe is null)
        {
            _receiving!.Cancel();
            return;
        }
        // The pending (or next) read returns as canceled, and a wait for pongs to be taken ends.
        _pipe.Input.CancelPendingRead();
        TaskCompletionSource? controlTaken;
        lock (_sync)
        {
            controlTaken = _controlTaken;
            _controlTaken = null;
        }
        controlTaken?.TrySetResult();
    }

    private int _backstopWaits;

    private void ArmCloseBackstop() =>
        _ = Task.Delay(_endpoint.Options.CloseTimeout).ContinueWith(static (_, state) => ((RealtimeSocket)state!).AbortUnlessEnded(), this, TaskScheduler.Default);

    /// <summary>
    /// The backstop after an idle close: drops the transport when the close frame is stuck (a writer
    /// is blocked on a peer that does not read). Not when the frame was handed over: the connection
    /// is then ending gracefully, and an abort would drop the frame still in Kestrel's output. Not
    /// either, for up to a second, while no writer has taken the frame yet (the thread pool is late,
    /// which with a close timeout of a few milliseconds is no sign of a vanished peer).
    /// </summary>
    private void AbortUnlessEnded()
    {
        bool abort;
        bool wait = false;
        lock (_sync)
        {
            abort = !_core.HasEnded && !_closeHandedOver;
            if (abort && !_closeTaken && !_inWrite
                && (long)(_backstopWaits + 1) * Math.Max(1L, (long)_endpoint.Options.CloseTimeout.TotalMilliseconds) <= 1000)
            {
                _backstopWaits++;
                wait = true;
                abort = false;
            }
        }
        if (wait) ArmCloseBackstop();
        else if (abort) AbortTransport();
    }

    private void AbortTransport()
    {
        try
        {
            if (_native is { } native) native.Abort();
            else ((HttpContext)_request).Abort();
        }
        catch (Exception exception) { _server.Log.TransportEnded(Id, exception.Message); }
    }

    /// <summary>Last steps: let queued frames out, leave the topics, and call Close once.</summary>
    private async Task FinishAsync()
    {
        try
        {
            await FlushRemainingAsync(_endpoint.Options.CloseTimeout).ConfigureAwait(false);
        }
        catch (Exception exception)
        {
            _server.Log.TransportEnded(Id, exception.Message);
        }
        ushort code;
        string reason;
        lock (_sync)
        {
            _core = ConnectionModule.transportEnded(_core);
            (code, reason) = ConnectionModule.closeOutcome(_core);
            if (!_writing)
            {
                // No writer will take what is still queued (a running one ends once it has written it).
                _core = ConnectionModule.writingStopped(_core);
                ReleaseIdleBuffers();
            }
        }
        ResetMessage();
        DisposeCompression();
        _server.Unregister(this);
        _server.Metrics.ConnectionClosed(_endpoint.Pattern, code);
        _server.Log.ConnectionClosed(Id, code, reason);
        await EnterHandlersAsync().ConfigureAwait(false);
        _closeDispatched = true;
        try { OnClose(code, reason); }
        catch (Exception exception) { _server.Log.HandlerFailed(exception, "Close", Id, _endpoint.Pattern); }
        finally { Volatile.Write(ref _handlerGate, 0); }
    }
}

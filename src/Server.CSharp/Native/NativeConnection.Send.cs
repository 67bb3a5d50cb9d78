namespace Realtime.Native;

// The sending side: a writer (one at a time, see RealtimeSocket.Outbound.cs) sends straight to the
// socket from whatever thread it runs on. What the kernel does not take stays where it is, in the
// writer's own buffer, and the loop finishes sending it when the socket turns writable (EPOLLOUT);
// the writer's task completes then. Nothing is copied on the way.
internal sealed partial class NativeConnection
{
    // The connection is its own send lock: it is internal, so no application code can lock it, and a
    // lock object of its own would cost 24 bytes per idle connection.
    private object SendLock => this;
    private bool _closed;
    private ReadOnlyMemory<byte> _unsent;
    private TaskCompletionSource? _sent;
    // Loop thread only: the descriptor is registered for EPOLLOUT.
    private bool _wantOut;

    /// <summary>Sends <paramref name="data"/>; completes when the kernel has taken all of it.</summary>
    public ValueTask SendAsync(ReadOnlyMemory<byte> data)
    {
        Task pending;
        lock (SendLock)
        {
            if (_closed) return ValueTask.FromException(new IOException("the connection is closed"));
            if (_sent is not null) return ValueTask.FromException(new InvalidOperationException("a send is already waiting"));
            int error = SendSome(ref data);
            if (error != 0) return ValueTask.FromException(new IOException($"send failed (errno {error})"));
            if (data.IsEmpty) return ValueTask.CompletedTask;
            _unsent = data;
            _sent = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            pending = _sent.Task;
        }
        if (_loop.IsCurrent) WantOut();
        else _loop.Post(static state => ((NativeConnection)state!).WantOut(), this);
        return new ValueTask(pending);
    }

    /// <summary>Under the lock: sends until done or the kernel's buffer is full; errno, or 0.</summary>
    private unsafe int SendSome(ref ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty)
        {
            nint sent;
            fixed (byte* bytes = data.Span) sent = Libc.Send(_fd, bytes, data.Length, Libc.MsgNoSignal);
            if (sent >= 0)
            {
                data = data[(int)sent..];
                continue;
            }
            int error = Libc.LastError;
            if (error == Libc.EIntr) continue;
            return error == Libc.EAgain ? 0 : error;
        }
        return 0;
    }

    private void WantOut()
    {
        if (_stage == Stage.Closed) return;
        _wantOut = true;
        UpdateInterest();
    }

    /// <summary>On the loop, when the socket is writable (or failed): sends what waits.</summary>
    private void FlushUnsent()
    {
        TaskCompletionSource? done = null;
        Exception? failure = null;
        lock (SendLock)
        {
            if (_sent is not null && !_closed)
            {
                var data = _unsent;
                int error = SendSome(ref data);
                if (error != 0) failure = new IOException($"send failed (errno {error})");
                if (error != 0 || data.IsEmpty)
                {
                    done = _sent;
                    _sent = null;
                    _unsent = default;
                }
                else _unsent = data;
            }
        }
        if (done is null && _sent is not null) return;
        _wantOut = false;
        UpdateInterest();
        if (failure is null) done?.TrySetResult();
        else done!.TrySetException(failure);
    }
}

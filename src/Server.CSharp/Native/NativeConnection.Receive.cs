using System.Buffers;

namespace Realtime.Native;

// The receiving side of an open connection. The loop reads into its own buffer and hands the bytes
// to the socket's receive step on the loop's thread; the core keeps what an unfinished frame header
// needs, and the socket copies only what an unfinished message needs, so nothing is kept per
// connection between reads. When the handler goes asynchronous (or pongs pile up, or a write waits
// for the peer), the connection stops being read until that is over, and the loop's buffer, which
// still holds the message, goes with it; the loop takes a fresh one.
internal sealed partial class NativeConnection
{
    private RealtimeSocket? _socket;
    private TaskCompletionSource? _readEnd;
    private volatile bool _stopRequested;
    // Loop thread only.
    private bool _reading;
    private bool _paused;

    /// <summary>
    /// Starts reading for <paramref name="socket"/> on the loop; the task completes when reading ends
    /// (end of stream, a transport error, or <see cref="StopReading"/>).
    /// </summary>
    public Task ReceiveAsync(RealtimeSocket socket)
    {
        _socket = socket;
        var end = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _readEnd, end);
        if (_stopRequested) end.TrySetResult();
        _loop.Post(static state => ((NativeConnection)state!).BeginReading(), this);
        return end.Task;
    }

    private void BeginReading()
    {
        if (_stage == Stage.Closed || _stopRequested)
        {
            EndReading(null);
            return;
        }
        _stage = Stage.Open;
        _reading = true;
        UpdateInterest();
    }

    /// <summary>Ends reading without closing (any thread): what is queued still goes out.</summary>
    public void StopReading()
    {
        _stopRequested = true;
        Volatile.Read(ref _readEnd)?.TrySetResult();
        _loop.Post(static state =>
        {
            var connection = (NativeConnection)state!;
            connection._reading = false;
            connection.UpdateInterest();
        }, this);
    }

    private unsafe void OnReadable()
    {
        if (!_reading || _paused) return;
        var buffer = _loop.Buffer;
        nint read;
        fixed (byte* bytes = buffer) read = Libc.Recv(_fd, bytes, buffer.Length, 0);
        if (read < 0)
        {
            int error = Libc.LastError;
            if (error is Libc.EAgain or Libc.EIntr) return;
            EndReading(new IOException($"recv failed (errno {error})"));
            return;
        }
        if (read == 0)
        {
            EndReading(null);
            return;
        }
        var processing = _socket!.ReceiveNativeAsync(buffer.AsMemory(0, (int)read));
        if (processing.IsCompleted)
        {
            AfterBatch(processing);
            return;
        }
        // The message may still lie in the buffer: it stays with the connection until the handler is done.
        var taken = _loop.TakeBuffer();
        _paused = true;
        UpdateInterest();
        processing.ContinueWith(static (done, state) =>
        {
            var (connection, buffer) = ((NativeConnection, byte[]))state!;
            ArrayPool<byte>.Shared.Return(buffer);
            connection._loop.Post(static s => { var (c, d) = ((NativeConnection, Task))s!; c.Resume(d); }, (connection, done));
        }, (this, taken), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    /// <summary>After a batch was processed: stop, wait for pongs to be taken, or read on.</summary>
    private void AfterBatch(Task processed)
    {
        if (processed.IsFaulted)
        {
            EndReading(processed.Exception!.InnerException);
            return;
        }
        if (_stopRequested || _socket!.NativeReadingStops(out var controlBacklog))
        {
            EndReading(null);
            return;
        }
        if (controlBacklog is null) return;
        _paused = true;
        UpdateInterest();
        controlBacklog.ContinueWith(static (done, state) =>
            ((NativeConnection)state!)._loop.Post(static s => { var (c, d) = ((NativeConnection, Task))s!; c.Resume(d); }, ((NativeConnection)state!, done)),
            this, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    private void Resume(Task done)
    {
        if (_stage != Stage.Open || !_reading) return;
        _paused = false;
        AfterBatch(done);
        UpdateInterest();
    }

    /// <summary>Reading is over: the socket's run goes on to finish the connection.</summary>
    private void EndReading(Exception? failure)
    {
        _reading = false;
        UpdateInterest();
        var end = Volatile.Read(ref _readEnd);
        if (end is null) return;
        if (failure is null) end.TrySetResult();
        else end.TrySetException(failure);
    }
}

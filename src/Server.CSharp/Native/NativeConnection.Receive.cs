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
    // 1 once the socket was told that reading ended (it is told once).
    private int _readEnded;
    private volatile bool _stopRequested;
    // Loop thread only.
    private bool _reading;
    private bool _paused;

    /// <summary>
    /// Starts reading for <paramref name="socket"/> on the loop; when reading ends (end of stream, a
    /// transport error, or <see cref="StopReading"/>) the socket's <see cref="RealtimeSocket.NativeReadingEnded"/>
    /// is called, once. No task and no continuation are kept per connection meanwhile.
    /// </summary>
    public void StartReading(RealtimeSocket socket)
    {
        // A full fence each side (here and in StopReading): one of the two sees the other's write.
        Interlocked.Exchange(ref _socket, socket);
        if (_stopRequested) SignalReadEnd(null);
        // Usually on the loop already: the upgrade pipeline starts there and Open mostly completes at once.
        if (_loop.IsCurrent) BeginReading();
        else _loop.Post(static state => ((NativeConnection)state!).BeginReading(), this);
    }

    private void SignalReadEnd(Exception? failure)
    {
        if (Volatile.Read(ref _socket) is not { } socket || Interlocked.Exchange(ref _readEnded, 1) != 0) return;
        socket.NativeReadingEnded(failure);
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
        Interlocked.MemoryBarrier();
        SignalReadEnd(null);
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
        SignalReadEnd(failure);
    }
}

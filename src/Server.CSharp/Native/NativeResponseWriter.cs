using System.Buffers;
using System.IO.Pipelines;

namespace Realtime.Native;

/// <summary>
/// The output of a natively accepted request (its 101, or any other response): bytes gather in a
/// pooled buffer and each flush sends them to the socket; the buffer goes back to the pool once sent.
/// </summary>
internal sealed class NativeResponseWriter(NativeConnection connection) : PipeWriter
{
    private byte[]? _buffer;
    private int _length;

    public override Memory<byte> GetMemory(int sizeHint = 0)
    {
        Ensure(Math.Max(sizeHint, 1));
        return _buffer.AsMemory(_length);
    }

    public override Span<byte> GetSpan(int sizeHint = 0)
    {
        Ensure(Math.Max(sizeHint, 1));
        return _buffer.AsSpan(_length);
    }

    public override void Advance(int bytes) => _length += bytes;

    private void Ensure(int more)
    {
        if (_buffer is not null && _buffer.Length - _length >= more) return;
        var grown = ArrayPool<byte>.Shared.Rent(Math.Max(4096, _length + more));
        if (_buffer is not null)
        {
            _buffer.AsSpan(0, _length).CopyTo(grown);
            ArrayPool<byte>.Shared.Return(_buffer);
        }
        _buffer = grown;
    }

    public override async ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
    {
        if (_length > 0)
        {
            var buffer = _buffer!;
            int length = _length;
            _buffer = null;
            _length = 0;
            try
            {
                await connection.SendAsync(buffer.AsMemory(0, length)).ConfigureAwait(false);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
        return new FlushResult(isCanceled: false, isCompleted: false);
    }

    public override void CancelPendingFlush()
    {
    }

    public override void Complete(Exception? exception = null)
    {
        if (_buffer is not null) ArrayPool<byte>.Shared.Return(_buffer);
        _buffer = null;
        _length = 0;
    }
}

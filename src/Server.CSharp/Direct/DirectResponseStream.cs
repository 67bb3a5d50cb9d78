namespace Realtime.Direct;

/// <summary>
/// The response body of a directly accepted request that was not upgraded: the first write (or
/// flush) sends the response head, then the bytes go to the connection's output pipe.
/// </summary>
internal sealed class DirectResponseStream(DirectConnectionFeatures features) : Stream
{
    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        await features.StartResponseAsync().ConfigureAwait(false);
        await features.Transport.Output.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    // Kestrel refuses synchronous I/O by default (AllowSynchronousIO); so does this stream.
    public override void Write(byte[] buffer, int offset, int count) =>
        throw new InvalidOperationException("Synchronous operations are disallowed. Call WriteAsync or set AllowSynchronousIO to true instead.");

    public override async Task FlushAsync(CancellationToken cancellationToken)
    {
        await features.StartResponseAsync().ConfigureAwait(false);
        await features.Transport.Output.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    public override void Flush()
    {
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}

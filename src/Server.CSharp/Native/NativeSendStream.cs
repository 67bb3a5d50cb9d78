namespace Realtime.Native;

/// <summary>
/// A write-only stream over <see cref="NativeConnection.SendAsync"/>, so that the socket's writer
/// (which writes to a stream or to a pipe) writes to a native connection without another path.
/// </summary>
internal sealed class NativeSendStream(NativeConnection connection) : Stream
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

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        connection.SendAsync(buffer);

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        connection.SendAsync(buffer.AsMemory(offset, count)).AsTask();

    public override void Write(byte[] buffer, int offset, int count) =>
        throw new NotSupportedException("a native connection is written asynchronously");

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}

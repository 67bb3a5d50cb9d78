using System.Buffers;
using System.IO.Pipelines;

namespace Realtime.Native;

/// <summary>A reader at its end: the input of a natively accepted request, whose head the loop already read.</summary>
internal sealed class EmptyPipeReader : PipeReader
{
    public static readonly EmptyPipeReader Instance = new();

    public override bool TryRead(out ReadResult result)
    {
        result = new ReadResult(ReadOnlySequence<byte>.Empty, isCanceled: false, isCompleted: true);
        return true;
    }

    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default) =>
        new(new ReadResult(ReadOnlySequence<byte>.Empty, isCanceled: false, isCompleted: true));

    public override void AdvanceTo(SequencePosition consumed)
    {
    }

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
    }

    public override void CancelPendingRead()
    {
    }

    public override void Complete(Exception? exception = null)
    {
    }
}

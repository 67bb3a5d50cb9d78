namespace Realtime.Channels;

/// <summary>
/// One channel's order on this node while it has publishes queued. Publishes queue here in the order
/// they are made; one batch at a time goes to the store (<see cref="IChannelStore.AppendManyAsync"/>: one
/// round trip to a remote store for everything queued meanwhile) and is fanned out, in position order,
/// before the next batch goes. Each batch holds the channel's lock (<see cref="ChannelHub.LockAsync"/>)
/// from its append to the end of its fan-out, so a subscribe comes between two batches and the guarantee
/// of <see cref="ChannelHub"/>'s remarks holds: each publication of this node is in a subscriber's
/// history read or delivered live after it, never both, never neither. When its queue is empty the
/// sequencer retires (leaves the hub's map), so channels without publishes in flight keep none.
/// </summary>
/// <remarks>
/// Why batches and not one append at a time: with a store in Redis, Redis is the serialization point
/// and an append is a round trip; one at a time, a channel's throughput on a node was one publication
/// per round trip whatever the publishers sent. Why not several batches in flight at once: the next batch's
/// positions would depend on the order Redis runs them in, which a retried script (after NOSCRIPT) can
/// change; with one at a time, a publisher's publishes take positions in the order it sent them.
/// </remarks>
internal sealed class ChannelSequencer
{
    /// <summary>The most publications one append carries.</summary>
    internal const int MaxBatchCount = 256;

    /// <summary>The most data bytes one append carries (a batch holds at least one publication).</summary>
    internal const long MaxBatchBytes = 1 << 20;

    private readonly ChannelHub _hub;
    private readonly string _channel;
    private readonly object _sync = new();
    private readonly Queue<Pending> _waiting = new();
    private bool _draining;
    private bool _retired;

    public ChannelSequencer(ChannelHub hub, string channel)
    {
        _hub = hub;
        _channel = channel;
    }

    /// <summary>
    /// Queues a publication; the task ends once it is in the store and (unless its key was a duplicate)
    /// fanned out. With a store that completes synchronously and nothing queued before, it ends before this returns.
    /// Null when this sequencer has retired: the caller takes the channel's current one and tries again.
    /// </summary>
    /// <param name="data">The publication's data.</param>
    /// <param name="key">The publisher's deduplication key, or null.</param>
    /// <param name="inlineContinuation">Whether what awaits the task may run on the thread that completes it,
    /// in position order (for short continuations of the server's own, such as sending the ack); the app's
    /// code always continues elsewhere.</param>
    public Task<ChannelAppendResult>? TryAppend(byte[] data, string? key, bool inlineContinuation)
    {
        var pending = new Pending(new ChannelAppendRequest(data, key), inlineContinuation);
        bool drain;
        lock (_sync)
        {
            if (_retired) return null;
            _waiting.Enqueue(pending);
            drain = !_draining;
            _draining = true;
        }
        if (drain) _ = DrainAsync();
        return pending.Completion.Task;
    }

    /// <summary>Appends and fans out batch after batch until nothing waits; one runs at a time (<c>_draining</c>).</summary>
    private async Task DrainAsync()
    {
        var batch = new List<Pending>();
        var requests = new List<ChannelAppendRequest>();
        while (true)
        {
            lock (_sync)
            {
                // Only this loop dequeues: what is queued now is still queued once the lock is held.
                if (_waiting.Count == 0)
                {
                    _draining = false;
                    _retired = true;
                    _hub.Retire(_channel, this);
                    return;
                }
            }
            batch.Clear();
            requests.Clear();
            IReadOnlyList<ChannelAppendResult>? results = null;
            Exception? failure = null;
            var held = await _hub.LockAsync(_channel).ConfigureAwait(false);
            try
            {
                lock (_sync)
                {
                    long bytes = 0;
                    while (_waiting.TryPeek(out var next) && batch.Count < MaxBatchCount
                        && (batch.Count == 0 || bytes + next.Request.Data.Length <= MaxBatchBytes))
                    {
                        batch.Add(_waiting.Dequeue());
                        bytes += next.Request.Data.Length;
                    }
                }
                foreach (var pending in batch) requests.Add(pending.Request);
                try
                {
                    results = await _hub.Store.AppendManyAsync(_channel, requests).ConfigureAwait(false);
                    if (results.Count != batch.Count)
                        throw new InvalidOperationException($"the channel store returned {results.Count} results for {batch.Count} publications");
                    for (var i = 0; i < batch.Count; i++)
                        if (!results[i].Duplicate) _hub.FanOut(_channel, results[i].Position, batch[i].Request.Data.Span);
                }
                catch (Exception exception)
                {
                    failure = exception;
                }
            }
            finally
            {
                held.Dispose();
            }
            for (var i = 0; i < batch.Count; i++)
            {
                if (failure is null) batch[i].Completion.TrySetResult(results![i]);
                else batch[i].Completion.TrySetException(failure);
            }
        }
    }

    /// <summary>A queued publication and who waits for it.</summary>
    private sealed class Pending(ChannelAppendRequest request, bool inlineContinuation)
    {
        public ChannelAppendRequest Request { get; } = request;

        public TaskCompletionSource<ChannelAppendResult> Completion { get; } =
            new(inlineContinuation ? TaskCreationOptions.None : TaskCreationOptions.RunContinuationsAsynchronously);
    }
}

namespace Realtime.Channels;

/// <summary>
/// One channel's order on this node. Publishes queue here in the order they are made; one batch at a
/// time goes to the store (<see cref="IChannelStore.AppendManyAsync"/>: one round trip to a remote store
/// for everything queued meanwhile) and is fanned out, in position order, before the next batch goes. A
/// subscribe takes the channel alone (<see cref="LockAsync"/>) between two batches, so the guarantee of
/// <see cref="ChannelHub"/>'s remarks holds: each publication of this node is in a subscriber's history
/// read or delivered live after it, never both, never neither.
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
    private readonly SemaphoreSlim _turn = new(1, 1);
    private readonly object _sync = new();
    private readonly Queue<Pending> _waiting = new();
    private bool _draining;

    public ChannelSequencer(ChannelHub hub, string channel)
    {
        _hub = hub;
        _channel = channel;
    }

    /// <summary>Takes the channel alone (no batch is on its way or being fanned out) until the result is disposed.</summary>
    public async ValueTask<Turn> LockAsync()
    {
        await _turn.WaitAsync().ConfigureAwait(false);
        return new Turn(_turn);
    }

    /// <summary>The channel taken alone; disposing gives it back.</summary>
    public readonly struct Turn(SemaphoreSlim turn) : IDisposable
    {
        /// <summary>Gives the channel back.</summary>
        public void Dispose() => turn.Release();
    }

    /// <summary>
    /// Queues a publication; the task ends once it is in the store and (unless its key was a duplicate)
    /// fanned out. With a store that completes synchronously and nothing queued before, it ends before this returns.
    /// </summary>
    /// <param name="data">The publication's data.</param>
    /// <param name="key">The publisher's deduplication key, or null.</param>
    /// <param name="inlineContinuation">Whether what awaits the task may run on the thread that completes it,
    /// in position order (for short continuations of the server's own, such as sending the ack); the app's
    /// code always continues elsewhere.</param>
    public Task<ChannelAppendResult> AppendAsync(byte[] data, string? key, bool inlineContinuation)
    {
        var pending = new Pending(new ChannelAppendRequest(data, key), inlineContinuation);
        bool drain;
        lock (_sync)
        {
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
                // Only this loop dequeues, so what is queued now is still queued once the turn is taken:
                // an empty queue ends the drain without taking the channel's turn once more.
                if (_waiting.Count == 0)
                {
                    _draining = false;
                    return;
                }
            }
            batch.Clear();
            requests.Clear();
            IReadOnlyList<ChannelAppendResult>? results = null;
            Exception? failure = null;
            await _turn.WaitAsync().ConfigureAwait(false);
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
                _turn.Release();
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

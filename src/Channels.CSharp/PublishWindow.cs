namespace Realtime.Channels;

/// <summary>
/// A connection's publishes that are queued and not yet acknowledged (<see cref="RealtimeChannelsOptions.MaxPublishesInFlight"/>).
/// The connection's message handler, which runs one message at a time, is the only one that waits.
/// </summary>
internal sealed class PublishWindow
{
    private readonly object _sync = new();
    private int _count;
    private int _resumeAt;
    private TaskCompletionSource? _waiter;

    /// <summary>A publish was queued.</summary>
    public void Started()
    {
        lock (_sync) _count++;
    }

    /// <summary>A publish was acknowledged (or failed).</summary>
    public void Ended()
    {
        TaskCompletionSource? resume = null;
        lock (_sync)
        {
            _count--;
            if (_waiter is not null && _count <= _resumeAt)
            {
                resume = _waiter;
                _waiter = null;
            }
        }
        resume?.TrySetResult();
    }

    /// <summary>
    /// Completes once at most <paramref name="count"/> publishes are in flight. Its continuation never runs
    /// on the thread that acknowledged a publish (that thread orders one channel's publishes).
    /// </summary>
    public Task UntilAtMost(int count)
    {
        lock (_sync)
        {
            if (_count <= count) return Task.CompletedTask;
            _resumeAt = count;
            _waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _waiter.Task;
        }
    }
}

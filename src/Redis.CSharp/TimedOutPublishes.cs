namespace Realtime.Redis;

/// <summary>
/// Publishes StackExchange.Redis stopped waiting for (its <c>AsyncTimeout</c>) that Redis has not
/// answered yet. The client keeps each one, bytes included, until an answer to it or to a later command
/// arrives on the connection (answers come in order), or until the connection is lost; so they stay
/// counted in the <see cref="InFlightBudget"/> until then, and a Redis slower than the timeout cannot
/// make the client hold more than the bound.
/// </summary>
internal sealed class TimedOutPublishes
{
    private readonly InFlightBudget _budget;
    private readonly List<(long Sequence, int Bytes)> _entries = new();
    private int _count;

    /// <param name="budget">Where each publish stays counted until it is let go here.</param>
    public TimedOutPublishes(InFlightBudget budget) => _budget = budget;

    /// <summary>How many timed-out publishes are still held.</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>A publish (the <paramref name="sequence"/>-th handed to Redis) timed out; it stays counted.</summary>
    public void Add(long sequence, int bytes)
    {
        lock (_entries)
        {
            _entries.Add((sequence, bytes));
            _count = _entries.Count;
        }
    }

    /// <summary>
    /// Redis answered a command sent after the <paramref name="sequence"/>-th publish: the timed-out
    /// publishes up to it are answered too, and let go.
    /// </summary>
    public void AnsweredThrough(long sequence)
    {
        if (Count == 0) return;
        lock (_entries)
        {
            for (int i = _entries.Count - 1; i >= 0; i--)
            {
                if (_entries[i].Sequence > sequence) continue;
                _budget.Release(_entries[i].Bytes);
                _entries.RemoveAt(i);
            }
            _count = _entries.Count;
        }
    }

    /// <summary>The connection they were sent on is gone, and with it what the client kept of them.</summary>
    public void ConnectionLost() => AnsweredThrough(long.MaxValue);
}

using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// Presence in this process: each channel's members in a dictionary. Its members never leave by a node's
/// death (there is one node), so it reports nothing to its listener. Every member completes synchronously.
/// </summary>
public sealed class InMemoryChannelPresence : IChannelPresence
{
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, Dictionary<string, PresenceMember>> _channels = new(StringComparer.Ordinal);

    /// <summary>How many channels have members (an emptied channel is removed).</summary>
    internal int ChannelCount => _channels.Count;

    /// <inheritdoc/>
    public void Start(IChannelPresenceListener listener) => ArgumentNullException.ThrowIfNull(listener);

    /// <inheritdoc/>
    public ValueTask<bool> JoinAsync(string channel, PresenceMember member, CancellationToken cancellationToken = default)
    {
        while (true)
        {
            var members = _channels.GetOrAdd(channel, static _ => new Dictionary<string, PresenceMember>(StringComparer.Ordinal));
            lock (members)
            {
                // A set emptied by the last leave was removed from the map: start again with the current one.
                if (!ReferenceEquals(_channels.GetValueOrDefault(channel), members)) continue;
                return ValueTask.FromResult(members.TryAdd(member.Client, member));
            }
        }
    }

    /// <inheritdoc/>
    public ValueTask<PresenceMember?> LeaveAsync(string channel, string client, CancellationToken cancellationToken = default)
    {
        if (!_channels.TryGetValue(channel, out var members)) return ValueTask.FromResult<PresenceMember?>(null);
        lock (members)
        {
            if (!members.Remove(client, out var member)) return ValueTask.FromResult<PresenceMember?>(null);
            if (members.Count == 0) _channels.TryRemove(new KeyValuePair<string, Dictionary<string, PresenceMember>>(channel, members));
            return ValueTask.FromResult<PresenceMember?>(member);
        }
    }

    /// <inheritdoc/>
    public ValueTask<IReadOnlyList<PresenceMember>> GetMembersAsync(string channel, CancellationToken cancellationToken = default)
    {
        if (!_channels.TryGetValue(channel, out var members)) return ValueTask.FromResult<IReadOnlyList<PresenceMember>>([]);
        lock (members)
            return ValueTask.FromResult<IReadOnlyList<PresenceMember>>(members.Values.ToArray());
    }
}

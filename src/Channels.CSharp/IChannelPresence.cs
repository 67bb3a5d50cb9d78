using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// Who is in each channel: in this process (<see cref="InMemoryChannelPresence"/>) or across every node
/// (Realtime.Channels.Redis). The channels server joins a connection when it subscribes with presence
/// shown, and leaves it when it unsubscribes or disconnects; it publishes the join and leave events itself.
/// </summary>
public interface IChannelPresence
{
    /// <summary>
    /// Called once when the channels server starts, before any other member: a shared presence reports
    /// through <paramref name="listener"/> the members that left without a <see cref="LeaveAsync"/>
    /// (their node died), once per member across the cluster.
    /// </summary>
    /// <param name="listener">Receives the members that left because their node died.</param>
    void Start(IChannelPresenceListener listener);

    /// <summary>Adds <paramref name="member"/> to the channel's members; true if it was not a member already.</summary>
    /// <param name="channel">The channel's name.</param>
    /// <param name="member">The connection's client id and the information presence shows of it.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask<bool> JoinAsync(string channel, PresenceMember member, CancellationToken cancellationToken = default);

    /// <summary>Removes the member with client id <paramref name="client"/>; returns it, or null if it was not a member.</summary>
    /// <param name="channel">The channel's name.</param>
    /// <param name="client">The connection's client id.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask<PresenceMember?> LeaveAsync(string channel, string client, CancellationToken cancellationToken = default);

    /// <summary>The channel's members, in no particular order.</summary>
    /// <param name="channel">The channel's name.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask<IReadOnlyList<PresenceMember>> GetMembersAsync(string channel, CancellationToken cancellationToken = default);
}

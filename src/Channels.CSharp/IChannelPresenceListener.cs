using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>Told by an <see cref="IChannelPresence"/> about members that left without leaving (their node died).</summary>
public interface IChannelPresenceListener
{
    /// <summary>
    /// <paramref name="members"/> are no longer in <paramref name="channel"/>: the channels server
    /// publishes a leave event for each to the channel's presence watchers on every node.
    /// </summary>
    /// <param name="channel">The channel's name.</param>
    /// <param name="members">The members that left.</param>
    void MembersLeft(string channel, IReadOnlyList<PresenceMember> members);
}

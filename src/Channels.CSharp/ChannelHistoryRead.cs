using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>What <see cref="IChannelStore.ReadAsync"/> found.</summary>
/// <param name="Position">The channel's current position when it was read.</param>
/// <param name="Publications">The publications after the reader's position, oldest first, in <see cref="ChannelPosition.Epoch"/> of <paramref name="Position"/>; at most the limit asked for (read again from the last one for more).</param>
/// <param name="Recovered">True when nothing between the reader's position and the first publication returned is missing: same epoch, and history not trimmed past it. False means some publications are lost to the reader.</param>
public readonly record struct ChannelHistoryRead(ChannelPosition Position, IReadOnlyList<ChannelPublication> Publications, bool Recovered);

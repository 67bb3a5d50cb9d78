using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>What <see cref="IChannelStore.AppendAsync"/> did.</summary>
/// <param name="Position">The publication's position (for a duplicate key: the position it got the first time).</param>
/// <param name="Duplicate">True when the key had been seen, so nothing was appended (and nothing must be published).</param>
public readonly record struct ChannelAppendResult(ChannelPosition Position, bool Duplicate);

namespace Realtime.Channels;

/// <summary>One publication to append with <see cref="IChannelStore.AppendManyAsync"/>.</summary>
/// <param name="Data">The publication's data (a JSON value's UTF-8 text); the store keeps its own copy.</param>
/// <param name="Key">The publisher's deduplication key, or null for none.</param>
public readonly record struct ChannelAppendRequest(ReadOnlyMemory<byte> Data, string? Key);

namespace Realtime.Channels;

/// <summary>A publication held in a channel's history.</summary>
/// <param name="Offset">Its offset in the channel's epoch (1-based, no gaps).</param>
/// <param name="Data">Its data: a JSON value's UTF-8 text, as published.</param>
public readonly record struct ChannelPublication(ulong Offset, ReadOnlyMemory<byte> Data);

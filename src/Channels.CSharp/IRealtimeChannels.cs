using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// The channels server as the app's own code sees it (from DI, in routes and services): publications
/// made here get positions and history and reach subscribers exactly as a client's publish does.
/// </summary>
public interface IRealtimeChannels
{
    /// <summary>
    /// Publishes <paramref name="json"/> (one JSON value's UTF-8 text) to <paramref name="channel"/>;
    /// returns its position. With a <paramref name="key"/> seen recently on this channel, nothing is
    /// published again and the first position is returned.
    /// </summary>
    /// <param name="channel">The channel's name (1 to 256 UTF-8 bytes).</param>
    /// <param name="json">The data: one JSON value's UTF-8 text (<see cref="ArgumentException"/> otherwise).</param>
    /// <param name="key">A deduplication key (1 to 64 bytes), or null.</param>
    /// <exception cref="ChannelCapacityException">The in-memory store holds <see cref="RealtimeChannelsOptions.MaxChannels"/>
    /// channels and this is a new one.</exception>
    ValueTask<ChannelPosition> PublishJsonAsync(string channel, ReadOnlyMemory<byte> json, string? key = null);

    /// <summary>Publishes <paramref name="data"/> serialized as JSON (web defaults: camelCase names); otherwise as <see cref="PublishJsonAsync"/>.</summary>
    /// <typeparam name="T">The data's type.</typeparam>
    /// <param name="channel">The channel's name (1 to 256 UTF-8 bytes).</param>
    /// <param name="data">The data.</param>
    /// <param name="key">A deduplication key (1 to 64 bytes), or null.</param>
    ValueTask<ChannelPosition> PublishAsync<T>(string channel, T data, string? key = null);

    /// <summary>The channel's presence members (on every node, with a shared presence).</summary>
    /// <param name="channel">The channel's name.</param>
    ValueTask<IReadOnlyList<PresenceMember>> GetMembersAsync(string channel);
}

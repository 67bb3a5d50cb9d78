namespace Realtime.Channels;

/// <summary>
/// Thrown by <see cref="InMemoryChannelStore"/> when a channel it does not hold yet would take it past
/// <see cref="InMemoryChannelStore.MaxChannels"/> and no idle channel could be forgotten to make room.
/// A channels endpoint answers the client's request with the <c>too-many-channels</c> error;
/// <see cref="IRealtimeChannels"/> passes it to the app's code.
/// </summary>
public sealed class ChannelCapacityException : InvalidOperationException
{
    /// <summary>The refusal of <paramref name="channel"/> at a bound of <paramref name="maxChannels"/>.</summary>
    /// <param name="channel">The channel that was refused.</param>
    /// <param name="maxChannels">The most channels the store holds.</param>
    public ChannelCapacityException(string channel, int maxChannels)
        : base($"the store holds {maxChannels} channels, its most; {channel} is refused until idle ones are forgotten")
    {
        Channel = channel;
        MaxChannels = maxChannels;
    }

    /// <summary>The channel that was refused.</summary>
    public string Channel { get; }

    /// <summary>The most channels the store holds.</summary>
    public int MaxChannels { get; }
}

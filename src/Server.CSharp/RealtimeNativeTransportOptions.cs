namespace Realtime;

/// <summary>Options of the native Linux transport (<c>UseRealtimeNativeTransport</c>).</summary>
public sealed class RealtimeNativeTransportOptions
{
    /// <summary>How many event-loop threads hold connections; 0 (the default) means one per core.</summary>
    public int EventLoops { get; set; }
}

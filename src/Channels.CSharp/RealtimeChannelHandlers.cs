using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Realtime.Channels;

/// <summary>
/// What one channels endpoint does with its connections: who may connect (<see cref="Attach"/>), who may
/// subscribe, publish and see presence in which channel, what presence shows of a connection, and the
/// methods clients may call. Unset authorization callbacks allow everything; an async form, when set, is
/// used instead of the plain one.
/// </summary>
/// <typeparam name="TData">The per-connection data type returned by <c>Attach</c>.</typeparam>
public sealed class RealtimeChannelHandlers<TData>
{
    /// <summary>Runs before the upgrade: returns the connection's data, or a rejection (an HTTP error instead of the upgrade).</summary>
    public Func<HttpContext, Attachment<TData>>? Attach { get; set; }

    /// <summary>Asynchronous form of <see cref="Attach"/>.</summary>
    public Func<HttpContext, ValueTask<Attachment<TData>>>? AttachAsync { get; set; }

    /// <summary>May this connection subscribe to this channel? No gives <c>error</c> <c>forbidden</c>.</summary>
    public Func<ChannelConnection<TData>, string, bool>? CanSubscribe { get; set; }

    /// <summary>Asynchronous form of <see cref="CanSubscribe"/>.</summary>
    public Func<ChannelConnection<TData>, string, ValueTask<bool>>? CanSubscribeAsync { get; set; }

    /// <summary>May this connection publish to this channel? No gives <c>error</c> <c>forbidden</c>.</summary>
    public Func<ChannelConnection<TData>, string, bool>? CanPublish { get; set; }

    /// <summary>Asynchronous form of <see cref="CanPublish"/>.</summary>
    public Func<ChannelConnection<TData>, string, ValueTask<bool>>? CanPublishAsync { get; set; }

    /// <summary>
    /// May this connection see who is in this channel (a presence query, or join and leave events on
    /// subscribe)? No gives <c>error</c> <c>forbidden</c>.
    /// </summary>
    public Func<ChannelConnection<TData>, string, bool>? CanSeePresence { get; set; }

    /// <summary>Asynchronous form of <see cref="CanSeePresence"/>.</summary>
    public Func<ChannelConnection<TData>, string, ValueTask<bool>>? CanSeePresenceAsync { get; set; }

    /// <summary>
    /// What presence shows of a connection (every subscriber of a channel is one of its members):
    /// serialized as JSON with <see cref="JsonSerializerDefaults.Web"/>. Null (the default) shows <c>null</c>.
    /// </summary>
    public Func<ChannelConnection<TData>, object?>? PresenceInfo { get; set; }

    /// <summary>
    /// The methods clients may call with <c>request</c>, by name: each gets the connection and the
    /// request's data, and returns the response's data (serialized as JSON with
    /// <see cref="JsonSerializerDefaults.Web"/>). An unknown name gives <c>unknown-method</c>; a handler
    /// that throws gives <c>internal</c> (and is logged).
    /// </summary>
    public IDictionary<string, Func<ChannelConnection<TData>, JsonElement, ValueTask<object?>>> Requests { get; } =
        new Dictionary<string, Func<ChannelConnection<TData>, JsonElement, ValueTask<object?>>>(StringComparer.Ordinal);
}

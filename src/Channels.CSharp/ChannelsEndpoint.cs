using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Realtime.Protocol;

namespace Realtime.Channels;

/// <summary>
/// One channels endpoint: the Realtime handlers that negotiate the subprotocol, greet every connection
/// with <c>welcome</c> and answer each client message of docs/channels-protocol.md.
/// </summary>
internal sealed class ChannelsEndpoint<TData>
{
    /// <summary>How many publications one history read asks for while recovering.</summary>
    private const int RecoveryPage = 1_000;

    /// <summary>RFC 6455 §7.4.1: 1008, the close the server makes for a full send buffer (as under CloseOnBackpressureLimit).</summary>
    private const int SendBufferFull = 1008;

    private static readonly JsonSerializerOptions Json = ChannelHub.WebJson;

    private readonly ChannelHub _hub;
    private readonly RealtimeChannelHandlers<TData> _app;
    private readonly RealtimeChannelsOptions _options;

    public ChannelsEndpoint(ChannelHub hub, RealtimeChannelHandlers<TData> app)
    {
        _hub = hub;
        _app = app;
        _options = hub.Options;
    }

    public RealtimeHandlers<ChannelConnection<TData>> Handlers() => new()
    {
        AttachAsync = AttachAsync,
        Open = Open,
        MessageAsync = MessageAsync,
        Close = Close,
    };

    private async ValueTask<Attachment<ChannelConnection<TData>>> AttachAsync(HttpContext http)
    {
        if (!OffersChannels(http))
        {
            _hub.Logger.NoSubprotocol(http.Request.Path);
            return Attachment<ChannelConnection<TData>>.Reject(StatusCodes.Status400BadRequest,
                $"offer the subprotocol {ChannelSubprotocol.Json} or {ChannelSubprotocol.Binary}");
        }
        Attachment<TData> attached;
        if (_app.AttachAsync is { } attachAsync) attached = await attachAsync(http).ConfigureAwait(false);
        else if (_app.Attach is { } attach) attached = attach(http);
        else attached = Attachment<TData>.Accept(default!);
        return attached.IsRejected
            ? Attachment<ChannelConnection<TData>>.Reject(attached.RejectStatus, attached.RejectReason)
            : new ChannelConnection<TData>(attached.Data);
    }

    private static bool OffersChannels(HttpContext http)
    {
        foreach (var offered in http.WebSockets.WebSocketRequestedProtocols)
            if (ChannelForm.Of(offered.Trim()) is not null) return true;
        return false;
    }

    private void Open(RealtimeSocket<ChannelConnection<TData>> socket)
    {
        var connection = socket.Data;
        connection.Socket = socket;
        connection.Form = ChannelForm.Of(socket.Protocol) ?? ChannelForm.Json;
        connection.ClientId = $"{_options.NodeId}-{socket.Id:x}";
        Send(connection, ServerMessage.NewWelcome(ChannelSubprotocol.Version, connection.ClientId));
    }

    private async Task MessageAsync(RealtimeSocket<ChannelConnection<TData>> socket, RealtimeMessage message)
    {
        var connection = socket.Data;
        // The message's buffer is the server's until the handler returns; this handler awaits.
        var bytes = message.ToArray();
        if (message.Kind != connection.Form.Kind || !connection.Form.TryDecode(bytes, out var request))
        {
            _hub.Logger.BadMessage(connection.ClientId, connection.Form.Subprotocol);
            SendError(connection, 0, ChannelErrorCode.BadMessage, "not a message of " + connection.Form.Subprotocol);
            return;
        }
        try
        {
            // Publishes overlap (up to MaxPublishesInFlight); anything else waits for the publishes before it.
            await connection.Publishes.UntilAtMost(request is ClientMessage.Publish ? _options.MaxPublishesInFlight - 1 : 0).ConfigureAwait(false);
            switch (request)
            {
                case ClientMessage.Subscribe m: await SubscribeAsync(connection, m.id, m.channel, m.since, m.presence).ConfigureAwait(false); break;
                case ClientMessage.Unsubscribe m: await UnsubscribeAsync(connection, m.id, m.channel).ConfigureAwait(false); break;
                case ClientMessage.Publish m: await PublishAsync(connection, m.id, m.channel, m.key, m.data).ConfigureAwait(false); break;
                case ClientMessage.PresenceQuery m: await PresenceAsync(connection, m.id, m.channel).ConfigureAwait(false); break;
                case ClientMessage.Request m: await RequestAsync(connection, m.id, m.method, m.data).ConfigureAwait(false); break;
            }
        }
        catch (Exception exception)
        {
            var (id, channel) = request switch
            {
                ClientMessage.Subscribe m => (m.id, m.channel),
                ClientMessage.Unsubscribe m => (m.id, m.channel),
                ClientMessage.Publish m => (m.id, m.channel),
                ClientMessage.PresenceQuery m => (m.id, m.channel),
                ClientMessage.Request m => (m.id, m.method),
                _ => (0u, ""),
            };
            _hub.Logger.HandlingFailed(exception, request.GetType().Name, connection.ClientId, channel);
            SendError(connection, id, ChannelErrorCode.Internal, "the server failed");
        }
    }

    private async Task SubscribeAsync(ChannelConnection<TData> connection, uint id, string channel, Microsoft.FSharp.Core.FSharpValueOption<ChannelPosition> since, bool presence)
    {
        if (!IsChannel(channel)) { SendError(connection, id, ChannelErrorCode.UnknownChannel, "no channel " + channel); return; }
        var resubscribe = connection.Subscriptions.ContainsKey(channel);
        if (!resubscribe && connection.Subscriptions.Count >= _options.MaxChannelsPerConnection)
        {
            SendError(connection, id, ChannelErrorCode.RateLimited, $"at most {_options.MaxChannelsPerConnection} channels per connection");
            return;
        }
        if (!await AllowedAsync(_app.CanSubscribe, _app.CanSubscribeAsync, connection, channel).ConfigureAwait(false)
            || (presence && !await AllowedAsync(_app.CanSeePresence, _app.CanSeePresenceAsync, connection, channel).ConfigureAwait(false)))
        {
            SendError(connection, id, ChannelErrorCode.Forbidden, "not allowed to subscribe to " + channel);
            return;
        }
        var socket = connection.Socket;
        using (var held = await _hub.LockAsync(channel).ConfigureAwait(false))
        {
            var topic = connection.Form.Topic(channel);
            var wasSubscribed = socket.IsSubscribed(topic);
            if (!socket.Subscribe(topic) && !wasSubscribed)
            {
                SendError(connection, id, ChannelErrorCode.RateLimited, "this connection is in too many topics");
                return;
            }
            ChannelPosition position;
            Recovery recovery;
            try
            {
                (position, recovery) = since.IsSome
                    ? await RecoverAsync(connection, channel, since.Value).ConfigureAwait(false)
                    : (await _hub.Store.GetPositionAsync(channel).ConfigureAwait(false), Recovery.Fresh);
            }
            catch (ChannelCapacityException refused)
            {
                if (!wasSubscribed) socket.Unsubscribe(topic);
                RefuseChannel(connection, id, refused);
                return;
            }
            Send(connection, ServerMessage.NewSubscribed(id, channel, position, recovery));
            if (!resubscribe) held.AddSubscriber();
        }
        connection.Subscriptions[channel] = presence;
        if (presence) socket.Subscribe(connection.Form.PresenceTopic(channel));
        else socket.Unsubscribe(connection.Form.PresenceTopic(channel));
        if (!resubscribe && connection.Memberships.Add(channel))
        {
            var member = new PresenceMember(connection.ClientId, ChannelData.OfBytes(JsonSerializer.SerializeToUtf8Bytes(_app.PresenceInfo?.Invoke(connection), Json)));
            if (await _hub.Presence.JoinAsync(channel, member).ConfigureAwait(false))
                _hub.PublishPresence(channel, ServerMessage.NewJoin(channel, member));
        }
    }

    /// <summary>Sends every publication after <paramref name="since"/> still held, oldest first; under the channel's lock.</summary>
    private async Task<(ChannelPosition, Recovery)> RecoverAsync(ChannelConnection<TData> connection, string channel, ChannelPosition since)
    {
        var read = await _hub.Store.ReadAsync(channel, since, RecoveryPage).ConfigureAwait(false);
        var recovery = read.Recovered ? Recovery.Recovered : Recovery.NotRecovered;
        var position = read.Position;
        while (true)
        {
            var last = since.Offset;
            foreach (var publication in read.Publications)
            {
                if (!SendOrEnd(connection, connection.Form.EncodePublication(channel, new ChannelPosition(read.Position.Epoch, publication.Offset), publication.Data.Span)))
                    return (new ChannelPosition(read.Position.Epoch, last), Recovery.NotRecovered);
                last = publication.Offset;
            }
            position = read.Position;
            if (read.Publications.Count == 0 || last >= read.Position.Offset) return (position, recovery);
            since = new ChannelPosition(read.Position.Epoch, last);
            read = await _hub.Store.ReadAsync(channel, since, RecoveryPage).ConfigureAwait(false);
            // The history moved on (trimmed past what was sent, or a new epoch) while this reader paged through it.
            if (!read.Recovered) recovery = Recovery.NotRecovered;
            if (read.Position.Epoch != position.Epoch) return (new ChannelPosition(position.Epoch, last), Recovery.NotRecovered);
        }
    }

    private async Task UnsubscribeAsync(ChannelConnection<TData> connection, uint id, string channel)
    {
        if (!connection.Subscriptions.Remove(channel))
        {
            SendError(connection, id, ChannelErrorCode.NotSubscribed, "not subscribed to " + channel);
            return;
        }
        connection.Socket.Unsubscribe(connection.Form.Topic(channel));
        connection.Socket.Unsubscribe(connection.Form.PresenceTopic(channel));
        await _hub.RemoveSubscriberAsync(channel).ConfigureAwait(false);
        Send(connection, ServerMessage.NewUnsubscribed(id, channel));
        if (connection.Memberships.Remove(channel)) await LeaveAsync(connection.ClientId, channel).ConfigureAwait(false);
    }

    private async Task PublishAsync(ChannelConnection<TData> connection, uint id, string channel, string key, ChannelData data)
    {
        if (!IsChannel(channel)) { SendError(connection, id, ChannelErrorCode.UnknownChannel, "no channel " + channel); return; }
        if (data.Json.Length > _options.MaxDataBytes)
        {
            SendError(connection, id, ChannelErrorCode.TooLarge, $"data is over {_options.MaxDataBytes} bytes");
            return;
        }
        if (!PublishKeys.isValidKey(key))
        {
            SendError(connection, id, ChannelErrorCode.BadMessage, "a key is 1 to 64 bytes");
            return;
        }
        if (!await AllowedAsync(_app.CanPublish, _app.CanPublishAsync, connection, channel).ConfigureAwait(false))
        {
            SendError(connection, id, ChannelErrorCode.Forbidden, "not allowed to publish to " + channel);
            return;
        }
        // Not awaited: the connection reads its next publish while this one is on its way to the store.
        // The ack is sent by the thread that completes the append, in the channel's position order.
        var appended = _hub.AppendAndFanOutAsync(channel, data.Json.ToArray(), key, inlineContinuation: true);
        if (appended.IsCompleted)
        {
            Acknowledge(connection, id, channel, appended);
            return;
        }
        connection.Publishes.Started();
        appended.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(() =>
        {
            Acknowledge(connection, id, channel, appended);
            connection.Publishes.Ended();
        });
    }

    /// <summary>Answers a publish whose append ended: <c>ack</c> with its position, <c>too-many-channels</c>, or an internal error.</summary>
    private void Acknowledge(ChannelConnection<TData> connection, uint id, string channel, Task<ChannelAppendResult> appended)
    {
        if (appended.IsCompletedSuccessfully)
        {
            Send(connection, ServerMessage.NewAck(id, channel, appended.Result.Position));
            return;
        }
        var failure = appended.Exception?.GetBaseException() ?? new OperationCanceledException();
        if (failure is ChannelCapacityException refused)
        {
            RefuseChannel(connection, id, refused);
            return;
        }
        _hub.Logger.HandlingFailed(failure, "Publish", connection.ClientId, channel);
        SendError(connection, id, ChannelErrorCode.Internal, "the server failed");
    }

    private async Task PresenceAsync(ChannelConnection<TData> connection, uint id, string channel)
    {
        if (!IsChannel(channel)) { SendError(connection, id, ChannelErrorCode.UnknownChannel, "no channel " + channel); return; }
        if (!await AllowedAsync(_app.CanSeePresence, _app.CanSeePresenceAsync, connection, channel).ConfigureAwait(false))
        {
            SendError(connection, id, ChannelErrorCode.Forbidden, "not allowed to see the presence of " + channel);
            return;
        }
        var members = await _hub.Presence.GetMembersAsync(channel).ConfigureAwait(false);
        Send(connection, ServerMessage.NewPresence(id, channel, Microsoft.FSharp.Collections.ListModule.OfSeq(members)));
    }

    private async Task RequestAsync(ChannelConnection<TData> connection, uint id, string method, ChannelData data)
    {
        if (data.Json.Length > _options.MaxDataBytes)
        {
            SendError(connection, id, ChannelErrorCode.TooLarge, $"data is over {_options.MaxDataBytes} bytes");
            return;
        }
        if (!_app.Requests.TryGetValue(method, out var handler))
        {
            SendError(connection, id, ChannelErrorCode.UnknownMethod, "no method " + method);
            return;
        }
        object? result;
        try
        {
            using var document = JsonDocument.Parse(data.Json);
            result = await handler(connection, document.RootElement.Clone()).ConfigureAwait(false);
        }
        catch (Exception exception)
        {
            _hub.Logger.RequestFailed(exception, method, connection.ClientId);
            SendError(connection, id, ChannelErrorCode.Internal, "the method failed");
            return;
        }
        Send(connection, ServerMessage.NewResponse(id, ChannelData.OfBytes(JsonSerializer.SerializeToUtf8Bytes(result, Json))));
    }

    private void Close(RealtimeSocket<ChannelConnection<TData>> socket, int code, string reason)
    {
        var connection = socket.Data;
        foreach (var channel in connection.Memberships) _ = LeaveAsync(connection.ClientId, channel);
        foreach (var channel in connection.Subscriptions.Keys) _ = RemoveSubscriberAsync(channel);
        connection.Memberships.Clear();
        connection.Subscriptions.Clear();
    }

    private async Task LeaveAsync(string clientId, string channel)
    {
        try
        {
            if (await _hub.Presence.LeaveAsync(channel, clientId).ConfigureAwait(false) is { } member)
                _hub.PublishPresence(channel, ServerMessage.NewLeave(channel, member));
        }
        catch (Exception exception)
        {
            _hub.Logger.LeaveFailed(exception, clientId, channel);
        }
    }

    private async Task RemoveSubscriberAsync(string channel)
    {
        try
        {
            await _hub.RemoveSubscriberAsync(channel).ConfigureAwait(false);
        }
        catch (Exception exception)
        {
            _hub.Logger.HandlingFailed(exception, "close", "", channel);
        }
    }

    private void RefuseChannel(ChannelConnection<TData> connection, uint id, ChannelCapacityException refused)
    {
        _hub.Logger.TooManyChannels(connection.ClientId, refused.Channel, refused.MaxChannels);
        SendError(connection, id, ChannelErrorCode.TooManyChannels, $"this server holds {refused.MaxChannels} channels, its most; try again later");
    }

    private bool IsChannel(string channel) => RealtimeChannelsOptions.WithinProtocolLimit(channel) && _options.ChannelNameRule(channel);

    private static async ValueTask<bool> AllowedAsync(
        Func<ChannelConnection<TData>, string, bool>? check, Func<ChannelConnection<TData>, string, ValueTask<bool>>? checkAsync,
        ChannelConnection<TData> connection, string channel)
    {
        if (checkAsync is not null) return await checkAsync(connection, channel).ConfigureAwait(false);
        return check is null || check(connection, channel);
    }

    private static void Send(ChannelConnection<TData> connection, ServerMessage message) =>
        SendOrEnd(connection, connection.Form.Encode(message));

    /// <summary>
    /// Sends one message of the connection's form; when the socket drops it (its send buffer is full),
    /// ends the connection with 1008 and returns false.
    /// </summary>
    /// <remarks>
    /// A client of this protocol counts on every reply and every recovered publication: one dropped
    /// silently would leave a request unanswered or a recovery cut short unseen. Ending the connection
    /// makes the loss visible; the client comes back with its positions and recovers from where it got to,
    /// so each attempt makes progress. (Live publications that a full buffer drops are found by their
    /// positions instead: see the protocol's gap rule.)
    /// </remarks>
    private static bool SendOrEnd(ChannelConnection<TData> connection, ReadOnlySpan<byte> message)
    {
        if (connection.Socket.Send(message, connection.Form.Kind).IsQueued) return true;
        connection.Socket.Close(SendBufferFull, "send buffer full");
        return false;
    }

    private static void SendError(ChannelConnection<TData> connection, uint id, ChannelErrorCode code, string text) =>
        Send(connection, ServerMessage.NewError(id, code, text));
}

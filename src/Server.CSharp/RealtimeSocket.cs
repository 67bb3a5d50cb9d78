using System.Net;
using System.Text;
using Microsoft.AspNetCore.Http;
using Realtime.Protocol;

namespace Realtime;

/// <summary>
/// One open WebSocket connection. Every member may be called from any thread: from the
/// connection's own handlers, from another connection's handlers, or from an ordinary ASP.NET route.
/// Sends never wait for the network: they queue the frame and report what happened.
/// </summary>
public abstract partial class RealtimeSocket
{
    private readonly RealtimeServer _server;
    private readonly RealtimeEndpoint _endpoint;
    // The upgrade request's HttpContext while the request runs; on the native transport, once the
    // request has ended after Open, a RequestSnapshot, replaced by the context made from it when asked.
    private object _request;
    // Exactly one of the two carries the connection's bytes: the stream Kestrel's HTTP upgrade
    // returns, or the connection's own pipes when it was accepted directly (see DirectConnections).
    private readonly Stream? _transport;
    private readonly System.IO.Pipelines.IDuplexPipe? _pipe;
    // Set when the native transport's loop reads the connection (and writes go to its SendAsync).
    private readonly Native.NativeConnection? _native;

    /// <summary>The registry of open connections this one is in: its endpoint's.</summary>
    internal System.Collections.Concurrent.ConcurrentDictionary<long, RealtimeSocket> Registry => _endpoint.Connections;

    /// <summary>The native transport's connection, when the loop reads this one.</summary>
    internal Native.NativeConnection? Native => _native;
    private readonly object _sync = new();

    // The protocol core's state, both directions (sends are framed and judged there); guarded by _sync.
    private Connection _core;

    private protected RealtimeSocket(RealtimeServer server, RealtimeEndpoint endpoint, HttpContext context, RealtimeTransport transport, string? subprotocol, PerMessageDeflate.Parameters? compression)
    {
        _server = server;
        _endpoint = endpoint;
        _request = context;
        _transport = transport.Stream;
        _pipe = transport.Pipe;
        _native = transport.Native;
        if (_pipe is null && _native is null) _receiving = new CancellationTokenSource();
        Id = server.NextConnectionId();
        Protocol = subprotocol;
        _remoteAddress = new CompactAddress(context.Connection.RemoteIpAddress);
        if (compression is not null) _compressionState = new CompressionState(compression);
        _core = endpoint.NewConnection(compression is not null, server.Now());
    }

    /// <summary>A number that identifies the connection within the server, for <see cref="IRealtimeServer.TryGetConnection"/>.</summary>
    public long Id { get; }

    /// <summary>The route pattern of the endpoint the connection belongs to.</summary>
    public string Endpoint => _endpoint.Pattern;

    /// <summary>The subprotocol chosen in the handshake, if any.</summary>
    public string? Protocol { get; }

    /// <summary>True when permessage-deflate was negotiated with this client.</summary>
    public bool Compression => _compressionState is not null;

    /// <summary>The client's IP address.</summary>
    public IPAddress? RemoteAddress => _remoteAddress.ToIPAddress();

    private readonly CompactAddress _remoteAddress;

    /// <summary>
    /// The HTTP context of the upgrade request (headers, user, services). On the native transport the
    /// request ends after <c>Open</c>: from then on this is a context made from what the connection kept
    /// of it (user, path and query, addresses and connection id; no headers; the application's root
    /// services in place of the request's scope).
    /// </summary>
    public HttpContext HttpContext
    {
        get
        {
            var request = Volatile.Read(ref _request);
            if (request is HttpContext context) return context;
            var made = ((RequestSnapshot)request).ToHttpContext(RemoteAddress, _native!.Services);
            return Interlocked.CompareExchange(ref _request, made, request) as HttpContext ?? made;
        }
    }

    /// <summary>The native transport's request has ended: keep only its snapshot.</summary>
    private void KeepSnapshotOfRequest() =>
        Volatile.Write(ref _request, RequestSnapshot.Of((HttpContext)_request, _endpoint.Pattern));

    /// <summary>Bytes queued for this connection and not yet accepted by the transport.</summary>
    public long BufferedAmount
    {
        get { lock (_sync) return _core.Buffered; }
    }

    /// <summary>True until a close frame has been sent or the connection has ended.</summary>
    public bool IsOpen
    {
        get { lock (_sync) return _core.CanSend; }
    }

    /// <summary>Sends a text message.</summary>
    /// <param name="text">The text, sent as UTF-8.</param>
    /// <param name="compress">Compress the message when the client negotiated permessage-deflate.</param>
    public SendResult Send(string text, bool compress = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        return SendText(text, compress);
    }

    /// <summary>Sends a binary message.</summary>
    /// <param name="data">The bytes; they are copied before this returns.</param>
    /// <param name="compress">Compress the message when the client negotiated permessage-deflate.</param>
    public SendResult Send(ReadOnlySpan<byte> data, bool compress = false) => SendFrame(MessageKind.Binary, data, compress);

    /// <summary>Sends a binary message.</summary>
    public SendResult Send(byte[] data, bool compress = false)
    {
        ArgumentNullException.ThrowIfNull(data);
        return SendFrame(MessageKind.Binary, data, compress);
    }

    /// <summary>Sends a binary message.</summary>
    public SendResult Send(ReadOnlyMemory<byte> data, bool compress = false) => SendFrame(MessageKind.Binary, data.Span, compress);

    /// <summary>Sends a message of the given kind; for <see cref="MessageKind.Text"/> the bytes must be UTF-8.</summary>
    public SendResult Send(ReadOnlySpan<byte> data, MessageKind kind, bool compress = false)
    {
        if (kind == MessageKind.Text && !Utf8Validator.isValid(data))
            throw new ArgumentException("a text message must be valid UTF-8", nameof(data));
        return SendFrame(kind, data, compress);
    }

    /// <summary>
    /// Sends a received message back out unchanged: same kind, same bytes, compressed when the client
    /// sent it compressed. Its text was validated on arrival, so it is not checked again.
    /// </summary>
    public SendResult Send(RealtimeMessage message) => SendFrame(message.Kind, message.Data.Span, message.Compressed);

    /// <summary>The topics this connection is in, kept by the server's topic registry.</summary>
    /// <remarks>Made on first use: most connections of many apps never subscribe.</remarks>
    internal Subscriptions<RealtimeSocket> TopicSubscriptions =>
        Volatile.Read(ref _topicSubscriptions)
        // A subscription ends under the lock the queue takes (see Subscription<T>).
        ?? Interlocked.CompareExchange(ref _topicSubscriptions, new Subscriptions<RealtimeSocket>(this, _sync), null)
        ?? _topicSubscriptions!;

    private Subscriptions<RealtimeSocket>? _topicSubscriptions;

    /// <summary>
    /// Subscribes the connection to a topic. False when it already was, when it is already in
    /// <see cref="RealtimeOptions.MaxTopicsPerConnection"/> topics (nothing changes), or when it has closed.
    /// </summary>
    /// <exception cref="ArgumentNullException">The topic is null.</exception>
    /// <exception cref="ArgumentException">The topic is longer than <see cref="RealtimeOptions.MaxTopicLength"/> UTF-8 bytes.</exception>
    public bool Subscribe(string topic) => _server.Subscribe(this, topic, _endpoint.Options.MaxTopicsPerConnection);

    /// <summary>Unsubscribes the connection from a topic; false when it was not subscribed.</summary>
    public bool Unsubscribe(string topic) => _server.Unsubscribe(this, topic);

    /// <summary>True when the connection is subscribed to the topic.</summary>
    public bool IsSubscribed(string topic) => _server.IsSubscribed(this, topic);

    /// <summary>The topics the connection is subscribed to.</summary>
    public IReadOnlyList<string> Subscriptions => _server.SubscriptionsOf(this);

    /// <summary>
    /// Publishes a text message to every subscriber of the topic except this connection; returns how
    /// many it was queued to. A topic longer than <see cref="RealtimeOptions.MaxTopicLength"/> UTF-8
    /// bytes throws <see cref="ArgumentException"/>, as for every Publish.
    /// </summary>
    public int Publish(string topic, string text, bool compress = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        return _server.PublishText(topic, text, this, compress);
    }

    /// <summary>Publishes a binary message to every subscriber of the topic except this connection; returns how many it was queued to.</summary>
    public int Publish(string topic, ReadOnlySpan<byte> data, bool compress = false) =>
        _server.PublishFrame(topic, MessageKind.Binary, data, this, compress);

    /// <summary>Publishes a message of the given kind to every subscriber of the topic except this connection.</summary>
    public int Publish(string topic, ReadOnlySpan<byte> data, MessageKind kind, bool compress = false) =>
        _server.PublishFrame(topic, kind, data, this, compress);

    /// <summary>
    /// Starts the closing handshake (RFC 6455 §7.1.2): sends a close frame with the code and reason
    /// (cut to 123 UTF-8 bytes) and waits for the client's, up to the close timeout. No more
    /// messages are delivered to the handlers. Does nothing when already closing.
    /// </summary>
    /// <param name="code">1000-1003, 1007-1011 or 3000-4999.</param>
    /// <param name="reason">A short reason.</param>
    public void Close(int code = 1000, string? reason = null)
    {
        if (code < 0 || code > ushort.MaxValue || !CloseCode.isSendable((ushort)code))
            throw new ArgumentOutOfRangeException(nameof(code), code, "not a close code that may be sent (RFC 6455 §7.4)");
        CloseLocally((ushort)code, reason ?? "");
    }

    /// <summary>Drops the TCP connection at once, without a closing handshake.</summary>
    public void Terminate() => AbortTransport();

    /// <summary>
    /// Runs <paramref name="action"/> with the connection corked: every send made inside it goes
    /// out in one write. Sends made inside a handler are already batched this way.
    /// </summary>
    public void Cork(Action action)
    {
        ArgumentNullException.ThrowIfNull(action);
        CorkIncrement();
        try { action(); }
        finally { Uncork(); }
    }

    /// <inheritdoc />
    public override string ToString() => $"RealtimeSocket#{Id} {Endpoint}";

    private SendResult SendText(string text, bool compress) =>
        Utf8Text.With(text, (socket: this, compress),
            static (utf8, state) => state.socket.SendFrame(MessageKind.Text, utf8, state.compress));

    // Typed handler dispatch, implemented by RealtimeSocket<TData>.
    private protected abstract void OnOpen();
    private protected abstract ValueTask OnMessageAsync(RealtimeMessage message);
    private protected abstract void OnClose(int code, string reason);
    private protected abstract void OnDrain();
    private protected abstract void OnPing(ReadOnlyMemory<byte> payload);
    private protected abstract void OnPong(ReadOnlyMemory<byte> payload);
}

/// <summary>A connection of an endpoint whose connections carry data of type <typeparamref name="TData"/>.</summary>
/// <typeparam name="TData">The data returned by the endpoint's <c>Attach</c> handler.</typeparam>
public sealed class RealtimeSocket<TData> : RealtimeSocket
{
    private readonly RealtimeHandlers<TData> _handlers;

    internal RealtimeSocket(RealtimeServer server, RealtimeEndpoint endpoint, RealtimeHandlers<TData> handlers, HttpContext context, RealtimeTransport transport, string? subprotocol, PerMessageDeflate.Parameters? compression, TData data)
        : base(server, endpoint, context, transport, subprotocol, compression)
    {
        _handlers = handlers;
        Data = data;
    }

    /// <summary>The data <c>Attach</c> returned for this connection; handlers may replace it.</summary>
    public TData Data { get; set; }

    private protected override void OnOpen() => _handlers.Open?.Invoke(this);

    private protected override ValueTask OnMessageAsync(RealtimeMessage message)
    {
        if (_handlers.MessageAsync is { } asynchronous) return new ValueTask(asynchronous(this, message));
        _handlers.Message?.Invoke(this, message);
        return ValueTask.CompletedTask;
    }

    private protected override void OnClose(int code, string reason) => _handlers.Close?.Invoke(this, code, reason);

    private protected override void OnDrain() => _handlers.Drain?.Invoke(this);

    private protected override void OnPing(ReadOnlyMemory<byte> payload) => _handlers.Ping?.Invoke(this, payload);

    private protected override void OnPong(ReadOnlyMemory<byte> payload) => _handlers.Pong?.Invoke(this, payload);
}

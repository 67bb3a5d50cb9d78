using System.Collections.Concurrent;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Realtime.Protocol;

namespace Realtime;

/// <summary>
/// One mapped endpoint: its settings in the core's terms, its open connections, and the request
/// handling that turns an HTTP request into a connection (handshake, Attach, upgrade).
/// </summary>
internal abstract class RealtimeEndpoint
{
    private readonly ConnectionOptions _plainConnection;

    protected RealtimeEndpoint(RealtimeServer server, string pattern, RealtimeOptions options)
    {
        RealtimeOptionsValidation.ThrowIfInvalidFor(pattern, options, server.Defaults);
        Server = server;
        Pattern = pattern;
        Options = options;
        Limits = new Backpressure.Limits(options.BackpressureLimit, options.MaxBufferedAmount, options.CloseOnBackpressureLimit);
        Policy = new Handshake.Policy(
            options.Subprotocols.ToArray(),
            new PerMessageDeflate.Config(
                options.PerMessageDeflate,
                options.ServerNoContextTakeover,
                options.ClientNoContextTakeover,
                options.ServerMaxWindowBits,
                options.ClientMaxWindowBits));
        _plainConnection = new ConnectionOptions(
            options.EffectiveMaxPayloadLength,
            false,
            (long)options.IdleTimeout.TotalMilliseconds,
            (long)options.CloseTimeout.TotalMilliseconds);
        _compressedConnection = new ConnectionOptions(
            _plainConnection.MaxMessageSize, true, _plainConnection.IdleTimeout, _plainConnection.CloseTimeout);
        _plainTemplate = ConnectionModule.create(_plainConnection, 0);
        _compressedTemplate = ConnectionModule.create(_compressedConnection, 0);
    }

    private readonly ConnectionOptions _compressedConnection;

    public RealtimeServer Server { get; }

    public string Pattern { get; }

    public RealtimeOptions Options { get; }

    public Backpressure.Limits Limits { get; }

    public Handshake.Policy Policy { get; }

    public ConcurrentDictionary<long, RealtimeSocket> Connections { get; } = new();

    /// <summary>The core's settings for a connection, with or without negotiated compression.</summary>
    public ConnectionOptions ConnectionOptions(bool compression) =>
        compression ? _compressedConnection : _plainConnection;

    // One new connection per setting, made once: every connection starts from one of them and shares
    // its lifecycle part (see Connection.createLike).
    private readonly Connection _plainTemplate;
    private readonly Connection _compressedTemplate;

    /// <summary>The core's state of a connection opened at <paramref name="now"/>, with or without negotiated compression.</summary>
    public Connection NewConnection(bool compression, long now) =>
        ConnectionModule.createLike(compression ? _compressedTemplate : _plainTemplate, now);

    /// <summary>
    /// Answers one HTTP request on the endpoint's route: opens the connection and runs it until it
    /// ends (on the native transport, until it is open); never lets an exception reach Kestrel.
    /// </summary>
    public async Task HandleAsync(HttpContext context)
    {
        if (await OpenAsync(context).ConfigureAwait(false) is not { } socket) return;
        // On the native transport the connection outlives its request (see RealtimeSocket.OpenAndOutliveRequestAsync).
        if (socket.Native is { } native) await socket.OpenAndOutliveRequestAsync(native).ConfigureAwait(false);
        else await socket.RunAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Takes a request as far as an open connection: handshake checks, a connection slot, Attach and
    /// the 101 response. Returns the socket, which holds the slot until its <see cref="RealtimeSocket.RunAsync"/>
    /// ends, or null when the request was answered otherwise (refused, or Attach failed). Kept apart
    /// from running the connection so that nothing of the handshake stays alive with it.
    /// </summary>
    public abstract Task<RealtimeSocket?> OpenAsync(HttpContext context);

    /// <summary>
    /// The request as the core's handshake sees it. A directly accepted request whose headers the
    /// application's pipeline left as they came hands on the header lines the core parsed; otherwise
    /// they are read from <see cref="HttpRequest.Headers"/>, as the pipeline left them.
    /// </summary>
    protected static Handshake.HandshakeRequest ToHandshakeRequest(HttpRequest request)
    {
        string target = request.Path.Value + request.QueryString.Value;
        if (request.Headers is Direct.DirectRequestHeaders { AsParsed: { } parsed })
            return new Handshake.HandshakeRequest(request.Method, target, request.Protocol, parsed);
        var headers = new List<Handshake.HttpHeader>(request.Headers.Count + 2);
        foreach (var (name, values) in request.Headers)
        {
            foreach (var value in values) headers.Add(new Handshake.HttpHeader(name, value ?? ""));
        }
        return new Handshake.HandshakeRequest(request.Method, target, request.Protocol, headers.ToArray());
    }

    /// <summary>Total bytes of the request's header names and values.</summary>
    protected static long HeaderBytes(HttpRequest request)
    {
        long total = 0;
        if (request.Headers is Direct.DirectRequestHeaders { AsParsed: { } parsed })
        {
            foreach (var header in parsed) total += header.Name.Length + header.Value.Length + 4;
            return total;
        }
        foreach (var (name, values) in request.Headers)
        {
            foreach (var value in values) total += name.Length + (value?.Length ?? 0) + 4;
        }
        return total;
    }

    /// <summary>
    /// RFC 6455 §10.2: the server decides which origins it serves. No <c>Origin</c> header means a
    /// non-browser client, which the allow-list is not about.
    /// </summary>
    protected bool OriginAllowed(HttpRequest request)
    {
        if (Options.AllowedOrigins.Count == 0) return true;
        var origins = request.Headers.Origin;
        if (origins.Count == 0) return true;
        if (origins.Count > 1) return false;
        string origin = origins[0]!.Trim().TrimEnd('/');
        foreach (var allowed in Options.AllowedOrigins)
        {
            if (string.Equals(origin, allowed.Trim().TrimEnd('/'), StringComparison.OrdinalIgnoreCase)) return true;
        }
        return false;
    }

    /// <summary>
    /// Refuses an upgrade: logs and counts it (its status and stable code, with <paramref name="detail"/>),
    /// then answers with the core's response for it.
    /// </summary>
    protected Task RefuseAsync(HttpContext context, Refusal refusal, string detail)
    {
        var response = RefusalModule.response(refusal);
        Server.Log.HandshakeRejected(Pattern, response.Status, refusal.Code, detail);
        Server.Metrics.HandshakeRejected(Pattern, response.Status, refusal.Code);
        return WriteAsync(context, response);
    }

    /// <summary>
    /// Copies a response of the core into the request's response: its status, its headers (replacing
    /// any of the same name), its length and its body.
    /// </summary>
    protected static Task WriteAsync(HttpContext context, Response response)
    {
        var target = context.Response;
        target.StatusCode = response.Status;
        foreach (var header in response.Headers) target.Headers[header.Name] = header.Value;
        target.ContentLength = response.Body.Length;
        return response.Body.Length == 0 ? Task.CompletedTask : target.Body.WriteAsync(response.Body, context.RequestAborted).AsTask();
    }
}

/// <summary>An endpoint whose connections carry <typeparamref name="TData"/>.</summary>
internal sealed class RealtimeEndpoint<TData> : RealtimeEndpoint
{
    private readonly RealtimeHandlers<TData> _handlers;

    public RealtimeEndpoint(RealtimeServer server, string pattern, RealtimeOptions options, RealtimeHandlers<TData> handlers)
        : base(server, pattern, options)
    {
        _handlers = handlers;
    }

    public override async Task<RealtimeSocket?> OpenAsync(HttpContext context)
    {
        try
        {
            return await AcceptAsync(context).ConfigureAwait(false);
        }
        catch (Exception exception) when (ClientWentAway(context, exception))
        {
            // The client reset or left during the handshake: its doing, not a failure of the app.
            Server.Log.HandshakeAbandoned(Pattern, exception.Message);
            return null;
        }
        catch (Exception exception) when (!context.Response.HasStarted)
        {
            Server.Log.AttachFailed(exception, Pattern);
            await WriteAsync(context, RefusalModule.response(Refusal.ApplicationFailed)).ConfigureAwait(false);
            return null;
        }
    }

    /// <summary>True when an exception of the handshake came from the connection ending, not from the app.</summary>
    private static bool ClientWentAway(HttpContext context, Exception exception) =>
        exception is Microsoft.AspNetCore.Connections.ConnectionResetException or Microsoft.AspNetCore.Connections.ConnectionAbortedException
        || (context.RequestAborted.IsCancellationRequested && exception is IOException or OperationCanceledException);

    private async Task<RealtimeSocket?> AcceptAsync(HttpContext context)
    {
        if (Server.IsShuttingDown)
        {
            await RefuseAsync(context, Refusal.ShuttingDown, "server shutting down").ConfigureAwait(false);
            return null;
        }
        if (HeaderBytes(context.Request) > Options.MaxHandshakeHeaderBytes)
        {
            await RefuseAsync(context, Refusal.HeadersTooLarge, "request headers over the limit").ConfigureAwait(false);
            return null;
        }
        // RFC 8441: over HTTP/2 (and RFC 9220: HTTP/3) the handshake is an extended CONNECT.
        var connect = context.Features.Get<IHttpExtendedConnectFeature>() is { IsExtendedConnect: true } extended ? extended : null;
        var result = connect is null
            ? Handshake.accept(Policy, ToHandshakeRequest(context.Request))
            : Handshake.acceptExtendedConnect(Policy, connect.Protocol, ToHandshakeRequest(context.Request));
        if (result is Handshake.HandshakeResult.Rejected { rejection: var rejection })
        {
            await RefuseAsync(context, Refusal.NewInvalid(rejection), rejection.Reason).ConfigureAwait(false);
            return null;
        }
        var acceptance = ((Handshake.HandshakeResult.Accepted)result).acceptance;
        var upgrade = context.Features.Get<IHttpUpgradeFeature>();
        if (connect is null && (upgrade is null || !upgrade.IsUpgradableRequest))
        {
            await RefuseAsync(context, Refusal.NotUpgradable, "the server cannot upgrade this request").ConfigureAwait(false);
            return null;
        }

        if (!OriginAllowed(context.Request))
        {
            await RefuseAsync(context, Refusal.OriginNotAllowed, context.Request.Headers.Origin.ToString()).ConfigureAwait(false);
            return null;
        }
        var address = context.Connection.RemoteIpAddress;
        if (!Server.TryReserveSlot(address, Options))
        {
            await RefuseAsync(context, Refusal.TooManyConnections, address?.ToString() ?? "").ConfigureAwait(false);
            return null;
        }
        RealtimeSocket? socket = null;
        try
        {
            socket = await AttachAsync(context, upgrade, connect, acceptance).ConfigureAwait(false);
            return socket;
        }
        finally
        {
            // An open connection gives its slot back when it ends.
            if (socket is null) Server.ReleaseSlot(address);
        }
    }

    /// <summary>
    /// Runs Attach, then opens the connection: an HTTP/1.1 upgrade (101) through <paramref name="upgrade"/>,
    /// or, when <paramref name="connect"/> is given, an extended CONNECT accepted with 200 on its stream.
    /// </summary>
    private async Task<RealtimeSocket?> AttachAsync(HttpContext context, IHttpUpgradeFeature? upgrade, IHttpExtendedConnectFeature? connect, Handshake.Acceptance acceptance)
    {
        Attachment<TData> attachment;
        if (_handlers.AttachAsync is { } attachAsync) attachment = await attachAsync(context).ConfigureAwait(false);
        else if (_handlers.Attach is { } attach) attachment = attach(context);
        else attachment = Attachment<TData>.Accept(default!);
        if (attachment.IsRejected)
        {
            await RefuseAsync(context, Refusal.NewByApplication(attachment.RejectStatus, attachment.RejectReason!), attachment.RejectReason ?? "").ConfigureAwait(false);
            return null;
        }

        foreach (var header in acceptance.ResponseHeaders) context.Response.Headers[header.Name] = header.Value;
        if (connect is not null)
        {
            context.Response.StatusCode = acceptance.Status;
            Stream accepted = await connect.AcceptAsync().ConfigureAwait(false);
            return new RealtimeSocket<TData>(
                Server, this, _handlers, context, RealtimeTransport.FromStream(accepted),
                acceptance.Subprotocol?.Value, acceptance.Deflate?.Value, attachment.Data);
        }
        Stream upgraded = await upgrade!.UpgradeAsync().ConfigureAwait(false);
        // A directly accepted connection runs on its own pipes rather than on a stream.
        // One held by the native transport's loop is read there and written straight to its socket.
        var transport = upgrade is Direct.DirectConnectionFeatures direct
            ? direct.Native is { } native ? RealtimeTransport.FromNative(native) : RealtimeTransport.FromPipe(direct.Transport)
            : RealtimeTransport.FromStream(upgraded);
        return new RealtimeSocket<TData>(
            Server, this, _handlers, context, transport,
            acceptance.Subprotocol?.Value, acceptance.Deflate?.Value, attachment.Data);
    }
}

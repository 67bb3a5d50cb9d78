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

    /// <summary>
    /// Answers one HTTP request on the endpoint's route: opens the connection and runs it until it
    /// ends; never lets an exception reach Kestrel.
    /// </summary>
    public async Task HandleAsync(HttpContext context)
    {
        if (await OpenAsync(context).ConfigureAwait(false) is { } socket) await socket.RunAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Takes a request as far as an open connection: handshake checks, a connection slot, Attach and
    /// the 101 response. Returns the socket, which holds the slot until its <see cref="RealtimeSocket.RunAsync"/>
    /// ends, or null when the request was answered otherwise (refused, or Attach failed). Kept apart
    /// from running the connection so that nothing of the handshake stays alive with it.
    /// </summary>
    public abstract Task<RealtimeSocket?> OpenAsync(HttpContext context);

    /// <summary>The request as the core's handshake sees it.</summary>
    protected static Handshake.HandshakeRequest ToHandshakeRequest(HttpRequest request)
    {
        var headers = new List<Handshake.HttpHeader>(request.Headers.Count + 2);
        foreach (var (name, values) in request.Headers)
        {
            foreach (var value in values) headers.Add(new Handshake.HttpHeader(name, value ?? ""));
        }
        return new Handshake.HandshakeRequest(request.Method, request.Path.Value + request.QueryString.Value, request.Protocol, headers.ToArray());
    }

    /// <summary>Total bytes of the request's header names and values.</summary>
    protected static long HeaderBytes(HttpRequest request)
    {
        long total = 0;
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

    /// <summary>Logs and counts a refused upgrade: its HTTP status and stable reason code.</summary>
    protected void Rejected(int status, string code, string detail)
    {
        Server.Log.HandshakeRejected(Pattern, status, code, detail);
        Server.Metrics.HandshakeRejected(Pattern, status, code);
    }

    /// <summary>Writes a refusal before the upgrade: status, extra headers and a short text body.</summary>
    protected static async Task RejectAsync(HttpContext context, int status, string reason, IEnumerable<Handshake.HttpHeader> headers)
    {
        context.Response.StatusCode = status;
        foreach (var header in headers) context.Response.Headers.Append(header.Name, header.Value);
        context.Response.ContentType = "text/plain; charset=utf-8";
        byte[] body = System.Text.Encoding.UTF8.GetBytes(reason);
        context.Response.ContentLength = body.Length;
        await context.Response.Body.WriteAsync(body, context.RequestAborted).ConfigureAwait(false);
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
            context.Response.StatusCode = StatusCodes.Status500InternalServerError;
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
            Rejected(StatusCodes.Status503ServiceUnavailable, "shutting-down", "server shutting down");
            await RejectAsync(context, StatusCodes.Status503ServiceUnavailable, "server shutting down", []).ConfigureAwait(false);
            return null;
        }
        if (HeaderBytes(context.Request) > Options.MaxHandshakeHeaderBytes)
        {
            Rejected(StatusCodes.Status431RequestHeaderFieldsTooLarge, "headers-too-large", "request headers over the limit");
            await RejectAsync(context, StatusCodes.Status431RequestHeaderFieldsTooLarge, "request headers too large", []).ConfigureAwait(false);
            return null;
        }
        var result = Handshake.accept(Policy, ToHandshakeRequest(context.Request));
        if (result is Handshake.HandshakeResult.Rejected { rejection: var rejection })
        {
            Rejected(rejection.Status, rejection.Code, rejection.Reason);
            await RejectAsync(context, rejection.Status, rejection.Reason, rejection.Headers).ConfigureAwait(false);
            return null;
        }
        var acceptance = ((Handshake.HandshakeResult.Accepted)result).acceptance;
        var upgrade = context.Features.Get<IHttpUpgradeFeature>();
        if (upgrade is null || !upgrade.IsUpgradableRequest)
        {
            Rejected(400, "not-upgradable", "the server cannot upgrade this request");
            await RejectAsync(context, StatusCodes.Status400BadRequest, "this request cannot be upgraded (HTTP/1.1 is required)", []).ConfigureAwait(false);
            return null;
        }

        if (!OriginAllowed(context.Request))
        {
            Rejected(StatusCodes.Status403Forbidden, "origin-not-allowed", context.Request.Headers.Origin.ToString());
            await RejectAsync(context, StatusCodes.Status403Forbidden, "origin not allowed", []).ConfigureAwait(false);
            return null;
        }
        var address = context.Connection.RemoteIpAddress;
        if (!Server.TryReserveSlot(address, Options))
        {
            Rejected(StatusCodes.Status503ServiceUnavailable, "too-many-connections", address?.ToString() ?? "");
            await RejectAsync(context, StatusCodes.Status503ServiceUnavailable, "too many connections", []).ConfigureAwait(false);
            return null;
        }
        RealtimeSocket? socket = null;
        try
        {
            socket = await AttachAsync(context, upgrade, acceptance).ConfigureAwait(false);
            return socket;
        }
        finally
        {
            // An open connection gives its slot back when it ends.
            if (socket is null) Server.ReleaseSlot(address);
        }
    }

    private async Task<RealtimeSocket?> AttachAsync(HttpContext context, IHttpUpgradeFeature upgrade, Handshake.Acceptance acceptance)
    {
        Attachment<TData> attachment;
        if (_handlers.AttachAsync is { } attachAsync) attachment = await attachAsync(context).ConfigureAwait(false);
        else if (_handlers.Attach is { } attach) attachment = attach(context);
        else attachment = Attachment<TData>.Accept(default!);
        if (attachment.IsRejected)
        {
            Rejected(attachment.RejectStatus, "attach-rejected", attachment.RejectReason ?? "");
            await RejectAsync(context, attachment.RejectStatus, attachment.RejectReason ?? "rejected", []).ConfigureAwait(false);
            return null;
        }

        foreach (var header in acceptance.ResponseHeaders) context.Response.Headers[header.Name] = header.Value;
        Stream upgraded = await upgrade.UpgradeAsync().ConfigureAwait(false);
        // A directly accepted connection runs on its own pipes rather than on a stream.
        var transport = upgrade is Direct.DirectConnectionFeatures direct
            ? RealtimeTransport.FromPipe(direct.Transport)
            : RealtimeTransport.FromStream(upgraded);
        return new RealtimeSocket<TData>(
            Server, this, _handlers, context, transport,
            acceptance.Subprotocol?.Value, acceptance.Deflate?.Value, attachment.Data);
    }
}

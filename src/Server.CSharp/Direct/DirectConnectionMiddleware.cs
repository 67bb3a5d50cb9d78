using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Realtime.Protocol;

namespace Realtime.Direct;

/// <summary>
/// A Kestrel connection middleware that accepts WebSocket upgrades itself, below Kestrel's HTTP
/// layer. It looks at the first request of each new connection: a GET whose path is a Realtime
/// endpoint's route is handled here (same handshake checks, limits, <c>Attach</c> and handlers as
/// through the route), and the connection then runs on its transport pipes with no HTTP/1.1 state
/// kept under it, which saves memory per connection and a copy per read. Anything else (other
/// paths and methods, HTTP/2, TLS bytes when placed before <c>UseHttps</c>, heads too large or
/// malformed) is passed on untouched to the next middleware, normally Kestrel's HTTP server.
/// The application's HTTP middleware does not run for connections accepted here.
/// </summary>
internal sealed class DirectConnectionMiddleware(ConnectionDelegate next, IServiceProvider services)
{
    // Room for a request line and the headers Kestrel would accept (its default limits: 8 KiB and 32 KiB).
    private const int MaxHeadBytes = 40 * 1024;
    private static ReadOnlySpan<byte> Get => "GET "u8;

    private DirectRoutes? _routes;
    private RealtimeServer? _server;
    private TimeSpan _headTimeout;
    private IServiceScopeFactory? _scopes;

    // This method's state lives as long as the connection, so it keeps as little as it can: the
    // head is read, and the connection opened, in methods of their own that have returned by then.
    public async Task OnConnectionAsync(ConnectionContext connection)
    {
        EnsureServices();
        var (accepted, timedOut) = await ReadHeadAsync(connection).ConfigureAwait(false);
        // No complete request head in time: close, as Kestrel's header timeout would (returning
        // lets Kestrel end the connection gracefully).
        if (timedOut) return;
        if (accepted is null)
        {
            await next(connection).ConfigureAwait(false);
            return;
        }
        var features = accepted.Features;
        try
        {
            var socket = await OpenAsync(accepted).ConfigureAwait(false);
            accepted = null;
            if (socket is not null) await socket.RunAsync().ConfigureAwait(false);
        }
        finally
        {
            await features.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Reads the first request head of a connection: what this middleware takes, or null when the
    /// connection is for the next middleware (every byte left unread for it); or that no complete
    /// head came in time.
    /// </summary>
    private async Task<(Accepted? Accepted, bool TimedOut)> ReadHeadAsync(ConnectionContext connection)
    {
        var input = connection.Transport.Input;
        using var timeout = new CancellationTokenSource(_headTimeout);
        while (true)
        {
            ReadResult result;
            try
            {
                result = await input.ReadAsync(timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (timeout.IsCancellationRequested)
            {
                return (null, true);
            }
            var buffer = result.Buffer;
            var verdict = Inspect(buffer, out var request, out long consumed);
            if (verdict == Verdict.NeedMore && !result.IsCompleted && !result.IsCanceled)
            {
                input.AdvanceTo(buffer.Start, buffer.End);
                continue;
            }
            var accepted = verdict == Verdict.Upgrade ? Accept(connection, request!) : null;
            // Not ours: every byte stays for the next reader.
            input.AdvanceTo(accepted is null ? buffer.Start : buffer.GetPosition(consumed));
            return (accepted, false);
        }
    }

    /// <summary>A request this middleware takes: its endpoint and the HTTP context made for it.</summary>
    private sealed record Accepted(RealtimeEndpoint Endpoint, DefaultHttpContext Context, DirectConnectionFeatures Features);

    /// <summary>
    /// The endpoint and context for a request head, or null when no Realtime endpoint takes it
    /// directly. Synchronous, so the parsed head is not kept alive by the connection's async state.
    /// </summary>
    private Accepted? Accept(ConnectionContext connection, Handshake.HandshakeRequest request)
    {
        string target = request.Path;
        if (target.Length == 0 || target[0] != '/') return null;
        int query = target.IndexOf('?');
        var path = PathString.FromUriComponent(query < 0 ? target : target[..query]);
        var endpoint = _routes!.Match(path, out var routeValues);
        if (endpoint is null) return null;
        var headers = new HeaderDictionary(request.Headers.Length);
        foreach (var header in request.Headers) headers.Append(header.Name, header.Value);
        var features = new DirectConnectionFeatures(connection, _scopes!, request.Method, request.HttpVersion,
            path.Value ?? "/", query < 0 ? "" : target[query..], request.Path, headers, routeValues!);
        return new Accepted(endpoint, new DefaultHttpContext(features), features);
    }

    private enum Verdict { NotOurs, NeedMore, Upgrade }

    private static Verdict Inspect(ReadOnlySequence<byte> buffer, out Handshake.HandshakeRequest? request, out long consumed)
    {
        request = null;
        consumed = 0;
        // Only a GET can open a WebSocket (RFC 6455 §4.1); look no further at anything else.
        var start = buffer.FirstSpan;
        int prefix = (int)Math.Min(Get.Length, buffer.Length);
        Span<byte> first = stackalloc byte[Get.Length];
        buffer.Slice(0, prefix).CopyTo(first);
        if (!first[..prefix].SequenceEqual(Get[..prefix])) return Verdict.NotOurs;
        if (buffer.Length < Get.Length) return Verdict.NeedMore;

        long length = Math.Min(buffer.Length, MaxHeadBytes);
        byte[]? rented = null;
        ReadOnlySpan<byte> head;
        if (start.Length >= length) head = start[..(int)length];
        else
        {
            rented = ArrayPool<byte>.Shared.Rent((int)length);
            buffer.Slice(0, length).CopyTo(rented);
            head = rented.AsSpan(0, (int)length);
        }
        try
        {
            switch (RequestHead.parse(head, MaxHeadBytes))
            {
                case RequestHead.RequestHeadResult.Complete complete:
                    request = complete.request;
                    consumed = complete.consumed;
                    return Verdict.Upgrade;
                case var incomplete when incomplete.IsIncomplete:
                    return buffer.Length >= MaxHeadBytes ? Verdict.NotOurs : Verdict.NeedMore;
                default:
                    // Malformed: Kestrel's HTTP parser gives its own 400.
                    return Verdict.NotOurs;
            }
        }
        finally
        {
            if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>The endpoint's handshake over the direct connection: the open socket, or null when it answered otherwise.</summary>
    private async Task<RealtimeSocket?> OpenAsync(Accepted accepted)
    {
        try
        {
            var socket = await accepted.Endpoint.OpenAsync(accepted.Context).ConfigureAwait(false);
            if (!accepted.Features.Upgraded) await accepted.Features.WriteResponseAsync().ConfigureAwait(false);
            return socket;
        }
        catch (Exception exception) when (exception is IOException or ConnectionAbortedException or ConnectionResetException or OperationCanceledException)
        {
            _server!.Log.TransportEnded(0, exception.Message);
            return null;
        }
    }

    private void EnsureServices()
    {
        if (Volatile.Read(ref _routes) is not null) return;
        _server = services.GetService<RealtimeServer>()
            ?? throw new InvalidOperationException("Call services.AddRealtime() before UseRealtimeDirectConnections.");
        _scopes = services.GetRequiredService<IServiceScopeFactory>();
        _headTimeout = services.GetRequiredService<IOptions<RealtimeOptions>>().Value.HandshakeTimeout
            ?? services.GetRequiredService<IOptions<KestrelServerOptions>>().Value.Limits.RequestHeadersTimeout;
        Volatile.Write(ref _routes, new DirectRoutes(services.GetRequiredService<EndpointDataSource>()));
    }
}

using System.Buffers;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Realtime.Protocol;

namespace Realtime.Direct;

/// <summary>
/// A Kestrel connection middleware that reads the first request of each new connection itself, below
/// Kestrel's HTTP layer. A WebSocket upgrade (GET, HTTP/1.1, <c>Upgrade: websocket</c>,
/// <c>Connection: Upgrade</c>, no body) is run through the
/// application's whole request pipeline (the same <see cref="DirectApplication"/> Kestrel runs: every
/// middleware, routing, authorization, the endpoint); when that ends in a 101 from a Realtime endpoint,
/// the connection runs on its transport pipes with no HTTP/1.1 state under it, which saves memory per
/// connection and a copy per read. Everything else (other requests, heads past Kestrel's limits or
/// malformed, paths Kestrel would rewrite, paths of endpoints that opted out, TLS bytes before
/// <c>UseHttps</c>, a server whose application could not be captured) is passed on untouched to the next middleware, normally Kestrel's HTTP server.
/// </summary>
internal sealed class DirectConnectionMiddleware(ConnectionDelegate next, IServiceProvider services)
{
    private static ReadOnlySpan<byte> Get => "GET "u8;
    private static ReadOnlySpan<byte> EndOfHead => "\r\n\r\n"u8;

    /// <summary>The rest of the listener's connection pipeline (read by the native transport's <see cref="Native.PlainListeners"/>).</summary>
    internal ConnectionDelegate Next => next;

    private DirectRoutes? _routes;
    private RealtimeServer? _server;
    private DirectApplication? _application;
    private TimeSpan _headTimeout;
    private RequestHead.Limits _limits = null!;
    private bool _addServerHeader;
    private int _warnedNotCaptured;

    public async Task OnConnectionAsync(ConnectionContext connection)
    {
        EnsureServices();
        if (!_application!.IsCaptured)
        {
            // Without the application a request could not run its pipeline: never take it.
            if (Interlocked.Exchange(ref _warnedNotCaptured, 1) == 0) _server!.Log.DirectConnectionsOff();
            await next(connection).ConfigureAwait(false);
            return;
        }
        var (features, outcome) = await ReadHeadAsync(connection).ConfigureAwait(false);
        switch (outcome)
        {
            case HeadOutcome.NotOurs:
                await next(connection).ConfigureAwait(false);
                return;
            case HeadOutcome.Ours:
                await RunAsync(connection, features!).ConfigureAwait(false);
                return;
            default:
                // No complete head in time, or the client went away while sending it: close quietly,
                // as Kestrel does (returning lets it end the connection).
                return;
        }
    }

    private async Task RunAsync(ConnectionContext connection, DirectConnectionFeatures features)
    {
        try
        {
            if (await _application!.ProcessRequestAsync(features).ConfigureAwait(false) is { } failure)
                _server!.Log.DirectRequestFailed(failure, connection.ConnectionId);
        }
        catch (Exception exception) when (exception is IOException or ConnectionAbortedException or ConnectionResetException or OperationCanceledException)
        {
            _server!.Log.TransportEnded(0, exception.Message);
        }
    }

    private enum HeadOutcome { NotOurs, Ours, Ended }

    /// <summary>
    /// Reads the first request head of a connection. The bytes are searched for the end of the head
    /// only where new ones arrived, and the head is parsed once, when it is complete.
    /// </summary>
    private async Task<(DirectConnectionFeatures? Features, HeadOutcome Outcome)> ReadHeadAsync(ConnectionContext connection)
    {
        var input = connection.Transport.Input;
        using var timeout = new CancellationTokenSource(_headTimeout);
        long searched = 0;
        while (true)
        {
            ReadResult result;
            try
            {
                result = await input.ReadAsync(timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (timeout.IsCancellationRequested)
            {
                return (null, HeadOutcome.Ended);
            }
            catch (Exception exception) when (exception is IOException or ConnectionResetException or ConnectionAbortedException)
            {
                return (null, HeadOutcome.Ended);
            }
            var buffer = result.Buffer;
            var verdict = Inspect(buffer, ref searched, out long headLength);
            if (verdict == Verdict.NeedMore)
            {
                if (result.IsCompleted || result.IsCanceled)
                {
                    input.AdvanceTo(buffer.Start, buffer.End);
                    return (null, buffer.IsEmpty ? HeadOutcome.Ended : HeadOutcome.NotOurs);
                }
                input.AdvanceTo(buffer.Start, buffer.End);
                continue;
            }
            var features = verdict == Verdict.Complete ? Take(connection, buffer.Slice(0, headLength)) : null;
            // Not ours: every byte stays for the next reader.
            input.AdvanceTo(features is null ? buffer.Start : buffer.GetPosition(headLength));
            return (features, features is null ? HeadOutcome.NotOurs : HeadOutcome.Ours);
        }
    }

    private enum Verdict { NotOurs, NeedMore, Complete }

    private Verdict Inspect(ReadOnlySequence<byte> buffer, ref long searched, out long headLength)
    {
        headLength = 0;
        // Only a GET can open a WebSocket (RFC 6455 §4.1); look no further at anything else.
        int prefix = (int)Math.Min(Get.Length, buffer.Length);
        Span<byte> first = stackalloc byte[Get.Length];
        buffer.Slice(0, prefix).CopyTo(first);
        if (!first[..prefix].SequenceEqual(Get[..prefix])) return Verdict.NotOurs;

        // Look for CRLF CRLF from a little before where the last search stopped.
        long from = Math.Max(0, searched - (EndOfHead.Length - 1));
        var reader = new SequenceReader<byte>(buffer.Slice(from));
        if (reader.TryReadTo(out ReadOnlySequence<byte> _, EndOfHead, advancePastDelimiter: true))
        {
            headLength = from + reader.Consumed;
            return headLength <= _limits.MaxHeadBytes ? Verdict.Complete : Verdict.NotOurs;
        }
        searched = buffer.Length;
        // Past the limits with no end in sight: Kestrel gives its own 414 or 431.
        return buffer.Length > _limits.MaxHeadBytes ? Verdict.NotOurs : Verdict.NeedMore;
    }

    /// <summary>
    /// The features for a complete head that this middleware takes, or null when Kestrel should have
    /// it. Synchronous, so the parsed head is not kept alive by the connection's async state.
    /// </summary>
    private DirectConnectionFeatures? Take(ConnectionContext connection, ReadOnlySequence<byte> head)
    {
        byte[]? rented = null;
        ReadOnlySpan<byte> bytes;
        if (head.IsSingleSegment) bytes = head.FirstSpan;
        else
        {
            rented = ArrayPool<byte>.Shared.Rent((int)head.Length);
            head.CopyTo(rented);
            bytes = rented.AsSpan(0, (int)head.Length);
        }
        try
        {
            // Malformed or past Kestrel's limits: Kestrel's parser gives its own answer.
            if (RequestHead.parseWithin(bytes, _limits) is not RequestHead.RequestHeadResult.Complete complete) return null;
            var request = complete.request;
            if (!DirectRequest.IsCandidate(request, out string path, out string query)) return null;
            if (_routes!.OptedOut(new PathString(path))) return null;
            return new DirectConnectionFeatures(connection, request, path, query, _addServerHeader);
        }
        finally
        {
            if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private void EnsureServices()
    {
        if (Volatile.Read(ref _routes) is not null) return;
        _server = services.GetService<RealtimeServer>()
            ?? throw new InvalidOperationException("Call services.AddRealtime() before UseRealtimeDirectConnections.");
        _application = services.GetRequiredService<DirectApplication>();
        var kestrel = services.GetRequiredService<IOptions<KestrelServerOptions>>().Value;
        _addServerHeader = kestrel.AddServerHeader;
        var limits = kestrel.Limits;
        _headTimeout = services.GetRequiredService<IOptions<RealtimeOptions>>().Value.HandshakeTimeout ?? limits.RequestHeadersTimeout;
        // Kestrel's own limits, so that a head this middleware takes is one Kestrel would have taken.
        _limits = new RequestHead.Limits(
            (int)Math.Min(int.MaxValue, (long)limits.MaxRequestLineSize + limits.MaxRequestHeadersTotalSize + 2),
            limits.MaxRequestLineSize,
            limits.MaxRequestHeadersTotalSize,
            limits.MaxRequestHeaderCount);
        Volatile.Write(ref _routes, new DirectRoutes(services.GetRequiredService<EndpointDataSource>()));
    }
}

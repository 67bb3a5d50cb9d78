using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Realtime.Direct;
using Realtime.Protocol;

namespace Realtime.Native;

/// <summary>
/// Decides, from the bytes of a connection's first request head (peeked, so they stay in the kernel
/// for Kestrel), whether the native transport keeps the connection: a WebSocket upgrade that
/// <see cref="DirectConnectionMiddleware"/> would take (same parser, same limits, same
/// <see cref="DirectRequest.IsCandidate"/>) to the path of a Realtime endpoint that has direct
/// connections on. Such a request then runs through the application's whole pipeline
/// (<see cref="DirectApplication"/>); anything else goes to Kestrel with every byte unread.
/// </summary>
internal sealed class NativeHandshakes(IServiceProvider services)
{
    private static ReadOnlySpan<byte> Get => "GET "u8;
    private static ReadOnlySpan<byte> EndOfHead => "\r\n\r\n"u8;

    private Settings? _settings;

    public enum Verdict { NotOurs, NeedMore, Complete }

    /// <summary>The services, read once the server runs (the application is captured as Kestrel starts).</summary>
    private sealed record Settings(
        RealtimeServer Server, DirectApplication Application, DirectRoutes Routes, RequestHead.Limits Limits,
        TimeSpan HeadTimeout, bool AddServerHeader);

    public RealtimeServer? Server => Current()?.Server;

    /// <summary>The application's root services.</summary>
    public IServiceProvider Services => services;

    public DirectApplication? Application => Current()?.Application;

    /// <summary>How long a connection may take to send its first head; Kestrel's RequestHeadersTimeout or the Realtime HandshakeTimeout.</summary>
    public TimeSpan HeadTimeout => Current()?.HeadTimeout ?? TimeSpan.FromSeconds(30);

    /// <summary>Whether the peeked bytes are the start of a head this transport might take, and where it ends.</summary>
    public Verdict Inspect(ReadOnlySpan<byte> bytes, out int headLength)
    {
        headLength = 0;
        var settings = Current();
        // Only a GET can open a WebSocket (RFC 6455 §4.1); without the captured application nothing can run it.
        if (settings is null || !settings.Application.IsCaptured) return Verdict.NotOurs;
        int prefix = Math.Min(Get.Length, bytes.Length);
        if (!bytes[..prefix].SequenceEqual(Get[..prefix])) return Verdict.NotOurs;
        int end = bytes.IndexOf(EndOfHead);
        if (end < 0) return bytes.Length > settings.Limits.MaxHeadBytes ? Verdict.NotOurs : Verdict.NeedMore;
        headLength = end + EndOfHead.Length;
        return headLength <= settings.Limits.MaxHeadBytes ? Verdict.Complete : Verdict.NotOurs;
    }

    /// <summary>The request's features when the head is one this transport takes; null when Kestrel should have it.</summary>
    public DirectConnectionFeatures? Take(NativeConnectionContext connection, ReadOnlySpan<byte> head)
    {
        var settings = Current()!;
        if (RequestHead.parseWithin(head, settings.Limits) is not RequestHead.RequestHeadResult.Complete complete) return null;
        var request = complete.request;
        if (!DirectRequest.IsCandidate(request, out string path, out string query)) return null;
        var route = new PathString(path);
        if (!settings.Routes.ServesDirectly(route)) return null;
        return new DirectConnectionFeatures(connection, request, path, query, settings.AddServerHeader);
    }

    private Settings? Current()
    {
        if (Volatile.Read(ref _settings) is { } settings) return settings;
        var server = services.GetService<RealtimeServer>();
        var application = services.GetService<DirectApplication>();
        if (server is null || application is null) return null;
        var kestrel = services.GetRequiredService<IOptions<KestrelServerOptions>>().Value;
        var limits = kestrel.Limits;
        settings = new Settings(
            server,
            application,
            new DirectRoutes(services.GetRequiredService<EndpointDataSource>()),
            new RequestHead.Limits(
                (int)Math.Min(int.MaxValue, (long)limits.MaxRequestLineSize + limits.MaxRequestHeadersTotalSize + 2),
                limits.MaxRequestLineSize,
                limits.MaxRequestHeadersTotalSize,
                limits.MaxRequestHeaderCount),
            services.GetRequiredService<IOptions<RealtimeOptions>>().Value.HandshakeTimeout ?? limits.RequestHeadersTimeout,
            kestrel.AddServerHeader);
        Volatile.Write(ref _settings, settings);
        return settings;
    }
}

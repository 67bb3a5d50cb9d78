using System.Net;
using System.Reflection;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Realtime.Direct;

namespace Realtime.Native;

/// <summary>
/// Which of Kestrel's listeners the native transport may take connections from: those whose whole
/// connection pipeline is Kestrel's HTTP/1.1 server (with Realtime's direct-connection middleware at
/// most), so that nothing a connection would have gone through (TLS above all, or any other connection
/// middleware) is skipped. A marker put first in every listener's pipeline (through Kestrel's endpoint
/// defaults) sees the rest of the pipeline when Kestrel builds it, just before it binds the listener,
/// and adds nothing to it. A listener not seen, or seen with anything else in its pipeline, is handed
/// to Kestrel connection by connection: when unsure, the safe path.
/// A <c>localhost</c> address is one listener for the app but two for Kestrel, which binds copies of it
/// at 127.0.0.1 and [::1] on its port; the marker, copied with the rest of the pipeline, still names
/// the original, so those are recorded by port and found by their loopback address.
/// </summary>
internal sealed class PlainListeners
{
    private const string KestrelHttpMiddleware = "HttpConnectionMiddleware`1";
    private const string KestrelLocalhostListener = "LocalhostListenOptions";

    private readonly Dictionary<EndPoint, bool> _seen = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<int, bool> _localhostPorts = new();
    private readonly Lock _sync = new();

    /// <summary>
    /// Puts the marker first in the pipeline of every listener Kestrel makes, before the endpoint
    /// defaults the application set (Kestrel keeps one defaults action; it is read and wrapped). False
    /// when Kestrel's defaults cannot be reached: then no listener counts as plain.
    /// </summary>
    public bool Install(KestrelServerOptions kestrel)
    {
        var defaults = typeof(KestrelServerOptions).GetProperty("EndpointDefaults", BindingFlags.Instance | BindingFlags.NonPublic);
        if (defaults?.GetValue(kestrel) is not Action<ListenOptions> prior || !defaults.CanWrite) return false;
        defaults.SetValue(kestrel, (Action<ListenOptions>)(listen =>
        {
            listen.Use(next =>
            {
                Record(listen, next);
                return next;
            });
            prior(listen);
        }));
        return true;
    }

    /// <summary>True when the listener bound at <paramref name="endpoint"/> (the same object Kestrel built it for) is plain HTTP/1.1.</summary>
    public bool IsPlain(EndPoint endpoint)
    {
        lock (_sync)
        {
            if (_seen.TryGetValue(endpoint, out bool plain)) return plain;
            return endpoint is IPEndPoint { Port: > 0 } bound
                && (bound.Address.Equals(IPAddress.Loopback) || bound.Address.Equals(IPAddress.IPv6Loopback))
                && _localhostPorts.TryGetValue(bound.Port, out bool localhostPlain) && localhostPlain;
        }
    }

    private void Record(ListenOptions listen, ConnectionDelegate next)
    {
        bool plain = (listen.Protocols & HttpProtocols.Http1) != 0 && IsHttpOnly(next);
        lock (_sync)
        {
            // Seen twice (a listener cloned, or built again): plain only if plain every time.
            _seen[listen.EndPoint] = plain && _seen.GetValueOrDefault(listen.EndPoint, true);
            if (listen.GetType().Name == KestrelLocalhostListener && listen.EndPoint is IPEndPoint { Port: > 0 } localhost)
                _localhostPorts[localhost.Port] = plain && _localhostPorts.GetValueOrDefault(localhost.Port, true);
        }
    }

    private static bool IsHttpOnly(ConnectionDelegate next)
    {
        for (int depth = 0; depth < 8; depth++)
        {
            switch (next.Target)
            {
                case DirectConnectionMiddleware direct:
                    next = direct.Next;
                    continue;
                case { } target when target.GetType().Name == KestrelHttpMiddleware:
                    return true;
                default:
                    return false;
            }
        }
        return false;
    }
}

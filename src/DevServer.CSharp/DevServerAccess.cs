using System.Net;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;

namespace Realtime.DevServer;

/// <summary>
/// Who may use the dev server: requests whose <c>Host</c> is a localhost name, an address the
/// server listens on, or one of the allowed hosts (against DNS rebinding, where a page of another
/// site reaches 127.0.0.1 under its own name); and sockets whose <c>Origin</c> is the dev server's
/// own (against cross-site WebSocket hijacking).
/// </summary>
internal sealed class DevServerAccess
{
    private readonly IServer? _server;
    private readonly string[] _allowedHosts;
    private readonly bool _anyHost;
    private volatile Listening? _listening;

    public DevServerAccess(IServer? server, IReadOnlyList<string> allowedHosts)
    {
        _server = server;
        _allowedHosts = allowedHosts.Select(Normalize).ToArray();
        _anyHost = _allowedHosts.Contains("*");
    }

    // Lower case without a final dot; an IPv6 address in brackets, as it appears in a Host header.
    private static string Normalize(string allowedHost)
    {
        string host = allowedHost.Trim().TrimEnd('.').ToLowerInvariant();
        return Uri.CheckHostName(host) == UriHostNameType.IPv6 && !host.StartsWith('[') ? "[" + host + "]" : host;
    }

    /// <summary>Checks the entries of the <c>allowedHosts</c> option; returns them as given.</summary>
    public static IReadOnlyList<string> Validate(IEnumerable<string>? allowedHosts)
    {
        var list = (allowedHosts ?? []).ToList();
        foreach (var entry in list)
        {
            if (string.IsNullOrWhiteSpace(entry)) throw new ArgumentException("An allowed host is null or empty.", nameof(allowedHosts));
            string host = entry.Trim();
            if (host == "*") continue;
            if (host.StartsWith("*.", StringComparison.Ordinal)) host = host[2..];
            if (Uri.CheckHostName(host.TrimEnd('.')) == UriHostNameType.Unknown)
                throw new ArgumentException($"The allowed host \"{entry}\" is not a host name or an IP address (give names without scheme, port or path: \"mybox.lan\", \"*.example.test\", \"192.168.1.20\", \"*\").", nameof(allowedHosts));
        }
        return list;
    }

    /// <summary>
    /// True for a <c>Host</c> of: a localhost name (<c>localhost</c>, <c>*.localhost</c>, RFC 6761
    /// §6.3; a loopback address, 127.0.0.0/8 or [::1]) on any port; an address the server listens
    /// on, with its port (any IP address when it listens on all of them, since a DNS-rebinding
    /// page always has a name as its host); or an allowed host (any port).
    /// </summary>
    public bool IsHostAllowed(HttpRequest request)
    {
        if (_anyHost) return true;
        var hostString = request.Host;
        if (!hostString.HasValue) return false;
        string host = hostString.Host.TrimEnd('.').ToLowerInvariant();
        if (host.Length == 0) return false;
        if (IsLocalhostName(host)) return true;
        foreach (var allowed in _allowedHosts)
        {
            if (allowed == host) return true;
            if (allowed.StartsWith("*.", StringComparison.Ordinal) && host.EndsWith(allowed.AsSpan(1), StringComparison.Ordinal)) return true;
        }
        int port = hostString.Port ?? DefaultPort(request.Scheme);
        var listening = _listening ?? Listen();
        if (listening.Hosts.Contains($"{host}:{port}")) return true;
        return listening.AnyAddressPorts.Contains(port) && TryParseAddress(host, out _);
    }

    /// <summary>
    /// True when the request has no <c>Origin</c> (not a browser: RFC 6455 §4.1 has browsers send
    /// it, and the Host check still applies), or its <c>Origin</c> is the origin the request was
    /// made to: same scheme, host and port as the request's <c>Host</c>.
    /// </summary>
    public static bool IsOriginAllowed(HttpRequest request)
    {
        var origins = request.Headers.Origin;
        if (origins.Count == 0) return true;
        if (origins.Count > 1) return false;
        if (!Uri.TryCreate(origins[0], UriKind.Absolute, out var origin)) return false;
        if (origin.AbsolutePath != "/" || origin.Query.Length > 0 || origin.UserInfo.Length > 0) return false;
        if (!string.Equals(origin.Scheme, request.Scheme, StringComparison.OrdinalIgnoreCase)) return false;
        var host = request.Host;
        if (!string.Equals(origin.Host.TrimEnd('.'), host.Host.TrimEnd('.'), StringComparison.OrdinalIgnoreCase)) return false;
        return origin.Port == (host.Port ?? DefaultPort(request.Scheme));
    }

    /// <summary><c>localhost</c>, a name under <c>.localhost</c> (RFC 6761 §6.3: always the loopback), or a loopback address.</summary>
    public static bool IsLocalhostName(string host) =>
        host == "localhost"
        || host.EndsWith(".localhost", StringComparison.Ordinal)
        || (TryParseAddress(host, out var address) && IPAddress.IsLoopback(address));

    private static bool TryParseAddress(string host, out IPAddress address)
    {
        address = IPAddress.None;
        var kind = Uri.CheckHostName(host.Trim('[', ']'));
        return (kind == UriHostNameType.IPv4 || kind == UriHostNameType.IPv6) && IPAddress.TryParse(host.Trim('[', ']'), out address!);
    }

    private static int DefaultPort(string scheme) => string.Equals(scheme, "https", StringComparison.OrdinalIgnoreCase) ? 443 : 80;

    private sealed record Listening(HashSet<string> Hosts, HashSet<int> AnyAddressPorts);

    // Read once the server listens: the addresses then carry the ports actually bound (port 0 resolved).
    private Listening Listen()
    {
        var hosts = new HashSet<string>(StringComparer.Ordinal);
        var anyAddressPorts = new HashSet<int>();
        var addresses = _server?.Features.Get<IServerAddressesFeature>()?.Addresses ?? [];
        foreach (var text in addresses)
        {
            BindingAddress address;
            try
            {
                address = BindingAddress.Parse(text);
            }
            catch (FormatException)
            {
                continue;
            }
            string host = address.Host.TrimEnd('.').ToLowerInvariant();
            if (host is "*" or "+" or "0.0.0.0" or "[::]" or "::") anyAddressPorts.Add(address.Port);
            else hosts.Add($"{host}:{address.Port}");
        }
        var listening = new Listening(hosts, anyAddressPorts);
        if (hosts.Count + anyAddressPorts.Count > 0) _listening = listening;
        return listening;
    }
}

using Microsoft.AspNetCore.Http;
using Realtime.Protocol;

namespace Realtime.Direct;

/// <summary>
/// Which parsed request heads <see cref="DirectConnectionMiddleware"/> takes: WebSocket upgrades that
/// Kestrel would hand to the application exactly as sent. Anything Kestrel would refuse, rewrite or
/// read a body for goes to Kestrel instead, so that both paths see the same request.
/// </summary>
internal static class DirectRequest
{
    /// <summary>
    /// True for a GET over HTTP/1.1 with one plain Host, <c>Upgrade: websocket</c> and
    /// <c>Connection: Upgrade</c> (read by the core's <see cref="Handshake.hasToken"/>, as its handshake
    /// reads them), no body, and a path that needs no normalising; gives the decoded path and the query
    /// string (with its '?', or empty) as Kestrel would.
    /// </summary>
    public static bool IsCandidate(Handshake.HandshakeRequest request, out string path, out string query)
    {
        path = "";
        query = "";
        if (request.Method != "GET" || request.HttpVersion != "HTTP/1.1") return false;
        int hosts = 0;
        foreach (var header in request.Headers)
        {
            string name = header.Name;
            if (name.Equals("Host", StringComparison.OrdinalIgnoreCase))
            {
                if (++hosts > 1 || !IsPlainHost(header.Value)) return false;
            }
            // RFC 9112 §6: a body would need Kestrel's own reading of it.
            else if (name.Equals("Transfer-Encoding", StringComparison.OrdinalIgnoreCase)) return false;
            else if (name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase) && header.Value != "0") return false;
        }
        if (hosts != 1
            || !Handshake.hasToken("Upgrade", "websocket", request.Headers)
            || !Handshake.hasToken("Connection", "upgrade", request.Headers)) return false;

        string target = request.Path;
        int mark = target.IndexOf('?');
        string rawPath = mark < 0 ? target : target[..mark];
        if (!IsPlainPath(rawPath, out path)) return false;
        query = mark < 0 ? "" : target[mark..];
        return true;
    }

    // RFC 3986 §3.2.2 reg-name, IPv4 or IP-literal, with an optional port: what Kestrel accepts unchanged.
    private static bool IsPlainHost(string host)
    {
        if (host.Length == 0) return false;
        foreach (char c in host)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '_' or ':' or '[' or ']')) return false;
        }
        return true;
    }

    /// <summary>
    /// An origin-form path (RFC 3986 §3.3) with no dot segments, before or after percent-decoding, and
    /// no encoded '/', '\', '%' or NUL: the decoded path is then what Kestrel's decoding gives.
    /// </summary>
    private static bool IsPlainPath(string rawPath, out string decoded)
    {
        decoded = "";
        if (rawPath.Length == 0 || rawPath[0] != '/') return false;
        foreach (char c in rawPath)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || "-._~!$&'()*+,;=:@/%".Contains(c))) return false;
        }
        if (rawPath.Contains('%'))
        {
            foreach (var encoded in (ReadOnlySpan<string>)["%2F", "%5C", "%25", "%00", "%2E"])
            {
                if (rawPath.Contains(encoded, StringComparison.OrdinalIgnoreCase)) return false;
            }
        }
        decoded = PathString.FromUriComponent(rawPath).Value ?? "/";
        if (decoded.Contains('\\') || decoded.Contains('\uFFFD')) return false;
        foreach (var segment in decoded.Split('/'))
        {
            if (segment is "." or "..") return false;
        }
        return true;
    }
}

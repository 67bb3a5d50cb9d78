using System.Net;
using Microsoft.AspNetCore.HttpOverrides;

/// <summary>
/// <c>--behind-proxy ADDRESS[,ADDRESS...]</c>: the app runs behind a reverse proxy (nginx, a load
/// balancer) at those addresses or networks (<c>10.0.0.0/8</c>), and takes the client's address and
/// scheme from the proxy's <c>X-Forwarded-For</c> and <c>X-Forwarded-Proto</c>.
/// </summary>
/// <remarks>
/// Only the named proxies are trusted: ASP.NET's defaults also trust the whole loopback network, so
/// any local process could claim any address. A client that reaches the app without the proxy
/// keeps its own address, whatever headers it sends. Without the option no forwarded header is read.
/// </remarks>
internal static class BehindProxy
{
    /// <summary>The configuration key (command line <c>--behind-proxy</c>).</summary>
    public const string Key = "behind-proxy";

    /// <summary>Trusts exactly the proxies listed in <paramref name="proxies"/> (comma-separated).</summary>
    public static void Configure(ForwardedHeadersOptions options, string proxies)
    {
        options.ForwardedHeaders = ForwardedHeaders.XForwardedFor | ForwardedHeaders.XForwardedProto;
        options.KnownProxies.Clear();
        options.KnownIPNetworks.Clear();
        foreach (var proxy in proxies.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (proxy.Contains('/')) options.KnownIPNetworks.Add(System.Net.IPNetwork.Parse(proxy));
            else options.KnownProxies.Add(IPAddress.Parse(proxy));
        }
    }
}

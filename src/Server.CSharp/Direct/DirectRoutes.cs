using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Routing.Template;
using Microsoft.Extensions.Primitives;

namespace Realtime.Direct;

/// <summary>
/// The route templates of the Realtime endpoints that opted out of direct connections
/// (<see cref="RealtimeOptions.DirectConnections"/> false), read from the application's routes (so
/// route groups and their prefixes count) and rebuilt when the routes change. Upgrade requests whose
/// path fits one of them are left to Kestrel; the application's own routing (precedence,
/// constraints, every endpoint) decides where every other request goes.
/// </summary>
internal sealed class DirectRoutes(EndpointDataSource dataSource)
{
    private TemplateMatcher[]? _routes;
    private TemplateMatcher[] _direct = [];
    private IChangeToken? _changed;
    private readonly Lock _sync = new();

    /// <summary>True when <paramref name="path"/> fits the template of a Realtime endpoint that opted out.</summary>
    public bool OptedOut(PathString path)
    {
        foreach (var route in Current())
        {
            if (route.TryMatch(path, new RouteValueDictionary())) return true;
        }
        return false;
    }

    /// <summary>
    /// True when <paramref name="path"/> fits the template of a Realtime endpoint with direct connections
    /// on and of none that opted out: the native transport keeps only such upgrades.
    /// </summary>
    public bool ServesDirectly(PathString path)
    {
        if (OptedOut(path)) return false;
        foreach (var route in Volatile.Read(ref _direct))
        {
            if (route.TryMatch(path, new RouteValueDictionary())) return true;
        }
        return false;
    }

    private TemplateMatcher[] Current()
    {
        var routes = Volatile.Read(ref _routes);
        if (routes is not null && _changed is { HasChanged: false }) return routes;
        lock (_sync)
        {
            if (_routes is not null && _changed is { HasChanged: false }) return _routes;
            _changed = dataSource.GetChangeToken();
            var built = new List<TemplateMatcher>();
            var direct = new List<TemplateMatcher>();
            foreach (var endpoint in dataSource.Endpoints)
            {
                if (endpoint is not RouteEndpoint route) continue;
                var realtime = route.Metadata.GetMetadata<RealtimeEndpoint>();
                if (realtime is null) continue;
                var matcher = new TemplateMatcher(new RouteTemplate(route.RoutePattern), new RouteValueDictionary(route.RoutePattern.Defaults));
                (realtime.Options.DirectConnections ? direct : built).Add(matcher);
            }
            Volatile.Write(ref _direct, direct.ToArray());
            Volatile.Write(ref _routes, built.ToArray());
            return _routes!;
        }
    }
}

using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Routing.Template;
using Microsoft.Extensions.Primitives;

namespace Realtime.Direct;

/// <summary>
/// The route templates of the Realtime endpoints a directly accepted connection may be for, read from
/// the application's routes (so route groups and their prefixes count) and rebuilt when the routes
/// change. It only pre-selects which upgrade requests are worth taking: the application's own routing
/// (precedence, constraints, every endpoint) still decides where a taken request goes. Endpoints with
/// <see cref="RealtimeOptions.DirectConnections"/> false are left out.
/// </summary>
internal sealed class DirectRoutes(EndpointDataSource dataSource)
{
    private TemplateMatcher[]? _routes;
    private IChangeToken? _changed;
    private readonly Lock _sync = new();

    /// <summary>True when <paramref name="path"/> fits the template of a Realtime endpoint that takes direct connections.</summary>
    public bool Matches(PathString path)
    {
        foreach (var route in Current())
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
            foreach (var endpoint in dataSource.Endpoints)
            {
                if (endpoint is not RouteEndpoint route) continue;
                var realtime = route.Metadata.GetMetadata<RealtimeEndpoint>();
                if (realtime is null || !realtime.Options.DirectConnections) continue;
                built.Add(new TemplateMatcher(new RouteTemplate(route.RoutePattern), new RouteValueDictionary(route.RoutePattern.Defaults)));
            }
            Volatile.Write(ref _routes, built.ToArray());
            return _routes!;
        }
    }
}

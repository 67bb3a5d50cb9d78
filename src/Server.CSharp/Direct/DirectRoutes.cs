using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Routing.Template;
using Microsoft.Extensions.Primitives;

namespace Realtime.Direct;

/// <summary>
/// The Realtime endpoints a directly accepted connection may reach, read from the application's
/// routes (so route groups and their prefixes count) and rebuilt when the routes change. An
/// endpoint is left to the ordinary HTTP pipeline when it opted out
/// (<see cref="RealtimeOptions.DirectConnections"/>), needs something only middleware provides
/// (authorization, a host restriction), or has route constraints.
/// </summary>
internal sealed class DirectRoutes(EndpointDataSource dataSource)
{
    private sealed record Route(TemplateMatcher Matcher, RealtimeEndpoint Endpoint);

    private Route[]? _routes;
    private IChangeToken? _changed;
    private readonly Lock _sync = new();

    /// <summary>The endpoint whose route matches <paramref name="path"/>, with the route values; null when none may take it directly.</summary>
    public RealtimeEndpoint? Match(PathString path, out RouteValueDictionary? values)
    {
        foreach (var route in Current())
        {
            var candidate = new RouteValueDictionary();
            if (route.Matcher.TryMatch(path, candidate))
            {
                values = candidate;
                return route.Endpoint;
            }
        }
        values = null;
        return null;
    }

    private Route[] Current()
    {
        var routes = Volatile.Read(ref _routes);
        if (routes is not null && _changed is { HasChanged: false }) return routes;
        lock (_sync)
        {
            if (_routes is not null && _changed is { HasChanged: false }) return _routes;
            _changed = dataSource.GetChangeToken();
            var built = new List<Route>();
            foreach (var endpoint in dataSource.Endpoints)
            {
                if (endpoint is not RouteEndpoint route) continue;
                var realtime = route.Metadata.GetMetadata<RealtimeEndpoint>();
                if (realtime is null || !realtime.Options.DirectConnections) continue;
                if (route.Metadata.GetMetadata<IAuthorizeData>() is not null) continue;
                if (route.Metadata.GetMetadata<IHostMetadata>() is not null) continue;
                if (route.RoutePattern.ParameterPolicies.Count > 0) continue;
                built.Add(new Route(new TemplateMatcher(new RouteTemplate(route.RoutePattern), new RouteValueDictionary(route.RoutePattern.Defaults)), realtime));
            }
            Volatile.Write(ref _routes, built.ToArray());
            return _routes!;
        }
    }
}

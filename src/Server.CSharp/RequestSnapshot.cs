using System.Net;
using System.Security.Claims;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Http.Features.Authentication;

namespace Realtime;

/// <summary>
/// What a connection keeps of its upgrade request once the request has ended (the native transport
/// ends it after <c>Open</c>, so that the request's context, features, services scope and middleware
/// frames are not kept alive for the connection's whole life): the user, the path and query, and the
/// connection's addresses and id. No headers and no request services scope: an app that needs them
/// after <c>Open</c> reads them in <c>Attach</c> into the connection's data.
/// </summary>
internal sealed class RequestSnapshot
{
    private readonly ClaimsPrincipal? _user;
    private readonly PathString _pathBase;
    private readonly PathString _path;
    private readonly QueryString _query;
    private readonly CompactAddress _localAddress;
    private readonly int _localPort;
    private readonly int _remotePort;
    private readonly string _connectionId;

    private RequestSnapshot(HttpContext context, string routePattern)
    {
        // Read through the feature so that an app that never touched User gets no principal made for it.
        _user = context.Features.Get<IHttpAuthenticationFeature>()?.User;
        var request = context.Request;
        _pathBase = request.PathBase;
        // The path of most connections is their endpoint's pattern: keep that one string, not a copy each.
        _path = string.Equals(request.Path.Value, routePattern, StringComparison.Ordinal) ? new PathString(routePattern) : request.Path;
        _query = request.QueryString;
        var connection = context.Connection;
        _localAddress = new CompactAddress(connection.LocalIpAddress);
        _localPort = connection.LocalPort;
        _remotePort = connection.RemotePort;
        _connectionId = connection.Id;
    }

    /// <summary>The snapshot of <paramref name="context"/>, a request to the endpoint at <paramref name="routePattern"/>.</summary>
    public static RequestSnapshot Of(HttpContext context, string routePattern) => new(context, routePattern);

    /// <summary>
    /// A context made from the snapshot for <see cref="RealtimeSocket.HttpContext"/>: GET on the
    /// request's path and query, its user and addresses, no headers, and <paramref name="services"/>
    /// (the application's root services) for its request services, whose scope ended with the request.
    /// </summary>
    public HttpContext ToHttpContext(IPAddress? remoteAddress, IServiceProvider services)
    {
        var context = new DefaultHttpContext();
        var request = context.Request;
        request.Method = HttpMethods.Get;
        request.Protocol = "HTTP/1.1";
        request.Scheme = "http";
        request.PathBase = _pathBase;
        request.Path = _path;
        request.QueryString = _query;
        var connection = context.Connection;
        connection.Id = _connectionId;
        connection.RemoteIpAddress = remoteAddress;
        connection.RemotePort = _remotePort;
        connection.LocalIpAddress = _localAddress.ToIPAddress();
        connection.LocalPort = _localPort;
        if (_user is not null) context.User = _user;
        context.RequestServices = services;
        return context;
    }
}

using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Extensions.DependencyInjection;

namespace Realtime.Direct;

/// <summary>
/// Everything ASP.NET code sees of a request accepted directly by
/// <see cref="DirectConnectionMiddleware"/>, in one object that lives as long as the connection:
/// the feature collection of its <see cref="HttpContext"/> and the request, response, connection,
/// route values, request services, upgrade and lifetime features in it. (Kestrel's HTTP layer
/// keeps these as one object per connection too; separate feature objects in a dictionary would
/// cost several hundred bytes more per idle connection.) <see cref="UpgradeAsync"/> writes the 101
/// response straight to the connection, whose pipes then carry the WebSocket frames; a response
/// written instead (a rejection) is buffered and sent by <see cref="WriteResponseAsync"/>.
/// Features set by application code are kept beside the built-in ones and take precedence.
/// </summary>
internal sealed class DirectConnectionFeatures :
    IFeatureCollection,
    IHttpRequestFeature,
    IHttpResponseFeature,
    IHttpResponseBodyFeature,
    IHttpConnectionFeature,
    IRouteValuesFeature,
    IServiceProvidersFeature,
    IHttpUpgradeFeature,
    IHttpRequestLifetimeFeature,
    IAsyncDisposable
{
    private static readonly Type[] Implemented =
    [
        typeof(IHttpRequestFeature), typeof(IHttpResponseFeature), typeof(IHttpResponseBodyFeature),
        typeof(IHttpConnectionFeature), typeof(IRouteValuesFeature), typeof(IServiceProvidersFeature),
        typeof(IHttpUpgradeFeature), typeof(IHttpRequestLifetimeFeature),
    ];

    private readonly ConnectionContext _connection;
    private readonly ITlsConnectionFeature? _tls;
    private readonly IServiceScopeFactory _scopes;
    // Features set from outside (and built-in ones replaced or removed, as null); usually none.
    private List<KeyValuePair<Type, object?>>? _set;
    private int _revision;
    private AsyncServiceScope? _scope;
    private IServiceProvider? _requestServices;
    private StreamResponseBodyFeature? _body;
    private Stream _requestBody = Stream.Null;
    private IHeaderDictionary _responseHeaders = new HeaderDictionary();

    public DirectConnectionFeatures(ConnectionContext connection, IServiceScopeFactory scopes, string method, string protocol,
        string path, string queryString, string rawTarget, IHeaderDictionary headers, RouteValueDictionary routeValues)
    {
        _connection = connection;
        _scopes = scopes;
        _tls = connection.Features.Get<ITlsConnectionFeature>();
        Method = method;
        Protocol = protocol;
        Scheme = _tls is null ? "http" : "https";
        Path = path;
        QueryString = queryString;
        RawTarget = rawTarget;
        Headers = headers;
        RouteValues = routeValues;
        ConnectionId = connection.ConnectionId;
        if (connection.RemoteEndPoint is IPEndPoint remote)
        {
            RemoteIpAddress = remote.Address;
            RemotePort = remote.Port;
        }
        if (connection.LocalEndPoint is IPEndPoint local)
        {
            LocalIpAddress = local.Address;
            LocalPort = local.Port;
        }
    }

    /// <summary>The connection's transport, which carries the frames once upgraded.</summary>
    public IDuplexPipe Transport => _connection.Transport;

    /// <summary>True once the 101 response went out.</summary>
    public bool Upgraded { get; private set; }

    // ------------------------------------------------------------------ IFeatureCollection

    public bool IsReadOnly => false;

    public int Revision => _revision;

    public object? this[Type key]
    {
        get
        {
            ArgumentNullException.ThrowIfNull(key);
            int index = IndexOfSet(key);
            return index >= 0 ? _set![index].Value : BuiltIn(key);
        }
        set
        {
            ArgumentNullException.ThrowIfNull(key);
            int index = IndexOfSet(key);
            _set ??= new List<KeyValuePair<Type, object?>>(2);
            if (index >= 0) _set[index] = new(key, value);
            else _set.Add(new(key, value));
            _revision++;
        }
    }

    public TFeature? Get<TFeature>() => (TFeature?)this[typeof(TFeature)];

    public void Set<TFeature>(TFeature? instance) => this[typeof(TFeature)] = instance;

    public IEnumerator<KeyValuePair<Type, object>> GetEnumerator()
    {
        if (_set is not null)
        {
            foreach (var (type, feature) in _set)
            {
                if (feature is not null) yield return new(type, feature);
            }
        }
        foreach (var type in Implemented)
        {
            if (IndexOfSet(type) < 0) yield return new(type, this);
        }
        if (_tls is not null && IndexOfSet(typeof(ITlsConnectionFeature)) < 0) yield return new(typeof(ITlsConnectionFeature), _tls);
    }

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>Where a feature of this type was set from outside, or -1.</summary>
    private int IndexOfSet(Type key)
    {
        if (_set is null) return -1;
        for (int i = 0; i < _set.Count; i++)
        {
            if (_set[i].Key == key) return i;
        }
        return -1;
    }

    private object? BuiltIn(Type key)
    {
        if (key == typeof(ITlsConnectionFeature)) return _tls;
        return Array.IndexOf(Implemented, key) >= 0 ? this : null;
    }

    // ------------------------------------------------------------------ request

    public string Protocol { get; set; }

    public string Scheme { get; set; }

    public string Method { get; set; }

    public string PathBase { get; set; } = "";

    public string Path { get; set; }

    public string QueryString { get; set; }

    public string RawTarget { get; set; }

    public IHeaderDictionary Headers { get; set; }

    Stream IHttpRequestFeature.Body
    {
        get => _requestBody;
        set => _requestBody = value;
    }

    // ------------------------------------------------------------------ response

    public int StatusCode { get; set; } = StatusCodes.Status200OK;

    public string? ReasonPhrase { get; set; }

    IHeaderDictionary IHttpResponseFeature.Headers
    {
        get => _responseHeaders;
        set => _responseHeaders = value;
    }

    [Obsolete("Use IHttpResponseBodyFeature.Stream instead.")]
    Stream IHttpResponseFeature.Body
    {
        get => Body.Stream;
        set => throw new NotSupportedException("the response body of a direct connection cannot be replaced");
    }

    public bool HasStarted => false;

    public void OnStarting(Func<object, Task> callback, object state)
    {
    }

    public void OnCompleted(Func<object, Task> callback, object state)
    {
    }

    // The response body is only ever written for a refusal: made when first used.
    private StreamResponseBodyFeature Body => _body ??= new StreamResponseBodyFeature(new MemoryStream());

    Stream IHttpResponseBodyFeature.Stream => Body.Stream;

    PipeWriter IHttpResponseBodyFeature.Writer => Body.Writer;

    void IHttpResponseBodyFeature.DisableBuffering() => Body.DisableBuffering();

    Task IHttpResponseBodyFeature.StartAsync(CancellationToken cancellationToken) => Body.StartAsync(cancellationToken);

    Task IHttpResponseBodyFeature.SendFileAsync(string path, long offset, long? count, CancellationToken cancellationToken) =>
        Body.SendFileAsync(path, offset, count, cancellationToken);

    Task IHttpResponseBodyFeature.CompleteAsync() => Body.CompleteAsync();

    // ------------------------------------------------------------------ connection, route, services

    public string ConnectionId { get; set; }

    public IPAddress? RemoteIpAddress { get; set; }

    public IPAddress? LocalIpAddress { get; set; }

    public int RemotePort { get; set; }

    public int LocalPort { get; set; }

    public RouteValueDictionary RouteValues { get; set; }

    public IServiceProvider RequestServices
    {
        get
        {
            if (_requestServices is null)
            {
                _scope = _scopes.CreateAsyncScope();
                _requestServices = _scope.Value.ServiceProvider;
            }
            return _requestServices;
        }
        set => _requestServices = value;
    }

    /// <summary>Disposes the request's service scope, if one was made.</summary>
    public ValueTask DisposeAsync()
    {
        var scope = _scope;
        _scope = null;
        _requestServices = null;
        return scope?.DisposeAsync() ?? ValueTask.CompletedTask;
    }

    // ------------------------------------------------------------------ upgrade and lifetime

    public bool IsUpgradableRequest => true;

    public CancellationToken RequestAborted
    {
        get => _connection.ConnectionClosed;
        set { }
    }

    public void Abort() => _connection.Abort(new ConnectionAbortedException("aborted by the application"));

    public async Task<Stream> UpgradeAsync()
    {
        if (Upgraded) throw new InvalidOperationException("the connection was already upgraded");
        Upgraded = true;
        StatusCode = StatusCodes.Status101SwitchingProtocols;
        WriteHead(_connection.Transport.Output, StatusCode, _responseHeaders, contentLength: null);
        await _connection.Transport.Output.FlushAsync().ConfigureAwait(false);
        // The response is over; what it held need not live as long as the connection.
        _responseHeaders = new HeaderDictionary();
        return Stream.Null;
    }

    /// <summary>Writes the response the endpoint produced instead of upgrading (a refusal); then the connection closes.</summary>
    public async Task WriteResponseAsync()
    {
        _responseHeaders.Connection = "close";
        // What the endpoint wrote went through the body feature's writer, which flushed it to the stream.
        byte[] body = _body is null ? [] : ((MemoryStream)_body.Stream).ToArray();
        var output = _connection.Transport.Output;
        WriteHead(output, StatusCode, _responseHeaders, body.Length);
        output.Write(body.AsSpan());
        await output.FlushAsync().ConfigureAwait(false);
    }

    private static void WriteHead(PipeWriter output, int status, IHeaderDictionary headers, long? contentLength)
    {
        var head = new StringBuilder(256);
        head.Append("HTTP/1.1 ").Append(status).Append(' ').Append(ReasonPhrases.GetReasonPhrase(status)).Append("\r\n");
        foreach (var (name, values) in headers)
        {
            if (contentLength is not null && string.Equals(name, "Content-Length", StringComparison.OrdinalIgnoreCase)) continue;
            foreach (var value in values)
            {
                // As Kestrel does: a line break in a header would split the response (RFC 9110 §5.5).
                if (value is not null && value.AsSpan().IndexOfAny('\r', '\n') >= 0)
                    throw new InvalidOperationException($"the value of response header {name} contains a line break");
                head.Append(name).Append(": ").Append(value).Append("\r\n");
            }
        }
        if (contentLength is { } length) head.Append("Content-Length: ").Append(length).Append("\r\n");
        head.Append("\r\n");
        // Header values are ASCII here (the handshake's own, or what the application set, which
        // Kestrel would also refuse to send as anything else).
        Encoding.Latin1.GetBytes(head.ToString(), output);
    }
}

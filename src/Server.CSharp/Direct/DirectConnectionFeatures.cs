using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Realtime.Protocol;

namespace Realtime.Direct;

/// <summary>
/// The features of a request accepted by <see cref="DirectConnectionMiddleware"/>, in one object that
/// lives as long as the connection: what Kestrel's HTTP/1.1 layer would give the application for the
/// same request (request, response, response body, connection, upgrade and lifetime features; the
/// connection's own features, such as TLS, behind them). The host's application makes its
/// <see cref="HttpContext"/> from it and runs its whole pipeline on it. <see cref="UpgradeAsync"/>
/// writes the 101 response straight to the connection, whose pipes then carry the WebSocket frames;
/// any other response is written as HTTP/1.1 with <c>Connection: close</c>, and the connection ends
/// after it. Features set by application code are kept beside the built-in ones and take precedence.
/// </summary>
internal sealed class DirectConnectionFeatures :
    IFeatureCollection,
    IHttpRequestFeature,
    IHttpResponseFeature,
    IHttpResponseBodyFeature,
    IHttpConnectionFeature,
    IHttpUpgradeFeature,
    IHttpRequestLifetimeFeature
{
    private static readonly Type[] Implemented =
    [
        typeof(IHttpRequestFeature), typeof(IHttpResponseFeature), typeof(IHttpResponseBodyFeature),
        typeof(IHttpConnectionFeature), typeof(IHttpUpgradeFeature), typeof(IHttpRequestLifetimeFeature),
    ];

    private readonly ConnectionContext _connection;
    private readonly bool _addServerHeader;
    // Features set from outside (and built-in ones replaced or removed, as null).
    private List<KeyValuePair<Type, object?>>? _set;
    private int _revision;
    private Stream _requestBody = Stream.Null;
    private IHeaderDictionary _responseHeaders = new HeaderDictionary();
    private List<(Func<object, Task> Callback, object State)>? _onStarting;
    private List<(Func<object, Task> Callback, object State)>? _onCompleted;
    private DirectResponseStream? _body;
    private PipeWriter? _bodyWriter;
    private bool _started;

    /// <summary>
    /// The features of <paramref name="request"/>, as the core parsed it, with its decoded
    /// <paramref name="path"/> and its <paramref name="queryString"/>; its header lines are the request
    /// headers as they are (<see cref="DirectRequestHeaders"/>).
    /// </summary>
    public DirectConnectionFeatures(ConnectionContext connection, Handshake.HandshakeRequest request, string path,
        string queryString, bool addServerHeader)
    {
        _connection = connection;
        _addServerHeader = addServerHeader;
        Method = request.Method;
        Protocol = request.HttpVersion;
        Scheme = connection.Features.Get<ITlsConnectionFeature>() is null ? "http" : "https";
        Path = path;
        QueryString = queryString;
        RawTarget = request.Path;
        Headers = new DirectRequestHeaders(request.Headers);
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

    /// <summary>The native transport's connection when the request came through its event loop.</summary>
    public Native.NativeConnection? Native => (_connection as Native.NativeConnectionContext)?.Connection;

    /// <summary>True once the 101 response went out.</summary>
    public bool Upgraded { get; private set; }

    // ------------------------------------------------------------------ IFeatureCollection

    public bool IsReadOnly => false;

    public int Revision => _revision + _connection.Features.Revision;

    public object? this[Type key]
    {
        get
        {
            ArgumentNullException.ThrowIfNull(key);
            int index = IndexOfSet(key);
            if (index >= 0) return _set![index].Value;
            return Array.IndexOf(Implemented, key) >= 0 ? this : _connection.Features[key];
        }
        set
        {
            ArgumentNullException.ThrowIfNull(key);
            int index = IndexOfSet(key);
            _set ??= new List<KeyValuePair<Type, object?>>(4);
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
        foreach (var (type, feature) in _connection.Features)
        {
            if (IndexOfSet(type) < 0 && Array.IndexOf(Implemented, type) < 0) yield return new(type, feature);
        }
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
        get => Body;
        set => throw new NotSupportedException("the response body of a direct connection cannot be replaced; set IHttpResponseBodyFeature instead");
    }

    public bool HasStarted => _started;

    public void OnStarting(Func<object, Task> callback, object state)
    {
        if (_started) throw new InvalidOperationException("the response has already started");
        (_onStarting ??= []).Add((callback, state));
    }

    public void OnCompleted(Func<object, Task> callback, object state) => (_onCompleted ??= []).Add((callback, state));

    private DirectResponseStream Body => _body ??= new DirectResponseStream(this);

    Stream IHttpResponseBodyFeature.Stream => Body;

    PipeWriter IHttpResponseBodyFeature.Writer => _bodyWriter ??= PipeWriter.Create(Body, new StreamPipeWriterOptions(leaveOpen: true));

    void IHttpResponseBodyFeature.DisableBuffering()
    {
    }

    async Task IHttpResponseBodyFeature.StartAsync(CancellationToken cancellationToken)
    {
        await StartResponseAsync().ConfigureAwait(false);
        await _connection.Transport.Output.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    Task IHttpResponseBodyFeature.SendFileAsync(string path, long offset, long? count, CancellationToken cancellationToken) =>
        SendFileFallback.SendFileAsync(Body, path, offset, count, cancellationToken);

    async Task IHttpResponseBodyFeature.CompleteAsync()
    {
        if (_bodyWriter is not null) await _bodyWriter.FlushAsync().ConfigureAwait(false);
        await StartResponseAsync().ConfigureAwait(false);
        await _connection.Transport.Output.FlushAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Writes the response head once, after the OnStarting callbacks (latest first, as Kestrel runs
    /// them). Without a Content-Length the body lasts until the connection closes (RFC 9112 §6.3).
    /// </summary>
    internal async ValueTask StartResponseAsync()
    {
        if (_started) return;
        await FireOnStartingAsync().ConfigureAwait(false);
        _started = true;
        _responseHeaders.Connection = "close";
        WriteHead(_connection.Transport.Output, StatusCode, ReasonPhrase, _responseHeaders, _addServerHeader);
    }

    private async ValueTask FireOnStartingAsync()
    {
        var callbacks = _onStarting;
        _onStarting = null;
        if (callbacks is null) return;
        for (int i = callbacks.Count - 1; i >= 0; i--) await callbacks[i].Callback(callbacks[i].State).ConfigureAwait(false);
    }

    /// <summary>
    /// Ends the request after the application returned, as Kestrel does: a 500 with no body when it
    /// threw before the response started, otherwise the response as the application left it (an
    /// unstarted one with <c>Content-Length: 0</c>), flushed; then the OnCompleted callbacks.
    /// </summary>
    public async Task CompleteAsync(Exception? failure)
    {
        try
        {
            if (!Upgraded)
            {
                if (_bodyWriter is not null && failure is null) await _bodyWriter.FlushAsync().ConfigureAwait(false);
                if (!_started)
                {
                    if (failure is not null)
                    {
                        StatusCode = StatusCodes.Status500InternalServerError;
                        ReasonPhrase = null;
                        _responseHeaders.Clear();
                    }
                    _responseHeaders.ContentLength = 0;
                    await StartResponseAsync().ConfigureAwait(false);
                }
                await _connection.Transport.Output.FlushAsync().ConfigureAwait(false);
            }
        }
        finally
        {
            await FireOnCompletedAsync().ConfigureAwait(false);
        }
    }

    private async Task FireOnCompletedAsync()
    {
        var callbacks = _onCompleted;
        _onCompleted = null;
        if (callbacks is null) return;
        List<Exception>? failures = null;
        for (int i = callbacks.Count - 1; i >= 0; i--)
        {
            try
            {
                await callbacks[i].Callback(callbacks[i].State).ConfigureAwait(false);
            }
            catch (Exception exception)
            {
                (failures ??= []).Add(exception);
            }
        }
        if (failures is not null) throw new AggregateException(failures);
    }

    // ------------------------------------------------------------------ connection

    public string ConnectionId { get; set; }

    public IPAddress? RemoteIpAddress { get; set; }

    public IPAddress? LocalIpAddress { get; set; }

    public int RemotePort { get; set; }

    public int LocalPort { get; set; }

    // ------------------------------------------------------------------ upgrade and lifetime

    // The middleware takes only requests with "Connection: Upgrade" and no body, as Kestrel's test for it.
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
        if (_started) throw new InvalidOperationException("the response has already started");
        await FireOnStartingAsync().ConfigureAwait(false);
        Upgraded = true;
        _started = true;
        StatusCode = StatusCodes.Status101SwitchingProtocols;
        WriteHead(_connection.Transport.Output, StatusCode, null, _responseHeaders, _addServerHeader);
        await _connection.Transport.Output.FlushAsync().ConfigureAwait(false);
        // The response is over; what it held need not live as long as the connection.
        _responseHeaders = new HeaderDictionary();
        return new DuplexPipeStream(_connection.Transport);
    }

    /// <summary>
    /// Writes a response head through the core's renderer, with the headers Kestrel adds (Date, and
    /// Server unless turned off) when the application did not set them. A header value with a line break
    /// throws, as Kestrel does, rather than split the response (RFC 9110 §5.5).
    /// </summary>
    private static void WriteHead(PipeWriter output, int status, string? reasonPhrase, IHeaderDictionary headers, bool addServerHeader)
    {
        var lines = new List<Handshake.HttpHeader>(headers.Count + 2);
        if (!headers.ContainsKey("Date")) lines.Add(new Handshake.HttpHeader("Date", DateTimeOffset.UtcNow.ToString("r")));
        if (addServerHeader && !headers.ContainsKey("Server")) lines.Add(new Handshake.HttpHeader("Server", "Kestrel"));
        foreach (var (name, values) in headers)
        {
            foreach (var value in values) lines.Add(new Handshake.HttpHeader(name, value ?? ""));
        }
        switch (ResponseHead.render(status, reasonPhrase ?? "", lines.ToArray()))
        {
            case ResponseHead.Rendering.Rendered { head: var head }:
                output.Write(head);
                break;
            case ResponseHead.Rendering.SplitsResponse { name: ":status" }:
                throw new InvalidOperationException("the reason phrase of the response contains a line break");
            case ResponseHead.Rendering.SplitsResponse { name: var name }:
                throw new InvalidOperationException($"the value of response header {name} contains a line break");
        }
    }
}

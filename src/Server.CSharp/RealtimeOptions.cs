namespace Realtime;

/// <summary>
/// Settings of Realtime endpoints, bound with the options pattern through
/// <c>services.AddRealtime(options => ...)</c>. Every endpoint starts from these values and may
/// override them in <c>MapRealtime(..., configure)</c>.
/// </summary>
public sealed class RealtimeOptions
{
    /// <summary>
    /// The largest message accepted, in bytes, summed over its fragments (after inflating, for a
    /// compressed one). A larger message closes the connection with 1009 (message too big) as soon
    /// as its frame header arrives. 1 to <see cref="int.MaxValue"/>; a message is held in one array,
    /// so values above 2,147,483,590 (<see cref="Array.MaxLength"/> - 1) act as that. Default 16 MiB.
    /// </summary>
    public int MaxPayloadLength { get; set; } = 16 * 1024 * 1024;

    /// <summary>
    /// Silence after which the server pings the client; if the silence lasts as long again, the
    /// connection is closed with 1001. <see cref="TimeSpan.Zero"/> turns keep-alive off; otherwise
    /// 1 ms to <see cref="int.MaxValue"/> milliseconds (about 24.8 days). Default 120 s.
    /// </summary>
    public TimeSpan IdleTimeout { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>
    /// How long the server waits for the client's close frame after sending its own before it drops
    /// the TCP connection. 1 ms to <see cref="int.MaxValue"/> milliseconds. Default 5 s.
    /// </summary>
    public TimeSpan CloseTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Buffered outgoing bytes above which <c>Send</c> reports <see cref="SendStatus.Backpressure"/>
    /// (the message is still queued). <c>Drain</c> fires when the buffer falls back under it.
    /// 0 to <see cref="MaxBufferedAmount"/>. Default 64 KiB.
    /// </summary>
    public long BackpressureLimit { get; set; } = 64 * 1024;

    /// <summary>
    /// Buffered outgoing bytes a message may not push the buffer past: such a message is dropped
    /// (<see cref="SendStatus.Dropped"/>), or the connection is closed with 1008 when
    /// <see cref="CloseOnBackpressureLimit"/> is set. <see cref="BackpressureLimit"/> to 1 GiB (a
    /// connection's outgoing bytes are held in one array). Default 16 MiB.
    /// </summary>
    public long MaxBufferedAmount { get; set; } = 16 * 1024 * 1024;

    /// <summary>Close a connection with 1008 instead of dropping messages once <see cref="MaxBufferedAmount"/> (or the server's budget) is reached. Default false.</summary>
    public bool CloseOnBackpressureLimit { get; set; }

    /// <summary>
    /// Server-wide budget for the bytes all connections hold together: frames queued for sending
    /// (a frame that a publish or broadcast shares among its recipients counts once), fragmented
    /// and compressed messages being received, and compression state. A send that would pass it is
    /// <see cref="SendStatus.Dropped"/> (or closes that connection with 1008 under
    /// <see cref="CloseOnBackpressureLimit"/>); a connection already in backpressure gets that once
    /// three quarters of the budget are held, so connections that keep up still find room. A
    /// received message that would pass it closes its connection with 1009. Only the value given to
    /// <c>AddRealtime</c> counts (it is one budget for the server). Default 256 MiB.
    /// </summary>
    public long MaxServerBufferedBytes { get; set; } = DefaultMaxServerBufferedBytes;

    internal const long DefaultMaxServerBufferedBytes = 256L * 1024 * 1024;

    /// <summary>
    /// Subprotocols the endpoint speaks. The first protocol in the client's
    /// <c>Sec-WebSocket-Protocol</c> list that appears here is chosen. Empty by default.
    /// </summary>
    public IList<string> Subprotocols { get; set; } = new List<string>();

    /// <summary>
    /// Accept permessage-deflate offers (RFC 7692). When a client negotiated it, messages sent with
    /// <c>compress: true</c> (or at least <see cref="CompressionThreshold"/> bytes long) are compressed,
    /// and compressed messages from the client are inflated. Default false.
    /// </summary>
    public bool PerMessageDeflate { get; set; }

    /// <summary>With compression negotiated, compress every message of at least this many bytes, flag or not. Null (the default) compresses only when asked.</summary>
    public int? CompressionThreshold { get; set; }

    /// <summary>
    /// The server resets its compressor after every message (RFC 7692 <c>server_no_context_takeover</c>).
    /// True (the default) lets one shared compressor per thread serve every connection and lets a
    /// publish compress once for all subscribers; false keeps a compressor per connection (better
    /// ratio on similar messages, about 260 KiB of native memory per connection that sends compressed).
    /// </summary>
    public bool ServerNoContextTakeover { get; set; } = true;

    /// <summary>
    /// Ask clients to reset their compressor after every message (RFC 7692 <c>client_no_context_takeover</c>).
    /// True (the default) lets the server inflate with pooled inflaters; false keeps an inflater per
    /// connection that receives compressed messages (about 40 KiB of native memory each).
    /// </summary>
    public bool ClientNoContextTakeover { get; set; } = true;

    /// <summary>The largest window (9-15 bits) the server compresses with (RFC 7692 <c>server_max_window_bits</c>). Default 15.</summary>
    public int ServerMaxWindowBits { get; set; } = 15;

    /// <summary>The largest window (9-15 bits) the server asks clients to compress with, when they allow it (RFC 7692 <c>client_max_window_bits</c>). Default 15.</summary>
    public int ClientMaxWindowBits { get; set; } = 15;

    /// <summary>Size of the pooled buffer a connection reads into while data is arriving; an idle connection holds none. 256 bytes to 16 MiB. Default 16 KiB.</summary>
    public int ReceiveBufferSize { get; set; } = 16 * 1024;

    /// <summary>
    /// Origins allowed to open connections, compared case-insensitively with the request's
    /// <c>Origin</c> header (for example <c>https://example.com</c>). A browser always sends
    /// <c>Origin</c>, so this stops other sites' pages from connecting with the user's cookies
    /// (cross-site WebSocket hijacking); a disallowed origin gets 403 before the upgrade. Requests
    /// without <c>Origin</c> (non-browser clients) are allowed. Empty (the default) allows every origin.
    /// </summary>
    public IList<string> AllowedOrigins { get; set; } = new List<string>();

    /// <summary>Most Realtime connections open at once on the server, all endpoints together; more get 503 before the upgrade. Null (the default) is no limit.</summary>
    public int? MaxConnections { get; set; }

    /// <summary>Most Realtime connections open at once from one remote IP address; more get 503 before the upgrade. Null (the default) is no limit.</summary>
    public int? MaxConnectionsPerAddress { get; set; }

    /// <summary>Largest total size of the upgrade request's header lines (names and values); larger gets 431. Default 16 KiB.</summary>
    public int MaxHandshakeHeaderBytes { get; set; } = 16 * 1024;

    /// <summary>
    /// When set, the longest time a client may take to send its request headers, applied to
    /// Kestrel's <c>RequestHeadersTimeout</c> (so it covers every HTTP request of the server, since
    /// the headers are read before any endpoint runs). 1 ms to <see cref="int.MaxValue"/> milliseconds;
    /// server-wide: set it in <c>AddRealtime</c>, not per endpoint. Null (the default) keeps Kestrel's 30 s.
    /// </summary>
    public TimeSpan? HandshakeTimeout { get; set; }

    /// <summary>
    /// Whether upgrade requests whose path fits this endpoint's route template are read directly by a
    /// listener with <c>UseRealtimeDirectConnections</c> and, once upgraded, run on the connection's
    /// pipes. Either way the application's whole request pipeline runs for them. Default true; false
    /// leaves them to Kestrel's HTTP/1.1 upgrade. Ignored on listeners without direct connections.
    /// </summary>
    public bool DirectConnections { get; set; } = true;

    /// <summary>
    /// How long host shutdown waits for connections to finish their closing handshake after sending
    /// them 1001; those left are then dropped, and shutdown waits for the Close handlers still running
    /// (at most this long again). Zero to <see cref="int.MaxValue"/> milliseconds. Server-wide: set it
    /// in <c>AddRealtime</c>, not per endpoint. Default 5 s.
    /// </summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// The longest topic name, in UTF-8 bytes, that <c>Subscribe</c> and <c>Publish</c> accept; a
    /// longer one throws <see cref="ArgumentException"/> (an application that takes topic names
    /// from clients checks them first). Server-wide, since topics are shared by every endpoint: set
    /// it in <c>AddRealtime</c>, not per endpoint. 1 to <see cref="int.MaxValue"/>. Default 256.
    /// </summary>
    public int MaxTopicLength { get; set; } = 256;

    /// <summary>
    /// The most topics one connection may be subscribed to at once; past it <c>Subscribe</c>
    /// returns false and subscribes nothing (a runtime limit, like a full buffer, not an error).
    /// 0 to <see cref="int.MaxValue"/>. Default 1,000.
    /// </summary>
    public int MaxTopicsPerConnection { get; set; } = 1000;

    /// <summary>A copy, so that an endpoint's overrides do not change the defaults.</summary>
    internal RealtimeOptions Clone()
    {
        var copy = (RealtimeOptions)MemberwiseClone();
        copy.Subprotocols = new List<string>(Subprotocols);
        copy.AllowedOrigins = new List<string>(AllowedOrigins);
        return copy;
    }

    /// <summary>
    /// The message limit the host applies: <see cref="MaxPayloadLength"/>, but at most one byte under
    /// <see cref="Array.MaxLength"/>, since a message is held in one array (and the inflater needs
    /// room for one byte past the limit to see it crossed).
    /// </summary>
    internal int EffectiveMaxPayloadLength => Math.Min(MaxPayloadLength, Array.MaxLength - 1);
}

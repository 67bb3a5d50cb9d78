using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Realtime;

/// <summary>
/// The host's <c>System.Diagnostics.Metrics</c> instruments, all under the meter
/// <see cref="MeterName"/> (documented in docs/metrics.md). The meter comes from the application's
/// <see cref="IMeterFactory"/> when there is one, so <c>dotnet-counters monitor -n app --counters Realtime</c>
/// and OpenTelemetry's <c>AddMeter("Realtime")</c> see it without extra code, and each host has its own.
/// Per-message instruments carry no tags: recording them allocates nothing. Connection-level
/// instruments carry the endpoint pattern (tag lists are cached per endpoint).
/// </summary>
internal sealed class RealtimeMetrics : IDisposable
{
    /// <summary>The name of the meter every instrument belongs to.</summary>
    public const string MeterName = "Realtime";

    private readonly bool _ownsMeter;
    private readonly UpDownCounter<long> _active;
    private readonly Counter<long> _opened;
    private readonly Counter<long> _closed;
    private readonly Counter<long> _messagesReceived;
    private readonly Counter<long> _messagesSent;
    private readonly Counter<long> _bytesReceived;
    private readonly Counter<long> _bytesSent;
    private readonly Counter<long> _publishes;
    private readonly Counter<long> _deliveries;
    private readonly Counter<long> _backpressure;
    private readonly Counter<long> _drains;
    private readonly Counter<long> _drops;
    private readonly Counter<long> _rejections;
    private readonly ConcurrentDictionary<string, KeyValuePair<string, object?>> _endpointTags = new(StringComparer.Ordinal);

    public RealtimeMetrics(IMeterFactory? factory)
    {
        Meter = factory?.Create(MeterName) ?? new Meter(MeterName);
        _ownsMeter = factory is null;
        _active = Meter.CreateUpDownCounter<long>("realtime.connections.active", "{connection}", "Connections open now.");
        _opened = Meter.CreateCounter<long>("realtime.connections.opened", "{connection}", "Connections opened (upgrades completed).");
        _closed = Meter.CreateCounter<long>("realtime.connections.closed", "{connection}", "Connections ended, by the close code given to the Close handler.");
        _messagesReceived = Meter.CreateCounter<long>("realtime.messages.received", "{message}", "Messages from clients delivered to Message handlers.");
        _messagesSent = Meter.CreateCounter<long>("realtime.messages.sent", "{message}", "Messages queued to clients (sends, publish deliveries, broadcasts).");
        _bytesReceived = Meter.CreateCounter<long>("realtime.bytes.received", "By", "Bytes read from clients' connections (frames as on the wire).");
        _bytesSent = Meter.CreateCounter<long>("realtime.bytes.sent", "By", "Bytes written to clients' connections (frames as on the wire, control frames included).");
        _publishes = Meter.CreateCounter<long>("realtime.publishes", "{publish}", "Publish calls (from a socket or from IRealtimeServer).");
        _deliveries = Meter.CreateCounter<long>("realtime.publish.deliveries", "{message}", "Messages queued to subscribers by publishes.");
        _backpressure = Meter.CreateCounter<long>("realtime.backpressure", "{send}", "Sends that reported Backpressure (queued over BackpressureLimit).");
        _drains = Meter.CreateCounter<long>("realtime.drains", "{event}", "Drain events: a connection's buffer fell back to BackpressureLimit.");
        _drops = Meter.CreateCounter<long>("realtime.drops", "{message}", "Messages not queued: connection closing, or MaxBufferedAmount reached.");
        _rejections = Meter.CreateCounter<long>("realtime.handshake.rejections", "{request}", "Upgrade requests answered with an HTTP error instead of a connection, by reason.");
    }

    /// <summary>Reports the server's budget count (<see cref="IRealtimeServer.BufferedBytes"/>) as the gauge <c>realtime.buffered.bytes</c>.</summary>
    public void ObserveBufferedBytes(Func<long> read) =>
        Meter.CreateObservableGauge("realtime.buffered.bytes", read, "By", "Bytes the connections hold now, counted against MaxServerBufferedBytes (a shared frame once).");

    /// <summary>The meter of this server's instruments.</summary>
    public Meter Meter { get; }

    private KeyValuePair<string, object?> EndpointTag(string pattern) =>
        _endpointTags.GetOrAdd(pattern, static p => new KeyValuePair<string, object?>("realtime.endpoint", p));

    public void ConnectionOpened(string endpoint)
    {
        var tag = EndpointTag(endpoint);
        _active.Add(1, tag);
        _opened.Add(1, tag);
    }

    public void ConnectionClosed(string endpoint, int closeCode)
    {
        var tag = EndpointTag(endpoint);
        _active.Add(-1, tag);
        if (_closed.Enabled) _closed.Add(1, tag, new KeyValuePair<string, object?>("realtime.close_code", closeCode));
    }

    public void HandshakeRejected(string endpoint, int status, string reason)
    {
        if (!_rejections.Enabled) return;
        var tags = new TagList
        {
            EndpointTag(endpoint),
            { "realtime.rejection", reason },
            { "http.response.status_code", status },
        };
        _rejections.Add(1, tags);
    }

    public void MessageReceived() => _messagesReceived.Add(1);

    public void BytesReceived(long count) => _bytesReceived.Add(count);

    public void BytesSent(int count) => _bytesSent.Add(count);

    /// <summary>Records the outcome of queueing one data message to one connection.</summary>
    public void Queued(SendStatus status)
    {
        if (status == SendStatus.Dropped)
        {
            _drops.Add(1);
            return;
        }
        _messagesSent.Add(1);
        if (status == SendStatus.Backpressure) _backpressure.Add(1);
    }

    public void Drain() => _drains.Add(1);

    public void Published(int deliveries)
    {
        _publishes.Add(1);
        if (deliveries > 0) _deliveries.Add(deliveries);
    }

    public void Dispose()
    {
        if (_ownsMeter) Meter.Dispose();
    }
}

using System.Collections.Concurrent;
using System.Text;
using Microsoft.Extensions.Logging;
using Realtime.Memory;
using Realtime.Protocol;

namespace Realtime;

/// <summary>
/// The server-wide state: connections by id and by endpoint, the topics, the keep-alive timer and
/// graceful shutdown. Topics live in a <see cref="TopicRegistry{T}"/>: a lock per topic and per
/// connection, none server-wide; a publish reads a topic's subscribers without locking or allocating.
/// </summary>
internal sealed class RealtimeServer : IRealtimeServer, IRealtimeBackplaneReceiver, IDisposable
{
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<string, RealtimeEndpoint> _endpoints = new(StringComparer.Ordinal);
    private readonly TopicRegistry<RealtimeSocket> _topics;
    private long _lastId;
    private ITimer? _timer;
    private TimeSpan _timerPeriod = TimeSpan.MaxValue;
    // 1 while TickAll runs.
    private int _ticking;
    private readonly object _timerLock = new();
    private volatile bool _shuttingDown;
    // Connections registered whose run has not finished yet (their Close handler included): a
    // connection leaves the registry just before its Close handler runs.
    private int _unfinishedRuns;
    private int _admitted;
    private readonly ConcurrentDictionary<System.Net.IPAddress, int> _admittedPerAddress = new();
    private long _sharedPublishCompressions;

    private readonly IRealtimeBackplane? _backplane;

    public RealtimeServer(ILogger<RealtimeServer> logger, RealtimeOptions defaults, TimeProvider? time = null, IRealtimeBackplane? backplane = null, RealtimeMetrics? metrics = null)
    {
        RealtimeOptionsValidation.ThrowIfInvalid(defaults);
        Log = logger;
        Defaults = defaults;
        Budget = new MemoryBudget(defaults.MaxServerBufferedBytes);
        _time = time ?? TimeProvider.System;
        _backplane = backplane;
        _topics = backplane is null
            ? new TopicRegistry<RealtimeSocket>()
            : new TopicRegistry<RealtimeSocket>(backplane.TopicActivated, backplane.TopicDeactivated);
        Metrics = metrics ?? new RealtimeMetrics(null);
        Metrics.ObserveBufferedBytes(() => Budget.Held);
    }

    /// <summary>Connects the backplane, if any, once the host starts.</summary>
    internal void StartBackplane() => _backplane?.Start(this);

    public ILogger Log { get; }

    /// <summary>The options set in AddRealtime: every endpoint starts from them; the server-wide ones hold for all.</summary>
    public RealtimeOptions Defaults { get; }

    public RealtimeMetrics Metrics { get; }

    /// <summary>The server-wide count of the bytes connections hold, under <see cref="RealtimeOptions.MaxServerBufferedBytes"/>.</summary>
    internal MemoryBudget Budget { get; }

    public long BufferedBytes => Budget.Held;

    /// <summary>Milliseconds on a monotonic clock: the core's notion of now.</summary>
    public long Now() => _time.GetTimestamp() * 1000 / _time.TimestampFrequency;

    public long NextConnectionId() => Interlocked.Increment(ref _lastId);

    public bool IsShuttingDown => _shuttingDown;

    internal void AddEndpoint(RealtimeEndpoint endpoint)
    {
        if (!_endpoints.TryAdd(endpoint.Pattern, endpoint))
            throw new InvalidOperationException($"A Realtime endpoint is already mapped at '{endpoint.Pattern}'.");
        EnsureTimer(endpoint.Options);
    }

    /// <summary>One timer for all connections, ticking often enough for the shortest timeout.</summary>
    private void EnsureTimer(RealtimeOptions options)
    {
        var shortest = options.CloseTimeout;
        if (options.IdleTimeout > TimeSpan.Zero && options.IdleTimeout < shortest) shortest = options.IdleTimeout;
        var period = TimeSpan.FromMilliseconds(Math.Clamp(shortest.TotalMilliseconds / 4, 10, 1000));
        lock (_timerLock)
        {
            if (period >= _timerPeriod) return;
            _timerPeriod = period;
            _timer?.Dispose();
            _timer = _time.CreateTimer(static state => ((RealtimeServer)state!).TickAll(), this, period, period);
        }
    }

    private void TickAll()
    {
        // Timer callbacks overlap when one runs late (a busy machine): two ticks of one connection
        // could then decide "ping" and "idle close" in order yet queue them the other way round.
        // A tick that finds the previous one still running is skipped; the next catches up, as the
        // core acts on deadlines, not on tick counts.
        if (Interlocked.CompareExchange(ref _ticking, 1, 0) != 0) return;
        try
        {
            long now = Now();
            foreach (var endpoint in _endpoints.Values)
                foreach (var pair in endpoint.Connections) pair.Value.Tick(now);
        }
        finally
        {
            Volatile.Write(ref _ticking, 0);
        }
    }

    /// <summary>
    /// Reserves a connection slot before the upgrade, under the endpoint's limits; false when a
    /// limit is reached. Every successful call is paired with one <see cref="ReleaseSlot"/>.
    /// </summary>
    internal bool TryReserveSlot(System.Net.IPAddress? address, RealtimeOptions options)
    {
        int total = Interlocked.Increment(ref _admitted);
        if (options.MaxConnections is { } max && total > max)
        {
            Interlocked.Decrement(ref _admitted);
            return false;
        }
        if (address is null) return true;
        int fromAddress = _admittedPerAddress.AddOrUpdate(address, 1, static (_, count) => count + 1);
        if (options.MaxConnectionsPerAddress is { } perAddress && fromAddress > perAddress)
        {
            ReleaseSlot(address);
            return false;
        }
        return true;
    }

    /// <summary>Frees a slot taken by <see cref="TryReserveSlot"/>.</summary>
    internal void ReleaseSlot(System.Net.IPAddress? address)
    {
        Interlocked.Decrement(ref _admitted);
        if (address is null) return;
        while (true)
        {
            if (!_admittedPerAddress.TryGetValue(address, out int count)) return;
            if (count <= 1)
            {
                if (_admittedPerAddress.TryRemove(new KeyValuePair<System.Net.IPAddress, int>(address, count))) return;
            }
            else if (_admittedPerAddress.TryUpdate(address, count - 1, count)) return;
        }
    }

    // One registry per endpoint and none for the server: the server's view (by id, all of them) is
    // derived from its few endpoints', so a connection costs one dictionary node, not two.
    internal void Register(RealtimeSocket connection)
    {
        Interlocked.Increment(ref _unfinishedRuns);
        connection.Registry[connection.Id] = connection;
    }

    /// <summary>A registered connection's run is over: its Close handler has returned.</summary>
    internal void RunFinished() => Interlocked.Decrement(ref _unfinishedRuns);

    internal void Unregister(RealtimeSocket connection)
    {
        // Leave the topics first, refusing a late Subscribe from then on.
        _topics.RemoveAll(connection.TopicSubscriptions);
        connection.Registry.TryRemove(connection.Id, out _);
    }

    /// <summary>
    /// Subscribes within the limits: an over-long name is the caller's mistake (ArgumentException),
    /// a connection at its MaxTopicsPerConnection is a runtime limit (false, logged at Debug).
    /// </summary>
    internal bool Subscribe(RealtimeSocket connection, string topic, int maxTopics)
    {
        ThrowIfInvalidTopic(topic);
        // A connection that has left must not come back into the table through a late call.
        if (!connection.Registry.ContainsKey(connection.Id)) return false;
        var outcome = _topics.Subscribe(connection.TopicSubscriptions, topic, new Topics.TopicLimits(Defaults.MaxTopicLength, maxTopics));
        if (outcome == SubscribeOutcome.TopicLimitReached) Log.TopicLimitReached(connection.Id, connection.Endpoint, maxTopics);
        return outcome == SubscribeOutcome.Subscribed;
    }

    /// <summary>
    /// Throws for a topic no subscriber can have: null, or longer than MaxTopicLength UTF-8 bytes.
    /// Subscribe and Publish share it, so a publish to such a topic fails as loudly as the subscribe.
    /// </summary>
    private void ThrowIfInvalidTopic(string topic)
    {
        ArgumentNullException.ThrowIfNull(topic);
        if (!Topics.nameFits(Defaults.MaxTopicLength, topic))
            throw new ArgumentException(
                $"The topic is {System.Text.Encoding.UTF8.GetByteCount(topic)} UTF-8 bytes long; RealtimeOptions.MaxTopicLength allows at most {Defaults.MaxTopicLength}.",
                nameof(topic));
    }

    internal bool Unsubscribe(RealtimeSocket connection, string topic)
    {
        ArgumentNullException.ThrowIfNull(topic);
        return _topics.Unsubscribe(connection.TopicSubscriptions, topic);
    }

    internal bool IsSubscribed(RealtimeSocket connection, string topic) =>
        TopicRegistry<RealtimeSocket>.IsSubscribed(connection.TopicSubscriptions, topic);

    internal IReadOnlyList<string> SubscriptionsOf(RealtimeSocket connection) =>
        TopicRegistry<RealtimeSocket>.TopicsOf(connection.TopicSubscriptions);

    public int SubscriberCount(string topic) => _topics.SubscriberCount(topic);

    IReadOnlyList<string> IRealtimeServer.Topics => _topics.Names();

    internal int PublishText(string topic, string text, RealtimeSocket? sender, bool compress) =>
        Utf8Text.With(text, (topic, sender, compress, server: this),
            static (utf8, state) => state.server.PublishFrame(state.topic, MessageKind.Text, utf8, state.sender, state.compress));

    /// <summary>
    /// How many times a fan-out (publish, broadcast) compressed a message for the recipients that take a
    /// shared compressed frame with the full window (no context takeover): at most once per message,
    /// however many such recipients there are. Kept for tests and diagnostics.
    /// </summary>
    internal long SharedPublishCompressions => Interlocked.Read(ref _sharedPublishCompressions);

    /// <summary>Delivers to this server's subscribers, then hands the publish to the backplane, if any.</summary>
    internal int PublishFrame(string topic, MessageKind kind, ReadOnlySpan<byte> payload, RealtimeSocket? sender, bool compress)
    {
        ThrowIfInvalidTopic(topic);
        int queued = DeliverToSubscribers(topic, kind, payload, sender, compress);
        _backplane?.Publish(topic, kind, payload, compress, sender?.Id ?? 0);
        return queued;
    }

    int IRealtimeBackplaneReceiver.DeliverLocally(string topic, MessageKind kind, ReadOnlySpan<byte> payload, bool compress)
    {
        ArgumentNullException.ThrowIfNull(topic);
        return DeliverToSubscribers(topic, kind, payload, null, compress);
    }

    /// <summary>
    /// Delivers one prepared message to this server's subscribers of the topic, the sender excepted;
    /// never waits for one.
    /// </summary>
    private int DeliverToSubscribers(string topic, MessageKind kind, ReadOnlySpan<byte> payload, RealtimeSocket? sender, bool compress)
    {
        var subscribers = _topics.Find(topic);
        if (subscribers is null)
        {
            Metrics.Published(0);
            return 0;
        }
        int queued = 0;
        var message = new PreparedMessage(Budget, kind, payload, compress);
        try
        {
            // Each recipient checks its subscription under its own lock as it queues: nothing is
            // queued after Unsubscribe returned.
            foreach (var subscription in subscribers.Recipients(sender))
                if (message.SendTo(subscription.Subscriber, subscription).IsQueued) queued++;
        }
        finally
        {
            Finish(ref message);
        }
        Metrics.Published(queued);
        return queued;
    }

    /// <summary>
    /// Ends a fan-out (publish, backplane delivery, broadcast): one <see cref="PreparedMessage"/>,
    /// framed once and compressed once per parameter set, whose frames every recipient's queue
    /// references; the publisher's own references go here.
    /// </summary>
    private void Finish(ref PreparedMessage message)
    {
        if (message.FullWindowCompressions > 0) Interlocked.Add(ref _sharedPublishCompressions, message.FullWindowCompressions);
        message.Dispose();
    }

    public int Publish(string topic, string text, bool compress = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        return PublishText(topic, text, null, compress);
    }

    public int Publish(string topic, ReadOnlySpan<byte> data, bool compress = false) =>
        PublishFrame(topic, MessageKind.Binary, data, null, compress);

    public int Publish(string topic, ReadOnlySpan<byte> data, MessageKind kind, bool compress = false)
    {
        if (kind == MessageKind.Text && !Utf8Validator.isValid(data))
            throw new ArgumentException("a text message must be valid UTF-8", nameof(data));
        return PublishFrame(topic, kind, data, null, compress);
    }

    public int ConnectionCount
    {
        get
        {
            int count = 0;
            foreach (var endpoint in _endpoints.Values) count += endpoint.Connections.Count;
            return count;
        }
    }

    public IReadOnlyList<RealtimeSocket> Connections => _endpoints.Values.SelectMany(endpoint => endpoint.Connections.Values).ToArray();

    private bool NoConnections => _endpoints.Values.All(endpoint => endpoint.Connections.IsEmpty);

    public IReadOnlyList<RealtimeSocket> ConnectionsOf(string pattern) =>
        _endpoints.TryGetValue(pattern, out var endpoint) ? endpoint.Connections.Values.ToArray() : [];

    public bool TryGetConnection(long id, out RealtimeSocket connection)
    {
        foreach (var endpoint in _endpoints.Values)
            if (endpoint.Connections.TryGetValue(id, out connection!)) return true;
        connection = null!;
        return false;
    }

    public int Broadcast(string pattern, string text, RealtimeSocket? except = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        return Utf8Text.With(text, (pattern, except, server: this),
            static (utf8, state) => state.server.BroadcastFrame(state.pattern, MessageKind.Text, utf8, state.except));
    }

    public int Broadcast(string pattern, ReadOnlySpan<byte> data, RealtimeSocket? except = null) =>
        BroadcastFrame(pattern, MessageKind.Binary, data, except);

    /// <summary>
    /// Delivers to every connection of the endpoint but <paramref name="except"/> through the same
    /// fan-out as a publish: compressed for the clients whose CompressionThreshold it reaches, each
    /// delivery counted in <c>realtime.messages.sent</c> (or backpressure, drops) like a publish
    /// delivery; <c>realtime.publishes</c> counts topic publishes only.
    /// </summary>
    private int BroadcastFrame(string pattern, MessageKind kind, ReadOnlySpan<byte> payload, RealtimeSocket? except)
    {
        if (!_endpoints.TryGetValue(pattern, out var endpoint)) return 0;
        var message = new PreparedMessage(Budget, kind, payload, compress: false);
        int queued = 0;
        try
        {
            foreach (var pair in endpoint.Connections)
                if (!ReferenceEquals(pair.Value, except) && message.SendTo(pair.Value).IsQueued) queued++;
        }
        finally
        {
            Finish(ref message);
        }
        return queued;
    }

    /// <summary>
    /// Graceful shutdown: every connection gets 1001, then the server waits (bounded by the timeout) for
    /// them to finish, drops those left, and waits (bounded by the timeout again) for every Close handler.
    /// </summary>
    internal async Task ShutdownAsync(TimeSpan timeout)
    {
        _shuttingDown = true;
        var open = Connections;
        if (open.Count == 0) return;
        Log.ShutdownStarted(open.Count);
        foreach (var connection in open) connection.CloseLocally(CloseCode.GoingAway, "server shutdown");
        await WaitUntilAsync(() => NoConnections, timeout).ConfigureAwait(false);
        if (!NoConnections)
        {
            var left = Connections;
            Log.ShutdownTimedOut(left.Count);
            foreach (var connection in left) connection.Terminate();
        }
        // A connection leaves the registry before its Close handler runs, and one dropped above still
        // has to notice it: the host goes on stopping (and may end the native transport's loops) only
        // once every Close handler has returned, or after the timeout once more.
        await WaitUntilAsync(() => Volatile.Read(ref _unfinishedRuns) == 0, timeout).ConfigureAwait(false);
    }

    /// <summary>Polls <paramref name="done"/> every 10 ms until it holds or <paramref name="timeout"/> has passed.</summary>
    private async Task WaitUntilAsync(Func<bool> done, TimeSpan timeout)
    {
        long started = _time.GetTimestamp();
        while (!done() && _time.GetElapsedTime(started) < timeout)
            await Task.Delay(10).ConfigureAwait(false);
    }

    public void Dispose()
    {
        lock (_timerLock) _timer?.Dispose();
        Metrics.Dispose();
    }
}

using System.Security.Cryptography;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Realtime.Protocol;
using StackExchange.Redis;

namespace Realtime.Redis;

/// <summary>
/// Scale-out through Redis pub/sub: every server of a cluster publishes its topic publishes to Redis,
/// and subscribes in Redis to the topics it has local subscribers for (one channel per topic,
/// <c>realtime:{prefix}:{topic}</c>), so traffic follows interest. Register it with
/// <c>AddRealtime().AddRedisBackplane(...)</c>.
/// </summary>
/// <remarks>
/// <para>Publishes leave through one ordered queue drained by one writer, so the other servers see a
/// server's publishes to a topic in the order they were made; each topic's incoming messages are
/// handled in order, one at a time. A server ignores the envelopes it sent itself (it has already
/// delivered them to its own subscribers, skipping the sender).</para>
/// <para>What this server holds of its publishes until Redis answers them (queued, or handed to
/// Redis and not yet acknowledged) is bounded in count and bytes
/// (<see cref="RedisBackplaneOptions.MaxPublishesInFlight"/>,
/// <see cref="RedisBackplaneOptions.MaxPublishBytesInFlight"/>), so a slow but connected Redis cannot
/// make it grow: past a bound, publishes meant for the other servers are dropped like while Redis is
/// away. <see cref="Publish"/> never waits; they are handed to Redis pipelined, never one round trip
/// each. A publish the client timed out on stays counted until Redis answers it or a later command
/// (a PING is sent for this), or the connection is replaced: the client keeps it until then.</para>
/// <para>While Redis is away, local delivery goes on; publishes meant for the other servers are
/// dropped, counted in <see cref="PublishFailureCount"/> and reported by a rate-limited warning.
/// When Redis returns, StackExchange.Redis reconnects and the channel subscriptions are restored
/// (a topic whose subscribe failed meanwhile is retried until it succeeds or loses interest).</para>
/// </remarks>
public sealed class RedisBackplane : IRealtimeBackplane, IAsyncDisposable, IDisposable
{
    private static readonly TimeSpan RetryDelay = TimeSpan.FromMilliseconds(500);
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(5);

    private readonly ILogger _log;
    private readonly ConfigurationOptions _configuration;
    private readonly string _channelStart;
    private readonly Channel<Outgoing> _outgoing;
    private readonly InFlightBudget _inFlight;
    private readonly TimedOutPublishes _timedOut;
    private long _sequence;
    private long _handed;
    private int _probing;
    private readonly Channel<TopicChange> _control;
    private readonly CancellationTokenSource _stopping = new();
    private IRealtimeBackplaneReceiver? _receiver;
    private Task<ConnectionMultiplexer>? _connecting;
    private Task? _writer;
    private Task? _controller;
    private ConnectionMultiplexer? _redis;
    private int _started;
    private int _disposed;

    private long _published;
    private long _publishFailures;
    private long _received;
    private long _unreadable;
    private readonly RateLimit _lostWarnings;
    private readonly RateLimit _unreadableWarnings;

    /// <summary>Creates the backplane; nothing connects until the host starts it.</summary>
    /// <param name="options">Where Redis is and how to name channels.</param>
    /// <param name="logger">Where connection changes, lost publishes and unreadable envelopes are reported.</param>
    public RedisBackplane(IOptions<RedisBackplaneOptions> options, ILogger<RedisBackplane> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        var settings = options.Value;
        _log = logger;
        _configuration = settings.ConfigurationOptions?.Clone()
            ?? (string.IsNullOrWhiteSpace(settings.Configuration)
                ? throw new InvalidOperationException("The Redis backplane needs a configuration string (for example 127.0.0.1:6379) or ConfigurationOptions.")
                : ConfigurationOptions.Parse(settings.Configuration));
        _configuration.AbortOnConnectFail = false;
        _configuration.BacklogPolicy = BacklogPolicy.FailFast;
        ArgumentNullException.ThrowIfNull(settings.ChannelPrefix, "options.ChannelPrefix");
        if (settings.MaxPublishesInFlight < 1)
            throw new ArgumentOutOfRangeException(nameof(options), settings.MaxPublishesInFlight, "RedisBackplaneOptions.MaxPublishesInFlight must be at least 1.");
        if (settings.MaxPublishBytesInFlight < 1)
            throw new ArgumentOutOfRangeException(nameof(options), settings.MaxPublishBytesInFlight, "RedisBackplaneOptions.MaxPublishBytesInFlight must be at least 1.");
        ChannelPrefix = settings.ChannelPrefix;
        _channelStart = $"realtime:{settings.ChannelPrefix}:";
        NodeId = string.IsNullOrEmpty(settings.NodeId) ? Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8)) : settings.NodeId;
        long warningIntervalMs = (long)Math.Max(0, settings.WarningInterval.TotalMilliseconds);
        _lostWarnings = new RateLimit(warningIntervalMs);
        _unreadableWarnings = new RateLimit(warningIntervalMs);
        _inFlight = new InFlightBudget(settings.MaxPublishesInFlight, settings.MaxPublishBytesInFlight);
        _timedOut = new TimedOutPublishes(_inFlight);
        // Unbounded in itself: what enters is reserved in _inFlight first, which bounds it.
        _outgoing = Channel.CreateUnbounded<Outgoing>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = false });
        _control = Channel.CreateUnbounded<TopicChange>(new UnboundedChannelOptions { SingleReader = true });
    }

    /// <summary>This server's id in the cluster (carried in every envelope it sends).</summary>
    public string NodeId { get; }

    /// <summary>The prefix that separates clusters sharing one Redis.</summary>
    public string ChannelPrefix { get; }

    /// <summary>The Redis channel a topic's messages travel on: <c>realtime:{prefix}:{topic}</c>.</summary>
    /// <param name="topic">The topic.</param>
    public string ChannelOf(string topic) => _channelStart + topic;

    /// <summary>True while the connection to Redis is up.</summary>
    public bool IsConnected => Volatile.Read(ref _redis)?.IsConnected == true;

    /// <summary>The StackExchange.Redis connection, once the host has started the backplane.</summary>
    public IConnectionMultiplexer? Connection => Volatile.Read(ref _redis);

    /// <summary>
    /// Publishes to the other servers that this server holds now until Redis answers them (queued, or
    /// handed to Redis and not yet acknowledged); never more than
    /// <see cref="RedisBackplaneOptions.MaxPublishesInFlight"/>.
    /// </summary>
    public int InFlightCount => _inFlight.Count;

    /// <summary>
    /// The envelope bytes of <see cref="InFlightCount"/>'s publishes; never more than
    /// <see cref="RedisBackplaneOptions.MaxPublishBytesInFlight"/>.
    /// </summary>
    public long InFlightBytes => _inFlight.Bytes;

    /// <summary>Publishes Redis accepted from this server (envelopes sent to the other servers).</summary>
    public long PublishedCount => Interlocked.Read(ref _published);

    /// <summary>
    /// Publishes that reached this server's subscribers but could not be carried to the other servers
    /// (Redis away or failing, or the bound of publishes in flight reached).
    /// </summary>
    public long PublishFailureCount => Interlocked.Read(ref _publishFailures);

    /// <summary>Envelopes from other servers handed to this server's subscribers.</summary>
    public long ReceivedCount => Interlocked.Read(ref _received);

    /// <summary>Messages on this cluster's channels that were not readable envelopes, and were ignored.</summary>
    public long UnreadableCount => Interlocked.Read(ref _unreadable);

    /// <inheritdoc/>
    public void Start(IRealtimeBackplaneReceiver receiver)
    {
        ArgumentNullException.ThrowIfNull(receiver);
        if (Interlocked.Exchange(ref _started, 1) != 0) throw new InvalidOperationException("The Redis backplane was already started.");
        _receiver = receiver;
        _log.Connecting(NodeId, string.Join(",", _configuration.EndPoints.Select(e => e.ToString())), ChannelPrefix);
        _connecting = ConnectAsync();
        _writer = Task.Run(WriteLoop);
        _controller = Task.Run(ControlLoop);
    }

    /// <inheritdoc/>
    public void Publish(string topic, MessageKind kind, ReadOnlySpan<byte> payload, bool compress, long senderConnectionId)
    {
        if (Volatile.Read(ref _disposed) != 0) return;
        // An envelope is never smaller than its payload: what cannot fit is refused before one is made.
        if (!_inFlight.MightFit(payload.Length, out string refusal))
        {
            ReportLost(refusal);
            return;
        }
        byte[] envelope = BackplaneEnvelope.encodeParts(topic, kind, payload, compress, NodeId, senderConnectionId);
        if (!_inFlight.TryReserve(envelope.Length, out refusal))
        {
            ReportLost(refusal);
            return;
        }
        if (!_outgoing.Writer.TryWrite(new Outgoing(topic, envelope))) Dropped(envelope, "the backplane is stopping");
    }

    /// <inheritdoc/>
    public void TopicActivated(string topic) => _control.Writer.TryWrite(new TopicChange(topic, Active: true));

    /// <inheritdoc/>
    public void TopicDeactivated(string topic) => _control.Writer.TryWrite(new TopicChange(topic, Active: false));

    private async Task<ConnectionMultiplexer> ConnectAsync()
    {
        var redis = await ConnectionMultiplexer.ConnectAsync(_configuration).ConfigureAwait(false);
        redis.ConnectionFailed += (_, args) =>
        {
            if (args.ConnectionType != ConnectionType.Interactive) return;
            _timedOut.ConnectionLost();
            _log.ConnectionLost(args.EndPoint?.ToString() ?? "?", args.FailureType.ToString());
        };
        redis.ConnectionRestored += (_, args) =>
        {
            if (args.ConnectionType != ConnectionType.Interactive) return;
            // A new connection: the old one, and what the client kept of it, is gone. Needed here too:
            // when StackExchange.Redis replaced a connection that had stopped answering (a paused Redis),
            // it raised no ConnectionFailed for it.
            _timedOut.ConnectionLost();
            _log.ConnectionRestored(args.EndPoint?.ToString() ?? "?");
            // What the rate limit held back during the outage is reported now, not at the next failure.
            _lostWarnings.Flush(Interlocked.Read(ref _publishFailures), (count, total) => _log.PublishesLost(count, "Redis was away", total));
        };
        Volatile.Write(ref _redis, redis);
        if (!redis.IsConnected) _log.ConnectionLost(string.Join(",", _configuration.EndPoints.Select(e => e.ToString())), "not reachable at start; retrying");
        return redis;
    }

    /// <summary>
    /// The one writer: hands queued envelopes to Redis in order, pipelined (without waiting for each);
    /// each stays counted in flight until Redis answers it.
    /// </summary>
    private async Task WriteLoop()
    {
        try
        {
            var reader = _outgoing.Reader;
            var redis = await _connecting!.ConfigureAwait(false);
            var subscriber = redis.GetSubscriber();
            while (await reader.WaitToReadAsync().ConfigureAwait(false))
            {
                while (reader.TryRead(out var item))
                {
                    if (!redis.IsConnected)
                    {
                        Dropped(item.Envelope, "Redis is not connected");
                        continue;
                    }
                    Task<long> sent;
                    long sequence = ++_sequence;
                    try
                    {
                        sent = subscriber.PublishAsync(RedisChannel.Literal(ChannelOf(item.Topic)), item.Envelope);
                    }
                    catch (Exception e)
                    {
                        Dropped(item.Envelope, e.GetType().Name);
                        continue;
                    }
                    Volatile.Write(ref _handed, sequence);
                    if (sent.IsCompleted) PublishCompleted(sent, item.Envelope.Length, sequence);
                    else _ = sent.ContinueWith(static (task, state) =>
                        {
                            var (backplane, bytes, sequence) = ((RedisBackplane, int, long))state!;
                            backplane.PublishCompleted(task, bytes, sequence);
                        }, (this, item.Envelope.Length, sequence), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                }
            }
        }
        catch (Exception e)
        {
            _log.LoopFailed(e, "the publish writer");
            // Nothing more leaves: whatever is still queued is reported, not silently dropped.
            while (_outgoing.Reader.TryRead(out var item)) Dropped(item.Envelope, "the publish writer stopped");
        }
    }

    /// <summary>
    /// Redis answered the <paramref name="sequence"/>-th publish (or it failed): it no longer counts in
    /// flight, unless it only timed out: the client still holds it until Redis answers.
    /// </summary>
    private void PublishCompleted(Task<long> sent, int bytes, long sequence)
    {
        if (sent.IsCompletedSuccessfully)
        {
            _inFlight.Release(bytes);
            Interlocked.Increment(ref _published);
            _timedOut.AnsweredThrough(sequence);
            return;
        }
        var error = sent.Exception?.InnerException;
        if (error is TimeoutException)
        {
            _timedOut.Add(sequence, bytes);
            ReportLost("Redis did not answer within StackExchange.Redis's AsyncTimeout");
            ProbeAnswers();
            return;
        }
        _inFlight.Release(bytes);
        ReportLost(error?.GetType().Name ?? "cancelled");
    }

    /// <summary>
    /// While timed-out publishes are held, asks Redis for a PING on the same connection (one at a time):
    /// its answer comes after theirs, so once it is answered they are let go, even when nothing more is
    /// published.
    /// </summary>
    private void ProbeAnswers()
    {
        if (_timedOut.Count == 0 || Volatile.Read(ref _disposed) != 0) return;
        if (Interlocked.Exchange(ref _probing, 1) != 0) return;
        long through = Volatile.Read(ref _handed);
        Task<TimeSpan> ping;
        try
        {
            ping = Volatile.Read(ref _redis)!.GetDatabase().PingAsync();
        }
        catch (Exception)
        {
            // Not connected: losing the connection lets them go.
            Volatile.Write(ref _probing, 0);
            return;
        }
        _ = ping.ContinueWith(static (task, state) =>
            {
                var (backplane, through) = ((RedisBackplane, long))state!;
                backplane.Probed(task, through);
            }, (this, through), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    private void Probed(Task<TimeSpan> ping, long through)
    {
        if (ping.IsCompletedSuccessfully) _timedOut.AnsweredThrough(through);
        Volatile.Write(ref _probing, 0);
        // Again for publishes that timed out meanwhile, or after a PING that timed out as well (paced by
        // the timeout); any other failure is a lost connection, which lets them go.
        if (ping.IsCompletedSuccessfully || ping.Exception?.InnerException is TimeoutException) ProbeAnswers();
    }

    /// <summary>A publish reserved in flight that will not be handed to Redis.</summary>
    private void Dropped(byte[] envelope, string reason)
    {
        _inFlight.Release(envelope.Length);
        ReportLost(reason);
    }

    private void ReportLost(string reason)
    {
        long total = Interlocked.Increment(ref _publishFailures);
        _lostWarnings.Report(total, (count, all) => _log.PublishesLost(count, reason, all));
    }

    private void ReportUnreadable(string channel, string code)
    {
        long total = Interlocked.Increment(ref _unreadable);
        _unreadableWarnings.Report(total, (count, all) => _log.UnreadableEnvelopes(count, channel, code, all));
    }

    /// <summary>
    /// The one subscription keeper: applies topic interest in the order the server reported it, and
    /// retries the subscribes that failed while Redis was away.
    /// </summary>
    private async Task ControlLoop()
    {
        var queues = new Dictionary<string, ChannelMessageQueue>(StringComparer.Ordinal);
        var pending = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            var redis = await _connecting!.ConfigureAwait(false);
            var subscriber = redis.GetSubscriber();
            var reader = _control.Reader;
            while (true)
            {
                if (pending.Count == 0)
                {
                    if (!await reader.WaitToReadAsync(_stopping.Token).ConfigureAwait(false)) break;
                }
                else
                {
                    using var wait = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
                    wait.CancelAfter(RetryDelay);
                    try
                    {
                        if (!await reader.WaitToReadAsync(wait.Token).ConfigureAwait(false)) break;
                    }
                    catch (OperationCanceledException) when (!_stopping.IsCancellationRequested)
                    {
                        // Time to retry the pending subscribes.
                    }
                }
                while (reader.TryRead(out var change))
                {
                    if (change.Active)
                    {
                        if (!queues.ContainsKey(change.Topic)) pending.Add(change.Topic);
                    }
                    else
                    {
                        pending.Remove(change.Topic);
                        if (queues.Remove(change.Topic, out var queue)) await UnsubscribeAsync(queue).ConfigureAwait(false);
                    }
                }
                if (pending.Count > 0 && redis.IsConnected)
                {
                    foreach (var topic in pending.ToArray())
                    {
                        // Interest that changed meanwhile is applied first, in order.
                        if (reader.TryPeek(out _)) break;
                        var queue = await TrySubscribeAsync(subscriber, topic).ConfigureAwait(false);
                        if (queue is null) break;
                        queues[topic] = queue;
                        pending.Remove(topic);
                    }
                }
            }
        }
        catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            _log.LoopFailed(e, "the subscription keeper");
        }
        foreach (var queue in queues.Values) await UnsubscribeAsync(queue).ConfigureAwait(false);
    }

    /// <summary>Subscribes to a topic's channel; null (and no subscription left behind) when it failed.</summary>
    private async Task<ChannelMessageQueue?> TrySubscribeAsync(ISubscriber subscriber, string topic)
    {
        var channel = RedisChannel.Literal(ChannelOf(topic));
        try
        {
            var queue = await subscriber.SubscribeAsync(channel).ConfigureAwait(false);
            // Messages that arrive before the handler is attached wait in the queue.
            queue.OnMessage(message => Receive(topic, message));
            return queue;
        }
        catch (Exception e)
        {
            _log.SubscribeFailed(channel.ToString(), e.Message);
            // StackExchange.Redis registers the queue before it asks the server; remove it, so no
            // queue nobody reads is resubscribed (and filled) when the connection returns.
            try
            {
                await subscriber.UnsubscribeAsync(channel).ConfigureAwait(false);
            }
            catch (Exception)
            {
                // Still not connected: the registration is gone all the same.
            }
            return null;
        }
    }

    private static async Task UnsubscribeAsync(ChannelMessageQueue queue)
    {
        try
        {
            await queue.UnsubscribeAsync().ConfigureAwait(false);
        }
        catch (Exception)
        {
            // Redis is away: the registration is gone, and the server dropped the subscription with the connection.
        }
    }

    /// <summary>Handles one message of a topic's channel (called in order, one at a time per topic).</summary>
    private void Receive(string topic, ChannelMessage message)
    {
        try
        {
            ReadOnlyMemory<byte> bytes = message.Message;
            var decoded = BackplaneEnvelope.decode(bytes);
            if (decoded.IsError)
            {
                ReportUnreadable(message.Channel.ToString(), decoded.ErrorValue.Code);
                return;
            }
            var envelope = decoded.ResultValue;
            // Its own envelope, back from Redis: already delivered here, skipping the sender.
            if (string.Equals(envelope.NodeId, NodeId, StringComparison.Ordinal)) return;
            if (!string.Equals(envelope.Topic, topic, StringComparison.Ordinal))
            {
                ReportUnreadable(message.Channel.ToString(), "topic-mismatch");
                return;
            }
            Interlocked.Increment(ref _received);
            _receiver!.DeliverLocally(envelope.Topic, envelope.Kind, envelope.Payload.Span, envelope.Compress);
        }
        catch (Exception e)
        {
            _log.LoopFailed(e, "the receiver of " + topic);
        }
    }

    /// <summary>
    /// Stops: hands what is queued to Redis (waiting at most 5 s), drops the subscriptions and closes
    /// the connection.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _outgoing.Writer.TryComplete();
        _control.Writer.TryComplete();
        if (_writer is not null) await WaitBounded(_writer).ConfigureAwait(false);
        else while (_outgoing.Reader.TryRead(out var item)) Dropped(item.Envelope, "the backplane stopped before it started");
        _stopping.Cancel();
        if (_controller is not null) await WaitBounded(_controller).ConfigureAwait(false);
        if (_connecting is not null)
        {
            await WaitBounded(_connecting).ConfigureAwait(false);
            if (_connecting.IsCompletedSuccessfully)
            {
                try
                {
                    await _connecting.Result.CloseAsync(allowCommandsToComplete: true).WaitAsync(StopTimeout).ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // Closing is best effort.
                }
                _connecting.Result.Dispose();
            }
        }
        _stopping.Dispose();
    }

    /// <summary>Stops, as <see cref="DisposeAsync"/> does.</summary>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    private static async Task WaitBounded(Task task)
    {
        try
        {
            await task.WaitAsync(StopTimeout).ConfigureAwait(false);
        }
        catch (Exception)
        {
            // Reported by the loop itself, or too slow: stopping goes on.
        }
    }

    private readonly record struct Outgoing(string Topic, byte[] Envelope);

    private readonly record struct TopicChange(string Topic, bool Active);

    /// <summary>At most one report per interval, each with the count since the previous one.</summary>
    private sealed class RateLimit(long intervalMs)
    {
        private long _lastAt = long.MinValue;
        private long _reportedTotal;

        public void Report(long total, Action<long, long> report)
        {
            long now = Environment.TickCount64;
            long last = Volatile.Read(ref _lastAt);
            if (last != long.MinValue && now - last < intervalMs) return;
            if (Interlocked.CompareExchange(ref _lastAt, now, last) != last) return;
            long previous = Interlocked.Exchange(ref _reportedTotal, total);
            if (total > previous) report(total - previous, total);
        }

        public void Flush(long total, Action<long, long> report)
        {
            Volatile.Write(ref _lastAt, Environment.TickCount64);
            long previous = Interlocked.Exchange(ref _reportedTotal, total);
            if (total > previous) report(total - previous, total);
        }
    }
}

using System.Diagnostics;
using System.Text;
using System.Text.Json;

namespace LoadGen;

/// <summary>
/// channels: fanout through the channels protocol (docs/channels-protocol.md, JSON form) on
/// /channels: N subscribers subscribe to one channel, one publisher publishes with a key and gets
/// an ack for each, the server gives every publication a position and keeps it in history. Each
/// subscriber checks that the offsets it receives increase by exactly 1 (lost, reordered and
/// duplicated offsets are counted) in one epoch, and that each offset carries the publisher's
/// message in order. With --port2 the publisher and the even subscribers are on --port, the odd
/// ones on --port2 (two nodes sharing Redis).
/// </summary>
public static class ChannelScenarios
{
    const string Subprotocol = "realtime.channels.v1.json";
    const string Channel = "bench";
    const int ReceiveBuffer = 64 * 1024;

    /// <summary>The probe publication's data, sent until every subscriber has heard it; not a benchmark message.</summary>
    static ReadOnlySpan<byte> ProbeData => "ready?"u8;

    /// <summary>What one subscriber saw, written by its receive loop only.</summary>
    sealed class Subscriber
    {
        public long LastOffset = -1;          // -1: no benchmark publication yet
        public long Base;                     // offset minus sequence number, from the first benchmark publication
        public long Lost, Reordered, Duplicates, PositionErrors, EpochChanges, Other;
        public byte[]? Epoch;
        public readonly HashSet<long> Missing = [];
        public readonly Histogram Latency = new();
    }

    public static async Task RunAsync(Options o, Result result)
    {
        int count = o.Subscribers + 1;
        int publisher = count - 1;
        var mesh = new Mesh(count, i => i == publisher, i => i != publisher, o.Window);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        Func<int, int> portOf = i => o.Port2 > 0 && i != publisher && i % 2 == 1 ? o.Port2 : o.Port;
        var clients = new WsClient[count];
        await Parallel.ForAsync(0, count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, o.Concurrency), CancellationToken = timeout.Token },
            async (i, token) => clients[i] = await WsClient.ConnectAsync(portOf(i), "/channels", o.Tls, deflate: false, ReceiveBuffer, token, Subprotocol));
        // Every subscriber is subscribed (its `subscribed` reply read) before anything is published.
        await Parallel.ForAsync(0, o.Subscribers, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, o.Concurrency), CancellationToken = timeout.Token },
            async (i, token) =>
            {
                await SendTextAsync(clients[i], $"{{\"type\":\"subscribe\",\"id\":1,\"channel\":\"{Channel}\"}}", token);
                await ReadUntilAsync(clients[i], m => TypeIs(m, "subscribed"u8) || TypeIs(m, "error"u8)
                    ? TypeIs(m, "subscribed"u8) ? true : throw new IOException("subscribe refused: " + Encoding.UTF8.GetString(m)) : false, token);
            });
        // Across nodes a subscription is live once its node hears the channel's publications: probe until every subscriber has one.
        await ProbeAsync(clients, publisher, timeout.Token);

        var template = Template(o.Size, publisher);
        var subscribers = Enumerable.Range(0, count).Select(_ => new Subscriber()).ToArray();
        long acks = 0, publishErrors = 0, errors = 0;
        string? firstError = null, firstPublishError = null;

        void Error(Exception e)
        {
            if (!Phase.Running) return;
            Interlocked.Increment(ref errors);
            Interlocked.CompareExchange(ref firstError, e.GetType().Name + ": " + e.Message, null);
        }

        async Task Receive(int r)
        {
            var client = clients[r];
            var s = subscribers[r];
            try
            {
                while (Phase.Running && await client.FillAsync())
                {
                    while (client.TryNext(out var m))
                    {
                        if (r == publisher) ReadPublisherReply(m.Span, ref acks, ref publishErrors, ref firstPublishError);
                        else ReadPublication(m.Span, s, r, mesh, template);
                    }
                    mesh.Progress(r);
                    if (client.HasControl)
                    {
                        await client.WriteLock.WaitAsync();
                        try { await client.Stream.WriteAsync(client.TakeControl()); } finally { client.WriteLock.Release(); }
                    }
                    if (client.Closed) break;
                }
            }
            catch (Exception e) { Error(e); }
        }

        async Task Send()
        {
            var client = clients[publisher];
            var writer = new PublishWriter(client.MaskKey, template);
            int batch = Math.Clamp(32 * 1024 / writer.MaxFrameSize, 1, 256);
            var buffer = new byte[writer.MaxFrameSize * batch];
            try
            {
                while (Phase.Running)
                {
                    long allowed = mesh.Allowed(publisher);
                    if (allowed <= 0) { await mesh.WaitForWindowAsync(publisher); continue; }
                    int n = (int)Math.Min(allowed, batch);
                    int length = 0;
                    long now = Stopwatch.GetTimestamp();
                    ulong first = (ulong)mesh.Sent(publisher);
                    for (int i = 0; i < n; i++) length += writer.Write(buffer.AsSpan(length), first + (ulong)i, now);
                    await client.WriteLock.WaitAsync();
                    try { await client.Stream.WriteAsync(buffer.AsMemory(0, length)); } finally { client.WriteLock.Release(); }
                    mesh.AddSent(publisher, n);
                }
            }
            catch (Exception e) { Error(e); }
        }

        var loops = new List<Task>();
        for (int i = 0; i < count; i++)
        {
            int index = i;
            loops.Add(Task.Run(() => Receive(index)));
        }
        loops.Add(Task.Run(Send));
        long atStart = 0, atEnd = 0;
        int silent = 0;
        double seconds = await Phase.RunAsync(o, () =>
        {
            atStart = mesh.TotalDelivered();
            silent = Enumerable.Range(0, o.Subscribers).Count(r => mesh.Delivered(r) == 0);
        }, () => atEnd = mesh.TotalDelivered());
        await Task.WhenAny(Task.WhenAll(loops), Task.Delay(200));
        foreach (var c in clients) c.Dispose();
        await Task.WhenAny(Task.WhenAll(loops), Task.Delay(5000));

        var all = new Histogram();
        foreach (var s in subscribers) all.Add(s.Latency);
        long Sum(Func<Subscriber, long> f) => subscribers.Take(o.Subscribers).Sum(f);
        if (o.Port2 > 0) result.Set("nodes", 2).Set("subscribersOnSecondNode", Enumerable.Range(0, o.Subscribers).Count(i => portOf(i) == o.Port2));
        if (silent > 0) result.Set("silentAtStart", silent);
        result.Set("metric", "deliveries/s").Set("value", Math.Round((atEnd - atStart) / seconds))
            .Set("p50us", all.Percentile(50)).Set("p99us", all.Percentile(99))
            .Set("subscribers", o.Subscribers).Set("size", o.Size).Set("window", o.Window)
            .Set("seconds", Math.Round(seconds, 2)).Set("sent", mesh.Sent(publisher)).Set("acks", Interlocked.Read(ref acks))
            .Set("lost", Sum(s => s.Lost)).Set("orderErrors", Sum(s => s.Reordered)).Set("duplicates", Sum(s => s.Duplicates))
            .Set("positionErrors", Sum(s => s.PositionErrors)).Set("epochChanges", Sum(s => s.EpochChanges))
            .Set("badMessages", mesh.Bad + Sum(s => s.Other)).Set("publishErrors", Interlocked.Read(ref publishErrors)).Set("firstPublishError", firstPublishError)
            .Set("errors", errors).Set("firstError", firstError)
            .ServerCost(atEnd - atStart, seconds);
    }

    /// <summary>
    /// One `pub` at subscriber r. Offsets must follow each other by exactly 1 from the first benchmark
    /// publication on (the probes before it are not counted): a higher offset counts the skipped ones
    /// as lost until they arrive (then they are reordered instead), a lower one not missing is a duplicate.
    /// The data must be the publisher's next message (its sequence number plus a constant is the offset).
    /// </summary>
    static void ReadPublication(ReadOnlySpan<byte> json, Subscriber s, int r, Mesh mesh, byte[] template)
    {
        if (!TryReadPub(json, out var epoch, out ulong offsetValue, out var data))
        {
            s.Other++;
            return;
        }
        if (data.SequenceEqual(ProbeData)) return; // a probe from before the benchmark
        long offset = (long)offsetValue;
        if (!Payload.TryRead(data, template, out ulong seq, out long timestamp, out _))
        {
            mesh.Receive(r, data, template, false, false); // counted there as a bad message
            return;
        }
        if (s.Epoch is null) s.Epoch = epoch.ToArray();
        else if (!epoch.SequenceEqual(s.Epoch)) { s.EpochChanges++; s.Epoch = epoch.ToArray(); }
        if (s.LastOffset < 0)
        {
            // The first benchmark publication: the ones before it (seq 0 .. seq-1) never came.
            s.Base = offset - (long)seq;
            s.LastOffset = s.Base - 1;
            for (long missing = s.LastOffset + 1; missing < offset && s.Missing.Count < 1_000_000; missing++) s.Missing.Add(missing);
            s.Lost += (long)seq;
            s.LastOffset = offset;
        }
        else if (offset == s.LastOffset + 1) s.LastOffset = offset;
        else if (offset > s.LastOffset + 1)
        {
            for (long missing = s.LastOffset + 1; missing < offset && s.Missing.Count < 1_000_000; missing++) s.Missing.Add(missing);
            s.Lost += offset - s.LastOffset - 1;
            s.LastOffset = offset;
        }
        else if (s.Missing.Remove(offset)) { s.Lost--; s.Reordered++; }
        else { s.Duplicates++; return; }
        // The offset is the publisher's sequence number plus the offset the benchmark started after.
        if (offset - (long)seq != s.Base) s.PositionErrors++;
        mesh.Receive(r, data, template, false, false);
        if (Phase.Current == Phase.Measure) s.Latency.Record(Histogram.MicrosSince(timestamp));
    }

    /// <summary>Reads `type`, `epoch`, `offset` and `data` (a JSON string: its raw bytes) of a `pub`; false for anything else.</summary>
    static bool TryReadPub(ReadOnlySpan<byte> json, out ReadOnlySpan<byte> epoch, out ulong offset, out ReadOnlySpan<byte> data)
    {
        epoch = default; offset = 0; data = default;
        bool pub = false, hasOffset = false, hasData = false;
        try
        {
            var reader = new Utf8JsonReader(json);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject) return false;
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                if (reader.ValueTextEquals("type"u8)) { reader.Read(); pub = reader.TokenType == JsonTokenType.String && reader.ValueTextEquals("pub"u8); }
                else if (reader.ValueTextEquals("epoch"u8)) { reader.Read(); epoch = reader.ValueSpan; }
                else if (reader.ValueTextEquals("offset"u8)) { reader.Read(); hasOffset = reader.TryGetUInt64(out offset); }
                else if (reader.ValueTextEquals("data"u8))
                {
                    reader.Read();
                    hasData = reader.TokenType == JsonTokenType.String && !reader.ValueIsEscaped;
                    data = reader.ValueSpan;
                }
                else { reader.Read(); reader.Skip(); }
            }
        }
        catch (JsonException) { return false; }
        return pub && hasOffset && hasData;
    }

    static void ReadPublisherReply(ReadOnlySpan<byte> json, ref long acks, ref long publishErrors, ref string? firstPublishError)
    {
        // Acks of the probes (ids below 1,000,000,000) are not the benchmark's.
        if (TypeIs(json, "ack"u8)) { if (IdOf(json) >= 1_000_000_000) Interlocked.Increment(ref acks); }
        else if (TypeIs(json, "error"u8))
        {
            Interlocked.Increment(ref publishErrors);
            Interlocked.CompareExchange(ref firstPublishError, Encoding.UTF8.GetString(json), null);
        }
    }

    static long IdOf(ReadOnlySpan<byte> json)
    {
        try
        {
            var reader = new Utf8JsonReader(json);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject) return -1;
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                bool isId = reader.ValueTextEquals("id"u8);
                reader.Read();
                if (isId) return reader.TryGetInt64(out long id) ? id : -1;
                reader.Skip();
            }
        }
        catch (JsonException) { }
        return -1;
    }

    static bool TypeIs(ReadOnlySpan<byte> json, ReadOnlySpan<byte> type)
    {
        try
        {
            var reader = new Utf8JsonReader(json);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject) return false;
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                bool isType = reader.ValueTextEquals("type"u8);
                reader.Read();
                if (isType) return reader.TokenType == JsonTokenType.String && reader.ValueTextEquals(type);
                reader.Skip();
            }
        }
        catch (JsonException) { }
        return false;
    }

    /// <summary>The benchmark payload made JSON-string safe: the filler's quotes become apostrophes.</summary>
    static byte[] Template(int size, int sender)
    {
        var bytes = Payload.Template(size, sender);
        for (int i = 0; i < bytes.Length; i++) if (bytes[i] == (byte)'"') bytes[i] = (byte)'\'';
        return bytes;
    }

    static async Task SendTextAsync(WsClient client, string text, CancellationToken ct)
    {
        var payload = Encoding.UTF8.GetBytes(text);
        var frame = new byte[payload.Length + 16];
        int length = Frames.Write(frame, 0x1, payload, client.MaskKey, compressed: false);
        await client.WriteLock.WaitAsync(ct);
        try { await client.Stream.WriteAsync(frame.AsMemory(0, length), ct); } finally { client.WriteLock.Release(); }
    }

    /// <summary>Reads messages until done says so; what follows stays buffered for the receive loop.</summary>
    static async Task ReadUntilAsync(WsClient client, Func<byte[], bool> done, CancellationToken ct)
    {
        while (true)
        {
            while (client.TryNext(out var m))
                if (done(m.Span.ToArray())) return;
            if (client.HasControl)
            {
                await client.WriteLock.WaitAsync(ct);
                try { await client.Stream.WriteAsync(client.TakeControl(), ct); } finally { client.WriteLock.Release(); }
            }
            if (!await client.FillAsync(ct)) throw new IOException("connection closed during setup");
        }
    }

    /// <summary>The publisher publishes the probe every 100 ms (20 s at most) until every subscriber has received one.</summary>
    static async Task ProbeAsync(WsClient[] clients, int publisher, CancellationToken ct)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(TimeSpan.FromSeconds(20));
        var heard = Task.WhenAll(clients.Where((_, i) => i != publisher).Select(c => Task.Run(() =>
            ReadUntilAsync(c, m => TryReadPub(m, out _, out _, out var data) && data.SequenceEqual(ProbeData), limit.Token))));
        int n = 0;
        try
        {
            while (!heard.IsCompleted)
            {
                n++;
                await SendTextAsync(clients[publisher],
                    $"{{\"type\":\"publish\",\"id\":{n},\"channel\":\"{Channel}\",\"key\":\"probe-{n}\",\"data\":\"ready?\"}}", limit.Token);
                await Task.WhenAny(heard, Task.Delay(100, limit.Token));
            }
            await heard;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new TimeoutException("not every subscriber received the probe publication within 20 s");
        }
    }

    /// <summary>
    /// The publisher's `publish` messages: {"type":"publish","id":I,"channel":"bench","key":"K","data":"P"}
    /// with a 10-digit id, a 16-hex-digit key (the sequence number: unique per publish) and the
    /// benchmark payload P, masked as a whole per message.
    /// </summary>
    sealed class PublishWriter
    {
        readonly byte[] plain;
        readonly int idAt, keyAt, payloadAt;
        readonly uint mask;

        public PublishWriter(uint mask, byte[] payload)
        {
            this.mask = mask;
            string head = "{\"type\":\"publish\",\"id\":";
            string middle = $",\"channel\":\"{Channel}\",\"key\":\"";
            string beforeData = "\",\"data\":\"";
            idAt = head.Length;
            keyAt = idAt + 10 + middle.Length;
            payloadAt = keyAt + 16 + beforeData.Length;
            plain = new byte[payloadAt + payload.Length + 2];
            Encoding.ASCII.GetBytes(head).CopyTo(plain, 0);
            Encoding.ASCII.GetBytes(middle).CopyTo(plain, idAt + 10);
            Encoding.ASCII.GetBytes(beforeData).CopyTo(plain, keyAt + 16);
            payload.CopyTo(plain, payloadAt);
            plain[^2] = (byte)'"';
            plain[^1] = (byte)'}';
        }

        public int MaxFrameSize => plain.Length + 16;

        public int Write(Span<byte> destination, ulong seq, long timestamp)
        {
            // Ids 1,000,000,000 .. 1,999,999,999: ten digits, unique among the publishes in flight.
            ulong id = 1_000_000_000 + seq % 1_000_000_000;
            for (int i = 9; i >= 0; i--) { plain[idAt + i] = (byte)('0' + id % 10); id /= 10; }
            Payload.WriteHex(plain.AsSpan(keyAt, 16), seq);
            Payload.WriteHex(plain.AsSpan(payloadAt + Payload.SeqAt, 16), seq);
            Payload.WriteHex(plain.AsSpan(payloadAt + Payload.TimeAt, 16), (ulong)timestamp);
            return Frames.Write(destination, 0x1, plain, mask, compressed: false);
        }
    }
}

using System.Diagnostics;
using System.Text;

namespace LoadGen;

/// <summary>The scenarios over the raw-socket client: echo, fanout, chat, connections.</summary>
public static class RawScenarios
{
    const int ReceiveBuffer = 64 * 1024;

    /// <summary>Opens `count` connections, at most `concurrency` handshakes at a time (connection i to portOf(i), default --port).</summary>
    public static async Task<WsClient[]> ConnectAllAsync(Options o, int count, string path, int receiveBuffer, CancellationToken ct, Func<int, int>? portOf = null)
    {
        var clients = new WsClient[count];
        await Parallel.ForAsync(0, count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, o.Concurrency), CancellationToken = ct },
            async (i, token) => clients[i] = await WsClient.ConnectAsync(portOf?.Invoke(i) ?? o.Port, path, o.Tls, o.Deflate, receiveBuffer, token));
        return clients;
    }

    static async Task StopAsync(WsClient[] clients, Task[] loops)
    {
        // Let loops notice Phase.Done, then cut the sockets so pending reads end.
        await Task.WhenAny(Task.WhenAll(loops), Task.Delay(200));
        foreach (var c in clients) c.Dispose();
        await Task.WhenAny(Task.WhenAll(loops), Task.Delay(5000));
    }

    static void Error(ref string? first, ref long errors, Exception e)
    {
        if (!Phase.Running) return; // ended by the stop, not by the server
        Interlocked.Increment(ref errors);
        Interlocked.CompareExchange(ref first, e.GetType().Name + ": " + e.Message, null);
    }

    // ---------------------------------------------------------------- echo

    public static async Task EchoAsync(Options o, Result result)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var clients = await ConnectAllAsync(o, o.Connections, "/echo", ReceiveBuffer, timeout.Token);
        var received = new long[clients.Length];
        var histograms = clients.Select(_ => new Histogram()).ToArray();
        long disorder = 0, bad = 0, plain = 0, errors = 0;
        string? firstError = null;

        async Task Loop(int index)
        {
            var client = clients[index];
            var writer = new MessageWriter(client, o.Size, index, o.Deflate);
            var decoder = o.Deflate ? new DeflateCodec() : null;
            var template = writer.Template;
            var decoded = new byte[o.Size + 1];
            var histogram = histograms[index];
            var buffer = new byte[writer.MaxFrameSize * o.InFlight + 256];
            ulong nextSeq = 0, expected = 0;
            try
            {
                int length = 0;
                for (int i = 0; i < o.InFlight; i++) length += writer.Write(buffer.AsSpan(length), nextSeq++, Stopwatch.GetTimestamp());
                await client.Stream.WriteAsync(buffer.AsMemory(0, length));
                while (Phase.Running && await client.FillAsync())
                {
                    length = 0;
                    while (client.TryNext(out var m))
                    {
                        ReadOnlySpan<byte> payload = m.Span;
                        if (m.Compressed)
                        {
                            int n = decoder is null ? -1 : decoder.Decompress(payload, decoded);
                            payload = n < 0 ? default : decoded.AsSpan(0, n);
                        }
                        else if (o.Deflate) Interlocked.Increment(ref plain);
                        if (!Payload.TryRead(payload, template, out ulong seq, out long timestamp, out _)) Interlocked.Increment(ref bad);
                        else
                        {
                            if (seq != expected) Interlocked.Increment(ref disorder);
                            expected = seq + 1;
                            if (Phase.Current == Phase.Measure) histogram.Record(Histogram.MicrosSince(timestamp));
                        }
                        Volatile.Write(ref received[index], received[index] + 1);
                        if (Phase.Running) length += writer.Write(buffer.AsSpan(length), nextSeq++, Stopwatch.GetTimestamp());
                    }
                    if (client.HasControl) await client.Stream.WriteAsync(client.TakeControl());
                    if (length > 0) await client.Stream.WriteAsync(buffer.AsMemory(0, length));
                    if (client.Closed) break;
                }
            }
            catch (Exception e) { Error(ref firstError, ref errors, e); }
        }

        var loops = Enumerable.Range(0, clients.Length).Select(i => Task.Run(() => Loop(i))).ToArray();
        long atStart = 0, atEnd = 0;
        double seconds = await Phase.RunAsync(o, () => atStart = Sum(received), () => atEnd = Sum(received));
        await StopAsync(clients, loops);
        var all = new Histogram();
        foreach (var h in histograms) all.Add(h);
        result.Set("metric", "round trips/s").Set("value", Math.Round((atEnd - atStart) / seconds))
            .Set("p50us", all.Percentile(50)).Set("p99us", all.Percentile(99))
            .Set("connections", o.Connections).Set("inflight", o.InFlight).Set("size", o.Size)
            .Set("seconds", Math.Round(seconds, 2)).Set("orderErrors", Interlocked.Read(ref disorder)).Set("badMessages", Interlocked.Read(ref bad))
            .Set("uncompressedReplies", plain).Set("errors", errors).Set("firstError", firstError)
            .ServerCost(atEnd - atStart, seconds);
    }

    static long Sum(long[] values)
    {
        long sum = 0;
        for (int i = 0; i < values.Length; i++) sum += Volatile.Read(ref values[i]);
        return sum;
    }

    // ---------------------------------------------------------------- fanout and chat

    /// <summary>fanout: N subscribers + 1 publisher; chat: K clients that all send and all receive.</summary>
    public static async Task MeshAsync(Options o, Result result)
    {
        bool chat = o.Scenario == "chat";
        int count = chat ? o.Connections : o.Subscribers + 1;
        int publisher = count - 1;
        var mesh = chat
            ? new Mesh(count, _ => true, _ => true, o.Window)
            : new Mesh(count, i => i == publisher, i => i != publisher, o.Window);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        // With --port2 (fanout over two nodes): the publisher and the even subscribers on --port, the odd ones on --port2.
        Func<int, int>? portOf = !chat && o.Port2 > 0 ? i => i != publisher && i % 2 == 1 ? o.Port2 : o.Port : null;
        var clients = await ConnectAllAsync(o, count, "/fanout", ReceiveBuffer, timeout.Token, portOf);
        // Every connection must be subscribed before the first publish: give the servers a moment.
        await Task.Delay(300);
        // Across nodes a subscription is only live once the node's backplane subscription is: probe until every subscriber hears the publisher.
        bool sync = !chat && (o.Sync || o.Port2 > 0);
        if (sync) await ProbeAsync(clients, publisher, timeout.Token);
        long errors = 0;
        string? firstError = null;
        var template = Payload.Template(o.Size, 0);

        async Task Receive(int r)
        {
            var client = clients[r];
            var decoder = o.Deflate ? new DeflateCodec() : null;
            var decoded = new byte[o.Size + 1];
            try
            {
                while (Phase.Running && await client.FillAsync())
                {
                    while (client.TryNext(out var m))
                    {
                        ReadOnlySpan<byte> payload = m.Span;
                        if (m.Compressed)
                        {
                            int n = decoder is null ? -1 : decoder.Decompress(payload, decoded);
                            payload = n < 0 ? default : decoded.AsSpan(0, n);
                        }
                        if (sync && !m.Compressed && payload.SequenceEqual(ReadyProbe)) continue; // a late probe from ProbeAsync
                        mesh.Receive(r, payload, template, m.Compressed, o.Deflate);
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
            catch (Exception e) { Error(ref firstError, ref errors, e); }
        }

        async Task Send(int s)
        {
            var client = clients[s];
            var writer = new MessageWriter(client, o.Size, s, o.Deflate);
            int batch = Math.Clamp(32 * 1024 / writer.MaxFrameSize, 1, 256);
            var buffer = new byte[writer.MaxFrameSize * batch];
            try
            {
                while (Phase.Running)
                {
                    long allowed = mesh.Allowed(s);
                    if (allowed <= 0) { await mesh.WaitForWindowAsync(s); continue; }
                    int n = (int)Math.Min(allowed, batch);
                    int length = 0;
                    long now = Stopwatch.GetTimestamp();
                    ulong first = (ulong)mesh.Sent(s);
                    for (int i = 0; i < n; i++) length += writer.Write(buffer.AsSpan(length), first + (ulong)i, now);
                    await client.WriteLock.WaitAsync();
                    try { await client.Stream.WriteAsync(buffer.AsMemory(0, length)); } finally { client.WriteLock.Release(); }
                    mesh.AddSent(s, n);
                }
            }
            catch (Exception e) { Error(ref firstError, ref errors, e); }
        }

        var loops = new List<Task>();
        for (int i = 0; i < count; i++)
        {
            int index = i;
            // The publisher reads too: a server must not send a publisher its own messages (counted as selfDeliveries).
            loops.Add(Task.Run(() => Receive(index)));
            if (mesh.IsSender[index]) loops.Add(Task.Run(() => Send(index)));
        }
        long atStart = 0, atEnd = 0;
        int silent = 0;
        double seconds = await Phase.RunAsync(o, () =>
        {
            atStart = mesh.TotalDelivered();
            // Every receiver must have got messages during the warmup, or the window measures fewer subscribers than asked.
            silent = Enumerable.Range(0, count).Count(r => mesh.IsReceiver[r] && mesh.Delivered(r) == 0);
        }, () => atEnd = mesh.TotalDelivered());
        await StopAsync(clients, loops.ToArray());
        long sent = Enumerable.Range(0, count).Sum(mesh.Sent);
        if (o.Port2 > 0) result.Set("nodes", 2).Set("subscribersOnSecondNode", Enumerable.Range(0, count).Count(i => portOf!(i) == o.Port2));
        if (silent > 0) result.Set("silentAtStart", silent);
        result.Set("metric", "deliveries/s").Set("value", Math.Round((atEnd - atStart) / seconds))
            .Set(chat ? "clients" : "subscribers", chat ? count : o.Subscribers).Set("size", o.Size).Set("window", o.Window)
            .Set("seconds", Math.Round(seconds, 2)).Set("sent", sent).Set("lost", mesh.Lost).Set("orderErrors", mesh.Disorder)
            .Set("badMessages", mesh.Bad).Set("selfDeliveries", mesh.Self).Set("uncompressedDeliveries", mesh.Plain)
            .Set("errors", errors).Set("firstError", firstError)
            .ServerCost(atEnd - atStart, seconds);
    }

    /// <summary>The probe ProbeAsync publishes: not a benchmark payload, skipped by the receive loops.</summary>
    static ReadOnlySpan<byte> ReadyProbe => "ready?"u8;

    /// <summary>
    /// Before the fanout starts: the publisher sends a probe every 100 ms until every other
    /// connection has received one (20 s at most), so that subscribers on a second node, whose
    /// backplane subscription may not be live yet, do not miss the first messages. Frames read
    /// after a probe stay buffered in the client for the receive loop.
    /// </summary>
    static async Task ProbeAsync(WsClient[] clients, int publisher, CancellationToken ct)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(TimeSpan.FromSeconds(20));
        async Task Hear(WsClient client)
        {
            while (true)
            {
                while (client.TryNext(out var m))
                    if (m.Span.SequenceEqual(ReadyProbe)) return;
                if (client.HasControl) await client.Stream.WriteAsync(client.TakeControl(), limit.Token);
                if (!await client.FillAsync(limit.Token)) throw new IOException("closed while waiting for the probe");
            }
        }
        var heard = Task.WhenAll(clients.Where((_, i) => i != publisher).Select(c => Task.Run(() => Hear(c))));
        var source = clients[publisher];
        var frame = new byte[ReadyProbe.Length + 16];
        int length = Frames.Write(frame, 0x1, ReadyProbe, source.MaskKey, compressed: false);
        try
        {
            while (!heard.IsCompleted)
            {
                await source.Stream.WriteAsync(frame.AsMemory(0, length), limit.Token);
                await Task.WhenAny(heard, Task.Delay(100, limit.Token));
            }
            await heard;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new TimeoutException("not every subscriber heard the publisher within 20 s");
        }
    }

    // ---------------------------------------------------------------- connections

    /// <summary>Opens many idle connections and reads the server's resident memory before and after.</summary>
    public static async Task ConnectionsAsync(Options o, Result result)
    {
        bool signalR = o.Protocol == "signalr";
        byte[] handshake = Encoding.UTF8.GetBytes("{\"protocol\":\"json\",\"version\":1}\u001e");
        long before = ReadRssKiB(o.Pid);
        // The marginal cost leaves out what the first connection costs once (JIT, first use of the
        // server's pools, timers and logging): one connection is opened, answers an echo, is closed,
        // and RSS is read again before the N are opened.
        long warm = await WarmUpAsync(o, signalR, handshake);
        var clients = new WsClient?[o.Connections];
        long failed = 0;
        string? firstError = null;
        // Server CPU for the open, split at the first FirstOpened connections (the server's JIT and first use) and the rest.
        const int FirstOpened = 200;
        int opened = 0;
        ServerUsage? usageAtFirst = null;
        var usageAtStart = ServerUsage.Read(o.Pid);
        var watch = Stopwatch.StartNew();
        double firstSeconds = 0;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(Math.Max(60, o.Connections / 100.0)));
        try
        {
            await Parallel.ForAsync(0, o.Connections, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, o.Concurrency), CancellationToken = timeout.Token }, async (i, token) =>
            {
                try
                {
                    clients[i] = await OpenIdleAsync(o, signalR, handshake, token);
                    if (Interlocked.Increment(ref opened) == FirstOpened)
                    {
                        usageAtFirst = ServerUsage.Read(o.Pid);
                        firstSeconds = watch.Elapsed.TotalSeconds;
                    }
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    Interlocked.Increment(ref failed);
                    Interlocked.CompareExchange(ref firstError, e.GetType().Name + ": " + e.Message, null);
                }
            });
        }
        catch (OperationCanceledException)
        {
            firstError ??= "timed out opening connections";
        }
        double openSeconds = watch.Elapsed.TotalSeconds;
        var usageAtOpen = ServerUsage.Read(o.Pid);
        int open = clients.Count(c => c is not null);
        await Task.Delay(TimeSpan.FromSeconds(o.Settle));
        long after = ReadRssKiB(o.Pid);
        var usageAfterSettle = ServerUsage.Read(o.Pid);
        int alive = await CheckAliveAsync(o, clients, signalR);
        foreach (var c in clients) c?.Dispose();
        double perConnection = open > 0 && before > 0 && after > 0 ? (after - before) * 1024.0 / open : 0;
        double marginal = open > 0 && warm > 0 && after > 0 ? (after - warm) * 1024.0 / open : 0;
        result.Set("metric", "bytes/connection").Set("value", Math.Round(perConnection))
            .Set("marginalBytesPerConnection", Math.Round(marginal)).Set("rssWarmKiB", warm)
            .Set("requested", o.Connections).Set("opened", open).Set("failed", failed)
            .Set("checked", Math.Min(100, open)).Set("alive", alive)
            .Set("openSeconds", Math.Round(openSeconds, 2)).Set("connectsPerSecond", Math.Round(open / Math.Max(openSeconds, 0.001)))
            .Set("rssBeforeKiB", before).Set("rssAfterKiB", after).Set("settleSeconds", o.Settle).Set("firstError", firstError);
        if (usageAtStart is not null && usageAtOpen is not null && open > 0)
        {
            result.Set("serverCpuUsPerConnection", Math.Round((usageAtOpen.CpuSeconds - usageAtStart.CpuSeconds) * 1e6 / open));
            // With the settle: what the open left the server to finish (the runtime's background recompilation of hot code).
            if (usageAfterSettle is not null)
                result.Set("serverCpuUsPerConnectionWithSettle", Math.Round((usageAfterSettle.CpuSeconds - usageAtStart.CpuSeconds) * 1e6 / open));
            if (usageAtFirst is not null && open > FirstOpened)
            {
                result.Set("firstOpened", FirstOpened).Set("firstOpenSeconds", Math.Round(firstSeconds, 3))
                    .Set("serverCpuUsPerFirstConnection", Math.Round((usageAtFirst.CpuSeconds - usageAtStart.CpuSeconds) * 1e6 / FirstOpened))
                    .Set("serverCpuUsPerLaterConnection", Math.Round((usageAtOpen.CpuSeconds - usageAtFirst.CpuSeconds) * 1e6 / (open - FirstOpened)));
            }
        }
    }

    /// <summary>One idle connection, with SignalR's own handshake done when the server speaks it.</summary>
    static async Task<WsClient> OpenIdleAsync(Options o, bool signalR, byte[] handshake, CancellationToken token)
    {
        var client = await WsClient.ConnectAsync(o.Port, o.Path, o.Tls, o.Deflate, 1024, token);
        if (signalR)
        {
            try
            {
                // SignalR's own handshake over the WebSocket: the server answers "{}\x1e".
                var frame = new byte[handshake.Length + 8];
                int n = Frames.Write(frame, 0x1, handshake, client.MaskKey, compressed: false);
                await client.Stream.WriteAsync(frame.AsMemory(0, n), token);
                Message m;
                while (!client.TryNext(out m))
                    if (!await client.FillAsync(token)) throw new IOException("closed during the SignalR handshake");
                if (m.Span.IndexOf("{}"u8) < 0) throw new IOException("unexpected SignalR handshake answer");
            }
            catch
            {
                client.Dispose();
                throw;
            }
        }
        return client;
    }

    /// <summary>
    /// Opens one connection, checks that it answers an echo, closes it and returns the server's RSS
    /// read 2 s later (0 when the warm-up failed: the marginal figure is then not reported).
    /// </summary>
    static async Task<long> WarmUpAsync(Options o, bool signalR, byte[] handshake)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            var client = await OpenIdleAsync(o, signalR, handshake, timeout.Token);
            int answered = await CheckAliveAsync(o, [client], signalR);
            client.Dispose();
            if (answered != 1) return 0;
            await Task.Delay(TimeSpan.FromSeconds(2));
            return ReadRssKiB(o.Pid);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or System.Net.Sockets.SocketException)
        {
            return 0;
        }
    }

    /// <summary>
    /// After the memory reading: sends one echo (or a SignalR Echo invocation) on up to 100
    /// connections spread over the set and counts those that answer within 10 s, so a server that
    /// dropped idle connections cannot look lean.
    /// </summary>
    static async Task<int> CheckAliveAsync(Options o, WsClient?[] clients, bool signalR)
    {
        var open = clients.Where(c => c is not null).Select(c => c!).ToArray();
        if (open.Length == 0) return 0;
        int step = Math.Max(1, open.Length / 100);
        var sample = Enumerable.Range(0, Math.Min(100, open.Length)).Select(i => open[i * step % open.Length]).Distinct().ToArray();
        byte[] payload = signalR
            ? Encoding.UTF8.GetBytes("{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"alive\"]}\u001e")
            : "alive"u8.ToArray();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var answers = await Task.WhenAll(sample.Select(async client =>
        {
            try
            {
                var frame = new byte[payload.Length + 16];
                int n = Frames.Write(frame, 0x1, payload, client.MaskKey, compressed: false);
                await client.Stream.WriteAsync(frame.AsMemory(0, n), timeout.Token);
                while (true)
                {
                    while (client.TryNext(out var m))
                        if (m.Span.IndexOf("alive"u8) >= 0) return true; // SignalR pings ({"type":6}) are skipped
                    if (!await client.FillAsync(timeout.Token)) return false;
                }
            }
            catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException or System.Net.Sockets.SocketException)
            {
                return false;
            }
        }));
        return answers.Count(a => a);
    }

    /// <summary>VmRSS of a process in KiB from /proc/PID/status (0 when unknown).</summary>
    public static long ReadRssKiB(int pid)
    {
        if (pid <= 0) return 0;
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                    return long.Parse(line.AsSpan(6).Trim().ToString().Split(' ')[0]);
        }
        catch (IOException) { }
        return 0;
    }
}

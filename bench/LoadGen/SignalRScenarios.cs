using System.Diagnostics;
using System.Text;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.SignalR.Client;

namespace LoadGen;

/// <summary>
/// The echo, fanout and chat scenarios through Microsoft.AspNetCore.SignalR.Client (JSON protocol,
/// WebSockets, negotiation skipped) against the SignalR peer's hub. This client is much heavier
/// than the raw one (a string and several objects per message, a Task per send): its numbers
/// measure SignalR client and server together. Payload strings use the same layout as raw runs.
/// </summary>
public static class SignalRScenarios
{
    static async Task<HubConnection[]> ConnectAllAsync(Options o, int count)
    {
        string url = $"{(o.Tls ? "https" : "http")}://127.0.0.1:{o.Port}/hub";
        var connections = new HubConnection[count];
        await Parallel.ForAsync(0, count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Math.Min(o.Concurrency, 16)) }, async (i, token) =>
        {
            var connection = new HubConnectionBuilder()
                .WithUrl(url, options =>
                {
                    options.SkipNegotiation = true;
                    options.Transports = HttpTransportType.WebSockets;
                    if (o.Tls)
                    {
                        options.HttpMessageHandlerFactory = _ => new HttpClientHandler { ServerCertificateCustomValidationCallback = (_, _, _, _) => true };
                        options.WebSocketConfiguration = ws => ws.RemoteCertificateValidationCallback = (_, _, _, _) => true;
                    }
                })
                .Build();
            connections[i] = connection;
            await connection.StartAsync(token);
        });
        return connections;
    }

    static string Stamp(byte[] template, ulong seq)
    {
        Payload.WriteHex(template.AsSpan(Payload.SeqAt, 16), seq);
        Payload.WriteHex(template.AsSpan(Payload.TimeAt, 16), (ulong)Stopwatch.GetTimestamp());
        return Encoding.ASCII.GetString(template);
    }

    static async Task StopAsync(HubConnection[] connections)
    {
        await Task.WhenAny(Task.WhenAll(connections.Select(c => c.DisposeAsync().AsTask())), Task.Delay(5000));
    }

    public static async Task EchoAsync(Options o, Result result)
    {
        var connections = await ConnectAllAsync(o, o.Connections);
        var received = new long[connections.Length];
        var histograms = connections.Select(_ => new Histogram()).ToArray();
        long disorder = 0, bad = 0, errors = 0;
        string? firstError = null;
        for (int i = 0; i < connections.Length; i++)
        {
            int index = i;
            var connection = connections[i];
            var template = Payload.Template(o.Size, index);
            var check = Payload.Template(o.Size, index);
            ulong nextSeq = (ulong)o.InFlight, expected = 0;
            var histogram = histograms[index];
            connection.On<string>("echo", async message =>
            {
                byte[] bytes = Encoding.ASCII.GetBytes(message);
                if (!Payload.TryRead(bytes, check, out ulong seq, out long timestamp, out _)) Interlocked.Increment(ref bad);
                else
                {
                    if (seq != expected) Interlocked.Increment(ref disorder);
                    expected = seq + 1;
                    if (Phase.Current == Phase.Measure) histogram.Record(Histogram.MicrosSince(timestamp));
                }
                Volatile.Write(ref received[index], received[index] + 1);
                if (!Phase.Running) return;
                try { await connection.SendAsync("Echo", Stamp(template, nextSeq++)); }
                catch (Exception e) when (Phase.Running) { Interlocked.Increment(ref errors); Interlocked.CompareExchange(ref firstError, e.Message, null); }
            });
            for (int k = 0; k < o.InFlight; k++) await connection.SendAsync("Echo", Stamp(template, (ulong)k));
        }
        long atStart = 0, atEnd = 0;
        double seconds = await Phase.RunAsync(o, () => atStart = received.Sum(), () => atEnd = received.Sum());
        await StopAsync(connections);
        var all = new Histogram();
        foreach (var h in histograms) all.Add(h);
        result.Set("metric", "round trips/s").Set("value", Math.Round((atEnd - atStart) / seconds))
            .Set("p50us", all.Percentile(50)).Set("p99us", all.Percentile(99))
            .Set("connections", o.Connections).Set("inflight", o.InFlight).Set("size", o.Size)
            .Set("seconds", Math.Round(seconds, 2)).Set("orderErrors", disorder).Set("badMessages", bad)
            .Set("errors", errors).Set("firstError", firstError).Set("note", "SignalR .NET client (heavier than the raw client)")
            .ServerCost(atEnd - atStart, seconds);
    }

    public static async Task MeshAsync(Options o, Result result)
    {
        bool chat = o.Scenario == "chat";
        int count = chat ? o.Connections : o.Subscribers + 1;
        int publisher = count - 1;
        var mesh = chat
            ? new Mesh(count, _ => true, _ => true, o.Window)
            : new Mesh(count, i => i == publisher, i => i != publisher, o.Window);
        var connections = await ConnectAllAsync(o, count);
        var check = Payload.Template(o.Size, 0);
        long errors = 0;
        string? firstError = null;
        for (int i = 0; i < count; i++)
        {
            int r = i;
            connections[i].On<string>("fanout", message =>
            {
                mesh.Receive(r, Encoding.ASCII.GetBytes(message), check, wasCompressed: false, deflate: false);
                mesh.Progress(r);
            });
        }
        await Task.Delay(300);

        async Task Send(int s)
        {
            var template = Payload.Template(o.Size, s);
            try
            {
                while (Phase.Running)
                {
                    long allowed = mesh.Allowed(s);
                    if (allowed <= 0) { await mesh.WaitForWindowAsync(s); continue; }
                    for (long k = 0; k < allowed && Phase.Running; k++)
                    {
                        await connections[s].SendAsync("Fanout", Stamp(template, (ulong)mesh.Sent(s)));
                        mesh.AddSent(s, 1);
                    }
                }
            }
            catch (Exception e) when (Phase.Running) { Interlocked.Increment(ref errors); Interlocked.CompareExchange(ref firstError, e.Message, null); }
        }

        var senders = Enumerable.Range(0, count).Where(s => mesh.IsSender[s]).Select(s => Task.Run(() => Send(s))).ToArray();
        long atStart = 0, atEnd = 0;
        double seconds = await Phase.RunAsync(o, () => atStart = mesh.TotalDelivered(), () => atEnd = mesh.TotalDelivered());
        await Task.WhenAny(Task.WhenAll(senders), Task.Delay(2000));
        await StopAsync(connections);
        long sent = Enumerable.Range(0, count).Sum(mesh.Sent);
        result.Set("metric", "deliveries/s").Set("value", Math.Round((atEnd - atStart) / seconds))
            .Set(chat ? "clients" : "subscribers", chat ? count : o.Subscribers).Set("size", o.Size).Set("window", o.Window)
            .Set("seconds", Math.Round(seconds, 2)).Set("sent", sent).Set("lost", mesh.Lost).Set("orderErrors", mesh.Disorder)
            .Set("badMessages", mesh.Bad).Set("selfDeliveries", mesh.Self)
            .Set("errors", errors).Set("firstError", firstError).Set("note", "SignalR .NET client (heavier than the raw client)")
            .ServerCost(atEnd - atStart, seconds);
    }
}

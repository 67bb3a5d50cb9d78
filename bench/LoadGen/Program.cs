// The Realtime benchmark load generator. Every run connects only to 127.0.0.1, is bounded in
// time (warmup + measured window, or a connect timeout), and prints one JSON line of results.
//
//   LoadGen --scenario echo|fanout|chat|connections|channels --port P [--protocol raw|signalr] [--tls] [--deflate]
//           [--connections C] [--inflight P] [--size S] [--subscribers N] [--window W]
//           [--warmup s] [--duration s] [--concurrency K] [--settle s] [--pid PID] [--label NAME] [--round R]
//           [--port2 P2 --pid2 PID2] [--sync] [--name SCENARIO]
//     fanout with --port2: the publisher and half the subscribers on --port, the other half on --port2
//     (two nodes sharing a backplane); --sync (implied by --port2) first probes until every subscriber
//     gets messages; --name sets the scenario name in the result.
//     channels: fanout through the channels protocol on /channels (positions, history, acks), offsets checked
//     per subscriber; --port2 splits the subscribers over two nodes as for fanout.
//   LoadGen freeport                       prints a free TCP port on 127.0.0.1
//   LoadGen wait PORT SECONDS              exits 0 once 127.0.0.1:PORT accepts connections
//   LoadGen report RESULTS.jsonl BENCHMARKS.md CHART.svg [KEY=VALUE...]   writes the tables and the chart
using System.Net;
using System.Net.Sockets;
using LoadGen;

if (args.Length > 0 && args[0] == "freeport")
{
    using var listener = new TcpListener(IPAddress.Loopback, 0);
    listener.Start();
    Console.WriteLine(((IPEndPoint)listener.LocalEndpoint).Port);
    return 0;
}
if (args.Length > 0 && args[0] == "wait")
{
    int port = int.Parse(args[1]);
    var deadline = DateTime.UtcNow.AddSeconds(double.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture));
    while (DateTime.UtcNow < deadline)
    {
        try
        {
            using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await probe.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
            return 0;
        }
        catch (SocketException)
        {
            await Task.Delay(100);
        }
    }
    return 1;
}
if (args.Length > 0 && args[0] == "report")
{
    Report.Write(args[1], args[2], args[3], args.Skip(4).ToArray());
    return 0;
}

Options o;
try
{
    o = Options.Parse(args);
}
catch (Exception e) when (e is ArgumentException or FormatException)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

var result = new Result(o);
try
{
    Task run = (o.Scenario, o.Protocol) switch
    {
        ("echo", "raw") => RawScenarios.EchoAsync(o, result),
        ("fanout" or "chat", "raw") => RawScenarios.MeshAsync(o, result),
        ("echo", "signalr") => SignalRScenarios.EchoAsync(o, result),
        ("fanout" or "chat", "signalr") => SignalRScenarios.MeshAsync(o, result),
        ("connections", _) => RawScenarios.ConnectionsAsync(o, result),
        ("channels", "raw") => ChannelScenarios.RunAsync(o, result),
        _ => throw new ArgumentException($"unknown scenario {o.Scenario}"),
    };
    // A hard bound on the whole run, whatever happens to the server.
    double limit = o.Warmup + o.Duration + o.Settle + 30 + (o.Scenario == "connections" ? Math.Max(60, o.Connections / 100.0) : 60);
    if (await Task.WhenAny(run, Task.Delay(TimeSpan.FromSeconds(limit))) != run)
        result.Set("error", $"run did not finish within {limit} s");
    else
        await run;
}
catch (Exception e)
{
    result.Set("error", e.GetType().Name + ": " + e.Message);
}
result.Print();
// Do not wait for stuck sockets or connections: the result is out.
Environment.Exit(0);
return 0;

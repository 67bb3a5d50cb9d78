using System.Globalization;

namespace LoadGen;

/// <summary>Command-line settings of one load-generator run (one scenario against one server).</summary>
public sealed class Options
{
    public string Scenario = "echo";
    /// <summary>"raw" (own WebSocket client) or "signalr" (Microsoft.AspNetCore.SignalR.Client against /hub).</summary>
    public string Protocol = "raw";
    public int Port = 8080;
    /// <summary>Fanout: a second node's port (0: none); every other subscriber connects there, the publisher stays on --port.</summary>
    public int Port2;
    /// <summary>Fanout: before the warmup, probe until every subscriber gets messages (implied by --port2).</summary>
    public bool Sync;
    /// <summary>The scenario name in the JSON result (default: the scenario with -deflate/-tls).</summary>
    public string Name = "";
    public bool Tls;
    public bool Deflate;
    /// <summary>Echo: connections; chat: clients; connections: how many to open.</summary>
    public int Connections = 16;
    /// <summary>Echo: messages in flight per connection.</summary>
    public int InFlight = 8;
    /// <summary>Message size in bytes (text, at least 48).</summary>
    public int Size = 64;
    /// <summary>Fanout: subscribers.</summary>
    public int Subscribers = 64;
    /// <summary>Fanout and chat: how far a sender may run ahead of its slowest receiver, in messages.</summary>
    public int Window = 256;
    public double Warmup = 2;
    public double Duration = 5;
    /// <summary>Connections: how many handshakes run at once.</summary>
    public int Concurrency = 64;
    /// <summary>Connections: seconds to wait after opening before reading the server's memory.</summary>
    public double Settle = 5;
    /// <summary>Connections: the server's process id (VmRSS is read from /proc).</summary>
    public int Pid;
    /// <summary>Fanout over two nodes: the second node's process id (its cost is added to the first's).</summary>
    public int Pid2;
    /// <summary>Copied into the JSON result so the runner can collect it.</summary>
    public string Label = "";
    public int Round = 1;

    public string Path => Protocol == "signalr" ? "/hub" : Scenario == "echo" ? "/echo" : Scenario == "connections" ? "/echo" : Scenario == "channels" ? "/channels" : "/fanout";

    public static Options Parse(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            int Int() => int.Parse(Next(), CultureInfo.InvariantCulture);
            double Dbl() => double.Parse(Next(), CultureInfo.InvariantCulture);
            switch (a)
            {
                case "--scenario": o.Scenario = Next(); break;
                case "--protocol": o.Protocol = Next(); break;
                case "--port": o.Port = Int(); break;
                case "--port2": o.Port2 = Int(); break;
                case "--sync": o.Sync = true; break;
                case "--name": o.Name = Next(); break;
                case "--tls": o.Tls = true; break;
                case "--deflate": o.Deflate = true; break;
                case "--connections": o.Connections = Int(); break;
                case "--inflight": o.InFlight = Int(); break;
                case "--size": o.Size = Int(); break;
                case "--subscribers": o.Subscribers = Int(); break;
                case "--window": o.Window = Int(); break;
                case "--warmup": o.Warmup = Dbl(); break;
                case "--duration": o.Duration = Dbl(); break;
                case "--concurrency": o.Concurrency = Int(); break;
                case "--settle": o.Settle = Dbl(); break;
                case "--pid": o.Pid = Int(); break;
                case "--pid2": o.Pid2 = Int(); break;
                case "--label": o.Label = Next(); break;
                case "--round": o.Round = Int(); break;
                default: throw new ArgumentException($"unknown option {a}");
            }
        }
        if (o.Size < Payload.MinSize) throw new ArgumentException($"--size must be at least {Payload.MinSize}");
        if (o.Protocol is not ("raw" or "signalr")) throw new ArgumentException("--protocol is raw or signalr");
        if ((o.Port2 > 0 || o.Sync) && (o.Scenario is not ("fanout" or "channels") || o.Protocol != "raw" || o.Deflate))
            throw new ArgumentException("--port2 and --sync are for the raw fanout and channels scenarios without --deflate");
        if (o.Scenario == "channels" && (o.Protocol != "raw" || o.Deflate))
            throw new ArgumentException("channels is the channels protocol's JSON form, without --deflate");
        return o;
    }
}

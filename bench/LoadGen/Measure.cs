using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace LoadGen;

/// <summary>Run phases: warmup, then a fixed measured window, then stop. Read with Volatile.</summary>
public static class Phase
{
    public const int Warmup = 0, Measure = 1, Done = 2;
    static int current;
    public static int Current => Volatile.Read(ref current);
    public static bool Running => Current != Done;
    public static void Set(int phase) => Volatile.Write(ref current, phase);

    /// <summary>
    /// Waits out the warmup, calls snapshot at the start and the end of the measured window,
    /// and returns the window's exact length in seconds.
    /// </summary>
    public static async Task<double> RunAsync(Options o, Action atStart, Action atEnd)
    {
        Set(Warmup);
        await Task.Delay(TimeSpan.FromSeconds(o.Warmup));
        atStart();
        ServerAtStart = ServerUsage.Read(o.Pid, o.Pid2);
        ClientAllocatedAtStart = GC.GetTotalAllocatedBytes(precise: false);
        Set(Measure);
        long start = Stopwatch.GetTimestamp();
        await Task.Delay(TimeSpan.FromSeconds(o.Duration));
        Set(Done);
        atEnd();
        ClientAllocatedAtEnd = GC.GetTotalAllocatedBytes(precise: false);
        ServerAtEnd = ServerUsage.Read(o.Pid, o.Pid2);
        return Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    /// <summary>The server's counters at the start and the end of the measured window (when --pid was given).</summary>
    public static ServerUsage? ServerAtStart, ServerAtEnd;

    /// <summary>The load generator's own allocations at the start and the end of the measured window.</summary>
    public static long ClientAllocatedAtStart, ClientAllocatedAtEnd;
}

/// <summary>
/// A server process's CPU time and context switches (summed over its threads) from /proc (Linux),
/// so results can say what one operation cost the server. Socket sends and receives are not in
/// /proc/PID/io's syscall counts, so context switches stand in for wakeups.
/// </summary>
public sealed record ServerUsage(double CpuSeconds, long ContextSwitches)
{
    /// <summary>Two server processes (two nodes) together; just the first when pid2 is 0.</summary>
    public static ServerUsage? Read(int pid, int pid2)
    {
        var a = Read(pid);
        if (pid2 <= 0 || a is null) return a;
        var b = Read(pid2);
        return b is null ? null : new ServerUsage(a.CpuSeconds + b.CpuSeconds, a.ContextSwitches + b.ContextSwitches);
    }

    public static ServerUsage? Read(int pid)
    {
        if (pid <= 0) return null;
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            // Fields 14 and 15 of /proc/PID/stat (utime, stime) are the 12th and 13th after the command name.
            double ticks = double.Parse(fields[11], CultureInfo.InvariantCulture) + double.Parse(fields[12], CultureInfo.InvariantCulture);
            long switches = 0;
            foreach (string task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
            {
                try
                {
                    foreach (string line in File.ReadLines(Path.Combine(task, "status")))
                        if (line.Contains("ctxt_switches:", StringComparison.Ordinal))
                            switches += long.Parse(line.AsSpan(line.IndexOf(':') + 1).Trim(), CultureInfo.InvariantCulture);
                }
                catch (IOException) { } // the thread ended meanwhile
            }
            return new ServerUsage(ticks / 100.0, switches); // USER_HZ is 100 on Linux
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return null;
        }
    }
}

/// <summary>
/// A latency histogram in microseconds without allocation per record: exact below 1024 µs,
/// then 128 sub-buckets per power of two (under 1% error). One per connection, merged at the end.
/// </summary>
public sealed class Histogram
{
    const int Linear = 1024, Sub = 128;
    readonly long[] counts = new long[Linear + 40 * Sub];
    public long Count { get; private set; }

    public static long MicrosSince(long timestamp) => (Stopwatch.GetTimestamp() - timestamp) * 1_000_000 / Stopwatch.Frequency;

    public void Record(long micros)
    {
        if (micros < 0) micros = 0;
        counts[Index(micros)]++;
        Count++;
    }

    static int Index(long v)
    {
        if (v < Linear) return (int)v;
        int log = 63 - (int)long.LeadingZeroCount(v); // >= 10
        int sub = (int)((v >> (log - 7)) & (Sub - 1));
        return Math.Min(Linear + (log - 10) * Sub + sub, Linear + 40 * Sub - 1);
    }

    static long Value(int index)
    {
        if (index < Linear) return index;
        int log = (index - Linear) / Sub + 10;
        int sub = (index - Linear) % Sub;
        return (1L << log) + ((long)sub << (log - 7));
    }

    public void Add(Histogram other)
    {
        for (int i = 0; i < counts.Length; i++) counts[i] += other.counts[i];
        Count += other.Count;
    }

    public double Percentile(double p)
    {
        if (Count == 0) return 0;
        long rank = (long)Math.Ceiling(p / 100 * Count);
        long seen = 0;
        for (int i = 0; i < counts.Length; i++)
        {
            seen += counts[i];
            if (seen >= rank) return Value(i);
        }
        return Value(counts.Length - 1);
    }
}

/// <summary>Collects one run's numbers and prints them as one JSON line.</summary>
public sealed class Result
{
    readonly JsonObject json = new();
    readonly TimeSpan cpuAtStart = Process.GetCurrentProcess().TotalProcessorTime;
    readonly long startedAt = Stopwatch.GetTimestamp();

    public Result(Options o)
    {
        json["scenario"] = o.Name.Length > 0 ? o.Name : o.Scenario + (o.Deflate ? "-deflate" : "") + (o.Tls ? "-tls" : "");
        json["server"] = o.Label;
        json["round"] = o.Round;
        json["protocol"] = o.Protocol;
    }

    public Result Set(string key, JsonNode? value) { json[key] = value; return this; }

    /// <summary>Adds the server's cost per operation over the measured window (needs --pid).</summary>
    public Result ServerCost(double operations, double seconds)
    {
        if (operations > 0)
            json["clientBytesAllocatedPerOp"] = Math.Round((Phase.ClientAllocatedAtEnd - Phase.ClientAllocatedAtStart) / operations, 1);
        var (a, b) = (Phase.ServerAtStart, Phase.ServerAtEnd);
        if (a is null || b is null || operations <= 0 || seconds <= 0) return this;
        double cpu = b.CpuSeconds - a.CpuSeconds;
        json["serverCores"] = Math.Round(cpu / seconds, 2);
        json["serverCpuUsPerOp"] = Math.Round(cpu * 1e6 / operations, 3);
        json["serverSwitchesPerOp"] = Math.Round((b.ContextSwitches - a.ContextSwitches) / operations, 3);
        return this;
    }

    public void Print()
    {
        double wall = Stopwatch.GetElapsedTime(startedAt).TotalSeconds;
        double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpuAtStart).TotalSeconds;
        // How busy the load generator was: cores used on average over the whole run (this machine has Environment.ProcessorCount).
        json["clientCores"] = Math.Round(cpu / Math.Max(wall, 0.001), 2);
        Console.Out.WriteLine(json.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));
        Console.Out.Flush();
    }

    public static double Round(double v, int digits = 1) => Math.Round(v, digits);
    public static string Num(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);
}

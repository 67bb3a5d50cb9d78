// Micro-benchmarks of the protocol core's hot paths (BenchmarkDotNet, short job, in process).
//   Micro [--write BENCHMARKS.md] [BenchmarkDotNet switcher arguments, e.g. --filter *Unmask*]
// With --write, the results replace the micro-benchmarks section of that file (between markers).
using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Loggers;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Micro;

string? write = null;
int at = Array.IndexOf(args, "--write");
if (at >= 0)
{
    write = args[at + 1];
    args = args.Take(at).Concat(args.Skip(at + 2)).ToArray();
}
if (!args.Contains("--filter")) args = [.. args, "--filter", "*"];

var job = Job.ShortRun.WithWarmupCount(3).WithIterationCount(5).WithToolchain(InProcessEmitToolchain.Instance).WithId("Short");
var config = DefaultConfig.Instance
    .AddJob(job)
    .AddDiagnoser(MemoryDiagnoser.Default)
    .AddColumn(new GigabytesPerSecondColumn())
    .WithOption(ConfigOptions.JoinSummary, false)
    .WithArtifactsPath(Path.Combine(AppContext.BaseDirectory, "BenchmarkDotNet.Artifacts"));

var summaries = BenchmarkSwitcher.FromAssembly(typeof(FrameDecode).Assembly).Run(args, config).ToArray();

if (write is not null)
{
    const string start = "<!-- micro:start -->", end = "<!-- micro:end -->";
    var section = new System.Text.StringBuilder();
    section.AppendLine(start).AppendLine("## Micro-benchmarks").AppendLine();
    section.AppendLine("The protocol core's hot paths and the host's send, publish and topic registry (`bench/Micro`, BenchmarkDotNet, a short in-process job: 3 warmups, 5 iterations,");
    section.AppendLine("so expect a few percent of noise). Per-frame rows divide one call over 1,000 frames by 1,000. `GB/s` is bytes");
    section.AppendLine("processed per second for the sized benchmarks; `Span.CopyTo` of the same size is the limit masking can reach.");
    section.AppendLine("NativeReceive, NativeEcho and NativeSend run a native-transport connection over one end of a Unix socketpair (every write a real");
    section.AppendLine("`send(2)`, the other end drained): 100 frames from the loop's buffer to a Message handler, the same to an echo handler whose");
    section.AppendLine("replies go out corked in one `send(2)`, and 100 `Send` calls from outside the loop written by the thread-pool writer (per message).");
    section.AppendLine($"Run {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC with `bench/run-micro` on {Environment.ProcessorCount} cores.").AppendLine();
    foreach (var summary in summaries)
    {
        var logger = new AccumulationLogger();
        MarkdownExporter.GitHub.ExportToLog(summary, logger);
        string text = logger.GetLog();
        // Keep the table (and its legend-free header lines), drop BenchmarkDotNet's environment preamble after the first.
        int table = text.IndexOf("| Method", StringComparison.Ordinal);
        if (table < 0) table = text.IndexOf('|');
        string title = summary.BenchmarksCases.FirstOrDefault()?.Descriptor.Type.Name ?? "?";
        section.AppendLine($"### {title}").AppendLine();
        if (summary == summaries[0] && table > 0) section.AppendLine("```").AppendLine(text[..table].Replace("```", "").Trim()).AppendLine("```").AppendLine();
        section.AppendLine(table >= 0 ? text[table..].Trim() : text.Trim()).AppendLine();
    }
    section.Append(end);
    string existing = File.Exists(write) ? File.ReadAllText(write) : "# Benchmarks\n\n";
    int a = existing.IndexOf(start, StringComparison.Ordinal), b = existing.IndexOf(end, StringComparison.Ordinal);
    string updated = a >= 0 && b > a
        ? existing[..a] + section + existing[(b + end.Length)..]
        : existing.TrimEnd() + "\n\n" + section + "\n";
    File.WriteAllText(write, updated);
    Console.WriteLine($"wrote the micro-benchmarks section of {write}");
}
return summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success)) ? 1 : 0;

/// <summary>Bytes per second for benchmarks with a Size (or Payload) parameter: size / mean time.</summary>
sealed class GigabytesPerSecondColumn : IColumn
{
    public string Id => nameof(GigabytesPerSecondColumn);
    public string ColumnName => "GB/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "Bytes processed per second, in 10^9 (Size / Mean)";

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var size = benchmarkCase.Parameters.Items.FirstOrDefault(p => p.Name == "Size");
        var report = summary[benchmarkCase];
        if (size?.Value is not int bytes || report?.ResultStatistics is null) return "-";
        double nanoseconds = report.ResultStatistics.Mean;
        return (bytes / nanoseconds).ToString("0.00", CultureInfo.InvariantCulture);
    }

    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
}

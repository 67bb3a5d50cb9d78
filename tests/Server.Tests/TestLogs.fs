/// Log capture for tests: a logger provider added to a test server that keeps the entries it is
/// given, so a test can assert what the host (or Kestrel) logged.
module Realtime.Server.Tests.TestLogs

open System
open System.Collections.Concurrent
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging

/// One log entry, as captured.
type LogEntry =
    { Category: string
      Level: LogLevel
      EventId: int
      Message: string
      Error: exn }

    /// The entry on one line: level, category, event id, message and exception.
    member entry.Line = $"{entry.Level} {entry.Category}[{entry.EventId}]: {entry.Message} {entry.Error}"

type private CapturingLogger(category: string, minimum: LogLevel, sink: ConcurrentQueue<LogEntry>) =
    interface ILogger with
        member _.BeginScope<'TState>(_state: 'TState) : IDisposable = null
        member _.IsEnabled(level: LogLevel) = level >= minimum
        member _.Log<'TState>(level: LogLevel, eventId: EventId, state: 'TState, error: exn, formatter: Func<'TState, exn, string>) =
            if level >= minimum then
                sink.Enqueue
                    { Category = category
                      Level = level
                      EventId = eventId.Id
                      Message = formatter.Invoke(state, error)
                      Error = error }

/// A logger provider that keeps every entry at or above `minimum`, from every category (the
/// host's and Kestrel's), among those that pass the host's own filter (Warning and up in TestHost).
type CapturedLogs(minimum: LogLevel) =
    let entries = ConcurrentQueue<LogEntry>()

    /// Every entry kept so far, oldest first.
    member _.Entries = entries.ToArray()

    /// The entries at Error or above.
    member _.Errors = entries.ToArray() |> Array.filter (fun entry -> entry.Level >= LogLevel.Error)

    /// Every entry kept so far, each on one line.
    member _.Lines = entries.ToArray() |> Array.map (fun entry -> entry.Line)

    /// Whether an entry with this event id and level was kept.
    member _.Has (eventId: int) (level: LogLevel) = entries |> Seq.exists (fun entry -> entry.EventId = eventId && entry.Level = level)

    interface ILoggerProvider with
        member _.CreateLogger(category: string) = CapturingLogger(category, minimum, entries) :> ILogger
        member _.Dispose() = ()

/// Adds a provider capturing entries at or above `minimum` to a built app (call from mapRoutes,
/// before it starts).
let captureLogs (minimum: LogLevel) (app: WebApplication) =
    let logs = new CapturedLogs(minimum)
    app.Services.GetRequiredService<ILoggerFactory>().AddProvider logs
    logs

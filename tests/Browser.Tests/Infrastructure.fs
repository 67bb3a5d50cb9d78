/// Real Kestrel dev servers on 127.0.0.1, Debian's Chromium through Playwright, bounded waits.
module Realtime.Browser.Tests.Infrastructure

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Hosting.Server
open Microsoft.AspNetCore.Hosting.Server.Features
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Microsoft.Playwright
open Expecto
open Realtime
open Realtime.TestSupport.SuiteTransport

// ---------------------------------------------------------------------------------------------
// Bounded waits
// ---------------------------------------------------------------------------------------------

/// Polls `condition` every 25 ms until it holds; fails with `what` after `timeoutMs`.
let waitUntil (what: string) (timeoutMs: int) (condition: unit -> bool) : Task =
    task {
        let clock = Stopwatch.StartNew()
        while not (condition ()) do
            if clock.ElapsedMilliseconds > int64 timeoutMs then failtestf "timed out after %d ms waiting for %s" timeoutMs what
            do! Task.Delay 25
    }

/// Polls an asynchronous condition (exceptions count as false, e.g. while a page navigates).
let waitUntilAsync (what: string) (timeoutMs: int) (condition: unit -> Task<bool>) : Task =
    task {
        let clock = Stopwatch.StartNew()
        let mutable ok = false
        while not ok do
            let! result = task { try return! condition () with _ -> return false }
            ok <- result
            if not ok then
                if clock.ElapsedMilliseconds > int64 timeoutMs then failtestf "timed out after %d ms waiting for %s" timeoutMs what
                do! Task.Delay 25
    }

/// A test case bounded by 60 s as a whole.
let browserTest (name: string) (body: unit -> Task) =
    testCaseTask name (fun () ->
        task {
            try
                do! (body ()).WaitAsync(TimeSpan.FromSeconds 60.0)
            with :? TimeoutException -> failtestf "%s: over 60 s" name
        })

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// The repository's root folder (where Realtime.sln is).
let repositoryRoot =
    let rec up (dir: DirectoryInfo) =
        if isNull dir then failwith "Realtime.sln not found above the test binaries"
        elif File.Exists(Path.Combine(dir.FullName, "Realtime.sln")) then dir.FullName
        else up dir.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

let private sites = ConcurrentBag<string>()

/// Deletes the temporary folders the tests made.
let deleteSites () =
    for root in sites do
        try Directory.Delete(root, true) with _ -> ()

/// A new temporary folder holding `files` (path relative to it, content), deleted at the end of the run.
let site (files: (string * string) list) : string =
    let root = Path.Combine(Path.GetTempPath(), "realtime-browser-" + Guid.NewGuid().ToString("N").Substring(0, 12))
    sites.Add root
    for (path, content) in files do
        let full = Path.Combine(root, path)
        Directory.CreateDirectory(Path.GetDirectoryName full) |> ignore
        File.WriteAllText(full, content)
    root

/// A small HTML page.
let page (title: string) (body: string) =
    $"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>{body}</body></html>"

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// One log entry: category, event id, level, message.
type LogEntry = { Category: string; EventId: int; Level: LogLevel; Message: string }

type private CapturingLogger(category: string, sink: ConcurrentQueue<LogEntry>) =
    interface ILogger with
        member _.BeginScope _ = null
        member _.IsEnabled level = level >= LogLevel.Information
        member _.Log(level, eventId, state, ex, formatter) =
            sink.Enqueue { Category = category; EventId = eventId.Id; Level = level; Message = formatter.Invoke(state, ex) }

/// Captures the Realtime categories' log entries.
type CapturingProvider() =
    let entries = ConcurrentQueue<LogEntry>()
    member _.Entries = entries
    interface ILoggerProvider with
        member _.CreateLogger category =
            if category.StartsWith "Realtime" then CapturingLogger(category, entries) :> ILogger
            else Abstractions.NullLogger.Instance
        member _.Dispose() = ()

/// A running dev server.
type DevHost =
    { App: WebApplication
      Url: string
      Port: int
      DevServer: RealtimeDevServer
      Logs: CapturingProvider }

    member host.WebSockets = host.DevServer.WebSockets

    /// Stops the server (bounded by 10 s) and releases it.
    member host.StopAsync() : Task =
        task {
            use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
            try do! host.App.StopAsync(cancel.Token) with _ -> ()
            do! host.App.DisposeAsync()
        }

    interface IAsyncDisposable with
        member host.DisposeAsync() = ValueTask(host.StopAsync())

/// Starts a dev server for `root` with `plugins` on 127.0.0.1:`port` (0 for an ephemeral port);
/// `routes` maps more routes. A port just released may still be taken for a moment: retried for 5 s.
let startDevOn (port: int) (root: string) (plugins: RealtimePlugin list) (watch: bool) (routes: WebApplication -> unit) : Task<DevHost> =
    task {
        let logs = new CapturingProvider()
        let build () =
            let builder = WebApplication.CreateBuilder([||])
            builder.WebHost.UseUrls($"http://127.0.0.1:{port}") |> ignore
            useSuiteTransport builder.WebHost
            builder.Logging.ClearProviders().AddProvider(logs).SetMinimumLevel(LogLevel.Information) |> ignore
            builder.Services.AddRealtime() |> ignore
            let app = builder.Build()
            let devServer = app.UseRealtimeDevServer(root, plugins, watch)
            routes app
            app, devServer
        let clock = Stopwatch.StartNew()
        let mutable started = None
        while started.IsNone do
            let app, devServer = build ()
            try
                do! app.StartAsync()
                started <- Some(app, devServer)
            with :? IOException when clock.Elapsed < TimeSpan.FromSeconds 5.0 ->
                do! app.DisposeAsync()
                do! Task.Delay 100
        let app, devServer = started.Value
        let url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>().Addresses |> Seq.head
        return { App = app; Url = url; Port = Uri(url).Port; DevServer = devServer; Logs = logs }
    }

/// Starts a dev server on an ephemeral port.
let startDev root plugins watch = startDevOn 0 root plugins watch ignore

/// A port free right now.
let freePort () =
    let listener = new TcpListener(IPAddress.Loopback, 0)
    listener.Start()
    let port = (listener.LocalEndpoint :?> IPEndPoint).Port
    listener.Stop()
    port

let http = new Net.Http.HttpClient(Timeout = TimeSpan.FromSeconds 10.0)

// ---------------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------------

let private launch () : Task<IPlaywright * IBrowser> =
    task {
        let! playwright = Playwright.CreateAsync()
        let options =
            BrowserTypeLaunchOptions(
                ExecutablePath = "/usr/bin/chromium",
                Headless = true,
                Timeout = 30000.0f,
                Args =
                    [ "--headless"; "--no-sandbox"; "--disable-gpu"; "--disable-quic"; "--no-first-run"
                      "--disable-background-networking"; "--disable-component-update"; "--disable-sync"
                      // Names under .test (RFC 2606) reach 127.0.0.1: other sites for the dev server's security tests.
                      "--host-resolver-rules=MAP *.test 127.0.0.1" ])
        let! browser = playwright.Chromium.LaunchAsync(options)
        return playwright, browser
    }

let private shared = lazy (launch ())

/// Closes the browser if it was started.
let closeBrowser () =
    if shared.IsValueCreated then
        try
            let playwright, browser = shared.Value.Result
            browser.CloseAsync().Wait(TimeSpan.FromSeconds 10.0) |> ignore
            playwright.Dispose()
        with _ -> ()

/// A page in its own browser context, with its console messages and load count.
type BrowserPage =
    { Page: IPage
      Context: IBrowserContext
      Console: ConcurrentQueue<string>
      Loads: int ref }

    /// True when a console message contains `text`.
    member p.Logged(text: string) = p.Console |> Seq.exists (fun m -> m.Contains(text: string))

    /// Waits (bounded) for a console message containing `text`.
    member p.WaitForLog(text: string, ?timeoutMs: int) =
        waitUntil $"console message \"{text}\" (console: {String.Join(Environment.NewLine, p.Console)})" (defaultArg timeoutMs 10000) (fun () -> p.Logged text)

    /// Runs a JavaScript function in the page.
    member p.Eval<'T>(script: string) : Task<'T> = p.Page.EvaluateAsync<'T>(script)

    /// Runs a JavaScript function that returns nothing useful.
    member p.Run(script: string) : Task = p.Page.EvaluateAsync(script) :> Task

    member p.CloseAsync() : Task = p.Context.CloseAsync()

    interface IAsyncDisposable with
        member p.DisposeAsync() = ValueTask(p.Context.CloseAsync())

/// Opens `url` in a new context of the shared browser, whose options `configure` may change.
let openPageWith (configure: BrowserNewContextOptions -> unit) (url: string) : Task<BrowserPage> =
    task {
        let! _, browser = shared.Value
        let options = BrowserNewContextOptions(ViewportSize = ViewportSize(Width = 900, Height = 560))
        configure options
        let! context = browser.NewContextAsync(options)
        context.SetDefaultTimeout 10000.0f
        context.SetDefaultNavigationTimeout 10000.0f
        let! page = context.NewPageAsync()
        let console = ConcurrentQueue<string>()
        let loads = ref 0
        page.Console.Add(fun message -> console.Enqueue message.Text)
        page.PageError.Add(fun error -> console.Enqueue("pageerror: " + error))
        page.Load.Add(fun _ -> Interlocked.Increment loads |> ignore)
        let! _ = page.GotoAsync(url)
        return { Page = page; Context = context; Console = console; Loads = loads }
    }

/// Opens `url` in a new context of the shared browser.
let openPage (url: string) : Task<BrowserPage> = openPageWith ignore url

/// The client module's exports, in page scripts: `const c = await client();`.
let clientImport = "const client = () => import('/__realtime__/client.js');"

/// A log line the hooks test looks for.
type Microsoft.Extensions.Logging.ILogger with
    member logger.LogInformationMarker() = logger.Log(LogLevel.Information, EventId(0), "marker", null, Func<string, exn, string>(fun s _ -> s))

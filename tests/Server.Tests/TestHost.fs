/// Starts real Kestrel servers on 127.0.0.1 with ephemeral ports, and finds the repository's files.
module Realtime.Server.Tests.TestHost

open System
open System.IO
open System.Net.WebSockets
open System.Threading
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Hosting.Server
open Microsoft.AspNetCore.Hosting.Server.Features
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Realtime
open Realtime.TestSupport.SuiteTransport

/// A running server: its base address and services. Disposing stops it.
type RunningServer =
    {
        /// The application.
        App: WebApplication
        /// For example http://127.0.0.1:41234
        HttpUrl: string
        /// For example ws://127.0.0.1:41234
        WsUrl: string
        /// The Realtime server from DI.
        Realtime: IRealtimeServer
    }

    /// The port Kestrel bound.
    member server.Port = Uri(server.HttpUrl).Port

    /// Stops the server (bounded by 10 s) and releases it.
    member server.StopAsync() : Task =
        task {
            use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
            try do! server.App.StopAsync(cancel.Token) with _ -> ()
            do! server.App.DisposeAsync()
        }

    interface IDisposable with
        member server.Dispose() = server.StopAsync().Wait()

/// Which transport one test host runs on.
type HostTransport =
    /// The suite's transport (REALTIME_TEST_TRANSPORT): every host whose test is not about a transport.
    | FollowSuite
    /// Kestrel's socket transport whatever the run asks for: the test is about another path on purpose
    /// (through the route, direct connections, TLS, managed sockets), or sets its transport itself.
    | OwnTransport

/// Starts a server with Realtime added (options set by `configureOptions`) and the app's routes
/// mapped by `mapRoutes`, on `transport`; `configureBuilder` runs after the defaults (listening on
/// http://127.0.0.1:0, warnings only) so it can change them, for example to serve HTTPS.
let startOn (transport: HostTransport) (configureBuilder: WebApplicationBuilder -> unit) (configureOptions: RealtimeOptions -> unit) (mapRoutes: WebApplication -> unit) : Task<RunningServer> =
    task {
        let builder = WebApplication.CreateBuilder([||])
        builder.WebHost.UseUrls("http://127.0.0.1:0") |> ignore
        if transport = FollowSuite then useSuiteTransport builder.WebHost
        builder.Logging.ClearProviders().SetMinimumLevel(LogLevel.Warning) |> ignore
        builder.Services.AddRealtime(Action<RealtimeOptions> configureOptions) |> ignore
        configureBuilder builder
        let app = builder.Build()
        mapRoutes app
        do! app.StartAsync()
        let addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>().Addresses
        let url = Seq.head addresses
        return
            { App = app
              HttpUrl = url
              WsUrl = url.Replace("https://", "wss://").Replace("http://", "ws://")
              Realtime = app.Services.GetRequiredService<IRealtimeServer>() }
    }

/// `startOn` the suite's transport.
let startWith (configureBuilder: WebApplicationBuilder -> unit) (configureOptions: RealtimeOptions -> unit) (mapRoutes: WebApplication -> unit) : Task<RunningServer> =
    startOn FollowSuite configureBuilder configureOptions mapRoutes

/// Starts a server on 127.0.0.1:0, on the suite's transport, with Realtime added (options set by
/// `configureOptions`) and the app's routes mapped by `mapRoutes`.
let start (configureOptions: RealtimeOptions -> unit) (mapRoutes: WebApplication -> unit) : Task<RunningServer> =
    startWith ignore configureOptions mapRoutes

/// `start`, on a listener that accepts WebSocket connections directly (UseRealtimeDirectConnections,
/// on Kestrel's socket transport whatever the run asks for) when `direct` is true; on the suite's
/// transport otherwise.
let startIn (direct: bool) (configureOptions: RealtimeOptions -> unit) (mapRoutes: WebApplication -> unit) : Task<RunningServer> =
    if direct then startOn OwnTransport (fun builder -> builder.WebHost.UseRealtimeDirectConnections() |> ignore) configureOptions mapRoutes
    else startWith ignore configureOptions mapRoutes

/// `start` through Kestrel's HTTP layer on its socket transport whatever the run asks for (tests that
/// compare the route with the other paths).
let startThroughRoute (configureOptions: RealtimeOptions -> unit) (mapRoutes: WebApplication -> unit) : Task<RunningServer> =
    startOn OwnTransport ignore configureOptions mapRoutes

/// The repository's root folder (where Realtime.sln is).
let repositoryRoot =
    let rec up (dir: DirectoryInfo) =
        if isNull dir then failwith "Realtime.sln not found above the test binaries"
        elif File.Exists(Path.Combine(dir.FullName, "Realtime.sln")) then dir.FullName
        else up dir.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

/// A connected .NET ClientWebSocket.
let connect (url: string) : Task<ClientWebSocket> =
    task {
        let client = new ClientWebSocket()
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        do! client.ConnectAsync(Uri url, cancel.Token)
        return client
    }

/// Receives one whole message (text or binary) with a timeout; fails the test on timeout.
let receive (client: ClientWebSocket) : Task<WebSocketMessageType * byte[]> =
    task {
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        use stream = new MemoryStream()
        let buffer = Array.zeroCreate 65536
        let mutable finished = false
        let mutable kind = WebSocketMessageType.Text
        while not finished do
            let! result = client.ReceiveAsync(ArraySegment buffer, cancel.Token)
            kind <- result.MessageType
            stream.Write(buffer, 0, result.Count)
            finished <- result.EndOfMessage
        return kind, stream.ToArray()
    }

/// Receives one text message.
let receiveText (client: ClientWebSocket) : Task<string> =
    task {
        let! kind, bytes = receive client
        if kind <> WebSocketMessageType.Text then failwithf "expected text, got %A" kind
        return Text.Encoding.UTF8.GetString bytes
    }

/// Sends a text message.
let sendText (client: ClientWebSocket) (text: string) : Task =
    client.SendAsync(ArraySegment(Text.Encoding.UTF8.GetBytes text), WebSocketMessageType.Text, true, CancellationToken.None)

/// Waits until `condition` holds, polling, for at most `timeout`; returns whether it held.
let eventually (timeout: TimeSpan) (condition: unit -> bool) : Task<bool> =
    task {
        let deadline = DateTime.UtcNow + timeout
        let mutable ok = condition ()
        while not ok && DateTime.UtcNow < deadline do
            do! Task.Delay 10
            ok <- condition ()
        return ok
    }

// ---------------------------------------------------------------------------------------------
// The real samples/Echo as a child process (ConformanceTests, TlsTests).
// ---------------------------------------------------------------------------------------------

/// Starts `dotnet` with `arguments` in the repository root, collecting its output.
let startDotnet (arguments: string) : Diagnostics.Process * Text.StringBuilder =
    let info = Diagnostics.ProcessStartInfo("dotnet", arguments)
    info.WorkingDirectory <- repositoryRoot
    info.UseShellExecute <- false
    info.RedirectStandardOutput <- true
    info.RedirectStandardError <- true
    // No MSBuild nodes or build servers left running after the test.
    info.Environment["MSBUILDDISABLENODEREUSE"] <- "1"
    info.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] <- "0"
    let output = Text.StringBuilder()
    let collect (line: string) = if not (isNull line) then lock output (fun () -> output.AppendLine line |> ignore)
    let child = new Diagnostics.Process(StartInfo = info)
    child.OutputDataReceived.Add(fun args -> collect args.Data)
    child.ErrorDataReceived.Add(fun args -> collect args.Data)
    child.Start() |> ignore
    child.BeginOutputReadLine()
    child.BeginErrorReadLine()
    child, output

/// Kills a child process and its children, if still running (bounded wait).
let stopProcess (child: Diagnostics.Process) =
    try
        if not child.HasExited then
            child.Kill(entireProcessTree = true)
            child.WaitForExit(10_000) |> ignore
    with _ -> ()

/// A TCP port that was free a moment ago on 127.0.0.1.
let freePort () =
    let listener = new Net.Sockets.TcpListener(Net.IPAddress.Loopback, 0)
    listener.Start()
    let port = (listener.LocalEndpoint :?> Net.IPEndPoint).Port
    listener.Stop()
    port

/// True when samples/Echo's Release build is newer than every source it is built from.
let private echoSampleIsBuilt () =
    let root = repositoryRoot
    let separator = string Path.DirectorySeparatorChar
    let outside (file: string) = not (file.Contains(separator + "bin" + separator) || file.Contains(separator + "obj" + separator))
    let sources =
        [ for folder in [ "src"; Path.Combine("samples", "Echo") ] do
              yield! Directory.EnumerateFiles(Path.Combine(root, folder), "*", SearchOption.AllDirectories) |> Seq.filter outside
          yield! Directory.GetFiles(root, "Directory.Build.*") ]
    let bin = Path.Combine(root, "samples", "Echo", "bin", "Release")
    let built = if Directory.Exists bin then Directory.GetFiles(bin, "*.dll", SearchOption.AllDirectories) else [||]
    built |> Array.exists (fun dll -> Path.GetFileName dll = "Echo.dll")
    && (let builtAt = built |> Array.map File.GetLastWriteTimeUtc |> Array.max
        sources |> List.forall (fun file -> File.GetLastWriteTimeUtc file < builtAt))

// Test lists run in parallel: one build at a time.
let private echoSampleBuild = new SemaphoreSlim(1, 1)

/// Makes sure samples/Echo is built (Release): when any source is newer than the built sample,
/// builds it (incremental, bounded by 180 s); MSBuild's own up-to-date check costs seconds otherwise.
/// Returns None when built, or the reason it could not be.
let ensureEchoSampleBuilt () : Task<string option> =
    task {
        do! echoSampleBuild.WaitAsync()
        try
            if echoSampleIsBuilt () then
                return None
            else
                let build, buildOutput = startDotnet "build samples/Echo/Echo.csproj -c Release -v q --nologo -nodeReuse:false"
                use _ = build
                use buildWait = new CancellationTokenSource(TimeSpan.FromSeconds 180.0)
                let! finished =
                    task {
                        try
                            do! build.WaitForExitAsync(buildWait.Token)
                            return true
                        with :? OperationCanceledException -> return false
                    }
                if not finished then
                    stopProcess build
                    return Some "building samples/Echo took over 180 s"
                elif build.ExitCode <> 0 then
                    return Some $"samples/Echo does not build:\n{buildOutput}"
                else
                    return None
        finally
            echoSampleBuild.Release() |> ignore
    }

/// Starts the built samples/Echo (its Release Echo.dll, straight away: `dotnet run` would spend
/// seconds evaluating the project first) with `arguments` and waits (at most 30 s) until it
/// accepts TCP connections on `port`; returns the process and its output so far.
let startEchoSample (port: int) (arguments: string) : Task<Diagnostics.Process * Text.StringBuilder> =
    task {
        let bin = Path.Combine(repositoryRoot, "samples", "Echo", "bin", "Release")
        let dll =
            Directory.GetFiles(bin, "Echo.dll", SearchOption.AllDirectories)
            |> Array.sortByDescending File.GetLastWriteTimeUtc
            |> Array.head
        let sample, output = startDotnet $"exec \"{dll}\" {arguments}"
        let deadline = DateTime.UtcNow.AddSeconds 30.0
        let mutable listening = false
        while not listening && DateTime.UtcNow < deadline && not sample.HasExited do
            try
                use probe = new Net.Sockets.TcpClient()
                do! probe.ConnectAsync("127.0.0.1", port)
                listening <- true
            with _ ->
                do! Task.Delay 100
        if not listening then
            stopProcess sample
            sample.Dispose()
            failwithf "samples/Echo did not listen on %d within 30 s:\n%s" port (output.ToString())
        return sample, output
    }

/// The packages as a consumer gets them: pack them, make a fresh `dotnet new web` app outside the
/// repository that takes them from a local folder only, put the README's code (the quick start, or
/// the dev server) in its Program.cs, build and run it, and talk to it with HTTP and WebSocket clients.
module Realtime.Server.Tests.PackageTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Net.Http
open System.Net.WebSockets
open System.Text
open System.Text.RegularExpressions
open System.Threading
open System.Threading.Tasks
open Expecto
open Realtime.Server.Tests.TestHost

/// The first ```csharp block after the README's heading `heading`.
let private readmeCode (heading: string) =
    let readme = File.ReadAllText(Path.Combine(repositoryRoot, "README.md"))
    let section = readme.IndexOf(heading, StringComparison.Ordinal)
    if section < 0 then failtestf "README.md has no \"%s\" section" heading
    let block = Regex.Match(readme.Substring section, "```csharp\r?\n(.*?)```", RegexOptions.Singleline)
    if not block.Success then failtestf "the %s section of README.md has no ```csharp block" heading
    block.Groups[1].Value

/// The C# code of the README's "Quick start" section: its first ```csharp block.
let quickStartCode () = readmeCode "## Quick start"

/// The C# code of the README's "Dev server and plugins" section: its first ```csharp block.
let devServerCode () = readmeCode "## Dev server and plugins"

/// The C# code of the README's "Channels" section: its first ```csharp block.
let channelsCode () = readmeCode "## Channels"

/// Runs a dotnet command to its end, bounded by `timeout`; fails the test with its output when it
/// fails or runs over. MSBuild's variables of the test run (set when `dotnet test` runs the suite)
/// are not passed on, so the child is an ordinary build.
let private dotnet (workingDirectory: string) (environment: (string * string) list) (timeout: TimeSpan) (arguments: string list) =
    task {
        let info = ProcessStartInfo("dotnet", arguments, WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
        for key in info.Environment.Keys |> Seq.toArray do
            if key.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) || key = "DOTNET_HOST_PATH" then info.Environment.Remove key |> ignore
        info.Environment["MSBUILDDISABLENODEREUSE"] <- "1"
        info.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] <- "0"
        info.Environment["DOTNET_NOLOGO"] <- "1"
        info.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] <- "1"
        for key, value in environment do info.Environment[key] <- value
        let output = StringBuilder()
        use proc = new Process(StartInfo = info)
        proc.OutputDataReceived.Add(fun e -> if not (isNull e.Data) then lock output (fun () -> output.AppendLine e.Data |> ignore))
        proc.ErrorDataReceived.Add(fun e -> if not (isNull e.Data) then lock output (fun () -> output.AppendLine e.Data |> ignore))
        let started = Stopwatch.StartNew()
        proc.Start() |> ignore
        proc.BeginOutputReadLine()
        proc.BeginErrorReadLine()
        use cancel = new CancellationTokenSource(timeout)
        try
            do! proc.WaitForExitAsync cancel.Token
        with :? OperationCanceledException ->
            try proc.Kill true with _ -> ()
            failtestf "dotnet %s ran over %O; output:\n%O" (String.Join(" ", arguments)) timeout output
        if proc.ExitCode <> 0 then
            failtestf "dotnet %s exited with %d; output:\n%O" (String.Join(" ", arguments)) proc.ExitCode output
        return started.Elapsed
    }

/// A client whose messages are collected by a receive loop, so a test can wait for a given one.
type private Inbox(client: ClientWebSocket) =
    let messages = ConcurrentQueue<string>()
    let pump =
        task {
            let buffer = Array.zeroCreate<byte> 65536
            try
                while client.State = WebSocketState.Open do
                    use message = new MemoryStream()
                    let mutable finished = false
                    while not finished do
                        let! result = client.ReceiveAsync(ArraySegment buffer, CancellationToken.None)
                        message.Write(buffer, 0, result.Count)
                        finished <- result.EndOfMessage
                        if result.MessageType = WebSocketMessageType.Close then finished <- true
                    if client.State = WebSocketState.Open then messages.Enqueue(Encoding.UTF8.GetString(message.ToArray()))
            with _ -> ()
        }

    member _.Client = client
    member _.Has(text: string) = messages |> Seq.contains text
    member _.Messages = List.ofSeq messages

    /// Waits (at most 10 s) until `text` has arrived.
    member inbox.WaitFor(text: string) =
        task {
            let! ok = eventually (TimeSpan.FromSeconds 10.0) (fun () -> inbox.Has text)
            if not ok then failtestf "expected %A, received %A" text inbox.Messages
        }

    interface IDisposable with
        member _.Dispose() =
            client.Abort()
            client.Dispose()
            pump.Wait(TimeSpan.FromSeconds 5.0) |> ignore

let private connectInbox (url: string) =
    task {
        let! client = connect url
        return new Inbox(client)
    }

/// Writes the consumer's NuGet sources into `root`/nuget.config: the local folder `feed`, and
/// nuget.org for FSharp.Core. The packages folder `packages` is the test's own, so nothing lands in
/// the user's cache; the user's cache is a fallback folder, so FSharp.Core need not be downloaded
/// again. Returns the environment the dotnet commands run with.
let private writeNugetConfig (root: string) (feed: string) (packages: string) =
    let userCache =
        match Environment.GetEnvironmentVariable "NUGET_PACKAGES" with
        | null | "" -> Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".nuget", "packages")
        | path -> path
    let config =
        [ """<?xml version="1.0" encoding="utf-8"?>"""
          "<configuration>"
          "  <packageSources>"
          "    <clear />"
          $"""    <add key="realtime-local" value="{feed}" />"""
          """    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />"""
          "  </packageSources>"
          if Directory.Exists userCache then
              "  <fallbackPackageFolders>"
              $"""    <add key="user-cache" value="{userCache}" />"""
              "  </fallbackPackageFolders>"
          "</configuration>" ]
    File.WriteAllLines(Path.Combine(root, "nuget.config"), config)
    [ "NUGET_PACKAGES", packages ]

/// A consumer app run from its build output `dll` in `app`, on 127.0.0.1 with a port Kestrel picks
/// (read from its log). Disposing kills it.
type private Consumer(app: string, dll: string) =
    let info =
        ProcessStartInfo("dotnet", [ dll; "--urls"; "http://127.0.0.1:0" ],
                         WorkingDirectory = app, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    do info.Environment["ASPNETCORE_ENVIRONMENT"] <- "Production"
    let log = StringBuilder()
    let listening = TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously)
    let server = new Process(StartInfo = info)
    do
        server.OutputDataReceived.Add(fun e ->
            if not (isNull e.Data) then
                lock log (fun () -> log.AppendLine e.Data |> ignore)
                let m = Regex.Match(e.Data, @"Now listening on: (http://127\.0\.0\.1:\d+)")
                if m.Success then listening.TrySetResult m.Groups[1].Value |> ignore)
        server.ErrorDataReceived.Add(fun e -> if not (isNull e.Data) then lock log (fun () -> log.AppendLine e.Data |> ignore))
        server.Start() |> ignore
        server.BeginOutputReadLine()
        server.BeginErrorReadLine()

    /// What the app wrote so far.
    member _.Log = lock log (fun () -> log.ToString())

    /// The app's http://127.0.0.1:PORT once it listens; fails the test after 30 s.
    member this.Url =
        task {
            let! first = Task.WhenAny(listening.Task, Task.Delay(TimeSpan.FromSeconds 30.0))
            if not (Object.ReferenceEquals(first, listening.Task)) then failtestf "the app did not start within 30 s; output:\n%s" this.Log
            return listening.Task.Result
        }

    interface IDisposable with
        member _.Dispose() =
            try
                if not server.HasExited then
                    server.Kill true
                    server.WaitForExit 10000 |> ignore
            with _ -> ()
            server.Dispose()

let private packageVersion () = $"""0.1.0-consumer.{DateTime.UtcNow.ToString("yyyyMMddHHmmss")}.{Environment.ProcessId}"""

/// The scratch folders of one consumer test (a local feed, a packages folder, the app), the
/// version its packages get (one no NuGet cache has seen), and how long each step took.
type private ConsumerWorkspace(prefix: string) =
    let root = Path.Combine(Path.GetTempPath(), $"{prefix}-{Guid.NewGuid():N}")
    let feed = Path.Combine(root, "feed")
    let version = packageVersion ()
    let timings = ResizeArray<string>()
    do Directory.CreateDirectory feed |> ignore
    member _.Root = root
    member _.Feed = feed
    member _.Packages = Path.Combine(root, "packages")
    member _.App = Path.Combine(root, "app")
    member _.Version = version
    member _.Timings = timings
    member _.Step (name: string) (elapsed: TimeSpan) = timings.Add $"{name} {elapsed.TotalSeconds:F0}s"

    /// Packs each project into the feed with the workspace's version, timing each.
    member this.PackAsync(projects: string list) : Task =
        task {
            for project in projects do
                let! elapsed =
                    dotnet repositoryRoot [] (TimeSpan.FromMinutes 5.0)
                        [ "pack"; project; "-c"; "Release"; "--no-restore"; "-o"; feed; $"-p:Version={version}"; "-v"; "q" ]
                this.Step $"pack {Path.GetFileNameWithoutExtension project}" elapsed
        }

/// Sequenced: Expecto runs it after the parallel tests, one at a time, so its builds (two cores'
/// worth for most of a minute) do not disturb the timing-sensitive host tests.
[<Tests>]
let tests =
    testSequenced <| testList "Packages" [
        testCaseTask "a fresh dotnet new web app builds the README's quick start against the packed packages and chats" (fun () -> task {
            let workspace = ConsumerWorkspace "realtime-consumer"
            let root, feed, packages, app, version = workspace.Root, workspace.Feed, workspace.Packages, workspace.App, workspace.Version
            let timings, step = workspace.Timings, workspace.Step
            let mutable server: Consumer option = None
            try
                // 1. Pack both packages with a version no cache has seen, into the local folder.
                do! workspace.PackAsync [ "src/Protocol.FSharp/Protocol.FSharp.fsproj"; "src/Server.CSharp/Server.CSharp.csproj" ]
                let files = Directory.GetFiles feed |> Array.map Path.GetFileName |> Array.sort
                Expect.equal
                    files
                    [| $"Realtime.Protocol.{version}.nupkg"; $"Realtime.Protocol.{version}.snupkg"
                       $"Realtime.Server.{version}.nupkg"; $"Realtime.Server.{version}.snupkg" |]
                    "both packages and their symbol packages"

                // 2. The app's NuGet sources: the local folder, and nuget.org for FSharp.Core.
                let nugetEnvironment = writeNugetConfig root feed packages

                // 3. A fresh web app, the package, and the README's code as its whole Program.cs.
                let! elapsed = dotnet root nugetEnvironment (TimeSpan.FromMinutes 2.0) [ "new"; "web"; "-o"; app; "-n"; "ConsumerApp"; "--no-restore" ]
                step "new web" elapsed
                let! elapsed = dotnet app nugetEnvironment (TimeSpan.FromMinutes 3.0) [ "add"; "package"; "Realtime.Server"; "--version"; version ]
                step "add package" elapsed
                File.WriteAllText(Path.Combine(app, "Program.cs"), quickStartCode ())
                let! elapsed = dotnet app nugetEnvironment (TimeSpan.FromMinutes 5.0) [ "build"; "-c"; "Debug"; "-v"; "q"; "-o"; Path.Combine(app, "out") ]
                step "build" elapsed
                let assets = File.ReadAllText(Path.Combine(app, "obj", "project.assets.json"))
                Expect.stringContains assets $"Realtime.Protocol/{version}" "Realtime.Protocol came from the packed folder"
                Expect.stringContains assets "FSharp.Core/" "FSharp.Core restored as a dependency"

                // 4. Run it on 127.0.0.1 with a port Kestrel picks, and read the port from its log.
                let started = Stopwatch.StartNew()
                server <- Some(new Consumer(app, Path.Combine(app, "out", "ConsumerApp.dll")))
                let! httpUrl = server.Value.Url
                let wsUrl = httpUrl.Replace("http://", "ws://")
                step "start" started.Elapsed

                // 5. Chat as the README promises: join notices, messages to the others, a route's publish.
                use http = new HttpClient(Timeout = TimeSpan.FromSeconds 10.0)
                let! aliceInbox = connectInbox (wsUrl + "/chat?name=alice")
                use alice = aliceInbox
                // Alice's Open has subscribed her once /greet's publish reaches her (bounded: 10 s).
                let deadline = DateTime.UtcNow.AddSeconds 10.0
                let mutable greeted = false
                while not greeted && DateTime.UtcNow < deadline do
                    let! answer = http.GetStringAsync(httpUrl + "/greet")
                    Expect.equal answer "Hello" "/greet answers"
                    let! arrived = eventually (TimeSpan.FromMilliseconds 300.0) (fun () -> alice.Has "hello from a route")
                    greeted <- arrived
                Expect.isTrue greeted "a route's publish reaches a subscriber"
                let! bobInbox = connectInbox (wsUrl + "/chat?name=bob")
                use bob = bobInbox
                do! alice.WaitFor "bob joined"
                do! sendText bob.Client "hi alice"
                do! alice.WaitFor "bob: hi alice"
                do! sendText alice.Client "hi bob"
                do! bob.WaitFor "alice: hi bob"
                Expect.isFalse (alice.Has "alice: hi bob") "a socket's publish skips the sender"
                let! answer = http.GetStringAsync(httpUrl + "/greet")
                Expect.equal answer "Hello" "the ordinary route answers"
                do! bob.WaitFor "hello from a route"
                use closing = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
                do! bob.Client.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", closing.Token)
                do! alice.WaitFor "bob left"
                printfn "consumer test timings: %s" (String.Join(", ", timings))
            finally
                server |> Option.iter (fun consumer -> (consumer :> IDisposable).Dispose())
                try Directory.Delete(root, true) with _ -> ()
        })

        testCaseTask "Realtime.DevServer packs; a fresh dotnet new web app builds the README's dev server against it and serves pages, plugins and the client's socket" (fun () -> task {
            let workspace = ConsumerWorkspace "realtime-devserver-consumer"
            let root, feed, packages, app, version = workspace.Root, workspace.Feed, workspace.Packages, workspace.App, workspace.Version
            let timings, step = workspace.Timings, workspace.Step
            let mutable server: Consumer option = None
            try
                // 1. Pack the dev server and what it depends on, with a version no cache has seen.
                do! workspace.PackAsync [ "src/Protocol.FSharp/Protocol.FSharp.fsproj"; "src/Server.CSharp/Server.CSharp.csproj"; "src/DevServer.CSharp/DevServer.CSharp.csproj" ]
                let files = Directory.GetFiles feed |> Array.map Path.GetFileName
                Expect.containsAll files [ $"Realtime.DevServer.{version}.nupkg"; $"Realtime.DevServer.{version}.snupkg" ] "the dev server's package and its symbol package"
                let nuspec =
                    use package = Compression.ZipFile.OpenRead(Path.Combine(feed, $"Realtime.DevServer.{version}.nupkg"))
                    let entry = package.GetEntry "Realtime.DevServer.nuspec"
                    use reader = new StreamReader(entry.Open())
                    reader.ReadToEnd()
                Expect.stringContains nuspec $"""<dependency id="Realtime.Server" version="{version}" """ "it depends on Realtime.Server, same version"

                // 2. A fresh web app that adds Realtime.DevServer only (Realtime.Server comes with it),
                //    the README's dev-server code as its whole Program.cs, and a page in wwwroot.
                let nugetEnvironment = writeNugetConfig root feed packages
                let! elapsed = dotnet root nugetEnvironment (TimeSpan.FromMinutes 2.0) [ "new"; "web"; "-o"; app; "-n"; "DevServerApp"; "--no-restore" ]
                step "new web" elapsed
                let! elapsed = dotnet app nugetEnvironment (TimeSpan.FromMinutes 3.0) [ "add"; "package"; "Realtime.DevServer"; "--version"; version ]
                step "add package" elapsed
                File.WriteAllText(Path.Combine(app, "Program.cs"), devServerCode ())
                Directory.CreateDirectory(Path.Combine(app, "wwwroot")) |> ignore
                File.WriteAllText(Path.Combine(app, "wwwroot", "index.html"), "<!doctype html><html><head><title>consumer</title></head><body><h1>consumer page</h1></body></html>")
                let! elapsed = dotnet app nugetEnvironment (TimeSpan.FromMinutes 5.0) [ "build"; "-c"; "Debug"; "-v"; "q"; "-o"; Path.Combine(app, "out") ]
                step "build" elapsed
                let assets = File.ReadAllText(Path.Combine(app, "obj", "project.assets.json"))
                Expect.stringContains assets $"Realtime.DevServer/{version}" "Realtime.DevServer came from the packed folder"
                Expect.stringContains assets $"Realtime.Server/{version}" "Realtime.Server came with it, as its dependency"

                // 3. Run it; the page gets the client, which is served from the package's resources,
                //    the README's plugin answers, and a socket on the client's endpoint hears it.
                let started = Stopwatch.StartNew()
                server <- Some(new Consumer(app, Path.Combine(app, "out", "DevServerApp.dll")))
                let! httpUrl = server.Value.Url
                step "start" started.Elapsed
                use http = new HttpClient(Timeout = TimeSpan.FromSeconds 10.0)
                let! page = http.GetStringAsync(httpUrl + "/")
                Expect.stringContains page "<h1>consumer page</h1><script type=\"module\" src=\"/__realtime__/client.js\"></script></body>" "the page, with the client injected before </body>"
                let! client = http.GetStringAsync(httpUrl + "/__realtime__/client.js")
                Expect.stringContains client "/__realtime__/ws" "the browser client, from Realtime.DevServer's resources"
                let! reload = http.GetStringAsync(httpUrl + "/__realtime__/reload.js")
                Expect.isNotEmpty reload "watch: true serves the live-reload module"
                let! plugin = http.GetStringAsync(httpUrl + "/virtual/answer.js")
                Expect.equal plugin "export default 42;" "the README's plugin serves its virtual module"
                let! socket = connect (httpUrl.Replace("http://", "ws://") + "/__realtime__/ws")
                use socket = socket
                let! greeting = receiveText socket
                Expect.equal greeting """{"type":"console-log","data":{"text":"hello from the dev server"}}""" "the plugin's greeting, to the socket that opened"
                printfn "dev-server consumer test timings: %s" (String.Join(", ", timings))
            finally
                server |> Option.iter (fun consumer -> (consumer :> IDisposable).Dispose())
                try Directory.Delete(root, true) with _ -> ()
        })

        testCaseTask "Realtime.Channels packs; a fresh dotnet new web app builds the README's channels server against it, and a client subscribes, gets a route's publication with its position, and calls a method" (fun () -> task {
            let workspace = ConsumerWorkspace "realtime-channels-consumer"
            let root, feed, packages, app, version = workspace.Root, workspace.Feed, workspace.Packages, workspace.App, workspace.Version
            let timings, step = workspace.Timings, workspace.Step
            let mutable server: Consumer option = None
            try
                do! workspace.PackAsync [ "src/Protocol.FSharp/Protocol.FSharp.fsproj"; "src/Server.CSharp/Server.CSharp.csproj"; "src/Channels.CSharp/Channels.CSharp.csproj" ]
                let files = Directory.GetFiles feed |> Array.map Path.GetFileName
                Expect.containsAll files [ $"Realtime.Channels.{version}.nupkg"; $"Realtime.Channels.{version}.snupkg" ] "the channels package and its symbol package"
                let nugetEnvironment = writeNugetConfig root feed packages
                let! elapsed = dotnet root nugetEnvironment (TimeSpan.FromMinutes 2.0) [ "new"; "web"; "-o"; app; "-n"; "ChannelsApp"; "--no-restore" ]
                step "new web" elapsed
                let! elapsed = dotnet app nugetEnvironment (TimeSpan.FromMinutes 3.0) [ "add"; "package"; "Realtime.Channels"; "--version"; version ]
                step "add package" elapsed
                File.WriteAllText(Path.Combine(app, "Program.cs"), channelsCode ())
                let! elapsed = dotnet app nugetEnvironment (TimeSpan.FromMinutes 5.0) [ "build"; "-c"; "Debug"; "-v"; "q"; "-o"; Path.Combine(app, "out") ]
                step "build" elapsed
                let assets = File.ReadAllText(Path.Combine(app, "obj", "project.assets.json"))
                Expect.stringContains assets $"Realtime.Server/{version}" "Realtime.Server came with it, as its dependency"

                let started = Stopwatch.StartNew()
                server <- Some(new Consumer(app, Path.Combine(app, "out", "ChannelsApp.dll")))
                let! httpUrl = server.Value.Url
                step "start" started.Elapsed
                use client = new ClientWebSocket()
                client.Options.AddSubProtocol "realtime.channels.v1.json"
                use connecting = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
                do! client.ConnectAsync(Uri(httpUrl.Replace("http://", "ws://") + "/channels?name=ann"), connecting.Token)
                let! welcome = receiveText client
                Expect.stringContains welcome "\"type\":\"welcome\"" "welcome first"
                do! sendText client """{"type":"subscribe","id":1,"channel":"room:lobby"}"""
                let! subscribed = receiveText client
                Expect.stringContains subscribed "\"type\":\"subscribed\"" "subscribed"
                use http = new HttpClient(Timeout = TimeSpan.FromSeconds 10.0)
                use! answer = http.PostAsync(httpUrl + "/announce?text=hello", null)
                let! offset = answer.Content.ReadAsStringAsync()
                Expect.equal offset "1" "the route's publish got offset 1"
                let! pub = receiveText client
                Expect.stringContains pub "\"offset\":1" "the publication's position"
                Expect.stringContains pub "\"data\":{\"text\":\"hello\"}" "the route's data"
                do! sendText client """{"type":"request","id":2,"method":"whoami","data":null}"""
                let! response = receiveText client
                Expect.stringContains response "\"data\":{\"name\":\"ann\"}" "the method saw Attach's data"
                do! sendText client """{"type":"subscribe","id":3,"channel":"lobby"}"""
                let! refused = receiveText client
                Expect.stringContains refused "\"code\":\"unknown-channel\"" "the README's name rule"
                printfn "channels consumer test timings: %s" (String.Join(", ", timings))
            finally
                server |> Option.iter (fun consumer -> (consumer :> IDisposable).Dispose())
                try Directory.Delete(root, true) with _ -> ()
        })
    ]

/// The samples as real processes, in Chromium: samples/Chat across two pages, samples/DevServer.
module Realtime.Browser.Tests.SampleTests

open System
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Text
open System.Threading.Tasks
open Microsoft.Playwright
open Expecto
open Realtime.Browser.Tests.Infrastructure
open Realtime.TestSupport.SuiteTransport

/// The build configuration of these tests (Debug or Release): the samples were built with it.
let private configuration = DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent.Name

/// Starts a built sample (`dotnet samples/NAME/bin/CONFIG/net10.0/NAME.dll args`) in `workingDirectory`,
/// on the run's transport (`--native` in the native run).
let private startSample (name: string) (workingDirectory: string) (args: string) : Process * StringBuilder =
    let dll = Path.Combine(repositoryRoot, "samples", name, "bin", configuration, "net10.0", name + ".dll")
    if not (File.Exists dll) then failtestf "%s is not built (%s)" name dll
    let info = ProcessStartInfo("dotnet", $"\"{dll}\" {args} {sampleTransportArguments}")
    info.WorkingDirectory <- workingDirectory
    info.UseShellExecute <- false
    info.RedirectStandardOutput <- true
    info.RedirectStandardError <- true
    let output = StringBuilder()
    let collect (line: string) = if not (isNull line) then lock output (fun () -> output.AppendLine line |> ignore)
    let child = new Process(StartInfo = info)
    child.OutputDataReceived.Add(fun e -> collect e.Data)
    child.ErrorDataReceived.Add(fun e -> collect e.Data)
    child.Start() |> ignore
    child.BeginOutputReadLine()
    child.BeginErrorReadLine()
    child, output

/// Kills a process this test started (its tree), bounded.
let private kill (child: Process) =
    try
        if not child.HasExited then
            child.Kill(entireProcessTree = true)
            child.WaitForExit 10_000 |> ignore
    with _ -> ()

/// Waits (bounded, 30 s) until something listens on the port.
let private listening (port: int) (child: Process) (output: StringBuilder) =
    waitUntilAsync $"a listener on {port}" 30000 (fun () ->
        task {
            if child.HasExited then failtestf "the sample exited:\n%O" output
            use probe = new TcpClient()
            do! probe.ConnectAsync("127.0.0.1", port)
            return true
        })

/// Checks that a sample listening on plain HTTP runs on the run's transport: in the native run its
/// process has the native transport's event loops, otherwise none.
let private expectRunTransport (child: Process) =
    Expect.equal (runsNativeEventLoops child.Id) nativeTransport $"the sample runs the native transport's event loops exactly in the native run (native: {nativeTransport})"

/// Runs a program to its end (bounded by 10 s); its exit code and output.
let private run (program: string) (arguments: string list) : int * string =
    let info = ProcessStartInfo(program, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
    for argument in arguments do info.ArgumentList.Add argument
    use child = Process.Start info
    let output = child.StandardOutput.ReadToEndAsync()
    let errors = child.StandardError.ReadToEndAsync()
    if not (child.WaitForExit 10_000) then
        (try child.Kill true with _ -> ())
        failtestf "%s did not finish within 10 s" program
    child.ExitCode, output.Result + errors.Result

/// A private redis-server (no persistence) for the body; shut down (nosave) afterwards.
let private withRedis (body: int -> Task) : Task =
    task {
        let port = freePort ()
        let folder = Path.Combine(Path.GetTempPath(), $"realtime-browser-redis-{Environment.ProcessId}-{port}")
        Directory.CreateDirectory folder |> ignore
        let code, output =
            run "redis-server" [ "--port"; string port; "--bind"; "127.0.0.1"; "--save"; ""; "--appendonly"; "no"; "--daemonize"; "yes"
                                 "--pidfile"; Path.Combine(folder, "redis.pid"); "--logfile"; Path.Combine(folder, "redis.log"); "--dir"; folder ]
        if code <> 0 then failtestf "redis-server did not start (%d): %s" code output
        try
            do! waitUntil "redis-server answers" 10000 (fun () -> (run "redis-cli" [ "-p"; string port; "ping" ] |> snd).Trim() = "PONG")
            do! body port
        finally
            run "redis-cli" [ "-p"; string port; "shutdown"; "nosave" ] |> ignore
            try Directory.Delete(folder, true) with _ -> ()
    }

let private status (p: BrowserPage) = p.Page.InnerTextAsync "#status"

let private received (p: BrowserPage) = p.Page.InnerTextAsync "#received-area"

/// Where the chat screenshot goes: docs/chat.png when UPDATE_SCREENSHOTS=1, else beside the tests.
let private screenshotPath () =
    if Environment.GetEnvironmentVariable "UPDATE_SCREENSHOTS" = "1" then Path.Combine(repositoryRoot, "docs", "chat.png")
    else Path.Combine(AppContext.BaseDirectory, "chat.png")

[<Tests>]
let tests =
    testSequenced <| testList "Samples in Chromium" [

        browserTest "samples/Chat: a message typed in one page appears in the other; the status shows open, then closed and reconnecting, then open again after a restart" (fun () ->
            task {
                let port = freePort ()
                let chatFolder = Path.Combine(repositoryRoot, "samples", "Chat")
                let args = $"--urls http://127.0.0.1:{port}"
                let chat, output = startSample "Chat" chatFolder args
                let mutable current = chat
                try
                    do! listening port chat output
                    expectRunTransport chat
                    let url = $"http://127.0.0.1:{port}/"
                    let! alice = openPage (url + "?name=alice")
                    use _ = alice
                    let! bob = openPage (url + "?name=bob")
                    use _ = bob
                    for p in [ alice; bob ] do
                        do! waitUntilAsync "the status shows open" 10000 (fun () -> task { let! s = status p in return s = "The WebSocket is open." })
                    do! waitUntilAsync "alice sees bob join" 10000 (fun () -> task { let! r = received alice in return r.Contains "bob joined lobby" })
                    do! alice.Page.FillAsync("#send-input", "Hello Bob, this is Alice.")
                    do! alice.Page.PressAsync("#send-input", "Enter")
                    do! waitUntilAsync "bob receives alice's message" 10000 (fun () -> task { let! r = received bob in return r.Contains "alice: Hello Bob, this is Alice." })
                    do! bob.Page.FillAsync("#send-input", "Hi Alice! Bob here.")
                    do! bob.Page.ClickAsync("button")
                    do! waitUntilAsync "alice receives bob's message" 10000 (fun () -> task { let! r = received alice in return r.Contains "bob: Hi Alice! Bob here." })
                    let path = screenshotPath ()
                    Directory.CreateDirectory(Path.GetDirectoryName path) |> ignore
                    let! _ = alice.Page.ScreenshotAsync(PageScreenshotOptions(Path = path))
                    Expect.isTrue (FileInfo(path).Length > 1000L) "a screenshot"

                    kill chat
                    for p in [ alice; bob ] do
                        do! waitUntilAsync "the status shows closed and reconnecting" 10000 (fun () -> task { let! s = status p in return s = "The WebSocket is closed. Reconnecting..." })

                    let again, againOutput = startSample "Chat" chatFolder args
                    current <- again
                    do! listening port again againOutput
                    for p in [ alice; bob ] do
                        do! waitUntilAsync "open again after the restart" 15000 (fun () -> task { let! s = status p in return s = "The WebSocket is open." })
                finally
                    kill current
                    kill chat
            })

        browserTest "samples/Chat on channels: across a restart of its server (killed), each page shows every message of its room exactly once and in order, a message typed during the outage included, says that history could not be recovered, and shows who is in the room" (fun () ->
            task {
                let port = freePort ()
                let chatFolder = Path.Combine(repositoryRoot, "samples", "Chat")
                let args = $"--urls http://127.0.0.1:{port}"
                let chat, output = startSample "Chat" chatFolder args
                let mutable current = chat
                try
                    do! listening port chat output
                    expectRunTransport chat
                    let url = $"http://127.0.0.1:{port}/"
                    let! alice = openPage (url + "?name=alice")
                    use _ = alice
                    let! bob = openPage (url + "?name=bob")
                    use _ = bob
                    let lines (p: BrowserPage) = p.Eval<string[]> "() => [...document.querySelectorAll('#received-area div')].map(d => d.textContent)"
                    let members (p: BrowserPage) = p.Page.InnerTextAsync "#members"
                    let send (p: BrowserPage) (text: string) =
                        task {
                            do! p.Page.FillAsync("#send-input", text)
                            do! p.Page.PressAsync("#send-input", "Enter")
                        }
                    let shows (p: BrowserPage) (line: string) =
                        waitUntilAsync $"the page shows \"{line}\"" 15000 (fun () -> task { let! l = lines p in return Array.contains line l })
                    for p in [ alice; bob ] do
                        do! waitUntilAsync "who is in the room" 10000 (fun () -> task { let! m = members p in return m = "In the room: alice, bob" })
                    do! send bob "m1"
                    do! send bob "m2"
                    do! shows alice "bob: m2"

                    kill chat
                    for p in [ alice; bob ] do
                        do! waitUntilAsync "the status shows closed and reconnecting" 10000 (fun () -> task { let! s = status p in return s = "The WebSocket is closed. Reconnecting..." })
                    do! send bob "m3"
                    let! waiting = bob.Page.InnerTextAsync "#error-message"
                    Expect.equal waiting "The WebSocket is closed: the message will be sent when it is back." "the page says the message waits"

                    let again, againOutput = startSample "Chat" chatFolder args
                    current <- again
                    do! listening port again againOutput
                    do! shows alice "bob: m3"
                    do! send bob "m4"
                    for p in [ alice; bob ] do
                        do! shows p "bob: m4"
                        do! waitUntilAsync "who is in the room again" 15000 (fun () -> task { let! m = members p in return m = "In the room: alice, bob" })
                    let! error = bob.Page.InnerTextAsync "#error-message"
                    Expect.equal error "" "the error line is cleared once connected"
                    // A route of the app publishes into the room's channel too.
                    use! announced = http.PostAsync(url + "rooms/lobby/announce", new Net.Http.StringContent("m5 from a route"))
                    Expect.equal (int announced.StatusCode) 200 "the announce route answers"
                    for p in [ alice; bob ] do
                        do! shows p "announcement: m5 from a route"
                    for (who, p) in [ "alice", alice; "bob", bob ] do
                        let! shown = lines p
                        let messages = shown |> Array.filter (fun l -> l.StartsWith "bob: ")
                        Expect.equal messages [| "bob: m1"; "bob: m2"; "bob: m3"; "bob: m4" |] $"{who}: every message once, in order"
                        let lost = shown |> Array.findIndex (fun l -> l.StartsWith "Some messages of this room could not be recovered")
                        Expect.isTrue (lost > Array.IndexOf(shown, "bob: m2") && lost < Array.IndexOf(shown, "bob: m3")) $"{who}: the loss of the memory history is shown where it happened"
                finally
                    kill current
                    kill chat
            })

        browserTest "samples/Chat on channels, two nodes sharing Redis: while alice's node is killed and restarted, bob on the other node sends; alice's page then shows every message exactly once and in order, with nothing reported lost" (fun () ->
            withRedis (fun redisPort ->
                task {
                    let chatFolder = Path.Combine(repositoryRoot, "samples", "Chat")
                    let portA, portB = freePort (), freePort ()
                    let argsOf port = $"--urls http://127.0.0.1:{port} --redis 127.0.0.1:{redisPort}"
                    let nodeA, outputA = startSample "Chat" chatFolder (argsOf portA)
                    let nodeB, outputB = startSample "Chat" chatFolder (argsOf portB)
                    let mutable currentA = nodeA
                    try
                        do! listening portA nodeA outputA
                        do! listening portB nodeB outputB
                        let! alice = openPage $"http://127.0.0.1:{portA}/?name=alice"
                        use _ = alice
                        let! bob = openPage $"http://127.0.0.1:{portB}/?name=bob"
                        use _ = bob
                        let lines (p: BrowserPage) = p.Eval<string[]> "() => [...document.querySelectorAll('#received-area div')].map(d => d.textContent)"
                        let members (p: BrowserPage) = p.Page.InnerTextAsync "#members"
                        let send (p: BrowserPage) (text: string) =
                            task {
                                do! p.Page.FillAsync("#send-input", text)
                                do! p.Page.PressAsync("#send-input", "Enter")
                            }
                        let shows (p: BrowserPage) (line: string) =
                            waitUntilAsync $"the page shows \"{line}\"" 20000 (fun () -> task { let! l = lines p in return Array.contains line l })
                        for p in [ alice; bob ] do
                            do! waitUntilAsync "the status shows open" 15000 (fun () -> task { let! s = status p in return s = "The WebSocket is open." })
                            // Presence spans the nodes: each sees the other.
                            do! waitUntilAsync "who is in the room, across nodes" 15000 (fun () -> task { let! m = members p in return m = "In the room: alice, bob" })
                        do! send bob "m1"
                        do! send bob "m2"
                        do! shows alice "bob: m2"

                        kill nodeA
                        do! waitUntilAsync "alice's page sees its node go" 10000 (fun () -> task { let! s = status alice in return s = "The WebSocket is closed. Reconnecting..." })
                        do! send bob "m3"
                        do! send bob "m4"
                        do! shows bob "bob: m4"

                        let againA, againOutputA = startSample "Chat" chatFolder (argsOf portA)
                        currentA <- againA
                        do! listening portA againA againOutputA
                        do! shows alice "bob: m4"
                        do! send bob "m5"
                        do! shows alice "bob: m5"
                        let! shown = lines alice
                        let messages = shown |> Array.filter (fun l -> l.StartsWith "bob: ")
                        Expect.equal messages [| "bob: m1"; "bob: m2"; "bob: m3"; "bob: m4"; "bob: m5" |] "alice: every message once, in order"
                        Expect.isFalse (shown |> Array.exists (fun l -> l.StartsWith "Some messages of this room could not be recovered")) "the history in Redis survived the node: nothing lost"
                    finally
                        kill currentA
                        kill nodeA
                        kill nodeB
                }))

        browserTest "samples/Chat --tls: pages loaded over HTTP/2 open their same-origin wss:// sockets on it (RFC 8441) and chat" (fun () ->
            task {
                let port = freePort ()
                let chatFolder = Path.Combine(repositoryRoot, "samples", "Chat")
                let chat, output = startSample "Chat" chatFolder $"--tls --urls http://127.0.0.1:{port}"
                try
                    do! listening port chat output
                    // The sample's certificate is made at start: trusted by nobody.
                    let trustAnyCertificate (options: BrowserNewContextOptions) = options.IgnoreHTTPSErrors <- true
                    let url = $"https://127.0.0.1:{port}/"
                    let! alice = openPageWith trustAnyCertificate (url + "?name=alice")
                    use _ = alice
                    let! bob = openPageWith trustAnyCertificate (url + "?name=bob")
                    use _ = bob
                    for p in [ alice; bob ] do
                        let! navigation = p.Eval<string> "() => performance.getEntriesByType('navigation')[0].nextHopProtocol"
                        Expect.equal navigation "h2" "the page was loaded over HTTP/2"
                        // Before RFC 8441 support this socket failed with 1006 (the endpoint answered 405).
                        let! probe =
                            p.Eval<string>
                                """() => new Promise(resolve => {
                                     const ws = new WebSocket('wss://' + location.host + '/chat?name=probe');
                                     ws.onopen = () => { resolve('open'); ws.close(); };
                                     ws.onclose = event => resolve('closed with ' + event.code);
                                     setTimeout(() => resolve('no answer in 10 s'), 10000);
                                   })"""
                        Expect.equal probe "open" $"a same-origin wss:// socket opens
{output}"
                        do! waitUntilAsync "the status shows open" 10000 (fun () -> task { let! s = status p in return s = "The WebSocket is open." })
                        // The server greets each socket with the protocol its request came over.
                        do! waitUntilAsync "the server saw an HTTP/2 request" 10000 (fun () -> task { let! r = received p in return r.Contains "connected to WebSocket server over HTTP/2" })
                    do! waitUntilAsync "alice sees bob join" 10000 (fun () -> task { let! r = received alice in return r.Contains "bob joined lobby" })
                    do! alice.Page.FillAsync("#send-input", "Hello Bob, over HTTP/2.")
                    do! alice.Page.PressAsync("#send-input", "Enter")
                    do! waitUntilAsync "bob receives alice's message" 10000 (fun () -> task { let! r = received bob in return r.Contains "alice: Hello Bob, over HTTP/2." })
                    do! bob.Page.FillAsync("#send-input", "Hi Alice!")
                    do! bob.Page.PressAsync("#send-input", "Enter")
                    do! waitUntilAsync "alice receives bob's message" 10000 (fun () -> task { let! r = received alice in return r.Contains "bob: Hi Alice!" })
                finally
                    kill chat
            })

        browserTest "samples/DevServer serves its site folder with the client injected; the page's request to the sample's plugin is answered" (fun () ->
            task {
                let port = freePort ()
                // From the repository root, ./site is found in the project folder (as in the README's command).
                let sample, output = startSample "DevServer" repositoryRoot $"./site --urls http://127.0.0.1:{port}"
                try
                    do! listening port sample output
                    expectRunTransport sample
                    let! p = openPage $"http://127.0.0.1:{port}/"
                    use _ = p
                    do! waitUntilAsync "the greeting" 10000 (fun () -> task { let! t = p.Page.InnerTextAsync "#greeting" in return t = "Hello, browser!" })
                    let! version = p.Page.InnerTextAsync "#version"
                    Expect.stringStarts version "Realtime.Server " "the virtual module"
                    do! p.WaitForLog "Hello from the Realtime dev server!"
                finally
                    kill sample
            })
    ]

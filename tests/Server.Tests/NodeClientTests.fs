/// The host against the clients most servers meet in practice: Node's `ws` package (pinned in
/// tests/Server.Tests/node/package.json). Each test starts a Kestrel server, runs one small
/// script from that folder with `node`, and checks the JSON line it prints together with what
/// the server's handlers saw. Without node_modules the tests fail and say how to install them.
module Realtime.Server.Tests.NodeClientTests

open System
open System.Collections.Concurrent
open System.ComponentModel
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.DependencyInjection
open Realtime
open Realtime.Server.Tests.TestHost

let private nodeFolder = Path.Combine(repositoryRoot, "tests", "Server.Tests", "node")

/// Fails the test, with the command that fixes it, when the `ws` package is not installed.
let private requireNodeModules () =
    if not (File.Exists(Path.Combine(nodeFolder, "node_modules", "ws", "package.json"))) then
        failtestf
            "The Node ws client is not installed (%s has no node_modules/ws). Run `npm ci --prefix tests/Server.Tests/node` from the repository root first."
            nodeFolder

/// Runs `node script args...` in the node folder, bounded by the timeout, and returns the JSON
/// object on the last line of its output; fails the test on a non-zero exit or a timeout.
let runNode (timeout: TimeSpan) (script: string) (args: string list) : Task<JsonElement> =
    task {
        requireNodeModules ()
        let info = ProcessStartInfo("node", WorkingDirectory = nodeFolder, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
        info.ArgumentList.Add script
        for arg in args do
            info.ArgumentList.Add arg
        use proc =
            try Process.Start info
            with :? Win32Exception as e -> failtestf "node could not be started (%s): Node.js 18 or later must be on PATH" e.Message
        let output = proc.StandardOutput.ReadToEndAsync()
        let errors = proc.StandardError.ReadToEndAsync()
        use cancel = new CancellationTokenSource(timeout)
        let! finished =
            task {
                try
                    do! proc.WaitForExitAsync(cancel.Token)
                    return true
                with :? OperationCanceledException -> return false
            }
        if not finished then
            proc.Kill true
            failtestf "node %s did not finish within %O" script timeout
        let! output = output
        let! errors = errors
        if proc.ExitCode <> 0 then failtestf "node %s exited with %d: %s%s" script proc.ExitCode errors output
        let last = output.Split('\n', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) |> Array.tryLast
        match last with
        | Some line -> return JsonDocument.Parse(line).RootElement.Clone()
        | None -> return failtestf "node %s printed nothing (stderr: %s)" script errors
    }

let private strings (element: JsonElement) =
    [ for item in element.EnumerateArray() -> item.GetString() ]

/// A name from the query string, as Attach returns it.
type Guest = { Name: string }

let private routes (events: ConcurrentQueue<string>) (pongs: int ref) (app: WebApplication) =
    let realtime = app.Services.GetRequiredService<IRealtimeServer>()
    app.MapRealtime(
        "/room",
        RealtimeHandlers<Guest>(
            Attach =
                (fun http ->
                    match http.Request.Query["name"].ToString() with
                    | "" -> Attachment<Guest>.Reject(403, "a name is required")
                    | name ->
                        events.Enqueue $"attach:{name}"
                        Attachment<Guest>.Accept { Name = name }),
            Open = (fun ws -> events.Enqueue $"open:{ws.Data.Name}"),
            Message = (fun ws message -> events.Enqueue $"message:{ws.Data.Name}:{message.Text}"),
            Close = (fun ws code reason -> events.Enqueue $"close:{ws.Data.Name}:{code}:{reason}")
        )
    )
    |> ignore
    app.MapRealtime(
        "/bcast",
        RealtimeHandlers<obj>(
            Open = (fun ws -> ws.Send($"id:{ws.Id}") |> ignore),
            Message = (fun ws message -> realtime.Broadcast("/bcast", message.Text, ws) |> ignore)
        )
    )
    |> ignore
    let echo = RealtimeHandlers<obj>(Message = (fun ws message -> ws.Send(message.Data.Span, message.Kind) |> ignore))
    app.MapRealtime("/echo", echo) |> ignore
    app.MapRealtime(
        "/keepalive",
        RealtimeHandlers<obj>(Message = echo.Message, Pong = (fun _ _ -> Interlocked.Increment pongs |> ignore)),
        fun options -> options.IdleTimeout <- TimeSpan.FromMilliseconds 300.0
    )
    |> ignore

let private startServer () =
    let events = ConcurrentQueue<string>()
    let pongs = ref 0
    task {
        let! server = start ignore (routes events pongs)
        return server, events, pongs
    }

[<Tests>]
let nodeClientTests =
    testList "Host with Node ws clients: the server speaks to the ws package as it does to .NET" [
        testCase "the ws package is installed (npm ci --prefix tests/Server.Tests/node)" requireNodeModules

        testCaseTask "a ws client's messages arrive in order and its close code and reason reach the Close handler once" (fun () -> task {
            let! server, events, _ = startServer ()
            use _ = server
            let! answer = runNode (TimeSpan.FromSeconds 20.0) "close.mjs" [ server.WsUrl + "/room?name=node"; "4002"; "node is done"; "one"; "two" ]
            // RFC 6455 §5.5.1: the answer typically echoes the code; echoing the reason is not required.
            Expect.equal (answer.GetProperty("code").GetInt32()) 4002 "the server echoed the client's code"
            let! closed = eventually (TimeSpan.FromSeconds 10.0) (fun () -> events |> Seq.exists (fun e -> e.StartsWith "close:"))
            Expect.isTrue closed "the Close handler ran"
            do! Task.Delay 200
            Expect.sequenceEqual
                (events.ToArray())
                [ "attach:node"; "open:node"; "message:node:one"; "message:node:two"; "close:node:4002:node is done" ]
                "Attach, Open, the messages in order, then Close once with the client's code and reason"
        })

        testCaseTask "a ws client refused by Attach sees the HTTP status" (fun () -> task {
            let! server, events, _ = startServer ()
            use _ = server
            let! refused = runNode (TimeSpan.FromSeconds 20.0) "reject.mjs" [ server.WsUrl + "/room" ]
            Expect.isFalse (refused.GetProperty("opened").GetBoolean()) "not opened"
            Expect.equal (refused.GetProperty("status").GetInt32()) 403 "403 from Attach"
            Expect.isEmpty events "no handler ran"
        })

        testCaseTask "a message from one ws client is broadcast to every other client and not back to the sender" (fun () -> task {
            let! server, _, _ = startServer ()
            use _ = server
            let! result = runNode (TimeSpan.FromSeconds 30.0) "broadcast.mjs" [ server.WsUrl + "/bcast"; "4" ]
            let received = [ for client in result.GetProperty("received").EnumerateArray() -> strings client ]
            Expect.equal received [ []; [ "hello from node 0" ]; [ "hello from node 0" ]; [ "hello from node 0" ] ] "everyone but the sender, once"
        })

        testCaseTask "a ws client, which answers pings, stays open across several idle periods" (fun () -> task {
            let! server, _, pongs = startServer ()
            use _ = server
            let! result = runNode (TimeSpan.FromSeconds 30.0) "idle.mjs" [ server.WsUrl + "/keepalive"; "1800" ]
            match result.TryGetProperty "closedEarly" with
            | true, code -> failtestf "the server closed the connection with %d" (code.GetInt32())
            | _ -> ()
            Expect.isGreaterThanOrEqual (result.GetProperty("pings").GetInt32()) 2 "the server pinged"
            Expect.equal (result.GetProperty("echo").GetString()) "still here" "and the connection still echoes"
            Expect.isGreaterThanOrEqual pongs.Value 2 "the server got the pongs"
        })
    ]

[<Tests>]
let nodeLoadTests =
    testSequenced
    <| testList "Host with Node ws clients: many concurrent connections" [
        testCaseTask "200 ws clients each sending 50 numbered messages to /echo lose and reorder none" (fun () -> task {
            let! server, _, _ = startServer ()
            use _ = server
            let! result = runNode (TimeSpan.FromSeconds 90.0) "echo-load.mjs" [ server.WsUrl + "/echo"; "200"; "50" ]
            Expect.isEmpty (strings (result.GetProperty "failures")) "no connection lost or reordered a message"
            Expect.equal (result.GetProperty("complete").GetInt32()) 200 "all 200 connections got their 50 messages back in order"
            let! ended = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.ConnectionCount = 0)
            Expect.isTrue ended "every connection ended"
        })
    ]

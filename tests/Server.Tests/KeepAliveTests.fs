/// Idle timeout and keep-alive: idle connections are pinged and closed with 1001 unless they answer.
module Realtime.Server.Tests.KeepAliveTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.Net.WebSockets
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing

let private idleRoutes (closes: ConcurrentQueue<int>) (pongs: int ref) (app: WebApplication) =
    app.MapRealtime(
        "/idle",
        RealtimeHandlers<obj>(
            Message = (fun ws message -> ws.Send(message.Data.Span, message.Kind) |> ignore),
            Pong = (fun _ _ -> Interlocked.Increment pongs |> ignore),
            Close = (fun _ code _ -> closes.Enqueue code)
        ),
        fun options ->
            options.IdleTimeout <- millis 300.0
            options.CloseTimeout <- seconds 1.0
    )
    |> ignore

[<Tests>]
let idleTests =
    testList "Host: idle connections are pinged and closed with 1001 unless they answer" [
        testCaseTask "a client that never answers gets a ping, then close 1001, then the TCP connection ends" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let pongs = ref 0
            let! server = start ignore (idleRoutes closes pongs)
            use _ = server
            let clock = Stopwatch.StartNew()
            use! raw = RawClient.connect server.Port "/idle"
            let! first = raw.ReceiveFrame(seconds 10.0)
            let pingAt = clock.Elapsed
            match first with
            | Some frame -> Expect.equal frame.Opcode Opcode.Ping "first a ping"
            | None -> failtest "the connection ended before a ping"
            Expect.isGreaterThanOrEqual pingAt (millis 250.0) "not before the idle timeout"
            let! second = raw.ReceiveFrame(seconds 10.0)
            match second with
            | Some frame ->
                Expect.equal frame.Opcode Opcode.Close "then a close frame"
                Expect.equal frame.CloseCode 1001us "going away"
            | None -> failtest "the connection ended without a close frame"
            let! ended = raw.WaitForTransportClose(seconds 10.0)
            Expect.isTrue ended "the TCP connection ended"
            do! expectEventually (seconds 10.0) "Close ran" (fun () -> closes.Count = 1)
            Expect.equal (closes.ToArray()) [| 1001 |] "the Close handler saw 1001"
        })

        testCaseTask "a ClientWebSocket, which answers pings, stays open across several idle periods" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let pongs = ref 0
            let! server = start ignore (idleRoutes closes pongs)
            use _ = server
            use client = new ClientWebSocket()
            client.Options.KeepAliveInterval <- TimeSpan.Zero
            use cancel = new CancellationTokenSource(seconds 10.0)
            do! client.ConnectAsync(Uri(server.WsUrl + "/idle"), cancel.Token)
            // Pings are answered while a receive is pending.
            let pending = receiveText client
            do! Task.Delay(millis 1800.0)
            Expect.isFalse pending.IsCompleted "nothing arrived: no close"
            Expect.isGreaterThanOrEqual pongs.Value 2 "the server pinged and got pongs"
            Expect.equal client.State WebSocketState.Open "still open"
            do! sendText client "still here"
            let! echo = pending
            Expect.equal echo "still here" "and still echoing"
            Expect.isEmpty closes "no Close"
        })
    ]

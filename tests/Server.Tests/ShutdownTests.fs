/// Graceful shutdown: stopping the app closes connections with 1001 within the shutdown timeout.
module Realtime.Server.Tests.ShutdownTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.Net.WebSockets
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.ClientWebSockets

[<Tests>]
let shutdownTests =
    testList "Host: stopping the app closes connections with 1001 within the shutdown timeout" [
        testCaseTask "connected clients receive 1001 and the stop completes within the shutdown timeout" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let routes (app: WebApplication) =
                app.MapRealtime("/live", RealtimeHandlers<obj>(Close = (fun _ code _ -> closes.Enqueue code))) |> ignore
            let! server = start (fun options -> options.ShutdownTimeout <- seconds 3.0) routes
            let mutable stopped = false
            try
                let! clients = Task.WhenAll [ for _ in 1..3 -> connect (server.WsUrl + "/live") ]
                do! expectEventually (seconds 10.0) "all registered" (fun () -> server.Realtime.ConnectionCount = 3)
                let answers =
                    clients
                    |> Array.map (fun client ->
                        task {
                            let! code, reason = receiveClose client
                            do! client.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
                            return code, reason
                        })
                let clock = Stopwatch.StartNew()
                do! server.StopAsync()
                stopped <- true
                let elapsed = clock.Elapsed
                let! received = (Task.WhenAll answers).WaitAsync(seconds 10.0)
                Expect.allEqual (received |> Array.map fst) 1001 "every client got 1001"
                Expect.isLessThan elapsed (seconds 3.0) "the stop finished within the shutdown timeout"
                Expect.equal (closes.ToArray()) [| 1001; 1001; 1001 |] "every Close handler ran with 1001"
                for client in clients do client.Dispose()
            finally
                if not stopped then (server :> IDisposable).Dispose()
        })

        testCaseTask "the stop returns only after every Close handler has returned: a slow one, of a connection answering the close and of one dropped at the timeout" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let routes (app: WebApplication) =
                app.MapRealtime(
                    "/live",
                    RealtimeHandlers<obj>(Close = (fun _ code _ ->
                        // Cleanup that takes a while (a database write, say) must still run before the host stops.
                        Thread.Sleep 400
                        closes.Enqueue code)))
                |> ignore
            let configure (options: RealtimeOptions) =
                options.ShutdownTimeout <- seconds 1.0
                options.CloseTimeout <- seconds 30.0
            let! server = start configure routes
            let mutable stopped = false
            try
                use! answering = connect (server.WsUrl + "/live")
                use! silent = RawClient.connect server.Port "/live"
                do! expectEventually (seconds 10.0) "both registered" (fun () -> server.Realtime.ConnectionCount = 2)
                let answered =
                    task {
                        let! code, _ = receiveClose answering
                        do! answering.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
                        return code
                    }
                do! server.StopAsync()
                stopped <- true
                Expect.equal (closes.ToArray()) [| 1001; 1001 |] "both Close handlers had returned when the stop did"
                let! code = answered.WaitAsync(seconds 10.0)
                Expect.equal code 1001 "the answering client got 1001"
                let! silentCode = silent.ReceiveClose(seconds 5.0)
                Expect.equal silentCode (Some 1001us) "the silent client was sent 1001"
            finally
                if not stopped then (server :> IDisposable).Dispose()
        })

        testCaseTask "a client that never answers the close is dropped when the shutdown timeout ends" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let routes (app: WebApplication) =
                app.MapRealtime("/live", RealtimeHandlers<obj>(Close = (fun _ code _ -> closes.Enqueue code))) |> ignore
            let configure (options: RealtimeOptions) =
                options.ShutdownTimeout <- seconds 1.0
                options.CloseTimeout <- seconds 30.0
            let! server = start configure routes
            let mutable stopped = false
            try
                use! raw = RawClient.connect server.Port "/live"
                do! expectEventually (seconds 10.0) "registered" (fun () -> server.Realtime.ConnectionCount = 1)
                let clock = Stopwatch.StartNew()
                do! server.StopAsync()
                stopped <- true
                let elapsed = clock.Elapsed
                Expect.isGreaterThanOrEqual elapsed (millis 900.0) "the server waited for the client"
                Expect.isLessThan elapsed (seconds 4.0) "but not much longer than the shutdown timeout"
                let! code = raw.ReceiveClose(seconds 5.0)
                Expect.equal code (Some 1001us) "the client was sent 1001"
                let! ended = raw.WaitForTransportClose(seconds 5.0)
                Expect.isTrue ended "and its TCP connection ended"
                Expect.equal (closes.ToArray()) [| 1001 |] "the Close handler ran with the code the server sent"
            finally
                if not stopped then (server :> IDisposable).Dispose()
        })
    ]

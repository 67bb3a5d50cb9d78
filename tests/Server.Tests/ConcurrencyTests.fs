/// Many concurrent connections each get their own messages back, in order.
module Realtime.Server.Tests.ConcurrencyTests

open System
open System.Diagnostics
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.ClientWebSockets

let private echoRoutes (app: WebApplication) =
    app.MapRealtime("/echo", RealtimeHandlers<obj>(Message = (fun ws message -> ws.Send(message.Data.Span, message.Kind) |> ignore)))
    |> ignore

[<Tests>]
let concurrencyTests =
    testSequenced
    <| testList "Host: many concurrent connections each get their own messages back in order" [
        testCaseTask "200 ClientWebSockets each sending 50 numbered messages to /echo lose and reorder none" (fun () -> task {
            let! server = start ignore echoRoutes
            use _ = server
            let connections, messages = 200, 50
            let one (index: int) : Task<string list> =
                task {
                    let! client = connect (server.WsUrl + "/echo")
                    use _ = client
                    let sending =
                        task {
                            for i in 0 .. messages - 1 do
                                do! sendText client $"{index}:{i}"
                        }
                    let received = ResizeArray<string>()
                    for _ in 1..messages do
                        let! text = receiveText client
                        received.Add text
                    do! sending
                    do! closeClient client 1000 ""
                    return List.ofSeq received
                }
            let clock = Stopwatch.StartNew()
            let! results = (Task.WhenAll [ for index in 0 .. connections - 1 -> one index ]).WaitAsync(seconds 90.0)
            for index in 0 .. connections - 1 do
                Expect.equal results[index] [ for i in 0 .. messages - 1 -> $"{index}:{i}" ] $"connection {index} got all its messages in order"
            Expect.isLessThan clock.Elapsed (seconds 60.0) "in reasonable time"
            do! expectEventually (seconds 10.0) "every connection ended" (fun () -> server.Realtime.ConnectionCount = 0)
        })
    ]

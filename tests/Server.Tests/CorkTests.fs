/// Sends inside Cork arrive in order.
module Realtime.Server.Tests.CorkTests

open System
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.ClientWebSockets

[<Tests>]
let corkTests =
    testList "Host: sends inside Cork arrive in order" [
        testCaseTask "sends corked from outside a handler arrive in order" (fun () -> task {
            let! server = start ignore (fun app -> app.MapRealtime("/cork", announcing ()) |> ignore)
            use _ = server
            let! client, id = connectWithId (server.WsUrl + "/cork")
            use _ = client
            let socket = socketOf server id
            let results = ResizeArray<SendResult>()
            socket.Cork(fun () -> for i in 1..100 do results.Add(socket.Send(string i)))
            Expect.all results (fun r -> r.IsQueued) "every corked send was queued"
            for i in 1..100 do
                let! text = receiveText client
                Expect.equal text (string i) "in order"
        })

        testCaseTask "nested corks inside a handler keep the order of every send around them" (fun () -> task {
            let routes (app: WebApplication) =
                app.MapRealtime(
                    "/cork",
                    RealtimeHandlers<obj>(
                        Message =
                            (fun ws _ ->
                                ws.Send "before" |> ignore
                                ws.Cork(fun () ->
                                    ws.Send "a" |> ignore
                                    ws.Cork(fun () -> ws.Send "b" |> ignore)
                                    ws.Send "c" |> ignore)
                                ws.Send "after" |> ignore)
                    )
                )
                |> ignore
            let! server = start ignore routes
            use _ = server
            let! client = connect (server.WsUrl + "/cork")
            use _ = client
            do! sendText client "go"
            let received = ResizeArray<string>()
            for _ in 1..5 do
                let! text = receiveText client
                received.Add text
            Expect.sequenceEqual received [ "before"; "a"; "b"; "c"; "after" ] "in the order sent"
        })

        testCaseTask "corked batches from two threads each stay in order" (fun () -> task {
            let! server = start ignore (fun app -> app.MapRealtime("/cork", announcing ()) |> ignore)
            use _ = server
            let! client, id = connectWithId (server.WsUrl + "/cork")
            use _ = client
            let socket = socketOf server id
            let batch (name: string) =
                Task.Run(fun () -> for round in 1..20 do socket.Cork(fun () -> for i in 1..10 do socket.Send($"{name}:{round}:{i}") |> ignore))
            do! Task.WhenAll(batch "x", batch "y")
            let received = ResizeArray<string>()
            for _ in 1..400 do
                let! text = receiveText client
                received.Add text
            for name in [ "x"; "y" ] do
                let mine = received |> Seq.filter (fun t -> t.StartsWith(name + ":")) |> List.ofSeq
                Expect.equal mine [ for round in 1..20 do for i in 1..10 -> $"{name}:{round}:{i}" ] $"{name}'s sends in order"
        })
    ]

/// IRealtimeServer.Broadcast sends to an endpoint's connections, as in the ws seeds.
module Realtime.Server.Tests.BroadcastTests

open System
open System.Collections.Concurrent
open System.Net.WebSockets
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.DependencyInjection
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.ClientWebSockets

let private broadcastRoutes (counts: ConcurrentQueue<int>) (app: WebApplication) =
    let realtime = app.Services.GetRequiredService<IRealtimeServer>()
    app.MapRealtime(
        "/bcast",
        RealtimeHandlers<obj>(
            Open = (fun ws -> ws.Send($"id:{ws.Id}") |> ignore),
            // The ws seed's "broadcast to every other client".
            Message = (fun ws message -> counts.Enqueue(realtime.Broadcast("/bcast", message.Text, ws)))
        )
    )
    |> ignore
    app.MapRealtime("/other", announcing ()) |> ignore

[<Tests>]
let broadcastTests =
    testList "Host: Broadcast sends to an endpoint's connections, as in the ws seeds" [
        testCaseTask "IRealtimeServer.Broadcast reaches every connection of the endpoint and none of another" (fun () -> task {
            let counts = ConcurrentQueue<int>()
            let! server = start ignore (broadcastRoutes counts)
            use _ = server
            let! clients = Task.WhenAll [ for _ in 1..3 -> connectWithId (server.WsUrl + "/bcast") ]
            let! other = connectWithId (server.WsUrl + "/other")
            use _ = fst other
            try
                Expect.equal (server.Realtime.Broadcast("/bcast", "to all")) 3 "three connections"
                for client, _ in clients do
                    let! text = receiveText client
                    Expect.equal text "to all" "each got it"
                Expect.equal (server.Realtime.Broadcast("/bcast", ReadOnlySpan [| 1uy; 2uy; 3uy |])) 3 "binary too"
                for client, _ in clients do
                    let! kind, bytes = receive client
                    Expect.equal (kind, bytes) (WebSocketMessageType.Binary, [| 1uy; 2uy; 3uy |]) "binary arrives as binary"
                do! expectNothingBefore server other
                Expect.equal (server.Realtime.Broadcast("/unknown", "x")) 0 "an unknown pattern reaches no one"
            finally
                for client, _ in clients do client.Dispose()
        })

        testCaseTask "Broadcast with except reaches everyone but the sender" (fun () -> task {
            let counts = ConcurrentQueue<int>()
            let! server = start ignore (broadcastRoutes counts)
            use _ = server
            let! clients = Task.WhenAll [ for _ in 1..3 -> connectWithId (server.WsUrl + "/bcast") ]
            try
                do! sendText (fst clients[0]) "from 0"
                for client, _ in clients[1..] do
                    let! text = receiveText client
                    Expect.equal text "from 0" "the others got it"
                do! expectEventually (seconds 10.0) "the handler returned" (fun () -> counts.Count = 1)
                Expect.equal (counts.ToArray()) [| 2 |] "queued to two"
                do! expectNothingBefore server clients[0]
            finally
                for client, _ in clients do client.Dispose()
        })

        testCaseTask "ConnectionsOf lists exactly the open connections of an endpoint" (fun () -> task {
            let counts = ConcurrentQueue<int>()
            let! server = start ignore (broadcastRoutes counts)
            use _ = server
            let! clients = Task.WhenAll [ for _ in 1..3 -> connectWithId (server.WsUrl + "/bcast") ]
            let! other = connectWithId (server.WsUrl + "/other")
            use _ = fst other
            try
                let ids (sockets: seq<RealtimeSocket>) = sockets |> Seq.map (fun s -> s.Id) |> set
                Expect.equal (ids (server.Realtime.ConnectionsOf "/bcast")) (clients |> Seq.map snd |> set) "the three of /bcast"
                Expect.equal (ids (server.Realtime.ConnectionsOf "/other")) (set [ snd other ]) "the one of /other"
                Expect.isEmpty (server.Realtime.ConnectionsOf "/unknown") "none for an unknown pattern"
                Expect.equal server.Realtime.ConnectionCount 4 "four in all"
                Expect.equal (ids server.Realtime.Connections) (set [ yield! clients |> Seq.map snd; snd other ]) "Connections lists all"
                do! closeClient (fst clients[0]) 1000 ""
                do! expectEventually (seconds 10.0) "the closed one is gone" (fun () -> (server.Realtime.ConnectionsOf "/bcast").Count = 2)
                Expect.equal (server.Realtime.Broadcast("/bcast", "two left")) 2 "Broadcast reaches the two left"
            finally
                for client, _ in clients do client.Dispose()
        })
    ]

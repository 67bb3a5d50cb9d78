/// Topics: a publish reaches the topic's subscribers only, on a real Kestrel.
module Realtime.Server.Tests.PubSubTests

open System
open System.Collections.Concurrent
open System.Net.WebSockets
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.ClientWebSockets

let private topicRoutes (publishedCounts: ConcurrentQueue<int>) (app: WebApplication) =
    app.MapRealtime(
        "/topics",
        RealtimeHandlers<obj>(
            Open =
                (fun ws ->
                    ws.Subscribe "room" |> ignore
                    ws.Send($"id:{ws.Id}") |> ignore),
            Message = (fun ws message -> publishedCounts.Enqueue(ws.Publish("room", message.Text)))
        )
    )
    |> ignore

[<Tests>]
let pubSubTests =
    testList "Host: topics deliver a publish to the subscribers only" [
        testCaseTask "ws.Publish reaches every other subscriber and skips the sender" (fun () -> task {
            let counts = ConcurrentQueue<int>()
            let! server = start ignore (topicRoutes counts)
            use _ = server
            let! a = connectWithId (server.WsUrl + "/topics")
            let! b = connectWithId (server.WsUrl + "/topics")
            let! c = connectWithId (server.WsUrl + "/topics")
            use _ = fst a
            use _ = fst b
            use _ = fst c
            do! sendText (fst a) "hello room"
            let! atB = receiveText (fst b)
            let! atC = receiveText (fst c)
            Expect.equal (atB, atC) ("hello room", "hello room") "the other subscribers got it"
            do! expectEventually (seconds 10.0) "the handler returned" (fun () -> counts.Count = 1)
            Expect.equal (counts.ToArray()) [| 2 |] "Publish counted two recipients"
            do! expectNothingBefore server a
        })

        testCaseTask "IRealtimeServer.Publish reaches every subscriber, the would-be sender included, as text or binary" (fun () -> task {
            let counts = ConcurrentQueue<int>()
            let! server = start ignore (topicRoutes counts)
            use _ = server
            let! clients = Task.WhenAll [ for _ in 1..3 -> connectWithId (server.WsUrl + "/topics") ]
            try
                let delivered = server.Realtime.Publish("room", "from the server")
                Expect.equal delivered 3 "queued to all three"
                for client, _ in clients do
                    let! text = receiveText client
                    Expect.equal text "from the server" "every subscriber got it"
                let delivered = server.Realtime.Publish("room", ReadOnlySpan [| 7uy; 8uy |])
                Expect.equal delivered 3 "binary queued to all three"
                for client, _ in clients do
                    let! kind, bytes = receive client
                    Expect.equal (kind, bytes) (WebSocketMessageType.Binary, [| 7uy; 8uy |]) "binary stays binary"
                Expect.equal (server.Realtime.Publish("nobody-listens", "x")) 0 "a topic without subscribers reaches no one"
            finally
                for client, _ in clients do client.Dispose()
        })

        testCaseTask "Subscribe, Unsubscribe, IsSubscribed, Subscriptions, SubscriberCount and Topics agree" (fun () -> task {
            let counts = ConcurrentQueue<int>()
            let! server = start ignore (topicRoutes counts)
            use _ = server
            let! a = connectWithId (server.WsUrl + "/topics")
            let! b = connectWithId (server.WsUrl + "/topics")
            use _ = fst a
            use _ = fst b
            let sa, sb = socketOf server (snd a), socketOf server (snd b)
            Expect.isTrue (sa.Subscribe "news") "a new subscription"
            Expect.isFalse (sa.Subscribe "news") "already subscribed"
            Expect.isTrue (sa.IsSubscribed "news") "subscribed"
            Expect.isFalse (sb.IsSubscribed "news") "the other is not"
            Expect.equal (set sa.Subscriptions) (set [ "room"; "news" ]) "a's topics"
            Expect.equal (List.ofSeq sb.Subscriptions) [ "room" ] "b's topics"
            Expect.equal (server.Realtime.SubscriberCount "room") 2 "two in room"
            Expect.equal (server.Realtime.SubscriberCount "news") 1 "one in news"
            Expect.equal (server.Realtime.SubscriberCount "none") 0 "none elsewhere"
            Expect.equal (set server.Realtime.Topics) (set [ "room"; "news" ]) "topics with subscribers"
            Expect.isTrue (sa.Unsubscribe "news") "unsubscribed"
            Expect.isFalse (sa.Unsubscribe "news") "no longer subscribed"
            Expect.isFalse (sa.IsSubscribed "news") "not subscribed any more"
            Expect.equal (server.Realtime.SubscriberCount "news") 0 "news is empty"
            Expect.equal (set server.Realtime.Topics) (set [ "room" ]) "an empty topic disappears"
        })

        testCaseTask "a client that unsubscribed gets nothing from the topic" (fun () -> task {
            let counts = ConcurrentQueue<int>()
            let! server = start ignore (topicRoutes counts)
            use _ = server
            let! a = connectWithId (server.WsUrl + "/topics")
            let! b = connectWithId (server.WsUrl + "/topics")
            use _ = fst a
            use _ = fst b
            Expect.isTrue ((socketOf server (snd b)).Unsubscribe "room") "b leaves the room"
            Expect.equal (server.Realtime.Publish("room", "only a")) 1 "one recipient"
            let! atA = receiveText (fst a)
            Expect.equal atA "only a" "a got it"
            do! expectNothingBefore server b
        })

        testCaseTask "a Close handler can still publish to the topic it left, as the Chat sample's leave notice does" (fun () -> task {
            let sendsInClose = ConcurrentQueue<SendStatus>()
            let routes (app: WebApplication) =
                app.MapRealtime(
                    "/chat",
                    RealtimeHandlers<obj>(
                        Open =
                            (fun ws ->
                                ws.Subscribe "room" |> ignore
                                ws.Send($"id:{ws.Id}") |> ignore),
                        Close =
                            (fun ws _ _ ->
                                sendsInClose.Enqueue (ws.Send "too late").Status
                                ws.Publish("room", $"{ws.Id} left") |> ignore)
                    )
                )
                |> ignore
            let! server = start ignore routes
            use _ = server
            let! stay, _ = connectWithId (server.WsUrl + "/chat")
            use _ = stay
            let! leave, leaveId = connectWithId (server.WsUrl + "/chat")
            do! closeClient leave 1000 ""
            leave.Dispose()
            let! notice = receiveText stay
            Expect.equal notice $"{leaveId} left" "the one who stayed hears about it"
            Expect.sequenceEqual sendsInClose [ SendStatus.Dropped ] "a send to the closed connection itself is dropped"
        })

        testCaseTask "a closed connection leaves its topics" (fun () -> task {
            let counts = ConcurrentQueue<int>()
            let! server = start ignore (topicRoutes counts)
            use _ = server
            let! a = connectWithId (server.WsUrl + "/topics")
            let! b = connectWithId (server.WsUrl + "/topics")
            use _ = fst a
            let sb = socketOf server (snd b)
            sb.Subscribe "b-only" |> ignore
            Expect.equal (server.Realtime.SubscriberCount "room") 2 "two in room"
            do! closeClient (fst b) 1000 ""
            (fst b).Dispose()
            do! expectEventually (seconds 10.0) "b left room" (fun () -> server.Realtime.SubscriberCount "room" = 1)
            Expect.equal (server.Realtime.SubscriberCount "b-only") 0 "b left its own topic"
            Expect.isFalse (server.Realtime.Topics |> Seq.contains "b-only") "the topic is gone"
            Expect.isFalse (sb.Subscribe "late") "a closed connection cannot subscribe again"
            Expect.equal (server.Realtime.SubscriberCount "late") 0 "and is not counted"
            Expect.equal (server.Realtime.Publish("room", "after b")) 1 "only a remains"
        })
    ]

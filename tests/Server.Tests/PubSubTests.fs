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

/// Reads text messages until "end"; counts topic messages ("p:...") that arrived outside a
/// subscription, that is not between an "s" marker (queued before Subscribe) and a "u" marker
/// (queued once Unsubscribe returned). Returns (topic messages, outside ones, "u" markers).
let private readCycles (client: ClientWebSocket) : Task<int * int * int> =
    task {
        let mutable subscribed = false
        let mutable topicMessages = 0
        let mutable outside = 0
        let mutable unsubscribes = 0
        let mutable finished = false
        while not finished do
            match! receiveText client with
            | "end" -> finished <- true
            | "s" -> subscribed <- true
            | "u" ->
                subscribed <- false
                unsubscribes <- unsubscribes + 1
            | _ ->
                topicMessages <- topicMessages + 1
                if not subscribed then outside <- outside + 1
        return topicMessages, outside, unsubscribes
    }

/// 4 connections each subscribe and unsubscribe 100 times while two threads publish to the topic;
/// the markers around each subscription show whether a topic message was queued outside one.
/// With `compressed`, the clients negotiate context takeover both ways and the publishes ask for
/// compression, so each recipient compresses under its own lock (the other enqueue path).
let private unsubscribeCycles (compressed: bool) : Task<unit> =
    task {
        let! server =
            start
                (fun o ->
                    o.MaxBufferedAmount <- 256L * 1024L * 1024L
                    o.PerMessageDeflate <- compressed)
                (fun app ->
                    app.MapRealtime("/cycles", announcing (), fun o -> o.ServerNoContextTakeover <- not compressed) |> ignore)
        use _ = server
        let open' () =
            task {
                let client = new ClientWebSocket()
                if compressed then
                    client.Options.DangerousDeflateOptions <- WebSocketDeflateOptions(ServerContextTakeover = true, ClientContextTakeover = true)
                use cancel = new System.Threading.CancellationTokenSource(seconds 10.0)
                do! client.ConnectAsync(Uri(server.WsUrl + "/cycles"), cancel.Token)
                let! first = receiveText client
                if not (first.StartsWith "id:") then failtestf "expected the id message first, got %s" first
                return client, int64 (first.Substring 3)
            }
        let! clients = Task.WhenAll [ for _ in 1..4 -> open' () ]
        try
            let sockets = clients |> Array.map (fun (_, id) -> socketOf server id)
            for socket in sockets do Expect.equal socket.Compression compressed "compression as asked"
            let readers = clients |> Array.map (fun (client, _) -> readCycles client)
            use stop = new System.Threading.CancellationTokenSource(seconds 60.0)
            // The publishers publish without pause while a window is open and wait (without CPU) while
            // it is shut; a window opens once all four are subscribed and shuts after they have left,
            // so every Unsubscribe meets publishes in flight.
            use window = new System.Threading.ManualResetEventSlim(false)
            use published2 = new System.Threading.ManualResetEventSlim(false)
            let windowStart = ref 0L
            let published = ref 0L
            let publisher () =
                // Bounded in count and in time; stops when the cycles are done.
                let mutable n = 0
                while not stop.IsCancellationRequested && n < 2_000_000 do
                    if window.Wait(100) then
                        n <- n + 1
                        let k = System.Threading.Interlocked.Increment(&published.contents)
                        server.Realtime.Publish("room", $"p:{k}", compressed) |> ignore
                        if k >= windowStart.Value + 2L then published2.Set()
            let publishers = Array.init 2 (fun _ -> System.Threading.Thread(publisher, IsBackground = true))
            for p in publishers do p.Start()
            for _ in 1..100 do
                for socket in sockets do
                    Expect.isTrue (socket.Send "s").IsQueued "the marker before Subscribe is queued"
                    Expect.isTrue (socket.Subscribe "room") "subscribed"
                windowStart.Value <- published.Value
                published2.Reset()
                window.Set()
                // Two publishes have begun while all are subscribed (at most 10 s; the publishers go on).
                published2.Wait(seconds 10.0) |> ignore
                for socket in sockets do
                    Expect.isTrue (socket.Unsubscribe "room") "unsubscribed"
                    Expect.isTrue (socket.Send "u").IsQueued "the marker after Unsubscribe is queued"
                window.Reset()
            stop.Cancel()
            for p in publishers do Expect.isTrue (p.Join(seconds 30.0)) "the publishers stop"
            for socket in sockets do Expect.isTrue (socket.Send "end").IsQueued "the end marker is queued"
            let! results = Task.WhenAll(readers).WaitAsync(seconds 60.0)
            Expect.isGreaterThan published.Value 0L "publishes ran"
            Expect.isGreaterThan (results |> Array.sumBy (fun (received, _, _) -> received)) 0 "topic messages reached the subscribers"
            for _, outside, unsubscribes in results do
                Expect.equal unsubscribes 100 "every cycle's marker arrived"
                Expect.equal outside 0 "no topic message arrived after an Unsubscribe returned"
        finally
            for client, _ in clients do client.Dispose()
    }

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

        testCaseTask "nothing queued after Unsubscribe returned reaches the connection, while two threads publish: 4 connections, 100 subscribe/unsubscribe cycles each" (fun () ->
            unsubscribeCycles false)

        testCaseTask "the same with compressed publishes to clients with context takeover (compressed per connection, under its lock)" (fun () ->
            unsubscribeCycles true)
    ]

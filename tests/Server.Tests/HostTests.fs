/// End-to-end behaviour of the ASP.NET Core host on a real Kestrel (127.0.0.1, ephemeral ports),
/// driven by .NET ClientWebSocket and by the raw frame client: handler order, rejection before
/// the upgrade, topics, broadcast, send results and Drain, flow control, close codes, keep-alive,
/// graceful shutdown, many connections and cork.
module Realtime.Server.Tests.HostTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.Net
open System.Net.Http
open System.Net.Sockets
open System.Net.WebSockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Http
open Microsoft.AspNetCore.Routing
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

let private seconds (value: float) = TimeSpan.FromSeconds value
let private millis (value: float) = TimeSpan.FromMilliseconds value

let private http = new HttpClient(Timeout = seconds 10.0)

/// One log entry, as captured.
type LogEntry =
    { Category: string
      Level: LogLevel
      EventId: int
      Message: string
      Error: exn }

type private CapturingLogger(category: string, sink: ConcurrentQueue<LogEntry>) =
    interface ILogger with
        member _.BeginScope<'TState>(_state: 'TState) : IDisposable = null
        member _.IsEnabled(_level: LogLevel) = true
        member _.Log<'TState>(level: LogLevel, eventId: EventId, state: 'TState, error: exn, formatter: Func<'TState, exn, string>) =
            sink.Enqueue
                { Category = category
                  Level = level
                  EventId = eventId.Id
                  Message = formatter.Invoke(state, error)
                  Error = error }

/// A logger provider that keeps every entry that passes the host's filter (Warning and up).
type CapturedLogs() =
    let entries = ConcurrentQueue<LogEntry>()
    member _.Entries = entries.ToArray()
    interface ILoggerProvider with
        member _.CreateLogger(category: string) = CapturingLogger(category, entries) :> ILogger
        member _.Dispose() = ()

/// Adds a capturing provider to a built app (call from mapRoutes).
let private captureLogs (app: WebApplication) =
    let logs = new CapturedLogs()
    app.Services.GetRequiredService<ILoggerFactory>().AddProvider logs
    logs

/// Connects a ClientWebSocket whose server-side Open handler sends "id:N"; returns it and N.
let private connectWithId (url: string) : Task<ClientWebSocket * int64> =
    task {
        let! client = connect url
        let! first = receiveText client
        if not (first.StartsWith "id:") then failtestf "expected the id message first, got %s" first
        return client, int64 (first.Substring 3)
    }

/// The server-side socket of a connection id.
let private socketOf (server: RunningServer) (id: int64) : RealtimeSocket =
    match server.Realtime.TryGetConnection id with
    | true, socket -> socket
    | _ -> failtestf "connection %d is not registered" id

/// Closes a ClientWebSocket with a code and reason and waits for the server's answer.
let private closeClient (client: ClientWebSocket) (code: int) (reason: string) : Task =
    task {
        use cancel = new CancellationTokenSource(seconds 10.0)
        do! client.CloseAsync(enum<WebSocketCloseStatus> code, reason, cancel.Token)
    }

/// Receives until a close frame arrives (data messages are skipped); returns its code and reason.
let private receiveClose (client: ClientWebSocket) : Task<int * string> =
    task {
        use cancel = new CancellationTokenSource(seconds 10.0)
        let buffer = Array.zeroCreate<byte> 65536
        let mutable finished = false
        while not finished do
            let! result = client.ReceiveAsync(ArraySegment buffer, cancel.Token)
            finished <- result.MessageType = WebSocketMessageType.Close
        return int client.CloseStatus.Value, client.CloseStatusDescription
    }

/// Fails unless the condition holds within the time.
let private expectEventually (timeout: TimeSpan) (message: string) (condition: unit -> bool) : Task =
    task {
        let! ok = eventually timeout condition
        if not ok then failtest message
    }

/// Connects a raw client whose TCP receive window is small (set before connecting), so that the
/// kernel holds little of what the server writes to a client that stops reading.
let private connectRawSmallWindow (port: int) (path: string) : Task<RawClient.RawConnection> =
    task {
        let! tcp, stream, head =
            RawClient.handshakeRawWith (fun tcp -> tcp.ReceiveBufferSize <- 8192) port (RawClient.upgradeRequest path "")
        if not (head.StartsWith "HTTP/1.1 101") then failtestf "expected 101, got: %s" head
        return new RawClient.RawConnection(tcp, stream, head)
    }

/// An endpoint handler set whose Open announces the connection id to the client.
let private announcing () =
    RealtimeHandlers<obj>(Open = (fun ws -> ws.Send($"id:{ws.Id}") |> ignore))

// ---------------------------------------------------------------------------------------------
// 1. Handler order, attached data, ids, lookup from ordinary routes
// ---------------------------------------------------------------------------------------------

/// What Attach returns for the tests: a name from the query string.
type Visitor = { Name: string }

let private orderedRoutes (events: ConcurrentQueue<string>) (app: WebApplication) =
    app.MapRealtime(
        "/room",
        RealtimeHandlers<Visitor>(
            Attach =
                (fun http ->
                    let name = http.Request.Query["name"].ToString()
                    events.Enqueue $"attach:{name}"
                    Attachment<Visitor>.Accept { Name = name }),
            Open =
                (fun ws ->
                    events.Enqueue $"open:{ws.Data.Name}"
                    ws.Send($"id:{ws.Id}") |> ignore),
            Message =
                (fun ws message ->
                    events.Enqueue $"message:{ws.Data.Name}:{message.Text}"
                    if message.Text = "kick me" then ws.Close(4001, "kicked")),
            Close = (fun ws code reason -> events.Enqueue $"close:{ws.Data.Name}:{code}:{reason}")
        )
    )
    |> ignore

[<Tests>]
let handlerOrderTests =
    testList "Host: handlers run Attach, Open, Message..., Close in order with Attach's data" [
        testCaseTask "a connection sees Attach, Open, each message in order, then Close once with the client's code and reason" (fun () -> task {
            let events = ConcurrentQueue<string>()
            let! server = start ignore (orderedRoutes events)
            use _ = server
            let! client, _ = connectWithId (server.WsUrl + "/room?name=alice")
            use _ = client
            for text in [ "one"; "two"; "three" ] do
                do! sendText client text
            do! closeClient client 4000 "bye"
            do! expectEventually (seconds 10.0) "the Close handler ran" (fun () -> events |> Seq.exists (fun e -> e.StartsWith "close:"))
            do! Task.Delay 200
            Expect.sequenceEqual
                (events.ToArray())
                [ "attach:alice"; "open:alice"; "message:alice:one"; "message:alice:two"; "message:alice:three"; "close:alice:4000:bye" ]
                "Attach, Open, messages in order, one Close with the client's code and reason, all with the name from Attach"
            Expect.equal client.CloseStatus (Nullable(enum<WebSocketCloseStatus> 4000)) "the server echoed the client's close code"
        })

        testCaseTask "a close started by the server with ws.Close reaches the client and the Close handler" (fun () -> task {
            let events = ConcurrentQueue<string>()
            let! server = start ignore (orderedRoutes events)
            use _ = server
            let! client, _ = connectWithId (server.WsUrl + "/room?name=bob")
            use _ = client
            do! sendText client "kick me"
            let! code, reason = receiveClose client
            Expect.equal (code, reason) (4001, "kicked") "the client receives the server's code and reason"
            do! client.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            do! expectEventually (seconds 10.0) "the Close handler ran" (fun () -> events |> Seq.exists (fun e -> e.StartsWith "close:"))
            do! Task.Delay 200
            Expect.equal (events |> Seq.filter (fun e -> e.StartsWith "close:") |> List.ofSeq) [ "close:bob:4001:kicked" ] "Close ran once with the server's code"
        })

        testCaseTask "a client that drops the TCP connection without a close frame gives Close 1006 once" (fun () -> task {
            let events = ConcurrentQueue<string>()
            let! server = start ignore (orderedRoutes events)
            use _ = server
            let! client, _ = connectWithId (server.WsUrl + "/room?name=carol")
            client.Abort()
            client.Dispose()
            do! expectEventually (seconds 10.0) "the Close handler ran" (fun () -> events |> Seq.exists (fun e -> e.StartsWith "close:"))
            do! Task.Delay 200
            Expect.equal (events |> Seq.filter (fun e -> e.StartsWith "close:") |> List.ofSeq) [ "close:carol:1006:" ] "abnormal closure, reported once"
        })

        testCaseTask "an async Message handler finishes before the next message and before Close, even when the client closes meanwhile" (fun () -> task {
            let events = ConcurrentQueue<string>()
            let routes (app: WebApplication) =
                app.MapRealtime(
                    "/slow",
                    RealtimeHandlers<obj>(
                        MessageAsync =
                            (fun _ message ->
                                task {
                                    let text = message.Text
                                    events.Enqueue $"start:{text}"
                                    do! Task.Delay 150
                                    events.Enqueue $"end:{text}"
                                }
                                :> Task),
                        Close = (fun _ code _ -> events.Enqueue $"close:{code}")
                    )
                )
                |> ignore
            let! server = start ignore routes
            use _ = server
            use! raw = RawClient.connect server.Port "/slow"
            do! raw.SendText "a"
            do! raw.SendText "b"
            do! raw.SendClose(1000us, "")
            let! code = raw.ReceiveClose(seconds 10.0)
            Expect.equal code (Some 1000us) "the close is answered"
            do! expectEventually (seconds 10.0) "Close ran" (fun () -> events |> Seq.exists (fun e -> e.StartsWith "close:"))
            Expect.sequenceEqual (events.ToArray()) [ "start:a"; "end:a"; "start:b"; "end:b"; "close:1000" ] "never overlapping, in order"
        })

        testCaseTask "every connection has its own id, TryGetConnection finds it while open and not after" (fun () -> task {
            let events = ConcurrentQueue<string>()
            let! server = start ignore (orderedRoutes events)
            use _ = server
            let! clients = Task.WhenAll [ for i in 1..5 -> connectWithId (server.WsUrl + $"/room?name=n{i}") ]
            try
                let ids = clients |> Array.map snd
                Expect.equal (Array.distinct ids).Length 5 "five different ids"
                for id in ids do
                    let socket = socketOf server id
                    Expect.equal socket.Id id "the found connection has the id asked for"
                    Expect.equal socket.Endpoint "/room" "and belongs to the endpoint"
                    Expect.isTrue socket.IsOpen "and is open"
                    Expect.equal (socket :?> RealtimeSocket<Visitor>).Data.Name $"n{Array.IndexOf(ids, id) + 1}" "with its own data"
                let first, firstId = clients[0]
                do! closeClient first 1000 ""
                do! expectEventually (seconds 10.0) "a closed connection is no longer found" (fun () -> not (fst (server.Realtime.TryGetConnection firstId)))
                Expect.equal server.Realtime.ConnectionCount 4 "the others remain"
            finally
                for client, _ in clients do client.Dispose()
        })

        testCaseTask "an ordinary POST route sends to one client by id, and answers 404 for an unknown id" (fun () -> task {
            let routes (app: WebApplication) =
                app.MapRealtime("/notify", announcing ()) |> ignore
                app.MapPost(
                    "/send/{id}",
                    RequestDelegate(fun context ->
                        task {
                            let realtime = context.RequestServices.GetRequiredService<IRealtimeServer>()
                            use reader = new IO.StreamReader(context.Request.Body)
                            let! body = reader.ReadToEndAsync()
                            match Int64.TryParse(string context.Request.RouteValues["id"]) with
                            | true, id ->
                                match realtime.TryGetConnection id with
                                | true, socket ->
                                    let result = socket.Send body
                                    do! context.Response.WriteAsync(string result.Status)
                                | _ -> context.Response.StatusCode <- 404
                            | _ -> context.Response.StatusCode <- 400
                        }
                        :> Task)
                )
                |> ignore
                app.MapGet("/count", Func<IRealtimeServer, int>(fun realtime -> realtime.ConnectionCount)) |> ignore
            let! server = start ignore routes
            use _ = server
            let! alice, aliceId = connectWithId (server.WsUrl + "/notify")
            use _ = alice
            let! bob, bobId = connectWithId (server.WsUrl + "/notify")
            use _ = bob
            let! response = http.PostAsync($"{server.HttpUrl}/send/{bobId}", new StringContent("for bob"))
            Expect.equal response.StatusCode HttpStatusCode.OK "the route found bob"
            let! status = response.Content.ReadAsStringAsync()
            Expect.equal status "Sent" "the route saw the send result"
            let! text = receiveText bob
            Expect.equal text "for bob" "bob got the route's message"
            let! response = http.PostAsync($"{server.HttpUrl}/send/{aliceId}", new StringContent("for alice"))
            Expect.equal response.StatusCode HttpStatusCode.OK "the route found alice"
            let! text = receiveText alice
            Expect.equal text "for alice" "alice got only her message"
            let! missing = http.PostAsync($"{server.HttpUrl}/send/999999", new StringContent("nobody"))
            Expect.equal missing.StatusCode HttpStatusCode.NotFound "unknown id"
            let! count = http.GetStringAsync($"{server.HttpUrl}/count")
            Expect.equal count "2" "an ordinary GET route sees the connection count"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 2. Rejection before the upgrade
// ---------------------------------------------------------------------------------------------

let private guardedRoutes (attached: int ref) (opened: int ref) (app: WebApplication) =
    let handlers =
        RealtimeHandlers<string>(
            Attach =
                (fun http ->
                    Interlocked.Increment attached |> ignore
                    match http.Request.Query["token"].ToString() with
                    | "" -> Attachment<string>.Reject(401, "token required")
                    | "secret" -> Attachment<string>.Accept "user"
                    | "explode" -> raise (InvalidOperationException "attach exploded")
                    | _ -> Attachment<string>.Reject(403, "forbidden")),
            Open = (fun ws -> Interlocked.Increment opened |> ignore),
            Message = (fun ws message -> ws.Send(message.Data.Span, message.Kind) |> ignore)
        )
    app.MapRealtime("/guarded", handlers) |> ignore
    app.MapRealtime(
        "/guarded-async",
        RealtimeHandlers<string>(
            AttachAsync =
                (fun http ->
                    task {
                        do! Task.Delay 10
                        return Attachment<string>.Reject(403, "not today")
                    }
                    |> ValueTask<Attachment<string>>),
            Open = (fun _ -> Interlocked.Increment opened |> ignore)
        )
    )
    |> ignore

let private rawHead (port: int) (request: string) : Task<string> =
    task {
        let! tcp, stream, head = RawClient.handshakeRaw port request
        stream.Dispose()
        tcp.Dispose()
        return head
    }

[<Tests>]
let rejectionTests =
    testList "Host: requests refused before the upgrade get an HTTP status, not a WebSocket" [
        testCaseTask "Attach rejecting with 401 answers 401 with its reason and never upgrades" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            let! head = rawHead server.Port (RawClient.upgradeRequest "/guarded" "")
            Expect.stringStarts head "HTTP/1.1 401" "401 Unauthorized"
            Expect.isFalse (head.Contains "Sec-WebSocket-Accept") "no accept key"
            Expect.equal attached.Value 1 "Attach ran"
            Expect.equal opened.Value 0 "Open never ran"
            Expect.equal server.Realtime.ConnectionCount 0 "no connection"
        })

        testCaseTask "Attach rejecting with 403 makes ClientWebSocket fail with status 403" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            use client = new ClientWebSocket()
            client.Options.CollectHttpResponseDetails <- true
            use cancel = new CancellationTokenSource(seconds 10.0)
            let! failure =
                task {
                    try
                        do! client.ConnectAsync(Uri(server.WsUrl + "/guarded?token=wrong"), cancel.Token)
                        return None
                    with :? WebSocketException as e -> return Some e
                }
            Expect.isSome failure "the connect failed"
            Expect.equal client.HttpStatusCode HttpStatusCode.Forbidden "403 Forbidden"
            Expect.equal opened.Value 0 "Open never ran"
            let! allowed = connect (server.WsUrl + "/guarded?token=secret")
            use _ = allowed
            do! sendText allowed "let in"
            let! echo = receiveText allowed
            Expect.equal echo "let in" "the right token is let in"
        })

        testCaseTask "AttachAsync rejecting with 403 answers 403" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            let! head = rawHead server.Port (RawClient.upgradeRequest "/guarded-async" "")
            Expect.stringStarts head "HTTP/1.1 403" "403 from the asynchronous Attach"
            Expect.equal opened.Value 0 "Open never ran"
        })

        testCaseTask "an Attach that throws answers 500 and the server keeps serving" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let mutable logs = Unchecked.defaultof<CapturedLogs>
            let! server = start ignore (fun app -> logs <- captureLogs app; guardedRoutes attached opened app)
            use _ = server
            let! head = rawHead server.Port (RawClient.upgradeRequest "/guarded?token=explode" "")
            Expect.stringStarts head "HTTP/1.1 500" "500 Internal Server Error"
            Expect.exists logs.Entries (fun e -> e.EventId = 6 && e.Level = LogLevel.Error && e.Error :? InvalidOperationException) "the failure is logged"
            let! client = connect (server.WsUrl + "/guarded?token=secret")
            use _ = client
            do! sendText client "still serving"
            let! echo = receiveText client
            Expect.equal echo "still serving" "the next connection works"
        })

        testCaseTask "a plain GET without Upgrade gets 400 or 426 and Attach does not run" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            let! response = http.GetAsync(server.HttpUrl + "/guarded?token=secret")
            Expect.contains [ HttpStatusCode.BadRequest; HttpStatusCode.UpgradeRequired ] response.StatusCode "400 or 426"
            Expect.equal attached.Value 0 "Attach is not asked about a request that is no handshake"
        })

        testCaseTask "another method than GET gets 405 with Allow: GET" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            let! response = http.PostAsync(server.HttpUrl + "/guarded?token=secret", new StringContent("x"))
            Expect.equal response.StatusCode HttpStatusCode.MethodNotAllowed "405"
            Expect.sequenceEqual (response.Content.Headers.Allow |> List.ofSeq) [ "GET" ] "Allow: GET"
            let upgradeByPost = (RawClient.upgradeRequest "/guarded?token=secret" "").Replace("GET ", "POST ")
            let! head = rawHead server.Port upgradeByPost
            Expect.stringStarts head "HTTP/1.1 405" "an upgrade attempt by POST is refused too"
            Expect.equal attached.Value 0 "Attach did not run"
        })

        testCaseTask "an unsupported Sec-WebSocket-Version gets 426 with Sec-WebSocket-Version: 13" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            let request = (RawClient.upgradeRequest "/guarded?token=secret" "").Replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
            let! head = rawHead server.Port request
            Expect.stringStarts head "HTTP/1.1 426" "426 Upgrade Required"
            Expect.stringContains head "Sec-WebSocket-Version: 13" "names the version the server speaks"
            Expect.equal attached.Value 0 "Attach did not run"
            Expect.equal opened.Value 0 "nothing opened"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 3. Publish and subscribe
// ---------------------------------------------------------------------------------------------

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

/// Proves a client received nothing else: a marker sent directly must be its next message.
let private expectNothingBefore (server: RunningServer) (client: ClientWebSocket, id: int64) : Task =
    task {
        (socketOf server id).Send "marker" |> ignore
        let! next = receiveText client
        Expect.equal next "marker" $"connection {id} received nothing else"
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
    ]

// ---------------------------------------------------------------------------------------------
// 4. Broadcast
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 5. Send results, BufferedAmount and Drain with a client that stops reading
// ---------------------------------------------------------------------------------------------

let private softLimit = 16L * 1024L
let private hardLimit = 256L * 1024L

let private slowReaderRoutes (opened: TaskCompletionSource<RealtimeSocket>) (drains: int ref) (closes: ConcurrentQueue<int>) (closeOnLimit: bool) (app: WebApplication) =
    app.MapRealtime(
        "/slow-reader",
        RealtimeHandlers<obj>(
            Open = (fun ws -> opened.TrySetResult ws |> ignore),
            Drain = (fun _ -> Interlocked.Increment drains |> ignore),
            Close = (fun _ code _ -> closes.Enqueue code)
        ),
        fun options ->
            options.BackpressureLimit <- softLimit
            options.MaxBufferedAmount <- hardLimit
            options.CloseOnBackpressureLimit <- closeOnLimit
    )
    |> ignore

/// Sends 8 KiB binary messages until the buffer is stuck full: a send is Dropped and the buffered
/// amount no longer moves (or the connection closed). Bounded by 20,000 sends and 20 s. Returns
/// every status seen and the buffered amounts seen at Backpressure results.
let private fillUntilStuck (socket: RealtimeSocket) : Task<ResizeArray<SendStatus> * ResizeArray<int64>> =
    task {
        let payload = Array.create 8192 (byte 'x')
        let statuses = ResizeArray<SendStatus>()
        let bufferedAtBackpressure = ResizeArray<int64>()
        let clock = Stopwatch.StartNew()
        let mutable stuck = false
        while not stuck && statuses.Count < 20000 && clock.Elapsed < seconds 20.0 do
            let result = socket.Send payload
            statuses.Add result.Status
            match result.Status with
            | SendStatus.Backpressure -> bufferedAtBackpressure.Add socket.BufferedAmount
            | SendStatus.Dropped ->
                if not socket.IsOpen then stuck <- true
                else
                    // Full for now: stuck only if the writer makes no progress for 300 ms.
                    let before = socket.BufferedAmount
                    let mutable checks = 0
                    while checks < 6 && socket.BufferedAmount = before do
                        do! Task.Delay 50
                        checks <- checks + 1
                    stuck <- socket.BufferedAmount = before
            | _ -> ()
        if not stuck then failtestf "the buffer never got stuck (%d sends in %O)" statuses.Count clock.Elapsed
        return statuses, bufferedAtBackpressure
    }

/// The client reads again: counts binary messages and collects texts up to the text "end".
let private readUntilEnd (raw: RawClient.RawConnection) : Task<int * ResizeArray<string>> =
    task {
        let mutable binary = 0
        let mutable finished = false
        let texts = ResizeArray<string>()
        while not finished do
            let! kind, bytes = raw.ReceiveMessage()
            if kind = Opcode.Binary then binary <- binary + 1
            else
                let text = Encoding.UTF8.GetString bytes
                texts.Add text
                finished <- text = "end"
        return binary, texts
    }

[<Tests>]
let backpressureTests =
    testList "Host: sends to a client that stops reading report Backpressure, then Dropped, and Drain fires when it reads again" [
        testCaseTask "results go Sent, Backpressure, Dropped as the buffer grows; reading again fires Drain once and sends report Sent" (fun () -> task {
            let opened = TaskCompletionSource<RealtimeSocket>(TaskCreationOptions.RunContinuationsAsynchronously)
            let drains = ref 0
            let closes = ConcurrentQueue<int>()
            let! server = start ignore (slowReaderRoutes opened drains closes false)
            use _ = server
            use! raw = connectRawSmallWindow server.Port "/slow-reader"
            let! socket = opened.Task.WaitAsync(seconds 10.0)
            let! statuses, bufferedAtBackpressure = fillUntilStuck socket
            Expect.equal statuses[0] SendStatus.Sent "the first send goes out"
            let firstBackpressure = statuses.IndexOf SendStatus.Backpressure
            let firstDropped = statuses.IndexOf SendStatus.Dropped
            Expect.isGreaterThan firstBackpressure 0 "backpressure after some sends"
            Expect.isGreaterThan firstDropped firstBackpressure "drops only after backpressure"
            let queued = statuses |> Seq.filter (fun s -> s <> SendStatus.Dropped) |> Seq.length
            Expect.isGreaterThan (int64 queued * 8192L) (64L * 1024L) "more was queued than Kestrel's own buffer holds"
            Expect.isGreaterThan (Seq.max bufferedAtBackpressure) softLimit "BufferedAmount grew past the backpressure limit"
            let stuckAt = socket.BufferedAmount
            Expect.isGreaterThan stuckAt (hardLimit - 8200L) "the buffer is full up to the limit"
            Expect.isLessThanOrEqual stuckAt hardLimit "and never past it"
            Expect.equal (socket.Send(Array.zeroCreate<byte> 8192).Status) SendStatus.Dropped "still dropped while the client does not read"
            Expect.isTrue socket.IsOpen "dropping does not close"
            let drainsWhileStuck = drains.Value
            do! Task.Delay 300
            Expect.equal drains.Value drainsWhileStuck "no Drain while the client does not read"

            // The client reads again: everything queued arrives, then the later sends.
            let reader = readUntilEnd raw
            do! expectEventually (seconds 15.0) "Drain fired after the client read again" (fun () -> drains.Value = drainsWhileStuck + 1)
            do! expectEventually (seconds 15.0) "the buffer emptied" (fun () -> socket.BufferedAmount = 0L)
            let after = socket.Send "after"
            Expect.equal after (SendResult(SendStatus.Sent, 7)) "a send after Drain reports Sent with its frame size"
            socket.Send "end" |> ignore
            let! binary, texts = reader.WaitAsync(seconds 15.0)
            Expect.equal binary queued "every queued message arrived, none of the dropped ones"
            Expect.sequenceEqual texts [ "after"; "end" ] "then the later sends"
            do! Task.Delay 100
            Expect.equal drains.Value (drainsWhileStuck + 1) "Drain fired once for the episode"
        })

        testCaseTask "each stall the client recovers from is a new episode with one Drain of its own" (fun () -> task {
            let opened = TaskCompletionSource<RealtimeSocket>(TaskCreationOptions.RunContinuationsAsynchronously)
            let drains = ref 0
            let closes = ConcurrentQueue<int>()
            let! server = start ignore (slowReaderRoutes opened drains closes false)
            use _ = server
            use! raw = connectRawSmallWindow server.Port "/slow-reader"
            let! socket = opened.Task.WaitAsync(seconds 10.0)
            for episode in 1..2 do
                let! _ = fillUntilStuck socket
                let before = drains.Value
                do! Task.Delay 200
                Expect.equal drains.Value before $"episode {episode}: no Drain while the client does not read"
                let reader = readUntilEnd raw
                do! expectEventually (seconds 15.0) $"episode {episode}: Drain fired" (fun () -> drains.Value = before + 1)
                do! expectEventually (seconds 15.0) $"episode {episode}: the buffer emptied" (fun () -> socket.BufferedAmount = 0L)
                socket.Send "end" |> ignore
                let! _ = reader.WaitAsync(seconds 15.0)
                do! Task.Delay 100
                Expect.equal drains.Value (before + 1) $"episode {episode}: one Drain"
            Expect.isEmpty closes "the connection stayed open throughout"
        })

        testCaseTask "with CloseOnBackpressureLimit the connection is closed with 1008 instead of dropping" (fun () -> task {
            let opened = TaskCompletionSource<RealtimeSocket>(TaskCreationOptions.RunContinuationsAsynchronously)
            let drains = ref 0
            let closes = ConcurrentQueue<int>()
            let! server = start ignore (slowReaderRoutes opened drains closes true)
            use _ = server
            use! raw = connectRawSmallWindow server.Port "/slow-reader"
            let! socket = opened.Task.WaitAsync(seconds 10.0)
            let! statuses, _ = fillUntilStuck socket
            Expect.equal (statuses |> Seq.filter ((=) SendStatus.Dropped) |> Seq.length) 1 "one refused send, which closed the connection"
            Expect.isFalse socket.IsOpen "closing"
            Expect.equal (socket.Send("late").Status) SendStatus.Dropped "later sends are dropped"
            let! code = raw.ReceiveClose(seconds 15.0)
            Expect.equal code (Some 1008us) "the client reads up to a close frame with 1008"
            do! raw.SendClose(1008us, "")
            do! expectEventually (seconds 10.0) "Close ran" (fun () -> closes.Count = 1)
            Expect.equal (closes.ToArray()) [| 1008 |] "the Close handler saw 1008"
            let! ended = raw.WaitForTransportClose(seconds 10.0)
            Expect.isTrue ended "the TCP connection ended"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 6. A flooding client against a slow asynchronous handler
// ---------------------------------------------------------------------------------------------

[<Tests>]
let floodTests =
    testSequenced
    <| testList "Host: a client flooding a slow handler is held back by TCP, not by server memory" [
        testCaseTask "messages are handled one at a time in order and memory stays bounded while far more is offered than handled" (fun () -> task {
            let running = ref 0
            let maxRunning = ref 0
            let processed = ref 0
            let outOfOrder = ref 0
            let routes (app: WebApplication) =
                app.MapRealtime(
                    "/slow-handler",
                    RealtimeHandlers<obj>(
                        MessageAsync =
                            (fun _ message ->
                                task {
                                    let now = Interlocked.Increment running
                                    let mutable seen = maxRunning.Value
                                    while now > seen && Interlocked.CompareExchange(maxRunning, now, seen) <> seen do
                                        seen <- maxRunning.Value
                                    let sequence = BitConverter.ToInt32(message.Data.Span.Slice(0, 4))
                                    if sequence <> processed.Value then Interlocked.Increment outOfOrder |> ignore
                                    do! Task.Delay 20
                                    Interlocked.Increment processed |> ignore
                                    Interlocked.Decrement running |> ignore
                                }
                                :> Task)
                    )
                )
                |> ignore
            let! server = start ignore routes
            use _ = server
            use! raw = RawClient.connect server.Port "/slow-handler"
            let stream = raw.Tcp.GetStream()
            let size = 64 * 1024
            // Mask key 0 leaves the payload as it is, so one frame buffer serves every message.
            let header = Frame.encodeHeader { Frame.header Opcode.Binary (int64 size) with Masked = true; MaskKey = 0u }
            let frame = Array.zeroCreate<byte> (header.Length + size)
            header.CopyTo(frame, 0)
            GC.Collect()
            GC.WaitForPendingFinalizers()
            let before = GC.GetTotalMemory true
            let offered = 1024L * 1024L * 1024L
            let mutable written = 0L
            let mutable sequence = 0
            let mutable heldBack = false
            use stop = new CancellationTokenSource(seconds 3.0)
            while not heldBack && written < offered do
                BitConverter.TryWriteBytes(frame.AsSpan(header.Length, 4), sequence) |> ignore
                try
                    do! stream.WriteAsync(ReadOnlyMemory frame, stop.Token)
                    written <- written + int64 frame.Length
                    sequence <- sequence + 1
                    heldBack <- stop.IsCancellationRequested
                with :? OperationCanceledException | :? IO.IOException ->
                    heldBack <- true
            let after = GC.GetTotalMemory true
            let handled = processed.Value
            let handledBytes = int64 handled * int64 size
            let growth = after - before
            raw.Tcp.Client.Close()
            Expect.isTrue heldBack "the time ran out before the client could write its gigabyte"
            let summary = $"{written} bytes written in 3 s, {handled} of {sequence} messages handled"
            Expect.isLessThan written (64L * 1024L * 1024L) $"TCP let the client write only a little of the gigabyte it offered ({summary})"
            Expect.isGreaterThan sequence handled $"the client got ahead of the handler ({summary})"
            Expect.isLessThan (written - handledBytes) (32L * 1024L * 1024L) $"what was written and not handled fits in the TCP buffers ({summary})"
            Expect.isLessThan growth (64L * 1024L * 1024L) $"managed memory grew by {growth / 1024L / 1024L} MiB"
            Expect.equal maxRunning.Value 1 "never two handlers at once"
            Expect.equal outOfOrder.Value 0 "messages were handled in order"
            Expect.isGreaterThan handled 10 "the handler made progress"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 7. Close codes for bad input and failing handlers
// ---------------------------------------------------------------------------------------------

let private strictRoutes (closes: ConcurrentQueue<int>) (app: WebApplication) =
    app.MapRealtime(
        "/strict",
        RealtimeHandlers<obj>(
            Message =
                (fun ws message ->
                    if message.IsText && message.Text = "boom" then raise (InvalidOperationException "boom")
                    ws.Send(message.Data.Span, message.Kind) |> ignore),
            Close = (fun _ code _ -> closes.Enqueue code)
        ),
        fun options ->
            options.MaxPayloadLength <- 1024
            options.CloseTimeout <- seconds 2.0
    )
    |> ignore
    app.MapRealtime(
        "/fails-open",
        RealtimeHandlers<obj>(
            Open = (fun _ -> raise (InvalidOperationException "open failed")),
            Close = (fun _ code _ -> closes.Enqueue code)
        )
    )
    |> ignore

/// A raw client does something wrong on /strict: it gets a close frame with the code, the TCP
/// connection ends, the Close handler sees the code, and the server still serves.
let private refusedWith (expected: uint16) (misbehave: RawClient.RawConnection -> Task) () : Task<unit> =
    task {
        let closes = ConcurrentQueue<int>()
        let mutable logs = Unchecked.defaultof<CapturedLogs>
        let! server = start ignore (fun app -> logs <- captureLogs app; strictRoutes closes app)
        use _ = server
        use! raw = RawClient.connect server.Port "/strict"
        do! misbehave raw
        let! code = raw.ReceiveClose(seconds 10.0)
        Expect.equal code (Some expected) $"closed with {expected}"
        let! ended = raw.WaitForTransportClose(seconds 10.0)
        Expect.isTrue ended "the server ended the TCP connection"
        do! expectEventually (seconds 10.0) "Close ran" (fun () -> closes.Count = 1)
        Expect.equal (closes.ToArray()) [| int expected |] "the Close handler saw the code"
        let! client = connect (server.WsUrl + "/strict")
        use _ = client
        do! sendText client "next"
        let! echo = receiveText client
        Expect.equal echo "next" "the server keeps serving"
        let escaped = logs.Entries |> Array.filter (fun e -> e.Category.StartsWith "Microsoft.AspNetCore" && e.Level >= LogLevel.Error)
        Expect.isEmpty escaped "no exception reached Kestrel"
    }

[<Tests>]
let closeCodeTests =
    testList "Host: bad input and failing handlers close with the RFC 6455 code" [
        testCaseTask "a message announced larger than MaxPayloadLength gets 1009 before its payload is sent"
            (refusedWith 1009us (fun raw ->
                let header = Frame.encodeHeader { Frame.header Opcode.Binary 2048L with Masked = true; MaskKey = 0x01020304u }
                raw.SendRaw header))

        testCaseTask "fragments adding up past MaxPayloadLength get 1009"
            (refusedWith 1009us (fun raw ->
                task {
                    do! raw.SendFrame(Opcode.Binary, Array.zeroCreate 600, fin = false)
                    do! raw.SendFrame(Opcode.Continuation, Array.zeroCreate 600)
                }))

        testCaseTask "a text message that is not UTF-8 gets 1007"
            (refusedWith 1007us (fun raw -> raw.SendFrame(Opcode.Text, [| 0xC3uy; 0x28uy |])))

        testCaseTask "an unmasked frame from the client gets 1002"
            (refusedWith 1002us (fun raw -> raw.SendRaw [| 0x81uy; 0x02uy; byte 'h'; byte 'i' |]))

        testCaseTask "a reserved opcode gets 1002"
            (refusedWith 1002us (fun raw -> raw.SendRaw [| 0x83uy; 0x80uy; 0uy; 0uy; 0uy; 0uy |]))

        testCaseTask "RSV2 set without an extension gets 1002"
            (refusedWith 1002us (fun raw -> raw.SendFrame(Opcode.Text, "x"B, rsv2 = true)))

        testCaseTask "RSV1 set when no compression was negotiated gets 1002"
            (refusedWith 1002us (fun raw -> raw.SendFrame(Opcode.Text, "x"B, rsv1 = true)))

        testCaseTask "a Message handler that throws closes with 1011, the error is logged, and the server keeps serving" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let mutable logs = Unchecked.defaultof<CapturedLogs>
            let! server = start ignore (fun app -> logs <- captureLogs app; strictRoutes closes app)
            use _ = server
            let! client = connect (server.WsUrl + "/strict")
            use _ = client
            do! sendText client "fine"
            let! echo = receiveText client
            Expect.equal echo "fine" "works before"
            do! sendText client "boom"
            do! sendText client "never handled"
            let! code, _ = receiveClose client
            Expect.equal code 1011 "1011 internal error"
            do! client.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            do! expectEventually (seconds 10.0) "Close ran" (fun () -> closes.Count = 1)
            Expect.equal (closes.ToArray()) [| 1011 |] "the Close handler saw 1011"
            let failures = logs.Entries |> Array.filter (fun e -> e.EventId = 5 && e.Level = LogLevel.Error)
            Expect.equal failures.Length 1 "the handler failure was logged once"
            Expect.equal failures[0].Error.Message "boom" "with the exception"
            Expect.stringContains failures[0].Message "Message" "naming the handler"
            let! other = connect (server.WsUrl + "/strict")
            use _ = other
            do! sendText other "still here"
            let! echo = receiveText other
            Expect.equal echo "still here" "the server keeps serving"
            let escaped = logs.Entries |> Array.filter (fun e -> e.Category.StartsWith "Microsoft.AspNetCore" && e.Level >= LogLevel.Error)
            Expect.isEmpty escaped "no exception reached Kestrel"
        })

        testCaseTask "an Open handler that throws closes with 1011" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let mutable logs = Unchecked.defaultof<CapturedLogs>
            let! server = start ignore (fun app -> logs <- captureLogs app; strictRoutes closes app)
            use _ = server
            let! client = connect (server.WsUrl + "/fails-open")
            use _ = client
            let! code, _ = receiveClose client
            Expect.equal code 1011 "1011 internal error"
            do! client.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            do! expectEventually (seconds 10.0) "Close ran" (fun () -> closes.Count = 1)
            Expect.equal (closes.ToArray()) [| 1011 |] "the Close handler saw 1011"
            Expect.exists logs.Entries (fun e -> e.EventId = 5 && e.Error.Message = "open failed") "the failure was logged"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 8. Idle timeout and keep-alive
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 9. Graceful shutdown
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 10. Many concurrent connections
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 11. Cork
// ---------------------------------------------------------------------------------------------

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

/// WebSockets over HTTP/2 (RFC 8441 extended CONNECT) on Kestrel's default HTTPS listener (HTTP/1.1
/// and HTTP/2): .NET's ClientWebSocket asked for HTTP/2 exactly, beside the same clients over HTTP/1.1.
module Realtime.Server.Tests.Http2Tests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.Net
open System.Net.Http
open System.Net.Security
open System.Net.WebSockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Http
open Microsoft.AspNetCore.Server.Kestrel.Core
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.TlsTests

let private seconds (value: float) = TimeSpan.FromSeconds value

/// HTTPS on 127.0.0.1:0 with Kestrel's default protocols (HTTP/1.1 and HTTP/2, so RFC 8441 is
/// advertised). Kestrel's request-body data rate gets a 1.5 s grace period (its least), so an idle test would see
/// it if it applied to WebSocket streams.
let private startHttps (configureOptions: RealtimeOptions -> unit) (mapRoutes: WebApplication -> unit) =
    startWith
        (fun builder ->
            builder.WebHost.UseUrls("https://127.0.0.1:0") |> ignore
            builder.WebHost.ConfigureKestrel(fun kestrel ->
                kestrel.ConfigureHttpsDefaults(fun https -> https.ServerCertificate <- certificate.Value)
                kestrel.Limits.MinRequestBodyDataRate <- MinDataRate(240.0, seconds 1.5))
            |> ignore)
        configureOptions
        mapRoutes

/// One HTTP connection pool trusting exactly the test certificate: WebSockets made with it over HTTP/2
/// share one HTTP/2 connection, as a browser's do.
let private trustingInvoker () =
    let handler = new SocketsHttpHandler()
    let expected = thumbprint certificate.Value
    handler.SslOptions.RemoteCertificateValidationCallback <-
        RemoteCertificateValidationCallback(fun _ presented _ _ -> not (isNull presented) && thumbprint presented = expected)
    new HttpMessageInvoker(handler)

/// A ClientWebSocket that speaks exactly `version` (HTTP/2: RFC 8441; HTTP/1.1: RFC 6455's upgrade)
/// and keeps the response's status and headers.
let private clientOver (version: Version) (configure: ClientWebSocket -> unit) =
    let client = new ClientWebSocket()
    client.Options.HttpVersion <- version
    client.Options.HttpVersionPolicy <- HttpVersionPolicy.RequestVersionExact
    client.Options.CollectHttpResponseDetails <- true
    configure client
    client

let private tryConnect (invoker: HttpMessageInvoker) (client: ClientWebSocket) (url: string) : Task<exn option> =
    task {
        use cancel = new CancellationTokenSource(seconds 10.0)
        try
            do! client.ConnectAsync(Uri url, invoker, cancel.Token)
            return None
        with error ->
            return Some error
    }

let private connectOver (version: Version) (invoker: HttpMessageInvoker) (configure: ClientWebSocket -> unit) (url: string) =
    task {
        let client = clientOver version configure
        match! tryConnect invoker client url with
        | None -> return client
        | Some error -> return failtestf "connecting to %s over HTTP/%O failed (status %A): %O" url version client.HttpStatusCode error
    }

let private connectHttp2 invoker url = connectOver HttpVersion.Version20 invoker ignore url

let private send (client: ClientWebSocket) (kind: WebSocketMessageType) (data: byte[]) : Task =
    task {
        use cancel = new CancellationTokenSource(seconds 10.0)
        do! client.SendAsync(ArraySegment data, kind, true, cancel.Token)
    }

let private closeClient (client: ClientWebSocket) (code: WebSocketCloseStatus) : Task =
    task {
        use cancel = new CancellationTokenSource(seconds 10.0)
        do! client.CloseAsync(code, "done", cancel.Token)
    }

/// Sends an extended CONNECT by hand (RFC 8441 §4) with `protocol` as :protocol and the given headers,
/// and returns the response once its headers arrived.
let private sendExtendedConnect (invoker: HttpMessageInvoker) (url: string) (protocol: string) (headers: (string * string) list) =
    task {
        use request = new HttpRequestMessage(HttpMethod.Connect, Uri url)
        request.Version <- HttpVersion.Version20
        request.VersionPolicy <- HttpVersionPolicy.RequestVersionExact
        request.Headers.Protocol <- protocol
        for name, value in headers do
            request.Headers.TryAddWithoutValidation(name, value) |> ignore
        use cancel = new CancellationTokenSource(seconds 10.0)
        return! invoker.SendAsync(request, cancel.Token)
    }

/// What Attach saw of each request, and what the handlers saw.
type private Seen =
    { Protocols: ConcurrentQueue<string * string>
      Compressed: ConcurrentQueue<bool>
      Closes: ConcurrentQueue<int>
      Opened: ConcurrentQueue<RealtimeSocket> }

let private newSeen () =
    { Protocols = ConcurrentQueue()
      Compressed = ConcurrentQueue()
      Closes = ConcurrentQueue()
      Opened = ConcurrentQueue() }

/// /echo echoes (recording the request's protocol and method in Attach, and whether each message
/// came compressed); /room publishes what it gets to the others; /private rejects with 401.
let private routes (seen: Seen) (app: WebApplication) =
    app.MapRealtime(
        "/echo",
        RealtimeHandlers<obj>(
            Attach =
                (fun http ->
                    seen.Protocols.Enqueue((http.Request.Protocol, http.Request.Method))
                    Attachment<obj>.Accept null),
            Open = (fun ws -> seen.Opened.Enqueue ws),
            Message =
                (fun ws message ->
                    seen.Compressed.Enqueue message.Compressed
                    ws.Send(message) |> ignore),
            Close = (fun _ code _ -> seen.Closes.Enqueue code)
        ),
        fun options ->
            options.Subprotocols.Add "chat"
            options.Subprotocols.Add "superchat"
            options.PerMessageDeflate <- true
            options.MaxPayloadLength <- 200_000
            options.AllowedOrigins.Add "https://good.example"
    )
    |> ignore
    app.MapRealtime(
        "/room",
        RealtimeHandlers<obj>(
            Open = (fun ws -> ws.Subscribe "room" |> ignore),
            Message = (fun ws message -> ws.Publish("room", message.Text) |> ignore)
        )
    )
    |> ignore
    app.MapRealtime(
        "/private",
        RealtimeHandlers<obj>(Attach = (fun _ -> Attachment<obj>.Reject(401, "who are you?")))
    )
    |> ignore

let private expectEchoes (client: ClientWebSocket) : Task<unit> =
    task {
        for size in [ 1; 1000; 100_000 ] do
            let text = Encoding.UTF8.GetBytes(String.replicate (size / 10 + 1) "h2 κόσμε! " |> fun s -> s.Substring(0, size))
            do! send client WebSocketMessageType.Text text
            let! kind, echoed = receive client
            Expect.equal (kind, echoed) (WebSocketMessageType.Text, text) $"text of {size} echoed"
            let binary = Array.init size (fun i -> byte (i % 251))
            do! send client WebSocketMessageType.Binary binary
            let! kind, echoed = receive client
            Expect.equal (kind, echoed) (WebSocketMessageType.Binary, binary) $"binary of {size} echoed"
    }

/// Receives until a close frame arrives (bounded: 10 s); returns the close status.
let private receiveClose (client: ClientWebSocket) : Task<Nullable<WebSocketCloseStatus>> =
    task {
        use cancel = new CancellationTokenSource(seconds 10.0)
        let buffer = Array.zeroCreate 65536
        let mutable closed = false
        while not closed do
            let! result = client.ReceiveAsync(ArraySegment buffer, cancel.Token)
            closed <- result.MessageType = WebSocketMessageType.Close
        return client.CloseStatus
    }

[<Tests>]
let http2Tests =
    testList "HTTP/2: WebSockets over extended CONNECT (RFC 8441)" [
        testCaseTask "text and binary echo over HTTP/2: the request Attach sees is an HTTP/2 CONNECT, the answer is 200, both sides close with 1000" (fun () -> task {
            let seen = newSeen ()
            let! server = startHttps ignore (routes seen)
            use _ = server
            use invoker = trustingInvoker ()
            use! client = connectHttp2 invoker (server.WsUrl + "/echo")
            Expect.equal client.HttpStatusCode HttpStatusCode.OK "RFC 8441 §5: 200, not 101"
            Expect.sequenceEqual seen.Protocols [ "HTTP/2", "CONNECT" ] "the request really was an HTTP/2 extended CONNECT"
            Expect.isFalse (client.HttpResponseHeaders.ContainsKey "Sec-WebSocket-Accept") "no accept value over HTTP/2 (RFC 8441 §5)"
            do! expectEchoes client
            Expect.allEqual seen.Compressed false "nothing compressed without an offer"
            do! closeClient client WebSocketCloseStatus.NormalClosure
            Expect.equal client.CloseStatus (Nullable WebSocketCloseStatus.NormalClosure) "the server answered 1000"
            let! closed = eventually (seconds 10.0) (fun () -> seen.Closes.Count = 1)
            Expect.isTrue closed "Close ran on the server"
            Expect.sequenceEqual seen.Closes [ 1000 ] "with the client's 1000"
            let! ended = eventually (seconds 10.0) (fun () -> server.Realtime.ConnectionCount = 0)
            Expect.isTrue ended "the connection ended on the server"
        })

        testCaseTask "two clients on one HTTP/2 connection chat through a topic, beside a client over HTTP/1.1 on the same listener" (fun () -> task {
            let seen = newSeen ()
            let! server = startHttps ignore (routes seen)
            use _ = server
            use invoker = trustingInvoker ()
            use! alice = connectHttp2 invoker (server.WsUrl + "/room")
            use! bob = connectHttp2 invoker (server.WsUrl + "/room")
            use! carol = connectOver HttpVersion.Version11 invoker ignore (server.WsUrl + "/room")
            Expect.equal (alice.HttpStatusCode, bob.HttpStatusCode, carol.HttpStatusCode) (HttpStatusCode.OK, HttpStatusCode.OK, HttpStatusCode.SwitchingProtocols) "two extended CONNECTs and one upgrade"
            let! subscribed = eventually (seconds 10.0) (fun () -> server.Realtime.SubscriberCount "room" = 3)
            Expect.isTrue subscribed "all three subscribed"
            for i in 1..20 do
                do! sendText alice $"alice {i}"
            for i in 1..20 do
                let! atBob = receiveText bob
                let! atCarol = receiveText carol
                Expect.equal (atBob, atCarol) ($"alice {i}", $"alice {i}") "in order, to both others"
            do! sendText carol "carol over HTTP/1.1"
            let! atAlice = receiveText alice
            let! atBob = receiveText bob
            Expect.equal (atAlice, atBob) ("carol over HTTP/1.1", "carol over HTTP/1.1") "across protocols"
            Expect.equal (server.Realtime.Publish("room", "from the server")) 3 "a server publish reaches all three"
            for client in [ alice; bob; carol ] do
                let! text = receiveText client
                Expect.equal text "from the server" "published"
            for client in [ alice; bob; carol ] do
                do! closeClient client WebSocketCloseStatus.NormalClosure
            let! ended = eventually (seconds 10.0) (fun () -> server.Realtime.ConnectionCount = 0)
            Expect.isTrue ended "every connection ended"
        })

        testCaseTask "subprotocol: the client's first protocol the endpoint speaks is selected, as over HTTP/1.1" (fun () -> task {
            let seen = newSeen ()
            let! server = startHttps ignore (routes seen)
            use _ = server
            use invoker = trustingInvoker ()
            let offer (client: ClientWebSocket) =
                client.Options.AddSubProtocol "unknown"
                client.Options.AddSubProtocol "superchat"
                client.Options.AddSubProtocol "chat"
            use! overHttp2 = connectOver HttpVersion.Version20 invoker offer (server.WsUrl + "/echo")
            use! overHttp11 = connectOver HttpVersion.Version11 invoker offer (server.WsUrl + "/echo")
            Expect.equal overHttp2.SubProtocol "superchat" "the client's first supported protocol"
            Expect.equal overHttp11.SubProtocol overHttp2.SubProtocol "the same as over HTTP/1.1"
            let! opened = eventually (seconds 10.0) (fun () -> seen.Opened.Count = 2)
            Expect.isTrue opened "both opened"
            Expect.allEqual (seen.Opened |> Seq.map (fun ws -> ws.Protocol)) "superchat" "the server's socket knows it"
            use! plain = connectHttp2 invoker (server.WsUrl + "/echo")
            Expect.isNull plain.SubProtocol "none offered, none selected"
        })

        testCaseTask "permessage-deflate is negotiated over HTTP/2 and messages travel compressed both ways" (fun () -> task {
            let seen = newSeen ()
            let! server = startHttps ignore (routes seen)
            use _ = server
            use invoker = trustingInvoker ()
            let deflate (client: ClientWebSocket) =
                client.Options.DangerousDeflateOptions <- WebSocketDeflateOptions(ClientContextTakeover = false)
            use! client = connectOver HttpVersion.Version20 invoker deflate (server.WsUrl + "/echo")
            use! overHttp11 = connectOver HttpVersion.Version11 invoker deflate (server.WsUrl + "/echo")
            let extensions (c: ClientWebSocket) = c.HttpResponseHeaders["Sec-WebSocket-Extensions"] |> Seq.toList
            Expect.equal (extensions client) [ "permessage-deflate; server_no_context_takeover; client_no_context_takeover" ] "negotiated"
            Expect.equal (extensions client) (extensions overHttp11) "the same answer as over HTTP/1.1"
            do! expectEchoes client
            Expect.equal seen.Compressed.Count 6 "six messages"
            Expect.allEqual seen.Compressed true "every message arrived compressed"
            let! opened = eventually (seconds 10.0) (fun () -> seen.Opened.Count = 2)
            Expect.isTrue opened "both opened"
            Expect.allEqual (seen.Opened |> Seq.map (fun ws -> ws.Compression)) true "compression on for the server's sockets"
        })

        testCaseTask "an origin not allowed gets 403 and no connection opens; an allowed one connects" (fun () -> task {
            let seen = newSeen ()
            let! server = startHttps ignore (routes seen)
            use _ = server
            use invoker = trustingInvoker ()
            use refused = clientOver HttpVersion.Version20 (fun c -> c.Options.SetRequestHeader("Origin", "https://evil.example"))
            let! failure = tryConnect invoker refused (server.WsUrl + "/echo")
            Expect.isSome failure "refused"
            Expect.equal refused.HttpStatusCode HttpStatusCode.Forbidden "403"
            Expect.isEmpty seen.Opened "no connection opened"
            use! allowed = connectOver HttpVersion.Version20 invoker (fun c -> c.Options.SetRequestHeader("Origin", "https://good.example")) (server.WsUrl + "/echo")
            Expect.equal allowed.State WebSocketState.Open "the allowed origin connects"
        })

        testCaseTask "a message over MaxPayloadLength closes the connection with 1009" (fun () -> task {
            let seen = newSeen ()
            let! server = startHttps ignore (routes seen)
            use _ = server
            use invoker = trustingInvoker ()
            use! client = connectHttp2 invoker (server.WsUrl + "/echo")
            do! send client WebSocketMessageType.Binary (Array.zeroCreate 200_001)
            let! status = receiveClose client
            Expect.equal status (Nullable WebSocketCloseStatus.MessageTooBig) "1009"
            let! closed = eventually (seconds 10.0) (fun () -> seen.Closes.Count = 1)
            Expect.isTrue closed "Close ran"
            Expect.sequenceEqual seen.Closes [ 1009 ] "with 1009"
            Expect.isEmpty seen.Compressed "the message never reached the handler"
        })

        testCaseTask "ending one socket ends only its stream: the others on the same HTTP/2 connection go on" (fun () -> task {
            let seen = newSeen ()
            let! server = startHttps ignore (routes seen)
            use _ = server
            use invoker = trustingInvoker ()
            let clients = ResizeArray<ClientWebSocket>()
            for i in 1..3 do
                let! client = connectHttp2 invoker (server.WsUrl + "/echo")
                clients.Add client
                let! opened = eventually (seconds 10.0) (fun () -> seen.Opened.Count = i)
                Expect.isTrue opened $"socket {i} opened"
            let sockets = Seq.toArray seen.Opened
            let terminated, closed, untouched = clients[0], clients[1], clients[2]
            sockets[0].Terminate()
            let! aborted =
                task {
                    try
                        let! _ = receive terminated
                        return false
                    with _ ->
                        return true
                }
            Expect.isTrue aborted "the terminated socket's stream was reset"
            sockets[1].Close(4001, "just this one")
            let! status = receiveClose closed
            Expect.equal status (Nullable(enum<WebSocketCloseStatus> 4001)) "the closed socket got its close frame"
            do! sendText untouched "still here"
            let! echoed = receiveText untouched
            Expect.equal echoed "still here" "the third socket, on the same connection, goes on"
            let! twoEnded = eventually (seconds 10.0) (fun () -> server.Realtime.ConnectionCount = 1)
            Expect.isTrue twoEnded "two sockets ended on the server, one is left"
            for client in clients do client.Dispose()
        })

        testCaseTask "MaxConnectionsPerAddress counts sockets: the third on one HTTP/2 connection gets 503 when two are allowed" (fun () -> task {
            let! server = startHttps (fun options -> options.MaxConnectionsPerAddress <- 2) (routes (newSeen ()))
            use _ = server
            use invoker = trustingInvoker ()
            use! first = connectHttp2 invoker (server.WsUrl + "/room")
            use! second = connectHttp2 invoker (server.WsUrl + "/room")
            use third = clientOver HttpVersion.Version20 ignore
            let! failure = tryConnect invoker third (server.WsUrl + "/room")
            Expect.isSome failure "refused"
            Expect.equal third.HttpStatusCode HttpStatusCode.ServiceUnavailable "503"
            do! closeClient first WebSocketCloseStatus.NormalClosure
            let! released = eventually (seconds 10.0) (fun () -> server.Realtime.ConnectionCount = 1)
            Expect.isTrue released "the first socket's slot is given back"
            use! again = connectHttp2 invoker (server.WsUrl + "/room")
            Expect.equal again.State WebSocketState.Open "a slot freed by a closed stream is usable again"
        })

        testCaseTask "Attach's rejection status reaches the HTTP/2 client" (fun () -> task {
            let! server = startHttps ignore (routes (newSeen ()))
            use _ = server
            use invoker = trustingInvoker ()
            use client = clientOver HttpVersion.Version20 ignore
            let! failure = tryConnect invoker client (server.WsUrl + "/private")
            Expect.isSome failure "refused"
            Expect.equal client.HttpStatusCode HttpStatusCode.Unauthorized "401 from Attach"
            Expect.equal server.Realtime.ConnectionCount 0 "nothing opened"
        })

        testCaseTask "an extended CONNECT by hand: version 8 gets 426 with Sec-WebSocket-Version 13, a :protocol other than websocket 400, a plain HTTP/2 GET 400" (fun () -> task {
            let! server = startHttps ignore (routes (newSeen ()))
            use _ = server
            use invoker = trustingInvoker ()
            let url = server.HttpUrl + "/echo"
            use! oldVersion = sendExtendedConnect invoker url "websocket" [ "Sec-WebSocket-Version", "8" ]
            Expect.equal oldVersion.Version HttpVersion.Version20 "over HTTP/2"
            Expect.equal oldVersion.StatusCode HttpStatusCode.UpgradeRequired "426"
            Expect.sequenceEqual (oldVersion.Headers.GetValues "Sec-WebSocket-Version") [ "13" ] "the supported version"
            use! noVersion = sendExtendedConnect invoker url "websocket" []
            Expect.equal noVersion.StatusCode HttpStatusCode.UpgradeRequired "426 without a version too"
            use! otherProtocol = sendExtendedConnect invoker url "webtransport" [ "Sec-WebSocket-Version", "13" ]
            Expect.equal otherProtocol.StatusCode HttpStatusCode.BadRequest "400 for another :protocol"
            use request = new HttpRequestMessage(HttpMethod.Get, Uri url, Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact)
            use cancel = new CancellationTokenSource(seconds 10.0)
            use! plainGet = invoker.SendAsync(request, cancel.Token)
            Expect.equal (plainGet.Version, plainGet.StatusCode) (HttpVersion.Version20, HttpStatusCode.BadRequest) "a plain GET gets 400 as before"
            Expect.equal server.Realtime.ConnectionCount 0 "nothing opened"
        })

        testCaseTask "an idle HTTP/2 WebSocket stays open past Kestrel's request-body data-rate grace period" (fun () -> task {
            let seen = newSeen ()
            let! server = startHttps ignore (routes seen)
            use _ = server
            use invoker = trustingInvoker ()
            use! client = connectHttp2 invoker (server.WsUrl + "/echo")
            // Idle is the point here: over three times the 1.5 s grace period.
            do! Task.Delay(seconds 5.0)
            Expect.equal client.State WebSocketState.Open "still open"
            do! sendText client "still here"
            let! echoed = receiveText client
            Expect.equal echoed "still here" "still served"
            Expect.isEmpty seen.Closes "never closed"
        })
    ]

// ---------------------------------------------------------------------------------------------
// Backpressure and metrics: counted the same over HTTP/2 as over HTTP/1.1
// ---------------------------------------------------------------------------------------------

let private instruments =
    [ "realtime.connections.opened"; "realtime.connections.closed"; "realtime.connections.closed[realtime.close_code=1000]"
      "realtime.connections.closed[realtime.close_code=4000]"; "realtime.connections.active"; "realtime.messages.received"
      "realtime.messages.sent"; "realtime.bytes.received"; "realtime.bytes.sent"; "realtime.publishes"
      "realtime.publish.deliveries"; "realtime.backpressure"; "realtime.drains"; "realtime.drops"
      "realtime.handshake.rejections"; "realtime.handshake.rejections[realtime.rejection=missing-upgrade]" ]

/// The same conversation as the Metrics test, with clients over `version`: returns the meter's totals.
let private meteredConversation (version: Version) : Task<(string * int64) list> =
    task {
        let! server = startHttps ignore MetricsTests.meteredRoutes
        use _ = server
        use recorder = new MetricsTests.Recorder((server.Realtime :?> RealtimeServer).Metrics.Meter)
        let waitFor name expected =
            task {
                let! ok = eventually (seconds 10.0) (fun () -> recorder.Value name = expected)
                if not ok then failtestf "over HTTP/%O, %s: expected %d, got %d" version name expected (recorder.Value name)
            }
        use invoker = trustingInvoker ()
        use! a = connectOver version invoker ignore (server.WsUrl + "/metrics")
        use! b = connectOver version invoker ignore (server.WsUrl + "/metrics")
        let! subscribed = eventually (seconds 10.0) (fun () -> server.Realtime.SubscriberCount "room" = 2)
        Expect.isTrue subscribed "both subscribed"
        do! sendText a "hello"
        let! atB = receiveText b
        let! atA = receiveText a
        Expect.equal (atB, atA) ("hello", "ack") "published to the other, acknowledged to the sender"
        Expect.equal (server.Realtime.Publish("room", "xyz")) 2 "queued to both"
        let! _ = receiveText a
        let! _ = receiveText b
        do! waitFor "realtime.drains" 4L
        use request = new HttpRequestMessage(HttpMethod.Get, Uri(server.HttpUrl + "/metrics"), Version = version, VersionPolicy = HttpVersionPolicy.RequestVersionExact)
        use cancel = new CancellationTokenSource(seconds 10.0)
        use! refused = invoker.SendAsync(request, cancel.Token)
        Expect.equal (int refused.StatusCode) 400 "not an upgrade"
        do! closeClient a WebSocketCloseStatus.NormalClosure
        do! closeClient b (enum<WebSocketCloseStatus> 4000)
        do! waitFor "realtime.connections.active" 0L
        do! waitFor "realtime.drops" 2L
        do! waitFor "realtime.handshake.rejections" 1L
        return [ for name in instruments -> name, recorder.Value name ]
    }

let private slowReaderRoutes (opened: TaskCompletionSource<RealtimeSocket>) (drains: int ref) (app: WebApplication) =
    app.MapRealtime(
        "/slow-reader",
        RealtimeHandlers<obj>(
            Open = (fun ws -> opened.TrySetResult ws |> ignore),
            Drain = (fun _ -> Interlocked.Increment drains |> ignore)
        ),
        fun options ->
            options.BackpressureLimit <- 16L * 1024L
            options.MaxBufferedAmount <- 256L * 1024L
    )
    |> ignore

[<Tests>]
let http2AccountingTests =
    testList "HTTP/2: backpressure and metrics as over HTTP/1.1" [
        testCaseTask "the same conversation over HTTP/1.1 and over HTTP/2 gives the same meter totals" (fun () -> task {
            let! overHttp11 = meteredConversation HttpVersion.Version11
            let! overHttp2 = meteredConversation HttpVersion.Version20
            Expect.sequenceEqual overHttp2 overHttp11 "every total the same"
            let total name = overHttp2 |> List.find (fun (n, _) -> n = name) |> snd
            Expect.equal (total "realtime.connections.opened") 2L "two connections"
            Expect.equal (total "realtime.messages.received") 1L "one message received"
            Expect.equal (total "realtime.messages.sent") 4L "hello, ack and two publishes of xyz"
            Expect.equal (total "realtime.backpressure") 4L "every send over the 4-byte limit"
            Expect.equal (total "realtime.drains") 4L "and drained"
            // "hello" from a client: 2 header bytes + 4 mask bytes + 5; both close frames come on top.
            Expect.isGreaterThanOrEqual (total "realtime.bytes.received") 11L "bytes received"
        })

        testCaseTask "a client that stops reading: sends report Backpressure then Dropped; when it reads again Drain fires once and every queued message arrives" (fun () -> task {
            let opened = TaskCompletionSource<RealtimeSocket>(TaskCreationOptions.RunContinuationsAsynchronously)
            let drains = ref 0
            let! server = startHttps ignore (slowReaderRoutes opened drains)
            use _ = server
            use invoker = trustingInvoker ()
            use! client = connectHttp2 invoker (server.WsUrl + "/slow-reader")
            let! socket = opened.Task.WaitAsync(seconds 10.0)
            let payload = Array.create 8192 (byte 'x')
            let statuses = ResizeArray<SendStatus>()
            let clock = Stopwatch.StartNew()
            let mutable stuck = false
            // The client reads nothing: HTTP/2 flow control, then Kestrel's stream buffer, then ours fill up.
            while not stuck && statuses.Count < 20000 && clock.Elapsed < seconds 20.0 do
                let result = socket.Send payload
                statuses.Add result.Status
                if result.Status = SendStatus.Dropped then
                    let before = socket.BufferedAmount
                    let mutable checks = 0
                    while checks < 6 && socket.BufferedAmount = before do
                        do! Task.Delay 50
                        checks <- checks + 1
                    stuck <- socket.BufferedAmount = before
            Expect.isTrue stuck $"the buffer got stuck full ({statuses.Count} sends in {clock.Elapsed})"
            let firstBackpressure = statuses.IndexOf SendStatus.Backpressure
            Expect.equal statuses[0] SendStatus.Sent "the first send goes out"
            Expect.isGreaterThan firstBackpressure 0 "backpressure after some sends"
            Expect.isGreaterThan (statuses.IndexOf SendStatus.Dropped) firstBackpressure "drops only after backpressure"
            Expect.isLessThanOrEqual socket.BufferedAmount (256L * 1024L) "never past MaxBufferedAmount"
            Expect.isTrue socket.IsOpen "dropping does not close"
            // Drains while filling are legitimate (the writer may empty the buffer into the HTTP/2 window
            // between sends); once stuck, none comes until the client reads.
            let drainsWhileStuck = drains.Value
            do! Task.Delay 300
            Expect.equal drains.Value drainsWhileStuck "no Drain while the client does not read"
            let queued = statuses |> Seq.filter (fun s -> s <> SendStatus.Dropped) |> Seq.length
            let reader =
                task {
                    let mutable binary = 0
                    let mutable finished = false
                    while not finished do
                        let! kind, _ = receive client
                        if kind = WebSocketMessageType.Binary then binary <- binary + 1 else finished <- true
                    return binary
                }
            let! drained = eventually (seconds 15.0) (fun () -> drains.Value = drainsWhileStuck + 1)
            Expect.isTrue drained "Drain fired after the client read again"
            let! emptied = eventually (seconds 15.0) (fun () -> socket.BufferedAmount = 0L)
            Expect.isTrue emptied "the buffer emptied"
            Expect.equal (socket.Send "end") (SendResult(SendStatus.Sent, 5)) "a send after Drain reports Sent with its frame size"
            let! received = reader.WaitAsync(seconds 15.0)
            Expect.equal received queued "every queued message arrived, none of the dropped ones"
            do! Task.Delay 100
            Expect.equal drains.Value (drainsWhileStuck + 1) "Drain fired once for the episode"
        })
    ]

[<Tests>]
let sampleHttp2Tests =
    testSequenced <| testList "HTTP/2: the real samples/Echo with --tls" [
        testCaseTask "samples/Echo --tls (direct connections after TLS) answers an HTTP/2 client's extended CONNECT through the route and echoes" (fun () -> task {
            match! ensureEchoSampleBuilt () with
            | Some problem -> failtest problem
            | None -> ()
            let port = freePort ()
            let! sample, output = startEchoSample port $"--tls --urls http://127.0.0.1:{port}"
            use _ = sample
            try
                // Any certificate of that process: it makes a new one at every start.
                use handler = new SocketsHttpHandler()
                handler.SslOptions.RemoteCertificateValidationCallback <- RemoteCertificateValidationCallback(fun _ _ _ _ -> true)
                use invoker = new HttpMessageInvoker(handler)
                let deflate (client: ClientWebSocket) = client.Options.DangerousDeflateOptions <- WebSocketDeflateOptions()
                use! client = connectOver HttpVersion.Version20 invoker deflate $"wss://127.0.0.1:{port}/echo"
                Expect.equal client.HttpStatusCode HttpStatusCode.OK $"an extended CONNECT answered with 200\n{output}"
                Expect.isNonEmpty (client.HttpResponseHeaders["Sec-WebSocket-Extensions"] |> Seq.toList) "the deflate offer accepted"
                do! expectEchoes client
                use! overHttp11 = connectOver HttpVersion.Version11 invoker ignore $"wss://127.0.0.1:{port}/echo"
                Expect.equal overHttp11.HttpStatusCode HttpStatusCode.SwitchingProtocols "HTTP/1.1 on the same listener still upgrades"
                do! expectEchoes overHttp11
                for c in [ client; overHttp11 ] do
                    do! closeClient c WebSocketCloseStatus.NormalClosure
                    Expect.equal c.CloseStatus (Nullable WebSocketCloseStatus.NormalClosure) "closed with 1000"
            finally
                stopProcess sample
        })
    ]

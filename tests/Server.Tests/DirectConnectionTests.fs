/// Listeners with UseRealtimeDirectConnections: WebSocket upgrades to Realtime endpoints are accepted
/// by Realtime's connection middleware, below Kestrel's HTTP layer, and everything else passes
/// through to Kestrel untouched. (The Autobahn-style conformance cases run on such a listener too,
/// in ConformanceTests.)
module Realtime.Server.Tests.DirectConnectionTests

open System
open System.Collections.Concurrent
open System.Net
open System.Net.Http
open System.Net.Sockets
open System.Net.WebSockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Http
open Microsoft.AspNetCore.Http.Features
open Microsoft.AspNetCore.Routing
open Microsoft.Extensions.DependencyInjection
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost

let private seconds (value: float) = TimeSpan.FromSeconds value

let private http = new HttpClient(Timeout = seconds 10.0)

/// A scoped service, to see that Attach gets request services.
type ScopedMarker() =
    member val Id = Guid.NewGuid()

/// Counts the requests the application's HTTP middleware sees.
let private counting (requests: int ref) (app: WebApplication) =
    app.Use(fun (context: HttpContext) (next: RequestDelegate) ->
        Interlocked.Increment requests |> ignore
        next.Invoke context)
    |> ignore

let private echo () =
    RealtimeHandlers<obj>(Message = fun ws message -> ws.Send(message) |> ignore)

/// Sends the connection's attached data as the first message.
let private announcing (attach: HttpContext -> Attachment<string>) =
    RealtimeHandlers<string>(Attach = attach, Open = fun ws -> ws.Send(ws.Data) |> ignore)

/// The type of the upgrade feature each accepted connection's Attach saw: Realtime's own on a direct
/// connection, Kestrel's through the route.
let private upgradeKinds = ConcurrentQueue<string * string>()

let private recordingKind (pattern: string) =
    RealtimeHandlers<obj>(
        Attach = (fun context ->
            upgradeKinds.Enqueue((pattern, context.Features.Get<IHttpUpgradeFeature>().GetType().Name))
            Attachment<obj>.Accept(null)),
        Message = fun ws message -> ws.Send(message) |> ignore)

/// Whether the last connection to `pattern` was accepted directly.
let private wentDirect (pattern: string) =
    upgradeKinds.ToArray() |> Array.filter (fun (p, _) -> p = pattern) |> Array.last |> snd = "DirectConnectionFeatures"

let private routes (requests: int ref) (app: WebApplication) =
    counting requests app
    app.MapRealtime("/echo", recordingKind "/echo") |> ignore
    app.MapRealtime(
        "/rooms/{room}",
        announcing (fun context ->
            let request = context.Request
            let marker = context.RequestServices.GetRequiredService<ScopedMarker>()
            Attachment<string>.Accept(
                String.Join(
                    "|",
                    [ request.Method
                      request.Path.Value
                      request.QueryString.Value
                      string request.RouteValues["room"]
                      request.Headers["X-Test"].ToString()
                      request.Host.Value
                      string context.Connection.RemoteIpAddress
                      string (context.Connection.RemotePort > 0)
                      request.Scheme
                      string (marker.Id <> Guid.Empty) ]
                )
            ))
    )
    |> ignore
    app.MapRealtime("/reject", announcing (fun _ -> Attachment<string>.Reject(403, "not you"))) |> ignore
    app.MapRealtime("/routed", recordingKind "/routed", fun options -> options.DirectConnections <- false) |> ignore
    app.MapRealtime("/hosted", recordingKind "/hosted").RequireHost("127.0.0.1") |> ignore
    app.MapRealtime("/elsewhere", echo ()).RequireHost("elsewhere.example") |> ignore
    app.MapRealtime("/items/{id:int}", recordingKind "/items") |> ignore
    app.MapGroup("/api").MapRealtime("/chat", recordingKind "/api/chat") |> ignore
    app.MapGet("/hello", Func<string>(fun () -> "hi")) |> ignore
    app.MapPost("/hello", Func<HttpRequest, Task<string>>(fun request -> task {
        use reader = new IO.StreamReader(request.Body)
        let! body = reader.ReadToEndAsync()
        return "got " + body
    })) |> ignore

let private startDirect (configureOptions: RealtimeOptions -> unit) (requests: int ref) =
    startOn OwnTransport
        (fun builder ->
            builder.Services.AddScoped<ScopedMarker>() |> ignore
            builder.WebHost.UseRealtimeDirectConnections() |> ignore)
        configureOptions
        (routes requests)

/// Connects, sends one text message and expects it back.
let private expectEcho (url: string) : Task<unit> =
    task {
        use! client = connect url
        do! sendText client "ping"
        let! answer = receiveText client
        Expect.equal answer "ping" $"echo on {url}"
        do! client.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
    }

/// Reads what the server sends until it closes the TCP connection (bounded by 10 s).
let private readToEnd (stream: NetworkStream) : Task<string> =
    task {
        use cancel = new CancellationTokenSource(seconds 10.0)
        let text = StringBuilder()
        let buffer = Array.zeroCreate<byte> 4096
        let mutable finished = false
        while not finished do
            let! read = stream.ReadAsync(buffer, 0, buffer.Length, cancel.Token)
            if read = 0 then finished <- true else text.Append(Encoding.ASCII.GetString(buffer, 0, read)) |> ignore
        return text.ToString()
    }

let private rawExchange (port: int) (request: byte[]) : Task<string> =
    task {
        use tcp = new TcpClient()
        do! tcp.ConnectAsync(IPAddress.Loopback, port)
        use stream = tcp.GetStream()
        do! stream.WriteAsync(request, 0, request.Length)
        return! readToEnd stream
    }

/// Sends a request and returns the response head only (Kestrel may keep the connection open).
let private rawStatus (port: int) (request: string) : Task<string> =
    task {
        use tcp = new TcpClient()
        do! tcp.ConnectAsync(IPAddress.Loopback, port)
        use stream = tcp.GetStream()
        let bytes = Encoding.ASCII.GetBytes request
        do! stream.WriteAsync(bytes, 0, bytes.Length)
        return! RawClient.readResponseHead stream
    }

[<Tests>]
let directConnectionTests =
    testList "Direct connections (UseRealtimeDirectConnections)" [
        testCaseTask "an upgrade to a Realtime endpoint is read below the HTTP layer, runs the application's middleware, and echoes on the connection's pipes" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            do! expectEcho (server.WsUrl + "/echo")
            Expect.equal requests.Value 1 "the application's middleware saw the upgrade request"
            Expect.isTrue (wentDirect "/echo") "accepted directly"
            let! served = http.GetStringAsync(server.HttpUrl + "/hello")
            Expect.equal served "hi" "an ordinary route on the same listener"
            Expect.equal requests.Value 2 "and the middleware saw that one"
        })

        testCaseTask "ordinary requests pass through untouched: GET, POST with a body, several on one keep-alive connection" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            use handler = new SocketsHttpHandler(MaxConnectionsPerServer = 1)
            use client = new HttpClient(handler, Timeout = seconds 10.0)
            for i in 1..3 do
                let! got = client.GetStringAsync(server.HttpUrl + "/hello")
                Expect.equal got "hi" $"GET {i}"
                use! posted = client.PostAsync(server.HttpUrl + "/hello", new StringContent($"body {i}"))
                let! text = posted.Content.ReadAsStringAsync()
                Expect.equal text $"got body {i}" $"POST {i}"
            Expect.equal requests.Value 6 "every request reached the middleware"
            let! missing = client.GetAsync(server.HttpUrl + "/nowhere")
            Expect.equal missing.StatusCode HttpStatusCode.NotFound "unknown paths still get Kestrel's 404"
        })

        testCaseTask "Attach sees the method, path, query, route values, headers, host, remote address, scheme and request services" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            use client = new ClientWebSocket()
            client.Options.SetRequestHeader("X-Test", "value 1")
            use cancel = new CancellationTokenSource(seconds 10.0)
            do! client.ConnectAsync(Uri(server.WsUrl + "/rooms/lobby%20one?user=ann"), cancel.Token)
            let! data = receiveText client
            let expected =
                String.Join("|", [ "GET"; "/rooms/lobby one"; "?user=ann"; "lobby one"; "value 1"; $"127.0.0.1:{server.Port}"; "127.0.0.1"; "True"; "http"; "True" ])
            Expect.equal data expected "what Attach saw"
            Expect.equal requests.Value 1 "through the middleware"
        })

        testCaseTask "an Attach rejection is answered with its status and reason, then the connection closes" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            let! response = rawExchange server.Port (Encoding.ASCII.GetBytes(RawClient.upgradeRequest "/reject" ""))
            Expect.stringStarts response "HTTP/1.1 403 Forbidden\r\n" "the status line"
            Expect.stringContains response "Connection: close\r\n" "the connection is not kept"
            Expect.stringContains response "Content-Length: 7\r\n" "the body's length"
            Expect.isTrue (response.EndsWith "\r\n\r\nnot you") $"the reason as body: {response}"
            Expect.isFalse (response.Contains "Sec-WebSocket-Accept") "no upgrade"
        })

        testCaseTask "handshake errors get the same answers as through the route: 400 without a key, 426 for another version" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            let noKey = "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
            let! missing = rawExchange server.Port (Encoding.ASCII.GetBytes noKey)
            Expect.stringStarts missing "HTTP/1.1 400 Bad Request\r\n" "no Sec-WebSocket-Key"
            let version8 = (RawClient.upgradeRequest "/echo" "").Replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
            let! older = rawExchange server.Port (Encoding.ASCII.GetBytes version8)
            Expect.stringStarts older "HTTP/1.1 426 Upgrade Required\r\n" "version 8"
            Expect.stringContains older "Sec-WebSocket-Version: 13\r\n" "the version the server speaks"
            let plainGet = "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            let! notUpgrade = rawExchange server.Port (Encoding.ASCII.GetBytes plainGet)
            Expect.stringStarts notUpgrade "HTTP/1.1 400 Bad Request\r\n" "a plain GET to a WebSocket endpoint"
            Expect.equal requests.Value 3 "all answered by the endpoint, after the middleware"
        })

        testCaseTask "host-restricted and constrained endpoints are accepted directly, their rules applied by routing; an opted-out one takes the route" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            do! expectEcho (server.WsUrl + "/routed")
            Expect.equal requests.Value 1 "DirectConnections = false: through the middleware"
            Expect.isFalse (wentDirect "/routed") "through Kestrel's upgrade"
            do! expectEcho (server.WsUrl + "/hosted")
            Expect.equal requests.Value 2 "RequireHost: through the middleware"
            Expect.isTrue (wentDirect "/hosted") "accepted directly"
            do! expectEcho (server.WsUrl + "/items/5")
            Expect.equal requests.Value 3 "a route constraint: through the middleware"
            Expect.isTrue (wentDirect "/items") "accepted directly"
            let! elsewhere = rawStatus server.Port (RawClient.upgradeRequest "/elsewhere" "")
            Expect.stringStarts elsewhere "HTTP/1.1 404" "the host restriction still holds"
            let! notInt = rawStatus server.Port (RawClient.upgradeRequest "/items/five" "")
            Expect.stringStarts notInt "HTTP/1.1 404" "the constraint still holds"
        })

        testCaseTask "an endpoint in a route group is found under its full route" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            do! expectEcho (server.WsUrl + "/api/chat")
            Expect.isTrue (wentDirect "/api/chat") "accepted directly"
        })

        testCaseTask "a request head sent byte by byte, and a frame sent in the same write as the head, are both handled" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            use tcp = new TcpClient(NoDelay = true)
            do! tcp.ConnectAsync(IPAddress.Loopback, server.Port)
            use stream = tcp.GetStream()
            let head = Encoding.ASCII.GetBytes(RawClient.upgradeRequest "/echo" "")
            // The head one byte per write, except the last byte, which goes with a masked text frame.
            for i in 0 .. head.Length - 2 do
                do! stream.WriteAsync(head, i, 1)
                do! stream.FlushAsync()
            let payload = Encoding.UTF8.GetBytes "early"
            let header =
                { Fin = true; Rsv1 = false; Rsv2 = false; Rsv3 = false; Opcode = Opcode.Text
                  Masked = true; MaskKey = 0x01020304u; PayloadLength = int64 payload.Length }
            let frame = (Frame.encode header (ReadOnlyMemory payload)).ToArray()
            let last = Array.append [| head[head.Length - 1] |] frame
            do! stream.WriteAsync(last, 0, last.Length)
            let! response = RawClient.readResponseHead stream
            Expect.stringStarts response "HTTP/1.1 101 Switching Protocols\r\n" "upgraded"
            let connection = new RawClient.RawConnection(tcp, stream, response)
            let! kind, payload = connection.ReceiveMessage()
            Expect.equal (Encoding.UTF8.GetString payload) "early" "the frame that came with the head"
            Expect.isTrue (wentDirect "/echo") "accepted directly"
        })

        testCaseTask "a connection that sends no complete request head is closed after the handshake timeout" (fun () -> task {
            let requests = ref 0
            let! server = startDirect (fun options -> options.HandshakeTimeout <- Nullable(seconds 1.0)) requests
            use _ = server
            use tcp = new TcpClient()
            do! tcp.ConnectAsync(IPAddress.Loopback, server.Port)
            use stream = tcp.GetStream()
            let partial = Encoding.ASCII.GetBytes "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            do! stream.WriteAsync(partial, 0, partial.Length)
            let clock = Diagnostics.Stopwatch.StartNew()
            let! rest = readToEnd stream
            Expect.equal rest "" "closed without an answer"
            Expect.isLessThan clock.Elapsed (seconds 5.0) "within a few seconds of the 1 s timeout"
        })

        testCaseTask "bytes that are not a GET go to Kestrel: garbage gets its 400, a POST to the endpoint its route" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            let! garbage = rawExchange server.Port (Encoding.ASCII.GetBytes "BLAH BLAH\r\n\r\n")
            Expect.stringStarts garbage "HTTP/1.1 400" "Kestrel's answer to a malformed request line"
            use! posted = http.PostAsync(server.HttpUrl + "/echo", new StringContent "x")
            Expect.equal posted.StatusCode HttpStatusCode.MethodNotAllowed "the endpoint's answer through the route"
            Expect.equal requests.Value 1 "the POST went through the middleware"
        })

        testCaseTask "over TLS, placed after UseHttps: wss:// connections are accepted directly" (fun () -> task {
            let requests = ref 0
            let! server =
                startOn OwnTransport
                    (fun builder ->
                        builder.WebHost.UseUrls() |> ignore
                        builder.WebHost.ConfigureKestrel(fun kestrel ->
                            kestrel.Listen(IPAddress.Loopback, 0, fun listen ->
                                listen.UseHttps(TlsTests.certificate.Value).UseRealtimeDirectConnections() |> ignore))
                        |> ignore)
                    ignore
                    (routes requests)
            use _ = server
            Expect.stringStarts server.WsUrl "wss://" "served over TLS"
            use client = TlsTests.clientTrusting TlsTests.certificate.Value
            use cancel = new CancellationTokenSource(seconds 10.0)
            do! client.ConnectAsync(Uri(server.WsUrl + "/echo"), cancel.Token)
            for size in [ 1; 1000; 100_000 ] do
                let payload = Array.init size (fun i -> byte (i % 251))
                do! client.SendAsync(ArraySegment payload, WebSocketMessageType.Binary, true, cancel.Token)
                let! kind, back = receive client
                Expect.equal kind WebSocketMessageType.Binary "binary"
                Expect.equal back payload $"{size} bytes back"
            do! client.CloseAsync(WebSocketCloseStatus.NormalClosure, "", cancel.Token)
            Expect.equal requests.Value 1 "through the middleware"
            Expect.isTrue (wentDirect "/echo") "accepted directly"
        })

        testCaseTask "stopping the host closes direct connections with 1001" (fun () -> task {
            let requests = ref 0
            let! server = startDirect (fun options -> options.ShutdownTimeout <- seconds 3.0) requests
            let mutable stopped = false
            try
                use! client = connect (server.WsUrl + "/echo")
                do! expectEcho (server.WsUrl + "/echo")
                let closing =
                    task {
                        let buffer = Array.zeroCreate<byte> 1024
                        use cancel = new CancellationTokenSource(seconds 10.0)
                        let! result = client.ReceiveAsync(ArraySegment buffer, cancel.Token)
                        return result.MessageType, client.CloseStatus
                    }
                do! server.StopAsync()
                stopped <- true
                let! kind, status = closing
                Expect.equal kind WebSocketMessageType.Close "a close frame"
                Expect.equal status (Nullable(enum<WebSocketCloseStatus> 1001)) "going away"
            finally
                if not stopped then (server :> IDisposable).Dispose()
        })

        testCaseTask "100 direct connections with 20 messages each: none lost or reordered, and all are gone after closing" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            let! clients = Task.WhenAll [ for _ in 1..100 -> connect (server.WsUrl + "/echo") ]
            do! Task.WhenAll [
                    for index, client in Array.indexed clients ->
                        task {
                            for i in 1..20 do do! sendText client $"{index}:{i}"
                            for i in 1..20 do
                                let! answer = receiveText client
                                Expect.equal answer $"{index}:{i}" "in order"
                        } :> Task ]
            for client in clients do
                do! client.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
                client.Dispose()
            let! gone = eventually (seconds 10.0) (fun () -> server.Realtime.ConnectionCount = 0)
            Expect.isTrue gone "every connection ended"
            Expect.equal requests.Value 100 "each through the middleware"
            Expect.isTrue (wentDirect "/echo") "accepted directly"
        })
    ]

/// A scoped service that records its disposal, to see the request scope end with the connection.
type DisposableMarker() =
    static member val Made = ConcurrentQueue<DisposableMarker>()
    member val Disposed = false with get, set
    interface IDisposable with
        member this.Dispose() = this.Disposed <- true

/// Sends `count` header lines of "X-n: v" after the usual upgrade headers.
let private upgradeWithFields (path: string) (count: int) =
    let extra = String.concat "" [ for k in 1..count -> $"X-{k}: v\r\n" ]
    RawClient.upgradeRequest path extra

[<Tests>]
let directPipelineTests =
    testList "Direct connections: the application's pipeline, Kestrel's limits" [
        testCaseTask "request services are the request's own scope, alive while the connection is and disposed when it ends" (fun () -> task {
            let! server =
                startOn OwnTransport
                    (fun builder ->
                        builder.Services.AddScoped<DisposableMarker>() |> ignore
                        builder.WebHost.UseRealtimeDirectConnections() |> ignore)
                    ignore
                    (fun app ->
                        app.MapRealtime(
                            "/scoped",
                            RealtimeHandlers<DisposableMarker>(
                                Attach = (fun context ->
                                    let marker = context.RequestServices.GetRequiredService<DisposableMarker>()
                                    DisposableMarker.Made.Enqueue marker
                                    Attachment<DisposableMarker>.Accept marker),
                                Message = fun ws _ -> ws.Send(string ws.Data.Disposed) |> ignore))
                        |> ignore)
            use _ = server
            use! client = connect (server.WsUrl + "/scoped")
            do! sendText client "disposed?"
            let! answer = receiveText client
            Expect.equal answer "False" "alive during the connection"
            do! client.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            let marker = DisposableMarker.Made.ToArray() |> Array.last
            let! disposed = eventually (seconds 10.0) (fun () -> marker.Disposed)
            Expect.isTrue disposed "disposed once the connection ended"
        })

        testCaseTask "100 header lines are taken directly; 101 go to Kestrel, which answers 431 as on any listener" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            // RawClient.upgradeRequest has 5 header lines of its own.
            let! within = rawStatus server.Port (upgradeWithFields "/echo" 95)
            Expect.stringStarts within "HTTP/1.1 101" "100 lines: upgraded"
            Expect.isTrue (wentDirect "/echo") "accepted directly"
            let! over = rawStatus server.Port (upgradeWithFields "/echo" 96)
            Expect.stringStarts over "HTTP/1.1 431" "101 lines: Kestrel's answer"
            let! flood = rawStatus server.Port (upgradeWithFields "/echo" 9900)
            Expect.stringStarts flood "HTTP/1.1 431" "9,900 more lines: Kestrel's answer"
        })

        testCaseTask "a request line past Kestrel's MaxRequestLineSize goes to Kestrel: 414" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            let! long = rawStatus server.Port (RawClient.upgradeRequest ("/echo?" + String('a', 9000)) "")
            Expect.stringStarts long "HTTP/1.1 414" "Kestrel's answer"
            Expect.equal requests.Value 0 "never reached the application"
        })

        testCaseTask "a path Kestrel would normalise or decode differently goes to Kestrel, which routes it as usual" (fun () -> task {
            let requests = ref 0
            let! server = startDirect ignore requests
            use _ = server
            let before = upgradeKinds.Count
            let! dotted = rawStatus server.Port (RawClient.upgradeRequest "/api/../echo" "")
            Expect.stringStarts dotted "HTTP/1.1 101" "upgraded: Kestrel removed the dot segments"
            Expect.isFalse (wentDirect "/echo") "through Kestrel's own parsing"
            Expect.equal upgradeKinds.Count (before + 1) "one connection"
        })

        testCaseTask "an ASP.NET Core WebSocket endpoint chosen by routing for a request taken directly works on the connection's pipes" (fun () -> task {
            let! server =
                startOn OwnTransport
                    (fun builder -> builder.WebHost.UseRealtimeDirectConnections() |> ignore)
                    ignore
                    (fun app ->
                        app.UseWebSockets() |> ignore
                        app.MapRealtime("/ws/{room}", echo ()) |> ignore
                        app.Map("/ws/plain", RequestDelegate(fun (context: HttpContext) -> task {
                            use! socket = context.WebSockets.AcceptWebSocketAsync()
                            let buffer = Array.zeroCreate<byte> 100
                            let! received = socket.ReceiveAsync(ArraySegment buffer, CancellationToken.None)
                            let reply = Encoding.UTF8.GetBytes("plain " + Encoding.UTF8.GetString(buffer, 0, received.Count))
                            do! socket.SendAsync(ArraySegment reply, WebSocketMessageType.Text, true, CancellationToken.None)
                            let! _ = socket.ReceiveAsync(ArraySegment buffer, CancellationToken.None)
                            do! socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
                        }))
                        |> ignore)
            use _ = server
            use! client = connect (server.WsUrl + "/ws/plain")
            do! sendText client "hi"
            let! answer = receiveText client
            Expect.equal answer "plain hi" "ASP.NET Core's WebSocket over the direct connection"
            do! client.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            do! expectEcho (server.WsUrl + "/ws/lobby")
        })
    ]

/// The feature collection of a directly accepted request, on its own: one object stands for the
/// built-in features, and it must still behave as any IFeatureCollection does for ASP.NET code.
[<Tests>]
let directFeatureTests =
    let make () =
        let connection = new Microsoft.AspNetCore.Connections.DefaultConnectionContext("conn-1")
        connection.RemoteEndPoint <- IPEndPoint(IPAddress.Loopback, 5555)
        connection.LocalEndPoint <- IPEndPoint(IPAddress.Loopback, 80)
        let request: Realtime.Protocol.Handshake.HandshakeRequest =
            { Method = "GET"; Path = "/rooms/a?x=1"; HttpVersion = "HTTP/1.1"; Headers = [| { Name = "Host"; Value = "example.test" } |] }
        let features = new Direct.DirectConnectionFeatures(connection, request, "/rooms/a", "?x=1", true)
        features, DefaultHttpContext(features)

    testList "Direct connections: the request's features" [
        test "the request and connection read through HttpContext as sent" {
            let _, context = make ()
            let request = context.Request
            Expect.equal (request.Method, request.Path.Value, request.QueryString.Value, request.Protocol, request.Scheme)
                ("GET", "/rooms/a", "?x=1", "HTTP/1.1", "http") "request line"
            Expect.equal request.Host.Value "example.test" "host header"
            Expect.equal (context.Connection.Id, context.Connection.RemoteIpAddress, context.Connection.RemotePort, context.Connection.LocalPort)
                ("conn-1", IPAddress.Loopback, 5555, 80) "connection"
            Expect.equal context.Response.StatusCode 200 "no status set yet"
            Expect.isFalse context.Response.HasStarted "not started"
        }

        test "features the application sets are kept, replace built-in ones, and can remove them; the connection's own features show through" {
            let features, context = make ()
            let before = context.Features.Revision
            context.Items["key"] <- "value"
            Expect.equal context.Items["key"] (box "value") "items (a feature DefaultHttpContext adds)"
            Expect.isNotNull (context.Features.Get<IItemsFeature>()) "the items feature is in the collection"
            Expect.isGreaterThan context.Features.Revision before "adding a feature changes the revision"
            let replaced = RouteValuesFeature(RouteValues = RouteValueDictionary(dict [ "room", box "b" ]))
            context.Features.Set<IRouteValuesFeature>(replaced)
            Expect.equal (string context.Request.RouteValues["room"]) "b" "the replacement is what the request sees"
            context.Features.Set<IHttpUpgradeFeature>(null)
            Expect.isNull (context.Features.Get<IHttpUpgradeFeature>()) "removed"
            Expect.isTrue (obj.ReferenceEquals(context.Features.Get<IHttpRequestFeature>(), features)) "built-in features are the one object"
            Expect.isNotNull (context.Features.Get<Microsoft.AspNetCore.Connections.Features.IConnectionItemsFeature>()) "a connection feature"
            let listed = context.Features |> Seq.map (fun entry -> entry.Key) |> Seq.toList
            Expect.equal (List.distinct listed) listed "each feature listed once"
            Expect.containsAll listed [ typeof<IItemsFeature>; typeof<IRouteValuesFeature>; typeof<IHttpRequestFeature>; typeof<IHttpResponseFeature> ] "listed"
            Expect.isFalse (List.contains typeof<IHttpUpgradeFeature> listed) "a removed feature is not listed"
            Expect.isTrue (context.Features |> Seq.exists (fun entry -> obj.ReferenceEquals(entry.Value, replaced))) "the replacement is listed"
        }

        test "a response written directly carries the reason phrase Kestrel would write" {
            for status in 100..599 do
                Expect.equal (ResponseHead.reasonPhrase status) (Microsoft.AspNetCore.WebUtilities.ReasonPhrases.GetReasonPhrase status) $"{status}"
        }

        testTask "a response the application writes goes out with its status, headers and body after the OnStarting callbacks, then Connection: close" {
            let connection = new Microsoft.AspNetCore.Connections.DefaultConnectionContext("conn-2")
            let toServer = System.IO.Pipelines.Pipe()
            let fromServer = System.IO.Pipelines.Pipe()
            connection.Transport <-
                { new System.IO.Pipelines.IDuplexPipe with
                    member _.Input = toServer.Reader
                    member _.Output = fromServer.Writer }
            let request: Realtime.Protocol.Handshake.HandshakeRequest = { Method = "GET"; Path = "/"; HttpVersion = "HTTP/1.1"; Headers = [||] }
            let features = new Direct.DirectConnectionFeatures(connection, request, "/", "", false)
            let context = DefaultHttpContext(features)
            let order = ResizeArray<string>()
            context.Response.OnStarting(fun () -> order.Add "first registered"; Task.CompletedTask)
            context.Response.OnStarting(fun () -> order.Add "second registered"; context.Response.Headers["X-Late"] <- "set"; Task.CompletedTask)
            context.Response.OnCompleted(fun () -> order.Add "completed"; Task.CompletedTask)
            context.Response.StatusCode <- 418
            context.Response.ContentLength <- Nullable 5L
            do! context.Response.WriteAsync "hello"
            Expect.isTrue context.Response.HasStarted "started by the write"
            do! features.CompleteAsync null
            Expect.equal (List.ofSeq order) [ "second registered"; "first registered"; "completed" ] "OnStarting latest first, OnCompleted last"
            do! fromServer.Writer.CompleteAsync()
            let! read = fromServer.Reader.ReadAsync()
            let mutable buffer = read.Buffer
            let text = Encoding.Latin1.GetString(System.Buffers.BuffersExtensions.ToArray(&buffer))
            Expect.stringStarts text "HTTP/1.1 418 I'm a teapot\r\n" "status line"
            Expect.stringContains text "X-Late: set\r\n" "a header set in OnStarting"
            Expect.stringContains text "Connection: close\r\n" "not kept alive"
            Expect.stringContains text "Content-Length: 5\r\n" "the length the application set"
            Expect.isFalse (text.Contains "Server:") "no Server header when Kestrel's AddServerHeader is off"
            Expect.stringEnds text "\r\n\r\nhello" "the body after the head"
        }
    ]

/// The host's defences against hostile or broken clients, on a real Kestrel (127.0.0.x, ephemeral
/// ports): the Origin allow-list, connection limits, handshake size and time limits, slow and
/// stalled peers, and a seeded fuzz run of random and mutated frames against a live server.
module Realtime.Server.Tests.DefenceTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.IO.Compression
open System.Net
open System.Net.Sockets
open System.Net.WebSockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

let private seconds (value: float) = TimeSpan.FromSeconds value

/// A second loopback address: Linux routes all of 127.0.0.0/8 to lo, so a client bound to it
/// reaches the server on 127.0.0.1 from a different remote address.
let private otherLoopback = IPAddress.Parse "127.0.0.2"

/// Handlers that send every message back unchanged.
let private echoHandlers () =
    RealtimeHandlers<obj>(Message = (fun ws message -> ws.Send(message) |> ignore))

/// Fails unless the condition holds within the time.
let private expectEventually (timeout: TimeSpan) (message: string) (condition: unit -> bool) : Task =
    task {
        let! ok = eventually timeout condition
        if not ok then failtest message
    }

/// The status code of a response head; 0 when the server closed without answering.
let private statusOf (head: string) =
    if head.StartsWith "HTTP/1.1 " && head.Length >= 12 then int (head.Substring(9, 3)) else 0

/// Sends a request from a socket bound to `local` and reads the response head; the TCP
/// connection stays open and belongs to the caller.
let private attemptFrom (local: IPAddress) (port: int) (request: string) : Task<TcpClient * NetworkStream * string> =
    task {
        let tcp = new TcpClient(IPEndPoint(local, 0))
        do! tcp.ConnectAsync(IPAddress.Loopback, port)
        tcp.NoDelay <- true
        let stream = tcp.GetStream()
        let bytes = Encoding.ASCII.GetBytes request
        do! stream.WriteAsync(bytes, 0, bytes.Length)
        let! head = RawClient.readResponseHead stream
        return tcp, stream, head
    }

/// The response head a request from 127.0.0.1 gets; the connection is dropped afterwards.
let private headFor (port: int) (request: string) : Task<string> =
    task {
        let! tcp, _, head = attemptFrom IPAddress.Loopback port request
        tcp.Dispose()
        return head
    }

/// The status an upgrade of `path` with extra header lines gets from 127.0.0.1.
let private statusFor (port: int) (path: string) (extraHeaders: string) : Task<int> =
    task {
        let! head = headFor port (RawClient.upgradeRequest path extraHeaders)
        return statusOf head
    }

/// Opens a WebSocket from `local`; fails unless the server answers 101.
let private openFrom (local: IPAddress) (port: int) (path: string) : Task<RawClient.RawConnection> =
    task {
        let! tcp, stream, head = attemptFrom local port (RawClient.upgradeRequest path "")
        if statusOf head <> 101 then
            tcp.Dispose()
            failtestf "expected 101 for %s from %O, got: %s" path local head
        return new RawClient.RawConnection(tcp, stream, head)
    }

/// Opens a WebSocket from `local`, trying again while the answer is 503, for up to `within`: the
/// slot of a connection that just ended is given back once it has finished (after its Close
/// handler), a moment after the client saw the end. Any other answer fails.
let private openWithin (within: TimeSpan) (local: IPAddress) (port: int) (path: string) : Task<RawClient.RawConnection> =
    task {
        let deadline = DateTime.UtcNow + within
        let mutable result = None
        while result.IsNone do
            let! tcp, stream, head = attemptFrom local port (RawClient.upgradeRequest path "")
            match statusOf head with
            | 101 -> result <- Some(new RawClient.RawConnection(tcp, stream, head))
            | 503 when DateTime.UtcNow < deadline ->
                tcp.Dispose()
                do! Task.Delay 10
            | _ ->
                tcp.Dispose()
                failtestf "expected 101 for %s from %O within %O, got: %s" path local within head
        return result.Value
    }

/// The closing handshake from the client's side, then the end of the TCP connection.
let private closeCleanly (raw: RawClient.RawConnection) : Task =
    task {
        do! raw.SendClose(1000us, "bye")
        let! code = raw.ReceiveClose(seconds 10.0)
        Expect.equal code (Some 1000us) "the server answers the close"
        let! ended = raw.WaitForTransportClose(seconds 10.0)
        Expect.isTrue ended "the server ends the TCP connection after the closing handshake"
        (raw :> IDisposable).Dispose()
    }

/// Sends a text message on a raw connection and expects it back.
let private expectEcho (raw: RawClient.RawConnection) (text: string) : Task =
    task {
        do! raw.SendText text
        let! kind, bytes = raw.ReceiveMessage()
        Expect.equal kind Opcode.Text "a text message comes back"
        Expect.equal (Encoding.UTF8.GetString bytes) text "the same text comes back"
    }

/// A raw connection whose TCP receive buffer is small (set before connecting), so that the kernel
/// holds little of what the server writes to a client that never reads.
let private connectSmallWindow (port: int) (path: string) : Task<RawClient.RawConnection> =
    task {
        let tcp = new TcpClient()
        tcp.ReceiveBufferSize <- 4096
        do! tcp.ConnectAsync(IPAddress.Loopback, port)
        tcp.NoDelay <- true
        let stream = tcp.GetStream()
        let request = Encoding.ASCII.GetBytes(RawClient.upgradeRequest path "")
        do! stream.WriteAsync(request, 0, request.Length)
        let! head = RawClient.readResponseHead stream
        if statusOf head <> 101 then failtestf "expected 101, got: %s" head
        return new RawClient.RawConnection(tcp, stream, head)
    }

type private ErrorLogger(category: string, sink: ConcurrentQueue<string>) =
    interface ILogger with
        member _.BeginScope<'TState>(_state: 'TState) : IDisposable = null
        member _.IsEnabled(level: LogLevel) = level >= LogLevel.Error
        member _.Log<'TState>(level: LogLevel, eventId: EventId, state: 'TState, error: exn, formatter: Func<'TState, exn, string>) =
            if level >= LogLevel.Error then
                sink.Enqueue $"{level} {category}[{eventId.Id}]: {formatter.Invoke(state, error)} {error}"

/// Keeps every log entry at Error or above, from every category: the host's and Kestrel's.
type private ErrorLogs() =
    let entries = ConcurrentQueue<string>()
    member _.Entries = entries.ToArray()
    interface ILoggerProvider with
        member _.CreateLogger(category: string) = ErrorLogger(category, entries) :> ILogger
        member _.Dispose() = ()

/// Adds an error-capturing provider to a built app (call from mapRoutes, before it starts).
let private captureErrors (app: WebApplication) =
    let logs = new ErrorLogs()
    app.Services.GetRequiredService<ILoggerFactory>().AddProvider logs
    logs

// ---------------------------------------------------------------------------------------------
// 1. Origin allow-list
// ---------------------------------------------------------------------------------------------

/// /echo counting its Attach calls, under the given allow-list.
let private originServer (allowed: string list) (attached: int ref) =
    start
        (fun options -> for origin in allowed do options.AllowedOrigins.Add origin)
        (fun app ->
            app.MapRealtime(
                "/echo",
                RealtimeHandlers<obj>(
                    Attach = (fun _ -> Interlocked.Increment(&attached.contents) |> ignore; Attachment<obj>.Accept null),
                    Message = (fun ws message -> ws.Send(message) |> ignore)))
            |> ignore)

let private origin (value: string) = $"Origin: {value}\r\n"

[<Tests>]
let originTests =
    testList "Defence: the Origin allow-list refuses other sites' pages before the upgrade (cross-site WebSocket hijacking)" [
        testCaseTask "an allowed origin is upgraded with 101, compared case-insensitively and with a trailing slash tolerated on either side" (fun () -> task {
            let attached = ref 0
            let! server = originServer [ "https://app.example.com"; "http://localhost:5173/" ] attached
            use _ = server
            for value in [ "https://app.example.com"; "HTTPS://App.Example.COM"; "https://app.example.com/"; "http://localhost:5173"; "http://LOCALHOST:5173/" ] do
                let! tcp, stream, head = attemptFrom IPAddress.Loopback server.Port (RawClient.upgradeRequest "/echo" (origin value))
                Expect.equal (statusOf head) 101 $"Origin {value} is upgraded: {head}"
                use raw = new RawClient.RawConnection(tcp, stream, head)
                do! expectEcho raw value
            Expect.equal attached.Value 5 "Attach ran for each"
        })

        testCaseTask "a disallowed origin gets 403 before the upgrade: no accept key, Attach not run, no connection" (fun () -> task {
            let attached = ref 0
            let! server = originServer [ "https://app.example.com" ] attached
            use _ = server
            let hostile =
                [ "https://evil.example"
                  "https://app.example.com.evil.example" // suffix trick
                  "https://evil.example/https://app.example.com"
                  "http://app.example.com" // another scheme is another origin
                  "https://app.example.com:8443" // so is another port
                  "null" // sandboxed frames and file: pages
                  "" ]
            for value in hostile do
                let! head = headFor server.Port (RawClient.upgradeRequest "/echo" (origin value))
                Expect.equal (statusOf head) 403 $"Origin '{value}' gets 403: {head}"
                Expect.isFalse (head.Contains "Sec-WebSocket-Accept") "no accept key"
                Expect.isFalse (head.Contains "Upgrade: websocket") "no upgrade"
            Expect.equal attached.Value 0 "Attach never ran"
            Expect.equal server.Realtime.ConnectionCount 0 "no connection was opened"
        })

        testCaseTask "a request without Origin (a non-browser client) is allowed" (fun () -> task {
            let attached = ref 0
            let! server = originServer [ "https://app.example.com" ] attached
            use _ = server
            use! raw = RawClient.connect server.Port "/echo"
            do! expectEcho raw "no origin"
            let! client = connect (server.WsUrl + "/echo")
            use _ = client
            do! sendText client "ClientWebSocket sends no Origin"
            let! echo = receiveText client
            Expect.equal echo "ClientWebSocket sends no Origin" "a ClientWebSocket without Origin is served"
        })

        testCaseTask "two Origin headers get 403, even when both are allowed" (fun () -> task {
            let attached = ref 0
            let! server = originServer [ "https://app.example.com"; "https://other.example.com" ] attached
            use _ = server
            let! both = statusFor server.Port "/echo" (origin "https://app.example.com" + origin "https://other.example.com")
            Expect.equal both 403 "two different allowed origins"
            let! twice = statusFor server.Port "/echo" (origin "https://app.example.com" + origin "https://app.example.com")
            Expect.equal twice 403 "the same allowed origin twice"
            let! mixed = statusFor server.Port "/echo" (origin "https://evil.example" + origin "https://app.example.com")
            Expect.equal mixed 403 "a disallowed origin followed by an allowed one"
            Expect.equal attached.Value 0 "Attach never ran"
        })

        testCaseTask "an empty allow-list (the default) allows every origin" (fun () -> task {
            let attached = ref 0
            let! server = originServer [] attached
            use _ = server
            for value in [ "https://evil.example"; "null"; "http://localhost:1234" ] do
                let! status = statusFor server.Port "/echo" (origin value)
                Expect.equal status 101 $"Origin {value} is upgraded"
        })

        testCaseTask "a browser-like ClientWebSocket sending a disallowed Origin fails with 403; an allowed one is served" (fun () -> task {
            let attached = ref 0
            let! server = originServer [ "https://app.example.com" ] attached
            use _ = server
            use hijacker = new ClientWebSocket()
            hijacker.Options.CollectHttpResponseDetails <- true
            hijacker.Options.SetRequestHeader("Origin", "https://evil.example")
            use cancel = new CancellationTokenSource(seconds 10.0)
            let! failed =
                task {
                    try
                        do! hijacker.ConnectAsync(Uri(server.WsUrl + "/echo"), cancel.Token)
                        return false
                    with :? WebSocketException -> return true
                }
            Expect.isTrue failed "the connect failed"
            Expect.equal hijacker.HttpStatusCode HttpStatusCode.Forbidden "403 Forbidden"
            use page = new ClientWebSocket()
            page.Options.SetRequestHeader("Origin", "https://app.example.com")
            do! page.ConnectAsync(Uri(server.WsUrl + "/echo"), cancel.Token)
            do! sendText page "same site"
            let! echo = receiveText page
            Expect.equal echo "same site" "the site's own page is served"
        })

        testCaseTask "MapRealtime's configure overrides the allow-list for one endpoint and leaves the defaults alone" (fun () -> task {
            let! server =
                start
                    (fun options -> options.AllowedOrigins.Add "https://a.example")
                    (fun app ->
                        let strict (options: RealtimeOptions) =
                            options.AllowedOrigins.Clear()
                            options.AllowedOrigins.Add "https://b.example"
                        let opened (options: RealtimeOptions) = options.AllowedOrigins.Clear()
                        let extra (options: RealtimeOptions) = options.AllowedOrigins.Add "https://c.example"
                        // /strict is mapped first: its changes must not reach the defaults /default uses.
                        app.MapRealtime("/strict", echoHandlers (), Action<RealtimeOptions> strict) |> ignore
                        app.MapRealtime("/open", echoHandlers (), Action<RealtimeOptions> opened) |> ignore
                        app.MapRealtime("/extra", echoHandlers (), Action<RealtimeOptions> extra) |> ignore
                        app.MapRealtime("/default", echoHandlers ()) |> ignore)
            use _ = server
            let expectations =
                [ "/default", "https://a.example", 101
                  "/default", "https://b.example", 403
                  "/default", "https://c.example", 403
                  "/strict", "https://a.example", 403
                  "/strict", "https://b.example", 101
                  "/open", "https://evil.example", 101
                  "/extra", "https://a.example", 101
                  "/extra", "https://c.example", 101
                  "/extra", "https://b.example", 403 ]
            for path, value, expected in expectations do
                let! status = statusFor server.Port path (origin value)
                Expect.equal status expected $"{path} with Origin {value}"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 2. Connection limits
// ---------------------------------------------------------------------------------------------

[<Tests>]
let connectionLimitTests =
    testList "Defence: connection limits answer 503 before the upgrade and always give their slots back" [
        testCaseTask "MaxConnections counts every endpoint together: the next upgrade gets 503, and once one closes a new one is admitted" (fun () -> task {
            let! server =
                start
                    (fun options -> options.MaxConnections <- 3)
                    (fun app ->
                        app.MapRealtime("/a", echoHandlers ()) |> ignore
                        app.MapRealtime("/b", echoHandlers ()) |> ignore)
            use _ = server
            let! a1 = openFrom IPAddress.Loopback server.Port "/a"
            use! a2 = openFrom IPAddress.Loopback server.Port "/a"
            use! b1 = openFrom IPAddress.Loopback server.Port "/b"
            Expect.equal server.Realtime.ConnectionCount 3 "three open"
            let! head = headFor server.Port (RawClient.upgradeRequest "/a" "")
            Expect.equal (statusOf head) 503 $"a fourth on /a gets 503: {head}"
            Expect.isFalse (head.Contains "Sec-WebSocket-Accept") "no accept key"
            let! onB = statusFor server.Port "/b" ""
            Expect.equal onB 503 "a fourth on /b gets 503 too"
            let! fromOther = statusFor server.Port "/b" ""
            Expect.equal fromOther 503 "and again"
            do! expectEcho a2 "the open ones keep working"
            do! closeCleanly a1
            use! replacement = openWithin (seconds 5.0) IPAddress.Loopback server.Port "/b"
            do! expectEcho replacement "admitted after one closed"
            let! full = statusFor server.Port "/a" ""
            Expect.equal full 503 "full again"
            do! expectEcho b1 "unaffected"
        })

        testCaseTask "200 open/close cycles (clean close, dropped TCP, protocol error, half a frame) leave the count at zero and the whole limit available" (fun () -> task {
            let limit = 4
            let! server =
                start
                    (fun options ->
                        options.MaxConnections <- limit
                        options.MaxConnectionsPerAddress <- limit)
                    (fun app -> app.MapRealtime("/echo", echoHandlers ()) |> ignore)
            use _ = server
            let clock = Stopwatch.StartNew()
            let endings = [| 0; 0; 0; 0 |]
            for cycle in 0 .. 200 / limit - 1 do
                let! batch = Task.WhenAll [ for _ in 1..limit -> openWithin (seconds 5.0) IPAddress.Loopback server.Port "/echo" ]
                let! full = statusFor server.Port "/echo" ""
                Expect.equal full 503 $"cycle {cycle}: the limit holds"
                let closing =
                    batch
                    |> Array.mapi (fun index raw ->
                        task {
                            let way = (cycle + index) % 4
                            endings[way] <- endings[way] + 1
                            match way with
                            | 0 -> do! closeCleanly raw
                            | 1 -> (raw :> IDisposable).Dispose()
                            | 2 ->
                                do! raw.SendRaw [| 0x83uy; 0x80uy; 1uy; 2uy; 3uy; 4uy |] // reserved opcode
                                let! code = raw.ReceiveClose(seconds 10.0)
                                Expect.equal code (Some 1002us) "a protocol error closes with 1002"
                                (raw :> IDisposable).Dispose()
                            | _ ->
                                do! raw.SendRaw [| 0x82uy; 0xFEuy; 0x01uy |] // half a header
                                (raw :> IDisposable).Dispose()
                        }
                        :> Task)
                do! Task.WhenAll closing
            do! expectEventually (seconds 10.0) "every connection ended" (fun () -> server.Realtime.ConnectionCount = 0)
            let! again = Task.WhenAll [ for _ in 1..limit -> openWithin (seconds 5.0) IPAddress.Loopback server.Port "/echo" ]
            Expect.equal server.Realtime.ConnectionCount limit "the whole limit is available again"
            let! over = statusFor server.Port "/echo" ""
            Expect.equal over 503 "and no more"
            for raw in again do
                do! expectEcho raw "still serving"
                do! closeCleanly raw
            do! expectEventually (seconds 10.0) "the count returns to zero" (fun () -> server.Realtime.ConnectionCount = 0)
            printfn "connection limits: 200 open/close cycles (%A by ending) in %O" endings clock.Elapsed
        })

        testCaseTask "MaxConnectionsPerAddress gives the extra connection from 127.0.0.1 a 503 while 127.0.0.2 is still admitted" (fun () -> task {
            let! server =
                start
                    (fun options -> options.MaxConnectionsPerAddress <- 2)
                    (fun app -> app.MapRealtime("/echo", echoHandlers ()) |> ignore)
            use _ = server
            let! first = openFrom IPAddress.Loopback server.Port "/echo"
            use! second = openFrom IPAddress.Loopback server.Port "/echo"
            let! third = statusFor server.Port "/echo" ""
            Expect.equal third 503 "the third from 127.0.0.1 gets 503"
            use! other1 = openFrom otherLoopback server.Port "/echo"
            use! other2 = openFrom otherLoopback server.Port "/echo"
            do! expectEcho other2 "another address has its own count"
            let! otherThird, _, otherHead = attemptFrom otherLoopback server.Port (RawClient.upgradeRequest "/echo" "")
            otherThird.Dispose()
            Expect.equal (statusOf otherHead) 503 "the third from 127.0.0.2 gets 503 too"
            let addresses = server.Realtime.Connections |> Seq.map (fun c -> string c.RemoteAddress) |> Seq.sort |> List.ofSeq
            Expect.equal addresses [ "127.0.0.1"; "127.0.0.1"; "127.0.0.2"; "127.0.0.2" ] "the server saw both addresses"
            do! closeCleanly first
            use! replacement = openWithin (seconds 5.0) IPAddress.Loopback server.Port "/echo"
            do! expectEcho replacement "127.0.0.1 is admitted again after one of its connections closed"
            do! expectEcho second "unaffected"
            do! expectEcho other1 "unaffected"
        })

        testCaseTask "rejected Attach, throwing Attach, failed handshakes and clients gone during AttachAsync do not leak a slot" (fun () -> task {
            let mutable logs = Unchecked.defaultof<ErrorLogs>
            let attached = ref 0
            let! server =
                start
                    (fun options ->
                        options.MaxConnections <- 2
                        options.MaxConnectionsPerAddress <- 2
                        options.AllowedOrigins.Add "https://ok.example"
                        options.MaxHandshakeHeaderBytes <- 1024)
                    (fun app ->
                        logs <- captureErrors app
                        app.MapRealtime(
                            "/guarded",
                            RealtimeHandlers<obj>(
                                Attach =
                                    (fun http ->
                                        Interlocked.Increment(&attached.contents) |> ignore
                                        match http.Request.Query["mode"].ToString() with
                                        | "reject" -> Attachment<obj>.Reject(401, "no")
                                        | "throw" -> raise (InvalidOperationException "Attach fails on purpose")
                                        | _ -> Attachment<obj>.Accept null),
                                Message = (fun ws message -> ws.Send(message) |> ignore)))
                        |> ignore
                        app.MapRealtime(
                            "/slow-attach",
                            RealtimeHandlers<obj>(
                                AttachAsync =
                                    (fun _ ->
                                        ValueTask<Attachment<obj>>(
                                            task {
                                                do! Task.Delay 150
                                                return Attachment<obj>.Accept null
                                            }))))
                        |> ignore)
            use _ = server
            for _ in 1..20 do
                let! status = statusFor server.Port "/guarded?mode=reject" ""
                Expect.equal status 401 "Attach rejects with 401"
            for _ in 1..5 do
                let! status = statusFor server.Port "/guarded?mode=throw" ""
                Expect.equal status 500 "a throwing Attach answers 500"
            for _ in 1..5 do
                let! status = statusFor server.Port "/guarded" "Origin: https://evil.example\r\n"
                Expect.equal status 403 "a disallowed origin"
                let! bigHeaders = statusFor server.Port "/guarded" $"X-Padding: {String('x', 1100)}\r\n"
                Expect.equal bigHeaders 431 "headers too large"
                let! version = headFor server.Port ((RawClient.upgradeRequest "/guarded" "").Replace("Version: 13", "Version: 8"))
                Expect.equal (statusOf version) 426 "an unsupported version"
                let! noKey = headFor server.Port ((RawClient.upgradeRequest "/guarded" "").Replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""))
                Expect.equal (statusOf noKey) 400 "no key"
            // Clients that hang up while AttachAsync is still working.
            for _ in 1..5 do
                let tcp = new TcpClient()
                do! tcp.ConnectAsync(IPAddress.Loopback, server.Port)
                let request = Encoding.ASCII.GetBytes(RawClient.upgradeRequest "/slow-attach" "")
                do! tcp.GetStream().WriteAsync(request, 0, request.Length)
                do! Task.Delay 20
                tcp.Dispose()
            do! Task.Delay 400
            use! one = openWithin (seconds 5.0) IPAddress.Loopback server.Port "/guarded"
            use! two = openWithin (seconds 5.0) IPAddress.Loopback server.Port "/guarded"
            let! three = statusFor server.Port "/guarded" ""
            Expect.equal three 503 "both slots were free, and the limit still holds"
            do! expectEcho one "served"
            do! expectEcho two "served"
            Expect.equal server.Realtime.ConnectionCount 2 "two connections"
            let unexpected = logs.Entries |> Array.filter (fun entry -> not (entry.Contains "Attach fails on purpose"))
            Expect.isEmpty unexpected "no errors but the throwing Attach's"
            Expect.equal (logs.Entries.Length) 5 "each throwing Attach is logged once"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 3. Handshake limits
// ---------------------------------------------------------------------------------------------

/// Waits (bounded) until the server closes the TCP connection; returns whether it did and what it sent.
let private waitForServerClose (stream: NetworkStream) (timeout: TimeSpan) : Task<bool * string> =
    task {
        use cancel = new CancellationTokenSource(timeout)
        let received = StringBuilder()
        let buffer = Array.zeroCreate<byte> 1024
        let mutable closed = false
        let mutable finished = false
        while not finished do
            let! read =
                task {
                    try return! stream.ReadAsync(buffer, 0, buffer.Length, cancel.Token)
                    with
                    | :? OperationCanceledException -> return -1
                    | :? IOException -> return 0
                }
            if read > 0 then received.Append(Encoding.ASCII.GetString(buffer, 0, read)) |> ignore
            else
                closed <- read = 0
                finished <- true
        return closed, received.ToString()
    }

[<Tests>]
let handshakeLimitTests =
    testList "Defence: the upgrade request is bounded in size (431) and in time (Kestrel's header timeout)" [
        testCaseTask "header lines over MaxHandshakeHeaderBytes get 431 before the upgrade, one long line or many short ones; under it is upgraded" (fun () -> task {
            let attached = ref 0
            let! server =
                start
                    (fun options -> options.MaxHandshakeHeaderBytes <- 2048)
                    (fun app ->
                        let handlers () =
                            RealtimeHandlers<obj>(Attach = (fun _ -> Interlocked.Increment(&attached.contents) |> ignore; Attachment<obj>.Accept null))
                        app.MapRealtime("/echo", handlers ()) |> ignore
                        app.MapRealtime("/roomy", handlers (), fun options -> options.MaxHandshakeHeaderBytes <- 8192) |> ignore)
            use _ = server
            let longLine = $"X-Padding: {String('a', 2100)}\r\n"
            let manyLines = String.Join("", [ for i in 1..60 -> $"X-Filler-{i:D2}: {String('b', 40)}\r\n" ])
            let! head = headFor server.Port (RawClient.upgradeRequest "/echo" longLine)
            Expect.equal (statusOf head) 431 $"one long header line gets 431: {head}"
            Expect.isFalse (head.Contains "Sec-WebSocket-Accept") "no accept key"
            let! many = statusFor server.Port "/echo" manyLines
            Expect.equal many 431 "many short header lines adding up get 431"
            let! cookie = statusFor server.Port "/echo" $"Cookie: {String('c', 1500)}\r\nCookie: {String('d', 1500)}\r\n"
            Expect.equal cookie 431 "a header repeated adds up too"
            Expect.equal attached.Value 0 "Attach never ran"
            let! under = statusFor server.Port "/echo" $"X-Padding: {String('a', 1000)}\r\n"
            Expect.equal under 101 "1000 bytes of padding is under the limit"
            let! roomy = statusFor server.Port "/roomy" longLine
            Expect.equal roomy 101 "an endpoint may raise the limit"
        })

        testCaseTask "a client that resets its connection in the middle of the request head is no error: nothing at Error level, through the route or directly" (fun () -> task {
            for direct in [ false; true ] do
                let mutable logs = Unchecked.defaultof<ErrorLogs>
                let! server =
                    startIn direct ignore (fun app ->
                        logs <- captureErrors app
                        app.MapRealtime("/echo", echoHandlers ()) |> ignore)
                use _ = server
                for _ in 1..5 do
                    let tcp = new TcpClient()
                    do! tcp.ConnectAsync(IPAddress.Loopback, server.Port)
                    let half = Encoding.ASCII.GetBytes "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr"
                    do! tcp.GetStream().WriteAsync(half, 0, half.Length)
                    do! Task.Delay 50
                    // Linger 0: close sends a TCP reset instead of a FIN.
                    tcp.Client.LingerState <- LingerOption(true, 0)
                    tcp.Client.Close()
                // The server is still fine, and said nothing at Error level about the resets.
                use! client = connect (server.WsUrl + "/echo")
                do! sendText client "still here"
                let! back = receiveText client
                Expect.equal back "still here" "served afterwards"
                do! Task.Delay 300
                Expect.isEmpty logs.Entries $"no Error log (direct = {direct})"
        })

        testCaseTask "HandshakeTimeout: a client that sends half a request line and stalls is disconnected by Kestrel in bounded time" (fun () -> task {
            let! server = start (fun options -> options.HandshakeTimeout <- Nullable(seconds 1.0)) (fun app -> app.MapRealtime("/echo", echoHandlers ()) |> ignore)
            use _ = server
            use tcp = new TcpClient()
            do! tcp.ConnectAsync(IPAddress.Loopback, server.Port)
            let stream = tcp.GetStream()
            let half = Encoding.ASCII.GetBytes "GET /echo HT"
            do! stream.WriteAsync(half, 0, half.Length)
            let clock = Stopwatch.StartNew()
            let! closed, received = waitForServerClose stream (seconds 10.0)
            let elapsed = clock.Elapsed
            Expect.isTrue closed $"the server closed the stalled connection (after {elapsed})"
            Expect.isGreaterThanOrEqual elapsed (TimeSpan.FromMilliseconds 900.0) "not before the timeout"
            Expect.isLessThan elapsed (seconds 5.0) "within a few seconds (Kestrel checks about once a second)"
            Expect.isTrue (received = "" || received.StartsWith "HTTP/1.1 408") $"nothing or 408 before closing, got: {received}"
        })

        testCaseTask "HandshakeTimeout: headers trickled one byte at a time are cut off by the same total time" (fun () -> task {
            let! server = start (fun options -> options.HandshakeTimeout <- Nullable(seconds 1.0)) (fun app -> app.MapRealtime("/echo", echoHandlers ()) |> ignore)
            use _ = server
            use tcp = new TcpClient()
            do! tcp.ConnectAsync(IPAddress.Loopback, server.Port)
            tcp.NoDelay <- true
            let stream = tcp.GetStream()
            let request = Encoding.ASCII.GetBytes(RawClient.upgradeRequest "/echo" "")
            use stop = new CancellationTokenSource()
            let clock = Stopwatch.StartNew()
            let trickle =
                task {
                    try
                        // 150 ms per byte: the whole request would take over 20 s.
                        for index in 0 .. request.Length - 1 do
                            if not stop.IsCancellationRequested then
                                do! stream.WriteAsync(request, index, 1)
                                do! Task.Delay(150, stop.Token)
                    with _ -> ()
                }
            let! closed, received = waitForServerClose stream (seconds 10.0)
            let elapsed = clock.Elapsed
            stop.Cancel()
            do! trickle
            Expect.isTrue closed $"the server closed the trickling connection (after {elapsed})"
            Expect.isLessThan elapsed (seconds 5.0) "within a few seconds"
            Expect.isFalse (received.StartsWith "HTTP/1.1 101") "it was never upgraded"
            Expect.equal server.Realtime.ConnectionCount 0 "no connection"
        })

        testCaseTask "HandshakeTimeout does not cut an upgraded connection that stays open longer" (fun () -> task {
            let! server = start (fun options -> options.HandshakeTimeout <- Nullable(seconds 1.0)) (fun app -> app.MapRealtime("/echo", echoHandlers ()) |> ignore)
            use _ = server
            use! raw = RawClient.connect server.Port "/echo"
            do! Task.Delay 2500
            do! expectEcho raw "still open after 2.5 s"
            Expect.isFalse raw.TransportClosed "not closed"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 4. Slow and stalled peers
// ---------------------------------------------------------------------------------------------

/// /sink hands its connection to the test and records Close codes; /echo echoes.
let private slowPeerRoutes (opened: TaskCompletionSource<RealtimeSocket>) (closes: ConcurrentQueue<int>) (app: WebApplication) =
    app.MapRealtime(
        "/sink",
        RealtimeHandlers<obj>(
            Open = (fun ws -> opened.TrySetResult(ws :> RealtimeSocket) |> ignore),
            Close = (fun _ code _ -> closes.Enqueue code)))
    |> ignore
    app.MapRealtime("/echo", echoHandlers ()) |> ignore

[<Tests>]
let slowPeerTests =
    testList "Defence: slow and stalled peers cost bounded memory and time" [
        testCaseTask "a client that never reads: BufferedAmount never exceeds MaxBufferedAmount while the server keeps sending, and another client's echoes keep flowing" (fun () -> task {
            let soft, hard = 16L * 1024L, 256L * 1024L
            let opened = TaskCompletionSource<RealtimeSocket>(TaskCreationOptions.RunContinuationsAsynchronously)
            let closes = ConcurrentQueue<int>()
            let! server =
                start
                    (fun options ->
                        options.BackpressureLimit <- soft
                        options.MaxBufferedAmount <- hard)
                    (slowPeerRoutes opened closes)
            use _ = server
            use! sink = connectSmallWindow server.Port "/sink"
            let! socket = opened.Task.WaitAsync(seconds 10.0)
            let! talker = connect (server.WsUrl + "/echo")
            use _ = talker
            let rounds = 300
            let talking =
                task {
                    for n in 1..rounds do
                        do! sendText talker $"message {n}"
                        let! echo = receiveText talker
                        if echo <> $"message {n}" then failtestf "round %d got %s back" n echo
                }
            let chunk = Array.create (16 * 1024) 0x5Auy
            let clock = Stopwatch.StartNew()
            let mutable sent, backpressure, dropped = 0, 0, 0
            let mutable highest = 0L
            let mutable slowest = TimeSpan.Zero
            // The server keeps sending until the talker is done and drops have been seen for a while.
            while clock.Elapsed < seconds 20.0 && (not talking.IsCompleted || dropped < 200) do
                let before = clock.Elapsed
                let result = socket.Send chunk
                let took = clock.Elapsed - before
                if took > slowest then slowest <- took
                match result.Status with
                | SendStatus.Sent -> sent <- sent + 1
                | SendStatus.Backpressure -> backpressure <- backpressure + 1
                | _ -> dropped <- dropped + 1
                let buffered = socket.BufferedAmount
                if buffered > highest then highest <- buffered
                if buffered > hard then failtestf "BufferedAmount %d passed MaxBufferedAmount %d" buffered hard
                if (sent + backpressure + dropped) % 64 = 0 then do! Task.Yield()
            do! talking.WaitAsync(seconds 10.0)
            printfn "slow peer: %d sent, %d backpressure, %d dropped; highest BufferedAmount %d of %d; slowest Send %O; %O" sent backpressure dropped highest hard slowest clock.Elapsed
            Expect.isGreaterThan dropped 0 "sends were dropped once the buffer was full"
            Expect.isLessThanOrEqual highest hard "BufferedAmount stayed within MaxBufferedAmount"
            Expect.isGreaterThan highest soft "it did fill past the backpressure limit"
            Expect.isLessThan slowest (seconds 1.0) "no Send waited for the slow client"
            Expect.isTrue socket.IsOpen "dropping does not close the slow client"
            Expect.isEmpty closes "no Close"
            Expect.isFalse sink.TransportClosed "the slow client is still connected"
        })

        // Sequenced: it measures the process's memory, which tests running beside it would change.
        testSequenced <| testCaseTask "a client that floods pings while never reading is held back by TCP: the pongs it will not read do not pile up in server memory" (fun () -> task {
            let opened = TaskCompletionSource<RealtimeSocket>(TaskCreationOptions.RunContinuationsAsynchronously)
            let closes = ConcurrentQueue<int>()
            let! server = start ignore (slowPeerRoutes opened closes)
            use _ = server
            use! raw = connectSmallWindow server.Port "/sink"
            let! socket = opened.Task.WaitAsync(seconds 10.0)
            let before = GC.GetTotalMemory true
            // The server also pushes data to the client from elsewhere (as a topic would), so the
            // connection's writer is busy with a write the client never takes.
            use stop = new CancellationTokenSource()
            let pushing =
                task {
                    let data = Array.zeroCreate<byte> 1024
                    while not stop.IsCancellationRequested do
                        socket.Send data |> ignore
                        do! Task.Delay 1
                }
            // Before the flood, the pushed data fills every buffer on the way, so that the writer
            // that gets stuck is the pusher's, not the receive loop.
            let chunk = Array.zeroCreate<byte> (16 * 1024)
            let filling = Stopwatch.StartNew()
            while socket.BufferedAmount < 1024L * 1024L && filling.Elapsed < seconds 10.0 do
                socket.Send chunk |> ignore
                do! Task.Delay 1
            Expect.isGreaterThanOrEqual socket.BufferedAmount (1024L * 1024L) "the writer is stuck behind the client that does not read"
            let ping = (Frame.encode { Frame.header Opcode.Ping 125L with Masked = true; MaskKey = 0x5A5A5A5Au } (ReadOnlyMemory(Array.zeroCreate 125))).ToArray()
            let batch = Array.concat (Array.create 2048 ping) // 256 KiB of pings
            let stream = raw.Tcp.GetStream()
            let limit = 128L * 1024L * 1024L
            let clock = Stopwatch.StartNew()
            let mutable written = 0L
            let mutable held = false
            let mutable highest = before
            while not held && written < limit && clock.Elapsed < seconds 15.0 do
                use cancel = new CancellationTokenSource(seconds 2.0)
                try
                    do! stream.WriteAsync(batch, 0, batch.Length, cancel.Token)
                    written <- written + int64 batch.Length
                with
                | :? OperationCanceledException
                | :? IOException -> held <- true
                highest <- max highest (GC.GetTotalMemory false)
            stop.Cancel()
            do! pushing
            let growth = highest - before
            printfn "ping flood: %d MiB of pings written in %O before the client was held back (%b); server memory grew by up to %d MiB" (written / 1048576L) clock.Elapsed held (growth / 1048576L)
            Expect.isTrue held $"TCP held the flooding client back (it wrote {written / 1048576L} MiB of pings)"
            Expect.isLessThan written (32L * 1024L * 1024L) "after a few MiB (what the kernel buffers and a bounded backlog hold)"
            Expect.isLessThan growth (32L * 1024L * 1024L) "server memory did not grow with the pongs the client will not read"
        })

        testCaseTask "a client that neither reads nor sends is dropped after the idle and close timeouts, though its close frame cannot be delivered" (fun () -> task {
            let opened = TaskCompletionSource<RealtimeSocket>(TaskCreationOptions.RunContinuationsAsynchronously)
            let closes = ConcurrentQueue<int>()
            let! server =
                start
                    (fun options ->
                        options.IdleTimeout <- TimeSpan.FromMilliseconds 500.0
                        options.CloseTimeout <- seconds 1.0)
                    (slowPeerRoutes opened closes)
            use _ = server
            use! raw = connectSmallWindow server.Port "/sink"
            let! socket = opened.Task.WaitAsync(seconds 10.0)
            // Fill every buffer on the way, up to MaxBufferedAmount (quickly: the client's silence
            // already counts), so that the ping and the close frame cannot get out.
            let chunk = Array.zeroCreate<byte> (64 * 1024)
            let filling = Stopwatch.StartNew()
            let mutable full = false
            while not full && filling.Elapsed < seconds 5.0 do
                full <- socket.Send(chunk).Status = SendStatus.Dropped && socket.BufferedAmount > 0L
                if not full then do! Task.Yield()
            Expect.isTrue full $"sends are dropped with the buffer full, before the idle timeout ({filling.Elapsed}): the writer is stuck behind the client"
            let clock = Stopwatch.StartNew()
            do! expectEventually (seconds 8.0) "Close ran with 1001" (fun () -> closes.ToArray() = [| 1001 |])
            do! expectEventually (seconds 2.0) "the connection is gone" (fun () -> server.Realtime.ConnectionCount = 0)
            Expect.isLessThan clock.Elapsed (seconds 6.0) $"within idle + close timeouts and a margin ({clock.Elapsed})"
            let! ended = raw.WaitForTransportClose(seconds 10.0)
            Expect.isTrue ended "the TCP connection ended"
        })

        testCaseTask "a client that stalls inside a frame header is closed by the idle timeout (1001) and its TCP connection ends" (fun () -> task {
            let opened = TaskCompletionSource<RealtimeSocket>(TaskCreationOptions.RunContinuationsAsynchronously)
            let closes = ConcurrentQueue<int>()
            let! server =
                start
                    (fun options ->
                        options.IdleTimeout <- TimeSpan.FromMilliseconds 400.0
                        options.CloseTimeout <- seconds 1.0)
                    (slowPeerRoutes opened closes)
            use _ = server
            use! raw = RawClient.connect server.Port "/sink"
            // 5 of the 8 header bytes of a masked binary frame with a 16-bit length.
            do! raw.SendRaw [| 0x82uy; 0xFEuy; 0x01uy; 0x00uy; 0x11uy |]
            let clock = Stopwatch.StartNew()
            let! code = raw.ReceiveClose(seconds 10.0)
            Expect.equal code (Some 1001us) "a close frame with 1001 (pings before it are skipped)"
            let! ended = raw.WaitForTransportClose(seconds 5.0)
            Expect.isTrue ended "the TCP connection ended"
            Expect.isLessThan clock.Elapsed (seconds 5.0) $"within a bounded time ({clock.Elapsed})"
            do! expectEventually (seconds 5.0) "Close ran with 1001" (fun () -> closes.ToArray() = [| 1001 |])
            do! expectEventually (seconds 5.0) "the connection is gone" (fun () -> server.Realtime.ConnectionCount = 0)
        })

        testCaseTask "a client that stalls inside a payload is closed by the idle timeout (1001) and its TCP connection ends" (fun () -> task {
            let opened = TaskCompletionSource<RealtimeSocket>(TaskCreationOptions.RunContinuationsAsynchronously)
            let closes = ConcurrentQueue<int>()
            let! server =
                start
                    (fun options ->
                        options.IdleTimeout <- TimeSpan.FromMilliseconds 400.0
                        options.CloseTimeout <- seconds 1.0)
                    (slowPeerRoutes opened closes)
            use _ = server
            use! raw = RawClient.connect server.Port "/sink"
            // A whole header announcing 1000 bytes, then only 100 of them.
            let header = Frame.encodeHeader { Frame.header Opcode.Binary 1000L with Masked = true; MaskKey = 0x0A0B0C0Du }
            do! raw.SendRaw(Array.append header (Array.zeroCreate 100))
            let clock = Stopwatch.StartNew()
            let! code = raw.ReceiveClose(seconds 10.0)
            Expect.equal code (Some 1001us) "a close frame with 1001"
            let! ended = raw.WaitForTransportClose(seconds 5.0)
            Expect.isTrue ended "the TCP connection ended"
            Expect.isLessThan clock.Elapsed (seconds 5.0) $"within a bounded time ({clock.Elapsed})"
            do! expectEventually (seconds 5.0) "Close ran with 1001" (fun () -> closes.ToArray() = [| 1001 |])
            do! expectEventually (seconds 5.0) "the connection is gone" (fun () -> server.Realtime.ConnectionCount = 0)
        })

        testCaseTask "a frame header announcing 2^63 bytes (and other huge lengths) is closed with 1009 at once, before any payload" (fun () -> task {
            let opened = TaskCompletionSource<RealtimeSocket>(TaskCreationOptions.RunContinuationsAsynchronously)
            let closes = ConcurrentQueue<int>()
            let! server = start ignore (slowPeerRoutes opened closes)
            use _ = server
            let mask = [| 0x11uy; 0x22uy; 0x33uy; 0x44uy |]
            let lengths =
                [ "2^63", [| 0x80uy; 0uy; 0uy; 0uy; 0uy; 0uy; 0uy; 0uy |]
                  "2^64 - 1", Array.create 8 0xFFuy
                  "2^63 - 1", [| 0x7Fuy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy |]
                  "2^32", [| 0uy; 0uy; 0uy; 1uy; 0uy; 0uy; 0uy; 0uy |]
                  "16 MiB + 1", [| 0uy; 0uy; 0uy; 0uy; 1uy; 0uy; 0uy; 1uy |] ]
            for name, length in lengths do
                use! raw = RawClient.connect server.Port "/sink"
                let clock = Stopwatch.StartNew()
                do! raw.SendRaw(Array.concat [ [| 0x82uy; 0xFFuy |]; length; mask ])
                let! code = raw.ReceiveClose(seconds 10.0)
                Expect.equal code (Some 1009us) $"{name}: 1009 message too big"
                Expect.isLessThan clock.Elapsed (seconds 2.0) $"{name}: at once, not after a timeout"
                let! ended = raw.WaitForTransportClose(seconds 10.0)
                Expect.isTrue ended $"{name}: the TCP connection ended"
            do! expectEventually (seconds 5.0) "every Close ran with 1009" (fun () -> closes.ToArray() = Array.create lengths.Length 1009)
            do! expectEventually (seconds 5.0) "the connections are gone" (fun () -> server.Realtime.ConnectionCount = 0)
        })
    ]

// ---------------------------------------------------------------------------------------------
// 5. Fuzz
// ---------------------------------------------------------------------------------------------

/// The fuzz seed: REALTIME_FUZZ_SEED when set (to reproduce a failure), else a fixed one.
let private fuzzSeed =
    match Environment.GetEnvironmentVariable "REALTIME_FUZZ_SEED" with
    | null
    | "" -> 6455
    | text -> int text

let private randomBytes (rng: Random) (count: int) =
    let bytes = Array.zeroCreate<byte> count
    rng.NextBytes bytes
    bytes

/// A masked frame: the first byte as given, the minimal length encoding, a random key, the
/// payload masked. Also returns the header's length.
let private fuzzFrame (rng: Random) (first: byte) (payload: byte[]) : byte[] * int =
    use out = new MemoryStream()
    out.WriteByte first
    let length = payload.Length
    if length <= 125 then out.WriteByte(0x80uy ||| byte length)
    elif length <= 0xFFFF then
        out.WriteByte 0xFEuy
        out.WriteByte(byte (length >>> 8))
        out.WriteByte(byte length)
    else
        out.WriteByte 0xFFuy
        for shift in 56 .. -8 .. 0 do out.WriteByte(byte (int64 length >>> shift))
    let key = randomBytes rng 4
    out.Write(key, 0, 4)
    let headerLength = int out.Length
    for i in 0 .. length - 1 do out.WriteByte(payload[i] ^^^ key[i % 4])
    out.ToArray(), headerLength

/// Text mixing one- to four-byte UTF-8 sequences.
let private randomText (rng: Random) (characters: int) =
    let pieces = [| "a"; "Z"; " "; "é"; "ß"; "€"; "中"; "𤭢"; "😀"; "κόσμε" |]
    String.Join("", Array.init characters (fun _ -> pieces[rng.Next pieces.Length]))

/// permessage-deflate's encoding of a message: raw DEFLATE, sync-flushed, without the 00 00 FF FF tail.
let private deflate (data: byte[]) : byte[] =
    // RFC 7692 §7.2.3.6: an empty message is a single 0x00.
    if data.Length = 0 then
        [| 0x00uy |]
    else
        use out = new MemoryStream()
        use compressor = new DeflateStream(out, CompressionLevel.Fastest, true)
        compressor.Write(data, 0, data.Length)
        compressor.Flush()
        let bytes = out.ToArray()
        bytes[.. bytes.Length - 5]

/// A random valid data or control frame (text is valid UTF-8); returns the frame and its header length.
let private validFrame (rng: Random) : byte[] * int =
    match rng.Next 5 with
    | 0
    | 1 -> fuzzFrame rng 0x81uy (Encoding.UTF8.GetBytes(randomText rng (rng.Next 60)))
    | 2 -> fuzzFrame rng 0x82uy (randomBytes rng (rng.Next 400))
    | 3 -> fuzzFrame rng 0x89uy (randomBytes rng (rng.Next 126))
    | _ -> fuzzFrame rng 0x8Auy (randomBytes rng (rng.Next 126))

let private interestingCloseCodes =
    [| 0; 1; 999; 1000; 1001; 1002; 1003; 1004; 1005; 1006; 1007; 1008; 1009; 1010; 1011; 1012; 1013; 1014; 1015; 1016
       1999; 2000; 2999; 3000; 3999; 4000; 4999; 5000; 65535 |]

/// What one fuzz connection sends: byte chunks written in turn (with a short pause between some)
/// and how many frames they hold (malformed ones included).
let private fuzzInput (rng: Random) (strategy: int) (compressed: bool) : byte[] list * int =
    match strategy with
    | 0 ->
        // Random bytes after a valid handshake, sometimes after a valid frame.
        let garbage = randomBytes rng (1 + rng.Next 4096)
        if rng.Next 2 = 0 then [ garbage ], 0 else [ fst (validFrame rng); garbage ], 1
    | 1 ->
        // Valid frames with bit flips in their header bytes.
        let frames = List.init (1 + rng.Next 6) (fun _ -> validFrame rng)
        let mutated =
            frames
            |> List.map (fun (bytes, headerLength) ->
                if rng.Next 2 = 0 then
                    for _ in 1 .. 1 + rng.Next 2 do
                        let index = rng.Next headerLength
                        bytes[index] <- bytes[index] ^^^ (1uy <<< rng.Next 8)
                bytes)
        [ Array.concat mutated ], frames.Length
    | 2 ->
        // Random announced lengths in every encoding, with fewer or more bytes than announced.
        let first = [| 0x81uy; 0x82uy; 0x01uy; 0x02uy; 0x00uy; 0x80uy; 0x88uy; 0x89uy |][rng.Next 8]
        use out = new MemoryStream()
        out.WriteByte first
        match rng.Next 3 with
        | 0 -> out.WriteByte(0x80uy ||| byte (rng.Next 126))
        | 1 ->
            out.WriteByte 0xFEuy
            out.Write(randomBytes rng 2, 0, 2)
        | _ ->
            out.WriteByte 0xFFuy
            let length = randomBytes rng 8
            // Mostly plausible lengths (leading zeros), sometimes anything up to 2^64 - 1.
            if rng.Next 3 > 0 then for i in 0 .. rng.Next 8 do length[i] <- 0uy
            out.Write(length, 0, 8)
        out.Write(randomBytes rng 4, 0, 4)
        let payload = randomBytes rng (rng.Next 3000)
        [ out.ToArray(); payload ], 1
    | 3 ->
        // Valid frames cut off at a random point (the connection is then dropped).
        let frames = List.init (1 + rng.Next 4) (fun _ -> fst (validFrame rng))
        let whole = Array.concat frames
        [ whole[.. rng.Next whole.Length - 1] ], frames.Length
    | 4 ->
        // Random control frames: every control and reserved opcode, any length up to 130,
        // FIN clear sometimes, some inside a fragmented message.
        let opcodes = [| 0x8uy; 0x9uy; 0xAuy; 0xBuy; 0xCuy; 0xDuy; 0xEuy; 0xFuy |]
        let controls =
            List.init (1 + rng.Next 8) (fun _ ->
                let fin = if rng.Next 5 = 0 then 0uy else 0x80uy
                fst (fuzzFrame rng (fin ||| opcodes[rng.Next opcodes.Length]) (randomBytes rng (rng.Next 131))))
        if rng.Next 2 = 0 then [ Array.concat controls ], controls.Length
        else
            let start = fst (fuzzFrame rng 0x01uy (Encoding.UTF8.GetBytes "start of "))
            let finish = fst (fuzzFrame rng 0x80uy (Encoding.UTF8.GetBytes "a message"))
            [ Array.concat [ yield start; yield! controls; yield finish ] ], controls.Length + 2
    | 5 ->
        // Valid UTF-8 text with random byte corruption, whole or in fragments.
        let text = Encoding.UTF8.GetBytes(randomText rng (1 + rng.Next 200))
        for _ in 1 .. 1 + rng.Next 3 do
            text[rng.Next text.Length] <- byte (rng.Next 256)
        let pieces = 1 + rng.Next 4
        let size = max 1 ((text.Length + pieces - 1) / pieces)
        let chunks = text |> Array.chunkBySize size
        let frames =
            chunks
            |> Array.mapi (fun index chunk ->
                let opcode = if index = 0 then 0x01uy else 0x00uy
                let fin = if index = chunks.Length - 1 then 0x80uy else 0uy
                fst (fuzzFrame rng (fin ||| opcode) chunk))
        [ Array.concat frames ], frames.Length
    | 6 ->
        // Random close codes and reasons (some not UTF-8), or a one-byte close payload.
        let before = List.init (rng.Next 3) (fun _ -> fst (validFrame rng))
        let payload =
            if rng.Next 8 = 0 then [| byte (rng.Next 256) |]
            else
                let code = if rng.Next 2 = 0 then interestingCloseCodes[rng.Next interestingCloseCodes.Length] else rng.Next 65536
                let reason = if rng.Next 2 = 0 then Encoding.UTF8.GetBytes(randomText rng (rng.Next 30)) else randomBytes rng (rng.Next 60)
                Array.append [| byte (code >>> 8); byte code |] reason[.. min (reason.Length - 1) 122]
        [ Array.concat [ yield! before; yield fst (fuzzFrame rng 0x88uy payload) ] ], before.Length + 1
    | 7 when compressed ->
        // permessage-deflate: valid compressed messages, corrupted ones, random bytes, a bomb,
        // and RSV1 where it does not belong.
        let frames =
            List.init (1 + rng.Next 4) (fun _ ->
                match rng.Next 6 with
                | 0 -> fst (fuzzFrame rng 0xC1uy (deflate (Encoding.UTF8.GetBytes(randomText rng (rng.Next 300)))))
                | 1 ->
                    let body = deflate (randomBytes rng (rng.Next 500))
                    for _ in 1 .. 1 + rng.Next 3 do
                        let index = rng.Next body.Length
                        body[index] <- body[index] ^^^ (1uy <<< rng.Next 8)
                    fst (fuzzFrame rng 0xC2uy body)
                | 2 -> fst (fuzzFrame rng ([| 0xC1uy; 0xC2uy |][rng.Next 2]) (randomBytes rng (rng.Next 300)))
                | 3 -> fst (fuzzFrame rng 0xC2uy (deflate (Array.zeroCreate (1024 * 1024))))
                | 4 -> fst (fuzzFrame rng ([| 0xC0uy; 0xC9uy; 0xC8uy |][rng.Next 3]) (randomBytes rng (rng.Next 20)))
                | _ ->
                    // A compressed text message that inflates to bytes that are not UTF-8.
                    fst (fuzzFrame rng 0xC1uy (deflate [| 0x61uy; 0xC3uy; 0x28uy; 0x62uy |])))
        [ Array.concat frames ], frames.Length
    | 9 ->
        // Valid messages the client never reads the echoes of, then (always) a dropped connection:
        // the server's writes fail halfway.
        let frames = List.init (20 + rng.Next 40) (fun _ -> fst (fuzzFrame rng 0x82uy (randomBytes rng (4096 + rng.Next 8192))))
        frames, frames.Length
    | 10 when compressed ->
        // A compressed message in fragments (RSV1 on the first only), sometimes corrupted or with
        // RSV1 on a continuation, with a ping between fragments.
        let body = deflate (Encoding.UTF8.GetBytes(randomText rng (50 + rng.Next 500)))
        if rng.Next 2 = 0 then
            for _ in 1 .. 1 + rng.Next 2 do
                let index = rng.Next body.Length
                body[index] <- body[index] ^^^ (1uy <<< rng.Next 8)
        let pieces = body |> Array.chunkBySize (max 1 (body.Length / (1 + rng.Next 4)))
        let misplaced = rng.Next 4 = 0
        let frames =
            pieces
            |> Array.mapi (fun index piece ->
                let fin = if index = pieces.Length - 1 then 0x80uy else 0uy
                let first = if index = 0 then 0x41uy elif misplaced then 0x40uy else 0x00uy
                let frame = fst (fuzzFrame rng (fin ||| first) piece)
                if index = 0 && rng.Next 2 = 0 then Array.append frame (fst (fuzzFrame rng 0x89uy (randomBytes rng 8))) else frame)
        [ Array.concat frames ], frames.Length
    | _ ->
        // Fragmentation chaos: data and continuation frames with random FIN bits.
        let frames =
            List.init (1 + rng.Next 8) (fun _ ->
                let opcode = [| 0x0uy; 0x1uy; 0x2uy |][rng.Next 3]
                let fin = if rng.Next 2 = 0 then 0x80uy else 0uy
                let payload = if opcode = 0x2uy then randomBytes rng (rng.Next 200) else Encoding.UTF8.GetBytes(randomText rng (rng.Next 40))
                fst (fuzzFrame rng (fin ||| opcode) payload))
        frames, frames.Length

/// Reads and discards what the server sends, until it closes (true) or the time is up (false).
let private drain (stream: NetworkStream) (timeout: TimeSpan) : Task<bool> =
    task {
        use cancel = new CancellationTokenSource(timeout)
        let buffer = Array.zeroCreate<byte> 16384
        let mutable result = None
        while result.IsNone do
            try
                let! read = stream.ReadAsync(buffer, 0, buffer.Length, cancel.Token)
                if read = 0 then result <- Some true
            with
            | :? OperationCanceledException -> result <- Some false
            | :? IOException -> result <- Some true
        return result.Value
    }

type private FuzzCounters =
    { mutable Connections: int
      mutable Frames: int
      mutable Bytes: int64
      mutable ClosedByServer: int
      mutable Compressed: int }

/// One fuzz connection, reproducible from `seed` and `index` alone.
let private fuzzOne (port: int) (seed: int) (index: int) (counters: FuzzCounters) : Task =
    task {
        let rng = Random(seed * 7919 + index)
        let strategy = rng.Next 11
        let offerDeflate = strategy = 7 || strategy = 10 || rng.Next 4 = 0
        // Half the connections go to the endpoint that keeps compression contexts per connection.
        let path = if rng.Next 2 = 0 then "/echo" else "/echo-context"
        use tcp = new TcpClient()
        do! tcp.ConnectAsync(IPAddress.Loopback, port)
        tcp.NoDelay <- true
        let stream = tcp.GetStream()
        let extensions = if offerDeflate then "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" else ""
        let request = Encoding.ASCII.GetBytes(RawClient.upgradeRequest path extensions)
        do! stream.WriteAsync(request, 0, request.Length)
        let! head = RawClient.readResponseHead stream
        if statusOf head <> 101 then failwithf "fuzz connection %d (seed %d): expected 101, got: %s" index seed head
        let compressed = head.Contains "permessage-deflate"
        let chunks, frames = fuzzInput rng strategy compressed
        // A quarter of the connections follow with a second strategy's input.
        let chunks, frames =
            if strategy <> 3 && strategy <> 9 && rng.Next 4 = 0 then
                let more, moreFrames = fuzzInput rng (rng.Next 11) compressed
                chunks @ more, frames + moreFrames
            else chunks, frames
        Interlocked.Increment(&counters.Connections) |> ignore
        if compressed then Interlocked.Increment(&counters.Compressed) |> ignore
        Interlocked.Add(&counters.Frames, frames) |> ignore
        let mutable writable = true
        for chunk in chunks do
            if writable then
                try
                    do! stream.WriteAsync(chunk, 0, chunk.Length)
                    Interlocked.Add(&counters.Bytes, int64 chunk.Length) |> ignore
                    if rng.Next 4 = 0 then do! Task.Delay(rng.Next 20)
                with
                | :? IOException
                | :? ObjectDisposedException -> writable <- false
        // Then: hang up at once, read for a moment, or close properly and read to the end.
        match (if strategy = 3 || strategy = 9 then 0 else rng.Next 3) with
        | 0 -> ()
        | 1 ->
            let! closed = drain stream (TimeSpan.FromMilliseconds(float (50 + rng.Next 250)))
            if closed then Interlocked.Increment(&counters.ClosedByServer) |> ignore
        | _ ->
            if writable then
                try
                    let close, _ = fuzzFrame rng 0x88uy (Frame.closePayload 1000us "fuzz done")
                    do! stream.WriteAsync(close, 0, close.Length)
                with
                | :? IOException
                | :? ObjectDisposedException -> ()
            let! closed = drain stream (seconds 2.0)
            if closed then Interlocked.Increment(&counters.ClosedByServer) |> ignore
    }

/// The fuzz run against a server whose listener takes connections through the route, or directly
/// (UseRealtimeDirectConnections: the connection middleware parses the heads and the sockets read the pipes).
let private fuzzCase (direct: bool) =
        testCaseTask ((if direct then "on direct connections: " else "through the route: ") + "300 connections of random and mutated frames (12 at a time, at most 8 s) beside 4 echo clients: every echo arrives in order, no error is logged, connections and memory return to their baseline") (fun () -> task {
            let seed = fuzzSeed
            printfn "fuzz seed %d (set REALTIME_FUZZ_SEED to reproduce another run)" seed
            let mutable logs = Unchecked.defaultof<ErrorLogs>
            let! server =
                startIn direct
                    (fun options ->
                        options.MaxPayloadLength <- 64 * 1024
                        options.PerMessageDeflate <- true
                        options.IdleTimeout <- seconds 3.0
                        options.CloseTimeout <- seconds 1.0)
                    (fun app ->
                        logs <- captureErrors app
                        app.MapRealtime("/echo", echoHandlers ()) |> ignore
                        let contexts (options: RealtimeOptions) =
                            options.ServerNoContextTakeover <- false
                            options.ClientNoContextTakeover <- false
                        app.MapRealtime("/echo-context", echoHandlers (), Action<RealtimeOptions> contexts) |> ignore)
            use _ = server
            // Warm up, then take the baseline.
            let! warm = connect (server.WsUrl + "/echo")
            do! sendText warm "warm up"
            let! _ = receiveText warm
            do! warm.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            warm.Dispose()
            do! expectEventually (seconds 5.0) "the warm-up connection ended" (fun () -> server.Realtime.ConnectionCount = 0)
            let before = GC.GetTotalMemory true

            use fuzzing = new CancellationTokenSource()
            let echoRounds = Array.zeroCreate<int> 4
            let wellBehaved =
                [ for client in 0..3 ->
                    task {
                        // Clients 2 and 3 negotiate permessage-deflate, on either endpoint.
                        use ws = new ClientWebSocket()
                        if client >= 2 then ws.Options.DangerousDeflateOptions <- WebSocketDeflateOptions()
                        use connecting = new CancellationTokenSource(seconds 10.0)
                        do! ws.ConnectAsync(Uri(server.WsUrl + (if client = 3 then "/echo-context" else "/echo")), connecting.Token)
                        let mutable n = 0
                        while not fuzzing.IsCancellationRequested do
                            n <- n + 1
                            let text = $"client {client} message {n}"
                            do! sendText ws text
                            let! echo = receiveText ws
                            if echo <> text then failwithf "seed %d: client %d expected '%s', got '%s'" seed client text echo
                            echoRounds[client] <- n
                        use cancel = new CancellationTokenSource(seconds 10.0)
                        do! ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cancel.Token)
                    }
                    :> Task ]

            let total, concurrency, budget = 300, 12, seconds 8.0
            let counters = { Connections = 0; Frames = 0; Bytes = 0L; ClosedByServer = 0; Compressed = 0 }
            let failures = ConcurrentQueue<string>()
            let next = ref -1
            let clock = Stopwatch.StartNew()
            let worker () =
                task {
                    let mutable index = Interlocked.Increment(&next.contents)
                    while index < total && clock.Elapsed < budget do
                        try
                            do! (fuzzOne server.Port seed index counters).WaitAsync(seconds 10.0)
                        with error -> failures.Enqueue $"connection {index}: {error.Message}"
                        index <- Interlocked.Increment(&next.contents)
                }
                :> Task
            do! Task.WhenAll [ for _ in 1..concurrency -> worker () ]
            let fuzzTime = clock.Elapsed
            fuzzing.Cancel()
            do! (Task.WhenAll wellBehaved).WaitAsync(seconds 15.0)
            printfn "fuzz (seed %d): %d connections (%d with permessage-deflate), %d frames, %d bytes in %O; %d ended by the server; well-behaved echo rounds %A"
                seed counters.Connections counters.Compressed counters.Frames counters.Bytes fuzzTime counters.ClosedByServer echoRounds
            let failed = failures.ToArray()
            Expect.isEmpty failed $"""seed {seed}: every fuzz connection was upgraded and ran; {failed.Length} did not: {String.Join(Environment.NewLine, Array.truncate 10 failed)}"""
            Expect.isGreaterThanOrEqual counters.Connections 100 $"seed {seed}: enough fuzz connections ran"
            for client in 0..3 do
                Expect.isGreaterThan echoRounds[client] 10 $"seed {seed}: well-behaved client {client} kept exchanging messages"

            let! fresh = connect (server.WsUrl + "/echo")
            do! sendText fresh "after the fuzz"
            let! echo = receiveText fresh
            Expect.equal echo "after the fuzz" $"seed {seed}: the server still answers a new echo client"
            do! fresh.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            fresh.Dispose()

            let drained = Stopwatch.StartNew()
            do! expectEventually (seconds 15.0) $"seed {seed}: ConnectionCount returns to 0 (still {server.Realtime.ConnectionCount})" (fun () -> server.Realtime.ConnectionCount = 0)
            let drainTime = drained.Elapsed
            let after = GC.GetTotalMemory true
            printfn "fuzz (seed %d): connections back to 0 in %O; managed memory %.1f MB before, %.1f MB after" seed drainTime (float before / 1048576.0) (float after / 1048576.0)
            let errors = logs.Entries
            Expect.isEmpty errors $"""seed {seed}: nothing was logged at Error (no exception reached Kestrel); {errors.Length} entries: {String.Join(Environment.NewLine, Array.truncate 10 errors)}"""
            Expect.isLessThan (after - before) (32L * 1024L * 1024L) $"seed {seed}: memory returned to its baseline (+32 MB at most)"
        })

[<Tests>]
let fuzzTests =
    testSequenced
    <| testList "Defence: fuzzed frames from many connections never hurt the server or its other clients" [
        fuzzCase false
        fuzzCase true
    ]

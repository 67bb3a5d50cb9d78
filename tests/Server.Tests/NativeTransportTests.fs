/// The native Linux transport (UseRealtimeNativeTransport): Realtime upgrades stay on epoll event
/// loops as file descriptors, handlers run on the loop threads, and everything else goes on to
/// Kestrel unread. Each behaviour is checked on a connection the native transport holds (its request's
/// connection id and the handler's thread say so), and the pipeline's outcomes are compared with
/// Kestrel's ordinary path for the same requests.
module Realtime.Server.Tests.NativeTransportTests

open System
open System.Collections.Concurrent
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
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.ClientWebSockets

/// Starts a server on the native transport with two event loops.
let private startNative (configureOptions: RealtimeOptions -> unit) (mapRoutes: WebApplication -> unit) =
    startOn OwnTransport
        (fun builder -> builder.WebHost.UseRealtimeNativeTransport(fun native -> native.EventLoops <- 2) |> ignore)
        configureOptions
        mapRoutes

let private isLoopThread () =
    let name = Thread.CurrentThread.Name
    not (isNull name) && name.StartsWith "Realtime epoll"

/// An echo endpoint that records the connection id of each upgrade request and the thread of each Message handler.
type private Recorder() =
    member val ConnectionIds = ConcurrentQueue<string>()
    member val HandlerThreads = ConcurrentQueue<string>()

    member recorder.Echo() =
        RealtimeHandlers<obj>(
            Attach = (fun context ->
                recorder.ConnectionIds.Enqueue context.Connection.Id
                Attachment<obj>.Accept(null)),
            Message = (fun ws message ->
                recorder.HandlerThreads.Enqueue(if isLoopThread () then Thread.CurrentThread.Name else "elsewhere")
                ws.Send(message) |> ignore))

    member recorder.AllNative() = recorder.ConnectionIds.ToArray() |> Array.forall (fun id -> id.StartsWith "native-")

let private sendBinary (client: ClientWebSocket) (bytes: byte[]) =
    client.SendAsync(ArraySegment bytes, WebSocketMessageType.Binary, true, CancellationToken.None)

/// The status line of the response to a raw request (101 heads are answered without a body).
let private statusOf (port: int) (request: string) : Task<string> =
    task {
        let! tcp, stream, head = RawClient.handshakeRaw port request
        use _ = tcp
        use _ = stream
        return head.Split("\r\n")[0]
    }

/// Starts a native-transport server whose only listener is the TLS one `listen` makes on Kestrel, with
/// `recorder`'s echo at /echo.
let private startTlsListener (recorder: Recorder) (listen: Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions -> unit) =
    startOn OwnTransport
        (fun builder ->
            builder.WebHost.UseRealtimeNativeTransport() |> ignore
            builder.WebHost.UseUrls() |> ignore
            builder.WebHost.ConfigureKestrel(listen) |> ignore)
        ignore
        (fun app -> app.MapRealtime("/echo", recorder.Echo()) |> ignore)

/// A wss:// client trusting `certificate` connects to `url` and gets its message echoed.
let private expectTlsEcho (certificate: Security.Cryptography.X509Certificates.X509Certificate2) (url: string) =
    task {
        use secure = TlsTests.clientTrusting certificate
        use cancel = new CancellationTokenSource(seconds 10.0)
        do! secure.ConnectAsync(Uri url, cancel.Token)
        do! sendText secure "over tls"
        let! answer = receiveText secure
        Expect.equal answer "over tls" $"wss:// echoes at {url}"
    }

/// A plain upgrade on the TLS port gets no 101, and no connection was taken natively.
let private expectAllOnKestrel (recorder: Recorder) (port: int) =
    task {
        let! tcp, stream, head = RawClient.handshakeRaw port (RawClient.upgradeRequest "/echo" "")
        use _ = tcp
        use _ = stream
        Expect.isFalse (head.StartsWith "HTTP/1.1 101") $"no plain upgrade on the TLS port: {head}"
        Expect.isFalse (recorder.ConnectionIds.ToArray() |> Array.exists (fun id -> id.StartsWith "native-")) "no connection was taken natively"
    }

[<Tests>]
let nativeTransportTests =
    testList "Native transport" [
        testCaseTask "text and binary messages come back unchanged, from a handler on an event-loop thread" (fun () -> task {
            let recorder = Recorder()
            use! server = startNative ignore (fun app -> app.MapRealtime("/echo", recorder.Echo()) |> ignore)
            use! client = connect (server.WsUrl + "/echo")
            do! sendText client "hello, loop"
            let! text = receiveText client
            let binary = Array.init 300 byte
            do! sendBinary client binary
            let! kind, bytes = receive client
            Expect.equal text "hello, loop" "the text came back"
            Expect.equal kind WebSocketMessageType.Binary "binary stays binary"
            Expect.equal bytes binary "the bytes came back"
            Expect.isTrue (recorder.AllNative()) $"the connection was accepted natively: {List.ofSeq recorder.ConnectionIds}"
            Expect.all (recorder.HandlerThreads.ToArray()) (fun name -> name.StartsWith "Realtime epoll") "every Message handler ran on a loop thread"
        })

        testCaseTask "a fragmented message and a 3 MiB message are each delivered whole" (fun () -> task {
            let recorder = Recorder()
            let configure (options: RealtimeOptions) =
                options.MaxPayloadLength <- 8 * 1024 * 1024
                options.MaxBufferedAmount <- 32L * 1024L * 1024L
            use! server = startNative configure (fun app -> app.MapRealtime("/echo", recorder.Echo()) |> ignore)
            use! raw = RawClient.connect server.Port "/echo"
            do! raw.SendFrame(Opcode.Text, Encoding.UTF8.GetBytes "frag", fin = false)
            do! raw.SendFrame(Opcode.Continuation, Encoding.UTF8.GetBytes "men", fin = false)
            do! raw.SendFrame(Opcode.Continuation, Encoding.UTF8.GetBytes "ted", fin = true)
            let! kind, payload = raw.ReceiveMessage()
            Expect.equal (kind, Encoding.UTF8.GetString payload) (Opcode.Text, "fragmented") "the fragments were joined"
            use! client = connect (server.WsUrl + "/echo")
            let large = Array.init (3 * 1024 * 1024) (fun i -> byte (i * 7 % 251))
            let sending = sendBinary client large
            let! _, echoed = receive client
            do! sending
            Expect.isTrue (echoed = large) "the large message came back byte for byte"
            Expect.isTrue (recorder.AllNative()) "both connections were native"
        })

        testCaseTask "permessage-deflate: the client's compressed messages reach the handler inflated and come back readable" (fun () -> task {
            let recorder = Recorder()
            let compressed = ConcurrentQueue<bool>()
            let handlers =
                RealtimeHandlers<obj>(
                    Attach = (fun context ->
                        recorder.ConnectionIds.Enqueue context.Connection.Id
                        Attachment<obj>.Accept(null)),
                    Message = fun ws message ->
                        compressed.Enqueue message.Compressed
                        ws.Send(message) |> ignore)
            use! server = startNative (fun options -> options.PerMessageDeflate <- true) (fun app -> app.MapRealtime("/echo", handlers) |> ignore)
            use client = new ClientWebSocket()
            client.Options.DangerousDeflateOptions <- WebSocketDeflateOptions()
            use cancel = new CancellationTokenSource(seconds 10.0)
            do! client.ConnectAsync(Uri(server.WsUrl + "/echo"), cancel.Token)
            let text = String.replicate 200 "compress me "
            for _ in 1..3 do
                do! sendText client text
                let! back = receiveText client
                Expect.equal back text "the text came back"
            Expect.equal (compressed.ToArray()) [| true; true; true |] "the client's messages arrived compressed"
            Expect.isTrue (recorder.AllNative()) "the connection was native"
        })

        testCaseTask "forty connections are spread over both event loops and each gets its own answers" (fun () -> task {
            let recorder = Recorder()
            use! server = startNative ignore (fun app -> app.MapRealtime("/echo", recorder.Echo()) |> ignore)
            let! clients = Task.WhenAll [ for _ in 1..40 -> connect (server.WsUrl + "/echo") ]
            let! answers =
                Task.WhenAll [
                    for i, client in Array.indexed clients ->
                        task {
                            do! sendText client $"n{i}"
                            return! receiveText client
                        } ]
            Expect.equal answers [| for i in 0..39 -> $"n{i}" |] "each connection got its own message back"
            let loops = recorder.HandlerThreads.ToArray() |> Array.distinct |> Array.sort
            Expect.equal loops [| "Realtime epoll 0"; "Realtime epoll 1" |] "both loops ran handlers"
            for client in clients do client.Dispose()
        })

        testCaseTask "closing handshakes both ways: the client's 1000 and the server's 4001 reach the other side" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let handlers = RealtimeHandlers<obj>(Open = (fun ws -> ws.Send($"id:{ws.Id}") |> ignore), Close = (fun _ code _ -> closes.Enqueue code))
            use! server = startNative ignore (fun app -> app.MapRealtime("/live", handlers) |> ignore)
            let! first, _ = connectWithId (server.WsUrl + "/live")
            do! closeClient first 1000 "done"
            Expect.equal first.CloseStatus (Nullable WebSocketCloseStatus.NormalClosure) "the server answered the client's close"
            let! second, id = connectWithId (server.WsUrl + "/live")
            (socketOf server id).Close(4001, "bye")
            let! code, reason = receiveClose second
            Expect.equal (code, reason) (4001, "bye") "the client got the server's close"
            do! second.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            do! expectEventually (seconds 10.0) "both Close handlers ran" (fun () -> closes.Count = 2)
            Expect.equal (closes.ToArray() |> Array.sort) [| 1000; 4001 |] "Close saw each code"
            Expect.equal server.Realtime.ConnectionCount 0 "no connection left"
        })

        testCaseTask "a peer that vanishes (reset) ends its connection with 1006" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            use! server = startNative ignore (fun app -> app.MapRealtime("/live", RealtimeHandlers<obj>(Close = (fun _ code _ -> closes.Enqueue code))) |> ignore)
            let raw = RawClient.connect server.Port "/live" |> fun t -> t.Result
            do! expectEventually (seconds 10.0) "registered" (fun () -> server.Realtime.ConnectionCount = 1)
            raw.Tcp.Client.LingerState <- LingerOption(true, 0)
            raw.Tcp.Client.Close()
            do! expectEventually (seconds 10.0) "the connection ended" (fun () -> server.Realtime.ConnectionCount = 0 && closes.Count = 1)
            Expect.equal (closes.ToArray()) [| 1006 |] "Close saw 1006"
        })

        testCaseTask "a reader that stops: sends report Backpressure, and Drain fires once it has read everything" (fun () -> task {
            let drained = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            let handlers = RealtimeHandlers<obj>(Drain = (fun _ -> drained.TrySetResult() |> ignore))
            let configure (options: RealtimeOptions) =
                options.BackpressureLimit <- 64L * 1024L
                options.MaxBufferedAmount <- 64L * 1024L * 1024L
            use! server = startNative configure (fun app -> app.MapRealtime("/slow", handlers) |> ignore)
            let! tcp, stream, head = RawClient.handshakeRawWith (fun tcp -> tcp.ReceiveBufferSize <- 16 * 1024) server.Port (RawClient.upgradeRequest "/slow" "")
            use raw = new RawClient.RawConnection(tcp, stream, head)
            do! expectEventually (seconds 10.0) "registered" (fun () -> server.Realtime.ConnectionCount = 1)
            let socket = server.Realtime.Connections |> Seq.head
            let chunk = Array.create (16 * 1024) 7uy
            let mutable sent = 0
            let mutable pressed = false
            // Bounded: the kernel's buffers take a few MiB at most before the queue grows.
            while not pressed && sent < 4000 do
                let result = socket.Send(chunk)
                sent <- sent + 1
                pressed <- result.Status = SendStatus.Backpressure
            Expect.isTrue pressed $"a send reported Backpressure (after {sent})"
            let mutable received = 0
            while received < sent do
                let! _ = raw.ReceiveMessage()
                received <- received + 1
            do! drained.Task.WaitAsync(seconds 10.0)
            do! expectEventually (seconds 10.0) "nothing left queued" (fun () -> socket.BufferedAmount = 0L)
        })

        testCaseTask "a silent client is closed with 1001 after the idle timeout" (fun () -> task {
            use! server = startNative (fun options -> options.IdleTimeout <- millis 500.0) (fun app -> app.MapRealtime("/live", RealtimeHandlers<obj>()) |> ignore)
            use! raw = RawClient.connect server.Port "/live"
            let! code = raw.ReceiveClose(seconds 10.0)
            Expect.equal code (Some 1001us) "the idle close carries 1001"
            let! closed = raw.WaitForTransportClose(seconds 10.0)
            Expect.isTrue closed "the server ended the TCP connection"
        })

        testCaseTask "stopping the app closes every native connection with 1001" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let! server = startNative (fun options -> options.ShutdownTimeout <- seconds 5.0) (fun app -> app.MapRealtime("/live", RealtimeHandlers<obj>(Close = (fun _ code _ -> closes.Enqueue code))) |> ignore)
            let! clients = Task.WhenAll [ for _ in 1..3 -> connect (server.WsUrl + "/live") ]
            do! expectEventually (seconds 10.0) "all registered" (fun () -> server.Realtime.ConnectionCount = 3)
            let answers =
                clients |> Array.map (fun client -> task {
                    let! code, _ = receiveClose client
                    do! client.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
                    return code })
            do! server.StopAsync()
            let! codes = (Task.WhenAll answers).WaitAsync(seconds 10.0)
            Expect.allEqual codes 1001 "every client got 1001"
            Expect.equal (closes.ToArray()) [| 1001; 1001; 1001 |] "every Close handler ran with 1001"
            for client in clients do client.Dispose()
        })

        testCaseTask "a publish reaches subscribers held by both loops, the sender excluded" (fun () -> task {
            let handlers =
                RealtimeHandlers<obj>(
                    Open = (fun ws -> ws.Subscribe "room" |> ignore; ws.Send "joined" |> ignore),
                    Message = fun ws message -> ws.Publish("room", message.Data.Span, message.Kind) |> ignore)
            use! server = startNative ignore (fun app -> app.MapRealtime("/room", handlers) |> ignore)
            let! clients = Task.WhenAll [ for _ in 1..6 -> connect (server.WsUrl + "/room") ]
            for client in clients do
                let! joined = receiveText client
                Expect.equal joined "joined" "subscribed"
            do! sendText clients[0] "to all"
            let! heard = Task.WhenAll [ for client in clients[1..] -> receiveText client ]
            Expect.allEqual heard "to all" "every other subscriber got the publish"
            for client in clients do client.Dispose()
        })

        testCaseTask "a Message handler that awaits holds neither the loop nor the order of its own messages" (fun () -> task {
            let release = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            let slow =
                RealtimeHandlers<obj>(
                    MessageAsync = fun ws message -> task {
                        let text = message.Text
                        if text = "wait" then do! release.Task.WaitAsync(seconds 10.0)
                        ws.Send(text) |> ignore })
            let recorder = Recorder()
            let! server =
                startOn OwnTransport
                    (fun builder -> builder.WebHost.UseRealtimeNativeTransport(fun native -> native.EventLoops <- 1) |> ignore)
                    ignore
                    (fun app ->
                        app.MapRealtime("/slow", slow) |> ignore
                        app.MapRealtime("/echo", recorder.Echo()) |> ignore)
            use _ = server
            use! waiting = connect (server.WsUrl + "/slow")
            use! other = connect (server.WsUrl + "/echo")
            do! sendText waiting "wait"
            do! sendText waiting "after"
            do! sendText other "meanwhile"
            let! answer = receiveText other
            Expect.equal answer "meanwhile" "the loop served another connection while the handler awaited"
            release.SetResult()
            let! first = receiveText waiting
            let! second = receiveText waiting
            Expect.equal (first, second) ("wait", "after") "the awaiting connection's messages were handled in order"
        })

        testCaseTask "a handler that blocks stalls only its own loop's connections" (fun () -> task {
            use gate = new ManualResetEventSlim(false)
            let handlers =
                RealtimeHandlers<obj>(
                    Message = fun ws message ->
                        // Blocking on purpose: the cost this test shows.
                        if message.Text = "block" then gate.Wait(seconds 10.0) |> ignore
                        ws.Send(Thread.CurrentThread.Name) |> ignore)
            use! server = startNative ignore (fun app -> app.MapRealtime("/where", handlers) |> ignore)
            let ask (client: ClientWebSocket) = task {
                do! sendText client "where"
                return! receiveText client }
            // Connected one after another, the loops take them in turn.
            let! clients = task {
                let connected = ResizeArray()
                for _ in 1..3 do
                    let! client = connect (server.WsUrl + "/where")
                    connected.Add client
                return connected.ToArray() }
            let! loops = task {
                let names = ResizeArray()
                for client in clients do
                    let! name = ask client
                    names.Add name
                return names.ToArray() }
            Expect.equal loops[0] loops[2] "the first and third connections share a loop"
            Expect.notEqual loops[0] loops[1] "the second is on the other loop"
            do! sendText clients[0] "block"
            let! other = (ask clients[1]).WaitAsync(seconds 10.0)
            Expect.equal other loops[1] "the other loop answered while the handler blocked"
            Expect.isFalse gate.IsSet "it answered before the blocked handler was released"
            let sameLoop = ask clients[2]
            let! first = Task.WhenAny(sameLoop, Task.Delay(millis 300.0))
            Expect.isFalse (obj.ReferenceEquals(first, sameLoop)) "the blocked loop's other connection waits"
            gate.Set()
            let! late = sameLoop.WaitAsync(seconds 10.0)
            let! blocked = (receiveText clients[0]).WaitAsync(seconds 10.0)
            Expect.equal (late, blocked) (loops[2], loops[0]) "both are answered once the handler returns"
            for client in clients do client.Dispose()
        })

        testCaseTask "a localhost listener (bound by Kestrel at 127.0.0.1 and [::1]) is the native transport's at both addresses" (fun () -> task {
            let recorder = Recorder()
            let port = freePort ()
            let! server =
                startOn OwnTransport
                    (fun builder ->
                        builder.WebHost.UseRealtimeNativeTransport() |> ignore
                        builder.WebHost.UseUrls($"http://localhost:{port}") |> ignore)
                    ignore
                    (fun app -> app.MapRealtime("/echo", recorder.Echo()) |> ignore)
            use _ = server
            for host in [ "127.0.0.1"; "[::1]" ] do
                use! client = connect $"ws://{host}:{port}/echo"
                do! sendText client $"via {host}"
                let! answer = receiveText client
                Expect.equal answer $"via {host}" "echoed"
            let ids = recorder.ConnectionIds.ToArray()
            Expect.equal ids.Length 2 "two upgrades"
            Expect.isTrue (recorder.AllNative()) $"both taken natively: %A{ids}"
        })

        testCaseTask "a localhost TLS listener's connections all go to Kestrel at both addresses" (fun () -> task {
            let recorder = Recorder()
            let certificate = TlsTests.certificate.Force()
            let port = freePort ()
            let! server = startTlsListener recorder (fun kestrel -> kestrel.ListenLocalhost(port, fun listen -> listen.UseHttps(certificate) |> ignore))
            use _ = server
            for host in [ "127.0.0.1"; "[::1]" ] do
                do! expectTlsEcho certificate $"wss://{host}:{port}/echo"
            do! expectAllOnKestrel recorder port
        })

        testCaseTask "a TLS listener's connections all go to Kestrel: wss:// works, a plain upgrade on its port does not" (fun () -> task {
            let recorder = Recorder()
            let certificate = TlsTests.certificate.Force()
            let port = freePort ()
            let! server = startTlsListener recorder (fun kestrel -> kestrel.Listen(Net.IPAddress.Loopback, port, fun listen -> listen.UseHttps(certificate) |> ignore))
            use _ = server
            do! expectTlsEcho certificate $"wss://127.0.0.1:{port}/echo"
            do! expectAllOnKestrel recorder port
        })

        testCaseTask "the app's pipeline decides as on Kestrel's path: the same statuses, and every request seen by its middleware" (fun () -> task {
            let requests = ref 0
            let recorder = Recorder()
            let routes (app: WebApplication) =
                app.Use(fun (context: HttpContext) (next: RequestDelegate) ->
                    Interlocked.Increment requests |> ignore
                    if context.Request.Headers.ContainsKey "X-Deny" then
                        context.Response.StatusCode <- 401
                        Task.CompletedTask
                    else next.Invoke context)
                |> ignore
                app.MapRealtime("/echo", recorder.Echo()) |> ignore
                app.MapRealtime("/refuse", RealtimeHandlers<obj>(Attach = fun _ -> Attachment<obj>.Reject(403, "no"))) |> ignore
                app.MapGet("/hello", Func<string>(fun () -> "hi")) |> ignore
            let cases =
                [ RawClient.upgradeRequest "/echo" ""
                  RawClient.upgradeRequest "/echo" "X-Deny: 1\r\n"
                  RawClient.upgradeRequest "/refuse" ""
                  RawClient.upgradeRequest "/nowhere" ""
                  "GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" ]
            let outcomes (server: RunningServer) = task {
                let results = ResizeArray()
                for request in cases do
                    let! status = statusOf server.Port request
                    results.Add status
                return List.ofSeq results }
            use! managed = startThroughRoute ignore routes
            use! native = startNative ignore routes
            let! expected = outcomes managed
            let! actual = outcomes native
            Expect.equal actual expected "every request got the same status on both paths"
            Expect.equal expected.[0..1] [ "HTTP/1.1 101 Switching Protocols"; "HTTP/1.1 401 Unauthorized" ] "the middleware's refusal applies"
            Expect.equal requests.Value (2 * cases.Length) "the middleware saw every request on both servers"
            Expect.isTrue (recorder.ConnectionIds.ToArray() |> Array.exists (fun id -> id.StartsWith "native-")) "the native server took the upgrade itself"
            use http = new HttpClient(Timeout = seconds 10.0)
            let! hello = http.GetStringAsync(native.HttpUrl + "/hello")
            let! again = http.GetStringAsync(native.HttpUrl + "/hello")
            Expect.equal (hello, again) ("hi", "hi") "ordinary requests go on to Kestrel, keep-alive included"
        })
    ]

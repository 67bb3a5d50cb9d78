/// Limits that hold whatever the clients do and whatever values the options take: topic names and
/// topics per connection, options checked at start, every accepted extreme value working, and no
/// Error-level log for anything a client does.
module Realtime.Server.Tests.LimitsTests

open System
open System.Collections.Concurrent
open System.IO
open System.Net
open System.Net.Sockets
open System.Net.WebSockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Microsoft.Extensions.Options
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.TestLogs
open Realtime.TestSupport.SuiteTransport

let private seconds (s: float) = TimeSpan.FromSeconds s

/// The server-side socket of the only connection of an endpoint (waits for it to be registered).
let private onlyConnection (server: RunningServer) (pattern: string) : Task<RealtimeSocket> =
    task {
        let! registered = eventually (seconds 10.0) (fun () -> server.Realtime.ConnectionsOf(pattern).Count = 1)
        if not registered then failtestf "no connection on %s" pattern
        return server.Realtime.ConnectionsOf(pattern)[0]
    }

let private expectArgumentException (what: string) (fragment: string) (action: unit -> unit) =
    let error = Expect.throwsC action id
    match error with
    | :? ArgumentException as argument when not (argument :? ArgumentNullException) ->
        Expect.stringContains argument.Message fragment $"{what}: the message names the limit"
    | other -> failtestf "%s: expected ArgumentException, got %O" what other

// ---------------------------------------------------------------------------------------------
// 1. Topic names and topics per connection
// ---------------------------------------------------------------------------------------------

let private topicRoutes (app: WebApplication) =
    app.MapRealtime("/topics", RealtimeHandlers<obj>()) |> ignore
    app.MapRealtime("/few", RealtimeHandlers<obj>(), fun options -> options.MaxTopicsPerConnection <- 3) |> ignore

[<Tests>]
let topicLimitTests =
    testList "Limits: topic names (MaxTopicLength) and topics per connection (MaxTopicsPerConnection)" [
        testCaseTask "a name of MaxTopicLength UTF-8 bytes is accepted; one byte more throws ArgumentException from Subscribe and every Publish" (fun () -> task {
            let! server = start (fun options -> options.MaxTopicLength <- 8) topicRoutes
            use _ = server
            use! client = connect (server.WsUrl + "/topics")
            let! socket = onlyConnection server "/topics"
            let fits = "\u00e9\u00e9\u00e9\u00e9" // 4 chars, 8 bytes
            let over = "\u00e9\u00e9\u00e9\u00e9a" // 9 bytes
            Expect.isTrue (socket.Subscribe fits) "8 bytes fit"
            Expect.equal (server.Realtime.Publish(fits, "at the limit")) 1 "published to the subscriber"
            let! text = receiveText client
            Expect.equal text "at the limit" "delivered"
            expectArgumentException "Subscribe" "MaxTopicLength allows at most 8" (fun () -> socket.Subscribe over |> ignore)
            expectArgumentException "ws.Publish" "9 UTF-8 bytes" (fun () -> socket.Publish(over, "x") |> ignore)
            expectArgumentException "server Publish text" "MaxTopicLength" (fun () -> server.Realtime.Publish(over, "x") |> ignore)
            expectArgumentException "server Publish binary" "MaxTopicLength" (fun () -> server.Realtime.Publish(over, ReadOnlySpan [| 1uy |]) |> ignore)
            expectArgumentException "a long ASCII name" "MaxTopicLength" (fun () -> socket.Subscribe(String('x', 100_000)) |> ignore)
            // Queries about a name nobody can have answer without throwing.
            Expect.isFalse (socket.IsSubscribed over) "not subscribed"
            Expect.isFalse (socket.Unsubscribe over) "nothing to unsubscribe"
            Expect.equal (server.Realtime.SubscriberCount over) 0 "no subscribers"
            Expect.equal (List.ofSeq socket.Subscriptions) [ fits ] "only the name that fits"
            Expect.isTrue socket.IsOpen "the connection is unaffected"
        })

        testCaseTask "past MaxTopicsPerConnection, Subscribe returns false and subscribes nothing; leaving a topic makes room" (fun () -> task {
            let! server = start ignore topicRoutes
            use _ = server
            use! few = connect (server.WsUrl + "/few")
            use! many = connect (server.WsUrl + "/topics")
            let! socket = onlyConnection server "/few"
            let! other = onlyConnection server "/topics"
            for topic in [ "a"; "b"; "c" ] do
                Expect.isTrue (socket.Subscribe topic) $"{topic} is within the limit"
            Expect.isFalse (socket.Subscribe "d") "a fourth topic is refused"
            Expect.isFalse (socket.IsSubscribed "d") "not subscribed"
            Expect.equal (server.Realtime.SubscriberCount "d") 0 "nobody in d"
            Expect.isFalse (socket.Subscribe "a") "an existing topic is still just 'already subscribed'"
            Expect.equal (List.ofSeq socket.Subscriptions) [ "a"; "b"; "c" ] "unchanged"
            Expect.isTrue (other.Subscribe "d") "another endpoint's connection has its own count and limit"
            Expect.isTrue (socket.Unsubscribe "b") "leave one"
            Expect.isTrue (socket.Subscribe "d") "room for one more"
            Expect.equal (server.Realtime.Publish("d", "to d")) 2 "both are in d now"
            let! atFew = receiveText few
            let! atMany = receiveText many
            Expect.equal (atFew, atMany) ("to d", "to d") "both received it"
        })

        testCaseTask "a client asking to join 1,200 topics gets 1,000 (the default limit), the rest are refused, and nothing is logged at Error" (fun () -> task {
            let mutable logs = Unchecked.defaultof<CapturedLogs>
            let routes (app: WebApplication) =
                logs <- captureLogs LogLevel.Warning app
                app.MapRealtime(
                    "/join",
                    RealtimeHandlers<obj>(Message = fun ws message -> ws.Send(if ws.Subscribe message.Text then "joined" else "refused") |> ignore)
                )
                |> ignore
            let! server = start ignore routes
            use _ = server
            use! client = connect (server.WsUrl + "/join")
            let answers = ResizeArray<string>()
            for i in 1..1200 do
                do! sendText client $"room-{i}"
                let! answer = receiveText client
                answers.Add answer
            Expect.equal (answers |> Seq.filter ((=) "joined") |> Seq.length) 1000 "1,000 joined"
            Expect.isTrue (answers |> Seq.take 1000 |> Seq.forall ((=) "joined")) "the first 1,000"
            Expect.isTrue (answers |> Seq.skip 1000 |> Seq.forall ((=) "refused")) "the rest refused"
            Expect.equal server.Realtime.Topics.Count 1000 "the table holds 1,000 topics"
            do! sendText client "room-1"
            let! again = receiveText client
            Expect.equal again "refused" "already subscribed is false too, and the connection is still served"
            Expect.isEmpty logs.Errors "no Error log"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 2. Options validated at start
// ---------------------------------------------------------------------------------------------

/// Builds an app with `defaults` in AddRealtime and the endpoint overrides of `map`, and starts it;
/// returns the exception that stopped it on the way (None when it started; it is stopped then).
let private startFailure (defaults: RealtimeOptions -> unit) (map: WebApplication -> unit) : Task<exn option> =
    task {
        let builder = WebApplication.CreateBuilder([||])
        builder.WebHost.UseUrls("http://127.0.0.1:0") |> ignore
        useSuiteTransport builder.WebHost
        builder.Logging.ClearProviders() |> ignore
        builder.Services.AddRealtime(Action<RealtimeOptions> defaults) |> ignore
        // Kestrel reads the options while the app is built, so a bad default fails Build itself.
        let mutable app: WebApplication = null
        try
            try
                app <- builder.Build()
                map app
                do! app.StartAsync()
                do! app.StopAsync()
                return None
            with error ->
                return Some error
        finally
            if not (isNull app) then (app :> IAsyncDisposable).DisposeAsync().AsTask().Wait(10_000) |> ignore
    }

let private expectStartFails (defaults: RealtimeOptions -> unit) (map: WebApplication -> unit) (fragments: string list) =
    task {
        match! startFailure defaults map with
        | None -> failtestf "the app started; expected it to fail with %A" fragments
        | Some(:? OptionsValidationException as error) ->
            for fragment in fragments do
                Expect.stringContains error.Message fragment "the message names the option, the value and the range"
        | Some other -> failtestf "expected OptionsValidationException, got %O" other
    }

let private echo () = RealtimeHandlers<obj>(Message = fun ws message -> ws.Send(message) |> ignore)

/// Each invalid value, and the message it must fail the start with.
let private invalidValues: (string * (RealtimeOptions -> unit) * string) list =
    let ms (value: float) = TimeSpan.FromMilliseconds value
    [ "MaxPayloadLength 0", (fun o -> o.MaxPayloadLength <- 0), "RealtimeOptions.MaxPayloadLength is 0; it must be 1 to 2147483647 bytes."
      "MaxPayloadLength negative", (fun o -> o.MaxPayloadLength <- -5), "RealtimeOptions.MaxPayloadLength is -5"
      "IdleTimeout negative", (fun o -> o.IdleTimeout <- seconds -1.0), "RealtimeOptions.IdleTimeout is -00:00:01; it must be TimeSpan.Zero (keep-alive off) or 1 ms to 24.20:31:23.6470000"
      "IdleTimeout under 1 ms", (fun o -> o.IdleTimeout <- ms 0.5), "RealtimeOptions.IdleTimeout is 00:00:00.0005000"
      "IdleTimeout TimeSpan.MaxValue", (fun o -> o.IdleTimeout <- TimeSpan.MaxValue), "RealtimeOptions.IdleTimeout is 10675199.02:48:05.4775807"
      "CloseTimeout zero", (fun o -> o.CloseTimeout <- TimeSpan.Zero), "RealtimeOptions.CloseTimeout is 00:00:00; it must be 1 ms to"
      "CloseTimeout over int.MaxValue ms", (fun o -> o.CloseTimeout <- ms (float Int32.MaxValue + 1.0)), "RealtimeOptions.CloseTimeout is 24.20:31:23.6480000"
      "ShutdownTimeout TimeSpan.MaxValue", (fun o -> o.ShutdownTimeout <- TimeSpan.MaxValue), "RealtimeOptions.ShutdownTimeout is"
      "HandshakeTimeout zero", (fun o -> o.HandshakeTimeout <- Nullable TimeSpan.Zero), "RealtimeOptions.HandshakeTimeout is 00:00:00"
      "BackpressureLimit negative", (fun o -> o.BackpressureLimit <- -1L), "RealtimeOptions.BackpressureLimit is -1; it must be 0 to 1073741824 bytes."
      "MaxBufferedAmount under BackpressureLimit", (fun o -> o.BackpressureLimit <- 2000L; o.MaxBufferedAmount <- 1000L), "RealtimeOptions.MaxBufferedAmount is 1000; it must be 2000 to 1073741824"
      "MaxBufferedAmount over 1 GiB", (fun o -> o.MaxBufferedAmount <- Int64.MaxValue), "RealtimeOptions.MaxBufferedAmount is 9223372036854775807"
      "ServerMaxWindowBits 8", (fun o -> o.ServerMaxWindowBits <- 8), "RealtimeOptions.ServerMaxWindowBits is 8; it must be 9 to 15 bits"
      "ClientMaxWindowBits 16", (fun o -> o.ClientMaxWindowBits <- 16), "RealtimeOptions.ClientMaxWindowBits is 16; it must be 9 to 15 bits"
      "CompressionThreshold negative", (fun o -> o.CompressionThreshold <- Nullable -1), "RealtimeOptions.CompressionThreshold is -1"
      "ReceiveBufferSize too small", (fun o -> o.ReceiveBufferSize <- 255), "RealtimeOptions.ReceiveBufferSize is 255; it must be 256 to 16777216 bytes."
      "ReceiveBufferSize too big", (fun o -> o.ReceiveBufferSize <- Int32.MaxValue), "RealtimeOptions.ReceiveBufferSize is 2147483647"
      "MaxConnections zero", (fun o -> o.MaxConnections <- Nullable 0), "RealtimeOptions.MaxConnections is 0; it must be 1 to 2147483647 connections."
      "MaxConnectionsPerAddress negative", (fun o -> o.MaxConnectionsPerAddress <- Nullable -1), "RealtimeOptions.MaxConnectionsPerAddress is -1"
      "MaxHandshakeHeaderBytes under 1 KiB", (fun o -> o.MaxHandshakeHeaderBytes <- 100), "RealtimeOptions.MaxHandshakeHeaderBytes is 100; it must be 1024 to"
      "MaxTopicLength zero", (fun o -> o.MaxTopicLength <- 0), "RealtimeOptions.MaxTopicLength is 0; it must be 1 to 2147483647 UTF-8 bytes."
      "MaxTopicsPerConnection negative", (fun o -> o.MaxTopicsPerConnection <- -1), "RealtimeOptions.MaxTopicsPerConnection is -1; it must be 0 to 2147483647 topics."
      "Subprotocols null", (fun o -> o.Subprotocols <- null), "RealtimeOptions.Subprotocols is null"
      "a blank subprotocol", (fun o -> o.Subprotocols.Add " "), "RealtimeOptions.Subprotocols has a null or blank entry"
      "a null origin", (fun o -> o.AllowedOrigins.Add null), "RealtimeOptions.AllowedOrigins has a null or blank entry" ]

[<Tests>]
let optionValidationTests =
    testList "Limits: options are validated at start, with messages naming the option, the value and the range" [
        for name, set, message in invalidValues do
            testCaseTask $"in AddRealtime: {name}" (fun () ->
                expectStartFails set ignore [ message ])

        for name, set, message in invalidValues |> List.filter (fun (name, _, _) -> name.StartsWith "MaxPayloadLength" || name.StartsWith "ServerMax" || name.StartsWith "MaxTopicsPer") do
            testCaseTask $"in MapRealtime: {name}" (fun () ->
                expectStartFails ignore (fun app -> app.MapRealtime("/x", echo (), set) |> ignore) [ "MapRealtime(\"/x\"): " + message ])

        testCaseTask "every problem is listed at once" (fun () ->
            expectStartFails
                (fun o ->
                    o.MaxPayloadLength <- 0
                    o.ReceiveBufferSize <- 1)
                ignore
                [ "RealtimeOptions.MaxPayloadLength is 0"; "RealtimeOptions.ReceiveBufferSize is 1" ])

        testCaseTask "defaults are checked even when no endpoint is mapped" (fun () ->
            expectStartFails (fun o -> o.CloseTimeout <- TimeSpan.Zero) ignore [ "RealtimeOptions.CloseTimeout" ])

        testCaseTask "server-wide options cannot be overridden per endpoint" (fun () ->
            expectStartFails
                ignore
                (fun app ->
                    app.MapRealtime(
                        "/x",
                        echo (),
                        fun o ->
                            o.MaxTopicLength <- 10
                            o.ShutdownTimeout <- seconds 1.0
                            o.HandshakeTimeout <- Nullable(seconds 1.0)
                    )
                    |> ignore)
                [ "MapRealtime(\"/x\"): RealtimeOptions.MaxTopicLength is server-wide (topics are shared by every endpoint): set it in AddRealtime, not per endpoint."
                  "RealtimeOptions.ShutdownTimeout is server-wide"
                  "RealtimeOptions.HandshakeTimeout is server-wide" ])

        testCaseTask "the defaults and an endpoint that keeps the server-wide values start" (fun () -> task {
            let! failure = startFailure (fun o -> o.MaxTopicLength <- 10) (fun app -> app.MapRealtime("/x", echo (), fun o -> o.MaxPayloadLength <- 5) |> ignore)
            Expect.isNone failure "started"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 3. Every accepted extreme works
// ---------------------------------------------------------------------------------------------

/// Every option at the largest value it accepts.
let private maxima (o: RealtimeOptions) =
    let longest = TimeSpan.FromMilliseconds(float Int32.MaxValue)
    o.MaxPayloadLength <- Int32.MaxValue
    o.PerMessageDeflate <- true
    o.IdleTimeout <- longest
    o.CloseTimeout <- longest
    o.HandshakeTimeout <- Nullable longest
    o.MaxBufferedAmount <- 1L <<< 30
    o.BackpressureLimit <- 1L <<< 30
    o.ReceiveBufferSize <- 16 * 1024 * 1024
    o.CompressionThreshold <- Nullable Int32.MaxValue
    o.MaxConnections <- Nullable Int32.MaxValue
    o.MaxConnectionsPerAddress <- Nullable Int32.MaxValue
    o.MaxHandshakeHeaderBytes <- Int32.MaxValue
    o.MaxTopicLength <- Int32.MaxValue
    o.MaxTopicsPerConnection <- Int32.MaxValue

/// /size answers every message with "kind:length:compressed"; /echo echoes.
let private extremeRoutes (app: WebApplication) =
    app.MapRealtime(
        "/size",
        RealtimeHandlers<obj>(Message = fun ws message -> ws.Send($"{message.Kind}:{message.Data.Length}:{message.Compressed}") |> ignore)
    )
    |> ignore
    app.MapRealtime("/echo", echo ()) |> ignore

let private deflateClient (url: string) : Task<ClientWebSocket> =
    task {
        let client = new ClientWebSocket()
        client.Options.DangerousDeflateOptions <- WebSocketDeflateOptions()
        use cancel = new CancellationTokenSource(seconds 10.0)
        do! client.ConnectAsync(Uri url, cancel.Token)
        return client
    }

let private sendBinary (client: ClientWebSocket) (data: byte[]) (compressed: bool) : Task =
    task {
        use cancel = new CancellationTokenSource(seconds 60.0)
        let flags = if compressed then WebSocketMessageFlags.EndOfMessage else WebSocketMessageFlags.EndOfMessage ||| WebSocketMessageFlags.DisableCompression
        do! client.SendAsync(ReadOnlyMemory data, WebSocketMessageType.Binary, flags, cancel.Token)
    }

/// A frame header (FIN, binary, masked) announcing `length` payload bytes, then a mask key.
let private announcing (length: uint64) =
    let header = Array.zeroCreate<byte> 14
    header[0] <- 0x82uy
    header[1] <- 0x80uy ||| 127uy
    Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(Span(header, 2, 8), length)
    header

[<Tests>]
let extremeValueTests =
    testSequenced <| testList "Limits: every accepted extreme value works" [
        testCaseTask "all maxima (MaxPayloadLength = int.MaxValue with deflate, longest timeouts, 1 GiB buffers): compressed and plain messages, a 32 MiB zip bomb, a header announcing 2^31 - 1 bytes" (fun () -> task {
            let mutable logs = Unchecked.defaultof<CapturedLogs>
            let! server = start maxima (fun app -> logs <- captureLogs LogLevel.Warning app; extremeRoutes app)
            use _ = server
            use! client = deflateClient (server.WsUrl + "/size")
            // A normal compressed message: the inflater's limit arithmetic must not wrap around at int.MaxValue.
            let small = Encoding.UTF8.GetBytes(String.replicate 200 "hello realtime ")
            do! sendBinary client small true
            let! answer = receiveText client
            Expect.equal answer $"Binary:{small.Length}:True" "a compressed message inflates"
            do! sendBinary client small false
            let! answer = receiveText client
            Expect.equal answer $"Binary:{small.Length}:False" "a plain one too"
            // A zip bomb under the limit is inflated in full (32 MiB of zeros, about 32 KiB on the wire).
            let bomb = Array.zeroCreate<byte> (32 * 1024 * 1024)
            do! sendBinary client bomb true
            let! answer = receiveText client
            Expect.equal answer $"Binary:{bomb.Length}:True" "32 MiB inflated and delivered"
            // A fragmented plain message grows its buffer without wrapping around.
            use cancel = new CancellationTokenSource(seconds 30.0)
            let piece = Array.create (1024 * 1024) 7uy
            for i in 1..8 do
                do! client.SendAsync(ReadOnlyMemory piece, WebSocketMessageType.Binary, (if i = 8 then WebSocketMessageFlags.EndOfMessage ||| WebSocketMessageFlags.DisableCompression else WebSocketMessageFlags.DisableCompression), cancel.Token)
            let! answer = receiveText client
            Expect.equal answer $"Binary:{8 * piece.Length}:False" "8 MiB in 8 fragments"
            // No array holds 2^31 - 1 bytes: such a message is refused at its header (1009), not allocated.
            use! raw = RawClient.connect server.Port "/echo"
            do! raw.SendRaw(Array.append (announcing (uint64 Int32.MaxValue)) [| 1uy; 2uy; 3uy |])
            let! code = raw.ReceiveClose(seconds 10.0)
            Expect.equal code (Some CloseCode.MessageTooBig) "1009 at the header"
            do! client.CloseAsync(WebSocketCloseStatus.NormalClosure, "", cancel.Token)
            Expect.isEmpty logs.Errors "no Error log"
        })

        testCaseTask "all minima (1-byte messages, 256-byte receive buffer, 9-bit windows, no buffer at all)" (fun () -> task {
            let statuses = ConcurrentQueue<SendStatus>()
            let routes (app: WebApplication) =
                app.MapRealtime(
                    "/tiny",
                    echo (),
                    fun o ->
                        o.MaxPayloadLength <- 1
                        o.ReceiveBufferSize <- 256
                        o.PerMessageDeflate <- true
                        o.ServerMaxWindowBits <- 9
                        o.ClientMaxWindowBits <- 9
                        o.MaxTopicsPerConnection <- 0
                )
                |> ignore
                app.MapRealtime(
                    "/unbuffered",
                    RealtimeHandlers<obj>(Message = fun ws message -> statuses.Enqueue (ws.Send message.Text).Status),
                    fun o ->
                        o.BackpressureLimit <- 0L
                        o.MaxBufferedAmount <- 0L
                )
                |> ignore
            let! server = start (fun o -> o.MaxTopicLength <- 1; o.IdleTimeout <- TimeSpan.Zero; o.ShutdownTimeout <- TimeSpan.Zero) routes
            use _ = server
            use! tiny = connect (server.WsUrl + "/tiny")
            do! sendText tiny "x"
            let! echoed = receiveText tiny
            Expect.equal echoed "x" "a 1-byte message is echoed"
            let! socket = onlyConnection server "/tiny"
            Expect.isFalse (socket.Subscribe "a") "no topic at all with MaxTopicsPerConnection = 0"
            do! sendText tiny "xy"
            use cancel = new CancellationTokenSource(seconds 10.0)
            let buffer = Array.zeroCreate<byte> 16
            let! result = tiny.ReceiveAsync(ArraySegment buffer, cancel.Token)
            Expect.equal result.MessageType WebSocketMessageType.Close "closed"
            Expect.equal tiny.CloseStatus (Nullable WebSocketCloseStatus.MessageTooBig) "2 bytes is 1009"
            use! unbuffered = connect (server.WsUrl + "/unbuffered")
            do! sendText unbuffered "hello"
            let! dropped = eventually (seconds 10.0) (fun () -> statuses.Count = 1)
            Expect.isTrue dropped "the handler ran"
            Expect.equal (statuses.ToArray()) [| SendStatus.Dropped |] "nothing fits a zero-byte buffer"
        })

        testCaseTask "the shortest timeouts (IdleTimeout and CloseTimeout of 1 ms): a silent client is pinged, then closed with 1001 and dropped" (fun () -> task {
            let! server =
                start
                    (fun o ->
                        o.IdleTimeout <- TimeSpan.FromMilliseconds 1.0
                        o.CloseTimeout <- TimeSpan.FromMilliseconds 1.0)
                    (fun app -> app.MapRealtime("/echo", echo ()) |> ignore)
            use _ = server
            use! raw = RawClient.connect server.Port "/echo"
            let! first = raw.ReceiveFrame(seconds 10.0)
            Expect.equal (first |> Option.map (fun frame -> frame.Opcode)) (Some Opcode.Ping) "pinged"
            let! code = raw.ReceiveClose(seconds 10.0)
            Expect.equal code (Some CloseCode.GoingAway) "then closed with 1001"
            let! dropped = raw.WaitForTransportClose(seconds 10.0)
            Expect.isTrue dropped "and the TCP connection dropped"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 4. No Error log for anything a client does
// ---------------------------------------------------------------------------------------------

/// Sends an upgrade request on a raw TCP connection, waits for `before` to complete, then resets
/// the connection (RST: linger 0).
let private requestThenReset (port: int) (path: string) (before: Task) : Task =
    task {
        use tcp = new TcpClient()
        do! tcp.ConnectAsync(IPAddress.Loopback, port)
        let request = Encoding.ASCII.GetBytes(RawClient.upgradeRequest path "")
        do! tcp.GetStream().WriteAsync(request, 0, request.Length)
        do! before.WaitAsync(seconds 10.0)
        tcp.LingerState <- LingerOption(true, 0)
        tcp.Client.Close()
    }

[<Tests>]
let clientErrorLogTests =
    testList "Limits: nothing a client does produces an Error log" [
        for answer in [ "rejects"; "accepts" ] do
            testCaseTask $"a client that resets while Attach runs, which then {answer}: a Debug entry, no Error" (fun () -> task {
                let attaching = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
                let mutable logs = Unchecked.defaultof<CapturedLogs>
                let attach (http: HttpContext) : Task<Attachment<obj>> =
                    task {
                        attaching.TrySetResult() |> ignore
                        // Until Kestrel has seen the reset (bounded).
                        try do! Task.Delay(TimeSpan.FromSeconds 10.0, http.RequestAborted) with :? OperationCanceledException -> ()
                        return if answer = "rejects" then Attachment<obj>.Reject(401, "who are you?") else Attachment<obj>.Accept null
                    }
                let routes (app: WebApplication) =
                    logs <- captureLogs LogLevel.Debug app
                    app.MapRealtime("/late", RealtimeHandlers<obj>(AttachAsync = fun http -> ValueTask<Attachment<obj>>(attach http))) |> ignore
                let! server = startWith (fun builder -> builder.Logging.SetMinimumLevel LogLevel.Debug |> ignore) ignore routes
                use _ = server
                do! requestThenReset server.Port "/late" attaching.Task
                // The handshake has ended once the host logged its last word about it.
                let finished (entry: LogEntry) =
                    entry.Category.StartsWith "Realtime" && (entry.EventId = 15 || entry.EventId = 2 || entry.EventId = 3 || entry.Level >= LogLevel.Error)
                let! ended = eventually (seconds 15.0) (fun () -> logs.Entries |> Array.exists finished)
                Expect.isTrue ended "the host finished the handshake"
                do! Task.Delay 200
                Expect.isEmpty logs.Errors "no Error log, from the host or Kestrel"
            })
    ]

/// The server-wide memory budget (RealtimeOptions.MaxServerBufferedBytes, IRealtimeServer.BufferedBytes)
/// and the one shared copy of a published or broadcast frame.
module Realtime.Server.Tests.BudgetTests

open System
open System.IO
open System.IO.Compression
open System.Net.WebSockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost

let private mib = 1024L * 1024L

/// A well-behaved subscriber: a .NET client that reads every message as it comes and checks that
/// the numbered messages arrive complete and in order.
type private Reader(client: ClientWebSocket) =
    let mutable received = 0
    let mutable outOfOrder = 0
    let loop =
        task {
            try
                while client.State = WebSocketState.Open do
                    let! _, bytes = receive client
                    let text = Encoding.UTF8.GetString bytes
                    let number = int (text.Split(':').[0])
                    if number <> received + 1 then Interlocked.Increment &outOfOrder |> ignore
                    Volatile.Write(&received, number)
            with _ -> ()
        }

    member _.Received = Volatile.Read &received
    member _.OutOfOrder = Volatile.Read &outOfOrder
    member _.Client = client
    member _.Loop : Task = loop

/// A subscriber that never reads, with a small receive window so the server's buffers fill soon.
let private nonReader (port: int) (path: string) : Task<RawClient.RawConnection> =
    task {
        let! tcp, stream, head =
            RawClient.handshakeRawWith (fun tcp -> tcp.ReceiveBufferSize <- 4096) port (RawClient.upgradeRequest path "")
        if not (head.StartsWith "HTTP/1.1 101") then failtestf "expected 101, got: %s" head
        return new RawClient.RawConnection(tcp, stream, head)
    }

/// Message `number` of the busy topic: its number, then padding to `size` bytes.
let private numbered (number: int) (size: int) =
    let prefix = $"{number}:"
    prefix + String('x', size - prefix.Length)

/// Routes: /feed subscribes to "feed" (the role in the query string tells the tests which client is
/// which); /echo echoes; the close codes the server gave each role are collected.
let private feedRoutes (closes: Collections.Concurrent.ConcurrentQueue<string * int>) (app: WebApplication) =
    app.MapRealtime(
        "/feed",
        RealtimeHandlers<string>(
            Attach = (fun context -> Attachment<string>.Accept(string context.Request.Query["role"])),
            Open = (fun ws -> ws.Subscribe "feed" |> ignore),
            Close = (fun ws code _ -> closes.Enqueue((ws.Data, code)))
        )
    )
    |> ignore
    app.MapRealtime("/echo", RealtimeHandlers<obj>(Message = fun ws message -> ws.Send message |> ignore)) |> ignore

/// Raw deflate data of `data`, ended by a sync flush, as a permessage-deflate sender makes it (RFC 7692 §7.2.1).
let private deflate (data: byte[]) =
    use output = new MemoryStream()
    do
        use compressor = new DeflateStream(output, CompressionLevel.Optimal, true)
        compressor.Write(data, 0, data.Length)
        compressor.Flush()
    output.ToArray()

/// Waits (bounded) until the server holds no budgeted bytes.
let private expectBudgetEmpty (server: RunningServer) (what: string) =
    task {
        let! empty = eventually (TimeSpan.FromSeconds 20.0) (fun () -> server.Realtime.BufferedBytes = 0L)
        Expect.isTrue empty $"{what}: BufferedBytes back to 0 (is {server.Realtime.BufferedBytes})"
    }

/// Many non-reading subscribers of a busy topic beside well-behaved ones; returns the largest
/// BufferedBytes seen and the number of subscribers the last publish was queued to.
let private busyTopic (server: RunningServer) (budget: int64) (slowCount: int) (readerCount: int) (messages: int) =
    task {
        let slow = ResizeArray<RawClient.RawConnection>()
        for _ in 1..slowCount do
            let! connection = nonReader server.Port "/feed?role=slow"
            slow.Add connection
        let readers = ResizeArray<Reader>()
        for _ in 1..readerCount do
            let! client = connect (server.WsUrl + "/feed?role=reader")
            readers.Add(Reader client)
        let! subscribed = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.SubscriberCount "feed" = slowCount + readerCount)
        Expect.isTrue subscribed "everyone subscribed"
        let mutable peak = 0L
        let mutable lastQueued = -1
        let sample () = peak <- max peak server.Realtime.BufferedBytes
        for number in 1..messages do
            lastQueued <- server.Realtime.Publish("feed", numbered number 1024)
            sample ()
            // The well-behaved clients are never more than 16 messages behind, so they never reach
            // the backpressure limit: whatever they lose, the budget took from them.
            if number % 16 = 0 then
                let! caughtUp =
                    eventually (TimeSpan.FromSeconds 10.0) (fun () ->
                        sample ()
                        readers |> Seq.forall (fun reader -> reader.Received >= number))
                Expect.isTrue caughtUp $"the well-behaved subscribers received message {number}"
        let! all = eventually (TimeSpan.FromSeconds 10.0) (fun () -> readers |> Seq.forall (fun reader -> reader.Received = messages))
        Expect.isTrue all "the well-behaved subscribers received every message"
        for reader in readers do
            Expect.equal reader.OutOfOrder 0 "in order, none missing"
        printfn
            "budget %.1f MiB, %d non-reading and %d reading subscribers, %d messages of 1 KiB: peak BufferedBytes %.2f MiB, last publish queued to %d"
            (float budget / float mib) slowCount readerCount messages (float peak / float mib) lastQueued
        for reader in readers do
            try
                use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 5.0)
                do! reader.Client.CloseAsync(WebSocketCloseStatus.NormalClosure, "", cancel.Token)
            with _ -> ()
            reader.Client.Dispose()
        for connection in slow do
            (connection :> IDisposable).Dispose()
        return peak, lastQueued
    }

/// One 1 MiB publish to 10 subscribers, through the route or on direct connections (the stream
/// and the pipe transports write shared frames differently).
let private oneCopyPerPublish (direct: bool) =
    task {
        let closes = Collections.Concurrent.ConcurrentQueue()
        let! server = startIn direct (fun o -> o.MaxServerBufferedBytes <- 2L * mib) (feedRoutes closes)
        use _ = server
        let clients = ResizeArray<ClientWebSocket>()
        for _ in 1..10 do
            let! client = connect (server.WsUrl + "/feed?role=reader")
            clients.Add client
        let! subscribed = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.SubscriberCount "feed" = 10)
        Expect.isTrue subscribed "everyone subscribed"
        let message = Array.init (int mib) (fun i -> byte (i * 7))
        let queued = server.Realtime.Publish("feed", ReadOnlySpan message)
        let held = server.Realtime.BufferedBytes
        printfn "1 MiB published to 10 subscribers (%s): queued to %d, BufferedBytes right after %.2f MiB" (if direct then "direct" else "route") queued (float held / float mib)
        Expect.equal queued 10 "queued to all 10: ten copies would not fit a 2 MiB budget"
        Expect.isLessThanOrEqual held (mib + 16L) "at most one copy of the frame is held"
        for client in clients do
            let! kind, bytes = receive client
            Expect.equal kind WebSocketMessageType.Binary "binary"
            Expect.isTrue (bytes = message) "the whole message, unchanged"
        do! expectBudgetEmpty server "after every subscriber took the frame"
        for client in clients do client.Dispose()
    }

/// Non-readers of a busy topic beside readers, dropped at the budget (route or direct connections).
let private droppedAtBudget (direct: bool) =
    task {
        let budget = 2L * mib
        let closes = Collections.Concurrent.ConcurrentQueue()
        // MaxBufferedAmount (16 MiB) is far above the budget: only the budget can drop anything here.
        let! server = startIn direct (fun o -> o.MaxServerBufferedBytes <- budget; o.CloseTimeout <- TimeSpan.FromSeconds 1.0) (feedRoutes closes)
        use _ = server
        let! peak, lastQueued = busyTopic server budget 6 3 6000
        Expect.isLessThanOrEqual peak budget "BufferedBytes never above the budget"
        Expect.isGreaterThan peak (budget / 2L) "the non-readers did fill the budget (else this test proves nothing)"
        Expect.equal lastQueued 3 "at the end publishes reach only the three subscribers that read"
        do! expectBudgetEmpty server "after every client left"
    }

[<Tests>]
let tests =
    testSequenced
    <| testList "Budget: one server-wide budget bounds the bytes connections hold; a publish is one shared copy" [
        testCaseTask "a 1 MiB publish to 10 subscribers holds one copy: it fits a 2 MiB budget, and every subscriber gets it" (fun () ->
            oneCopyPerPublish false)

        testCaseTask "a 1 MiB publish holds one copy on direct connections too" (fun () -> oneCopyPerPublish true)

        testCaseTask "a 1 MiB broadcast to 10 connections holds one copy too" (fun () -> task {
            let closes = Collections.Concurrent.ConcurrentQueue()
            let! server = start (fun o -> o.MaxServerBufferedBytes <- 2L * mib) (feedRoutes closes)
            use _ = server
            let clients = ResizeArray<ClientWebSocket>()
            for _ in 1..10 do
                let! client = connect (server.WsUrl + "/echo")
                clients.Add client
            let! opened = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.ConnectionCount = 10)
            Expect.isTrue opened "all connected"
            let message = Array.init (int mib) (fun i -> byte (i * 13))
            let queued = server.Realtime.Broadcast("/echo", ReadOnlySpan message)
            Expect.equal queued 10 "queued to all 10"
            Expect.isLessThanOrEqual server.Realtime.BufferedBytes (mib + 16L) "at most one copy held"
            for client in clients do
                let! _, bytes = receive client
                Expect.isTrue (bytes = message) "the whole message, unchanged"
            do! expectBudgetEmpty server "after the broadcast was written"
            for client in clients do client.Dispose()
        })

        testCaseTask "a publish to 100 subscribers allocates no more on the publishing thread than to 1: nothing per recipient" (fun () -> task {
            let closes = Collections.Concurrent.ConcurrentQueue()
            let! server = start ignore (feedRoutes closes)
            use _ = server
            let readers = ResizeArray<Reader>()
            for _ in 1..100 do
                let! client = connect (server.WsUrl + "/feed?role=reader")
                readers.Add(Reader client)
            let! subscribed = eventually (TimeSpan.FromSeconds 20.0) (fun () -> server.Realtime.SubscriberCount "feed" = 100)
            Expect.isTrue subscribed "everyone subscribed"
            let payload = Encoding.UTF8.GetBytes(numbered 0 100)
            let publishAll (first: int) (count: int) =
                // The numbers go in the payload's first bytes, so the readers can check the order.
                let before = GC.GetAllocatedBytesForCurrentThread()
                for number in first .. first + count - 1 do
                    let text = Encoding.UTF8.GetBytes(string number + ":")
                    text.CopyTo(payload, 0)
                    server.Realtime.Publish("feed", ReadOnlySpan payload, MessageKind.Text) |> ignore
                GC.GetAllocatedBytesForCurrentThread() - before
            let waitFor (number: int) =
                task {
                    let! all = eventually (TimeSpan.FromSeconds 20.0) (fun () -> readers |> Seq.forall (fun reader -> reader.Received >= number))
                    Expect.isTrue all $"every subscriber received message {number}"
                }
            // Warm up: each connection's queues reach their steady size.
            for round in 0..9 do
                publishAll (round * 5 + 1) 5 |> ignore
                do! waitFor (round * 5 + 5)
            let mutable worst = 0L
            for round in 0..9 do
                let allocated = publishAll (51 + round * 5) 5
                worst <- max worst (allocated / 5L)
                do! waitFor (55 + round * 5)
            printfn "publish of 100 B to 100 subscribers: at most %d bytes allocated per publish on the publishing thread" worst
            // The message text numbers (string + bytes) and the one shared frame object are per
            // publish; a single small object per recipient would already be 100 x 24 bytes.
            Expect.isLessThan worst 1024L "well under one object per recipient per publish"
            for reader in readers do
                Expect.equal reader.OutOfOrder 0 "in order"
                reader.Client.Dispose()
        })

        testCaseTask "non-reading subscribers of a busy topic are dropped at the budget; the well-behaved lose nothing; the budget is never passed" (fun () ->
            droppedAtBudget false)

        testCaseTask "non-readers are dropped at the budget on direct connections too, the well-behaved lose nothing" (fun () -> droppedAtBudget true)

        testCaseTask "with CloseOnBackpressureLimit the non-readers are closed with 1008 instead, the well-behaved lose nothing" (fun () -> task {
            let budget = 2L * mib
            let closes = Collections.Concurrent.ConcurrentQueue()
            let! server =
                start
                    (fun o ->
                        o.MaxServerBufferedBytes <- budget
                        o.CloseOnBackpressureLimit <- true
                        o.CloseTimeout <- TimeSpan.FromSeconds 1.0)
                    (feedRoutes closes)
            use _ = server
            let! peak, lastQueued = busyTopic server budget 6 3 6000
            Expect.isLessThanOrEqual peak budget "BufferedBytes never above the budget"
            Expect.equal lastQueued 3 "at the end publishes reach only the three subscribers that read"
            let! closed = eventually (TimeSpan.FromSeconds 20.0) (fun () -> closes.Count = 9)
            Expect.isTrue closed "every connection ended"
            let codes = closes.ToArray()
            for role, code in codes do
                if role = "slow" then Expect.equal code 1008 "a non-reader was closed for the budget"
                else Expect.equal code 1000 "a reader ended normally"
            do! expectBudgetEmpty server "after every client left"
        })

        testCaseTask "a connection with context takeover both ways holds its compressor and inflater in the budget, exactly, until it ends" (fun () -> task {
            let! server =
                start
                    (fun o -> o.PerMessageDeflate <- true)
                    (fun app ->
                        app.MapRealtime(
                            "/takeover",
                            RealtimeHandlers<obj>(Message = fun ws message -> ws.Send message |> ignore),
                            fun o ->
                                o.ServerNoContextTakeover <- false
                                o.ClientNoContextTakeover <- false)
                        |> ignore)
            use _ = server
            let client = new ClientWebSocket()
            client.Options.DangerousDeflateOptions <- WebSocketDeflateOptions(ServerContextTakeover = true, ClientContextTakeover = true)
            do! client.ConnectAsync(Uri(server.WsUrl + "/takeover"), CancellationToken.None)
            for i in 1..5 do
                let text = String.replicate 200 $"message {i} "
                do! sendText client text
                let! echoed = receiveText client
                Expect.equal echoed text "echoed through both compressors"
            let expected = 260L * 1024L + 40L * 1024L
            let! settled = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.BufferedBytes = expected)
            Expect.isTrue settled $"the compressor (260 KiB) and the inflater (40 KiB) are held, nothing else (BufferedBytes {server.Realtime.BufferedBytes})"
            // The same figure as the gauge realtime.buffered.bytes of the server's meter.
            let meter = (server.Realtime :?> RealtimeServer).Metrics.Meter
            let mutable gauge = -1L
            use listener = new Diagnostics.Metrics.MeterListener()
            listener.InstrumentPublished <- fun instrument l ->
                if Object.ReferenceEquals(instrument.Meter, meter) && instrument.Name = "realtime.buffered.bytes" then l.EnableMeasurementEvents instrument
            listener.SetMeasurementEventCallback<int64>(fun _ value _ _ -> gauge <- value)
            listener.Start()
            listener.RecordObservableInstruments()
            Expect.equal gauge expected "the gauge realtime.buffered.bytes tells the same"
            do! client.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            client.Dispose()
            do! expectBudgetEmpty server "after the connection ended"
        })

        testCaseTask "a fragmented message that would pass the budget closes its connection with 1009; another connection is unaffected" (fun () -> task {
            let closes = Collections.Concurrent.ConcurrentQueue()
            let! server = start (fun o -> o.MaxServerBufferedBytes <- mib) (feedRoutes closes)
            use _ = server
            use! other = connect (server.WsUrl + "/echo")
            use! sender = RawClient.connect server.Port "/echo"
            let fragment = Array.create (256 * 1024) (byte 'a')
            do! sender.SendFrame(Opcode.Text, fragment, fin = false)
            let! held = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.BufferedBytes >= int64 fragment.Length)
            Expect.isTrue held "the unfinished message counts against the budget"
            for _ in 1..4 do
                try do! sender.SendFrame(Opcode.Continuation, fragment, fin = false)
                with _ -> ()
            let! code = sender.ReceiveClose(TimeSpan.FromSeconds 10.0)
            Expect.equal code (Some CloseCode.MessageTooBig) "1009: the message does not fit the server's budget"
            do! sendText other "still here"
            let! echoed = receiveText other
            Expect.equal echoed "still here" "the other connection still works"
            (sender :> IDisposable).Dispose()
            do! other.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            do! expectBudgetEmpty server "after both left"
        })

        testCaseTask "an unfinished compressed message kept open with empty continuations counts against the budget and is closed with 1008 once it made no progress for the idle timeout" (fun () -> task {
            let closes = Collections.Concurrent.ConcurrentQueue()
            let! server =
                start
                    (fun o ->
                        o.PerMessageDeflate <- true
                        o.IdleTimeout <- TimeSpan.FromSeconds 1.0
                        o.CloseTimeout <- TimeSpan.FromSeconds 1.0)
                    (feedRoutes closes)
            use _ = server
            let! tcp, stream, head = RawClient.handshakeRaw server.Port (RawClient.upgradeRequest "/echo" "Sec-WebSocket-Extensions: permessage-deflate\r\n")
            Expect.stringContains head "permessage-deflate" "compression agreed"
            use connection = new RawClient.RawConnection(tcp, stream, head)
            let inflated = Array.create (512 * 1024) (byte 'z')
            let compressed = deflate inflated
            Expect.isLessThan compressed.Length 8192 "a small frame that inflates to 512 KiB"
            do! connection.SendFrame(Opcode.Binary, compressed, fin = false, rsv1 = true)
            let! counted = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.BufferedBytes >= int64 inflated.Length)
            Expect.isTrue counted $"the inflated bytes count against the budget (BufferedBytes {server.Realtime.BufferedBytes})"
            let clock = Diagnostics.Stopwatch.StartNew()
            let keepAlive =
                task {
                    // An empty continuation every 100 ms: activity, but no progress. Bounded: 10 s.
                    try
                        while clock.Elapsed < TimeSpan.FromSeconds 10.0 && not connection.TransportClosed do
                            do! connection.SendFrame(Opcode.Continuation, [||], fin = false)
                            do! Task.Delay 100
                    with _ -> ()
                }
            let! code = connection.ReceiveClose(TimeSpan.FromSeconds 10.0)
            let elapsed = clock.Elapsed
            Expect.equal code (Some CloseCode.PolicyViolation) "1008: no payload for longer than the idle timeout, only empty continuations"
            Expect.isLessThan elapsed (TimeSpan.FromSeconds 5.0) "closed soon after the idle timeout, despite the continuations"
            do! keepAlive
            (connection :> IDisposable).Dispose()
            do! expectBudgetEmpty server "after the connection ended"
        })
    ]

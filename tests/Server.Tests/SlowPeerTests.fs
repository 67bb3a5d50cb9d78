/// Slow and stalled peers cost bounded memory and time.
module Realtime.Server.Tests.SlowPeerTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.UpgradeAttempts

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

        // A client that stops in the middle of a frame, and the close frame's description.
        for where, stalledBytes, closeDescription in
            [ // 5 of the 8 header bytes of a masked binary frame with a 16-bit length.
              "a frame header", [| 0x82uy; 0xFEuy; 0x01uy; 0x00uy; 0x11uy |], "a close frame with 1001 (pings before it are skipped)"
              // A whole header announcing 1000 bytes, then only 100 of them.
              "a payload",
              Array.append (Frame.encodeHeader { Frame.header Opcode.Binary 1000L with Masked = true; MaskKey = 0x0A0B0C0Du }) (Array.zeroCreate 100),
              "a close frame with 1001" ] do
            testCaseTask $"a client that stalls inside {where} is closed by the idle timeout (1001) and its TCP connection ends" (fun () -> task {
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
                do! raw.SendRaw stalledBytes
                let clock = Stopwatch.StartNew()
                let! code = raw.ReceiveClose(seconds 10.0)
                Expect.equal code (Some 1001us) closeDescription
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

/// Send results, BufferedAmount and Drain with a client that stops reading: Backpressure, then
/// Dropped, and Drain when it reads again.
module Realtime.Server.Tests.BackpressureTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing

/// Connects a raw client whose TCP receive window is small (set before connecting), so that the
/// kernel holds little of what the server writes to a client that stops reading.
let private connectRawSmallWindow (port: int) (path: string) : Task<RawClient.RawConnection> =
    task {
        let! tcp, stream, head =
            RawClient.handshakeRawWith (fun tcp -> tcp.ReceiveBufferSize <- 8192) port (RawClient.upgradeRequest path "")
        if not (head.StartsWith "HTTP/1.1 101") then failtestf "expected 101, got: %s" head
        return new RawClient.RawConnection(tcp, stream, head)
    }

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

/// Fuzzed frames (random and mutated, seeded) from many connections never hurt the server or its
/// other clients.
module Realtime.Server.Tests.FuzzTests

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
open Microsoft.Extensions.Logging
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.TestLogs
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.UpgradeAttempts
open Realtime.TestSupport.SuiteTransport

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
        testCaseTask ((if direct then "on direct connections: " else suiteTransportName + ": ") + "300 connections of random and mutated frames (12 at a time, at most 8 s) beside 4 echo clients: every echo arrives in order, no error is logged, connections and memory return to their baseline") (fun () -> task {
            let seed = fuzzSeed
            printfn "fuzz seed %d (set REALTIME_FUZZ_SEED to reproduce another run)" seed
            let mutable logs = Unchecked.defaultof<CapturedLogs>
            let! server =
                startIn direct
                    (fun options ->
                        options.MaxPayloadLength <- 64 * 1024
                        options.PerMessageDeflate <- true
                        options.IdleTimeout <- seconds 3.0
                        options.CloseTimeout <- seconds 1.0)
                    (fun app ->
                        logs <- captureLogs LogLevel.Error app
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
            let errors = logs.Lines
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

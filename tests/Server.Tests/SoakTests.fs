/// The hostile soak: one bounded run (about 60 s) of mixed attackers against the soak server
/// (SoakServer, in a process of its own) beside well-behaved clients that chat the whole time.
/// Attackers and chatters alternate between the endpoint on direct connections and the one
/// through Kestrel's route.
module Realtime.Server.Tests.SoakTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.IO.Compression
open System.Net
open System.Net.Http
open System.Net.Sockets
open System.Net.WebSockets
open System.Text
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Expecto
open Realtime.Protocol
open Realtime.Server.Tests.TestHost

let private seconds (value: float) = TimeSpan.FromSeconds value

/// How long the attack runs; REALTIME_SOAK_SECONDS changes it (for a quick run while working on it).
let private attackTime =
    match Environment.GetEnvironmentVariable "REALTIME_SOAK_SECONDS" with
    | null
    | "" -> seconds 60.0
    | value -> seconds (float value)

/// Attackers of each kind running at once (bounded for a 2-core machine and 20,000 open files).
let private slowHeads, headerFloods, zipBombs = 6, 2, 2
let private unfinishedFragmented, unfinishedCompressed = 3, 3
let private nonReaders, churners, pingFlooders, oversizedRooms = 6, 2, 2, 1

/// Well-behaved clients in the busy room, each sending a numbered message every ~20 ms.
let private goodClients = 8

let private busyRoom = "busy"

/// What RSS may grow by beyond the budget. The budget counts bytes the server holds for its
/// clients; the process also keeps: the arrays those bytes live in, which ArrayPool rounds up to a
/// power of two (an inflater rents MaxPayloadLength + 1 bytes: a 2 MiB array for a 1 MiB limit),
/// so up to twice the bytes counted; the GC's headroom (workstation GC lets gen0 grow to a budget
/// sized from the CPU cache before it collects, and keeps freed segments a while); ArrayPool and
/// Kestrel's memory pool keeping the buffers given back (ArrayPool trims only arrays unused for
/// about a minute); thread-pool threads added under load; code the attack paths make the JIT
/// compile; and zlib's native state for the inflaters in use. Measured on the 2-core machine: RSS grew
/// 55-62 MiB in runs alone and up to 71 MiB beside other work (a managed heap of 60 MiB, garbage
/// included, before its next collection), of which about 29 MiB was still held after a full GC
/// with no connection left (pooled arrays).
let private marginBytes = 80L * 1024L * 1024L

let private mib (bytes: int64) = float bytes / 1048576.0

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// The soak server's resident set (VmRSS) and its high-water mark (VmHWM), in bytes.
let private memoryOf (pid: int) : (int64 * int64) option =
    try
        let lines = File.ReadAllLines $"/proc/{pid}/status"
        let field (name: string) =
            lines
            |> Array.tryFind (fun line -> line.StartsWith(name + ":"))
            |> Option.map (fun line -> int64 (line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024L)
        match field "VmRSS", field "VmHWM" with
        | Some rss, Some hwm -> Some(rss, hwm)
        | _ -> None
    with _ -> None

/// Samples the soak server's RSS every 100 ms until stopped.
type private RssSampler(pid: int) =
    let mutable latest = 0L
    let mutable peak = 0L
    let mutable samples = 0
    let stop = new CancellationTokenSource()
    let sampling =
        task {
            while not stop.IsCancellationRequested do
                match memoryOf pid with
                | Some(rss, _) ->
                    latest <- rss
                    if rss > peak then peak <- rss
                    samples <- samples + 1
                | None -> ()
                try do! Task.Delay(100, stop.Token) with :? OperationCanceledException -> ()
        }

    member _.Latest = latest
    member _.Samples = samples

    /// Forgets the peak so far (the peak is then taken from the next samples on).
    member _.ResetPeak() = peak <- latest

    member _.Peak = peak

    member _.StopAsync() : Task =
        task {
            stop.Cancel()
            do! sampling
        }

/// The soak server's /stats.
let private statsOf (http: HttpClient) (port: int) : Task<JsonElement> =
    task {
        let! text = http.GetStringAsync $"http://127.0.0.1:{port}/stats?room={busyRoom}"
        return JsonDocument.Parse(text).RootElement.Clone()
    }

/// The soak server's managed heap after a full compacting collection: what it still references.
let private liveHeapOf (http: HttpClient) (port: int) : Task<int64> =
    task {
        let! text = http.GetStringAsync $"http://127.0.0.1:{port}/stats?collect=1"
        return JsonDocument.Parse(text).RootElement.GetProperty("managedHeapBytes").GetInt64()
    }

/// Starts `Server.Tests.dll --soak-server PORT` (this program, as the soak server) and waits (at
/// most 60 s) until /stats answers.
let private startSoakServer (http: HttpClient) : Task<Process * StringBuilder * int> =
    task {
        let port = freePort ()
        let dll = Reflection.Assembly.GetExecutingAssembly().Location
        let server, output = startDotnet $"exec \"{dll}\" --soak-server {port}"
        let deadline = DateTime.UtcNow + seconds 60.0
        let mutable answering = false
        while not answering && DateTime.UtcNow < deadline && not server.HasExited do
            try
                let! _ = statsOf http port
                answering <- true
            with _ -> do! Task.Delay 100
        if not answering then
            stopProcess server
            failtestf "the soak server did not answer on %d within 60 s:\n%O" port output
        return server, output, port
    }

// ---------------------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------------------

/// Alternates attacks between direct connections and the route.
let private pathFor (index: int) = if index % 2 = 0 then SoakServer.directPath else SoakServer.routePath

let private target (index: int) (room: string) = $"{pathFor index}?room={room}&name=attacker{index}"

let private statusOf (head: string) =
    if head.StartsWith "HTTP/1.1 " && head.Length >= 12 then int (head.Substring(9, 3)) else 0

let private deflateOffer = "Sec-WebSocket-Extensions: permessage-deflate\r\n"

/// Raw deflate, flushed but not finished, with the 00 00 FF FF tail removed (RFC 7692 §7.2.1).
let private deflate (data: byte[]) : byte[] =
    use out = new MemoryStream()
    use compressor = new DeflateStream(out, CompressionLevel.SmallestSize, true)
    compressor.Write(data, 0, data.Length)
    compressor.Flush()
    let bytes = out.ToArray()
    bytes[.. bytes.Length - 5]

/// 16 MiB of zeros in a few KiB: inflates far past MaxPayloadLength.
let private zipBomb = lazy (RawClient.clientFrame Opcode.Binary true true (deflate (Array.zeroCreate (16 <<< 20))))

/// The first fragment of a binary message (3/4 of MaxPayloadLength once inflated), plain or compressed.
let private firstFragment =
    lazy
        (let data = Array.init (SoakServer.maxPayloadLength * 3 / 4) (fun i -> byte (i * 7 + i / 251))
         RawClient.clientFrame Opcode.Binary false false data, RawClient.clientFrame Opcode.Binary false true (deflate data))

let private emptyContinuation = lazy (RawClient.clientFrame Opcode.Continuation false false [||])

/// 64 pings of 125 bytes (the largest a control frame may carry, RFC 6455 §5.5) in one write.
let private pingBatch = lazy (Array.concat (Array.replicate 64 (RawClient.clientFrame Opcode.Ping true false (Array.create 125 0x70uy))))

/// An upgrade request with 10,000 header lines (Kestrel allows 100).
let private headerFlood (target: string) =
    let request = StringBuilder(RawClient.upgradeRequest target "")
    request.Length <- request.Length - 2
    for line in 1..10_000 do
        request.Append($"X-Flood-{line}: {line}\r\n") |> ignore
    request.Append("\r\n") |> ignore
    Encoding.ASCII.GetBytes(request.ToString())

/// Connects and writes the request; returns the connection and the response head.
let private send (port: int) (smallWindow: bool) (request: byte[]) : Task<TcpClient * NetworkStream * string> =
    task {
        let tcp = new TcpClient()
        // A small receive window (set before connecting) keeps what the kernel takes for a
        // client that never reads small, so the server's own buffer is what fills.
        if smallWindow then tcp.ReceiveBufferSize <- 4096
        try
            do! tcp.ConnectAsync(IPAddress.Loopback, port)
            tcp.NoDelay <- true
            let stream = tcp.GetStream()
            do! stream.WriteAsync(request, 0, request.Length)
            let! head = RawClient.readResponseHead stream
            return tcp, stream, head
        with error ->
            tcp.Dispose()
            return raise error
    }

/// Opens a WebSocket to `target`; an Error naming the status (the connection closed) when the answer is not 101.
let private openSocket (port: int) (smallWindow: bool) (target: string) (extra: string) : Task<Result<RawClient.RawConnection, string>> =
    task {
        let! tcp, stream, head = send port smallWindow (Encoding.ASCII.GetBytes(RawClient.upgradeRequest target extra))
        if statusOf head = 101 then
            return Ok(new RawClient.RawConnection(tcp, stream, head))
        else
            tcp.Dispose()
            return Error $"refused the upgrade with {statusOf head}"
    }

/// Reads and discards until the server ends the connection (true) or the time is up (false).
let private untilEnded (stream: NetworkStream) (timeout: TimeSpan) : Task<bool * string> =
    task {
        use cancel = new CancellationTokenSource(timeout)
        let buffer = Array.zeroCreate<byte> 16384
        let first = StringBuilder()
        let mutable result = None
        while result.IsNone do
            try
                let! read = stream.ReadAsync(buffer, 0, buffer.Length, cancel.Token)
                if read = 0 then result <- Some true
                elif first.Length < 64 then first.Append(Encoding.ASCII.GetString(buffer, 0, min read 64)) |> ignore
            with
            | :? OperationCanceledException -> result <- Some false
            | :? IOException -> result <- Some true
        return result.Value, first.ToString()
    }

/// Writes, treating a connection the server ended as the outcome it is.
let private tryWrite (stream: NetworkStream) (bytes: byte[]) (cancel: CancellationToken) : Task<bool> =
    task {
        try
            do! stream.WriteAsync(bytes, 0, bytes.Length, cancel)
            return true
        with
        | :? IOException
        | :? ObjectDisposedException -> return false
    }

// ---------------------------------------------------------------------------------------------
// Attacks: each one connection, bounded in time, returning what the server did
// ---------------------------------------------------------------------------------------------

/// The request head a byte every 500 ms (it would take over a minute); Kestrel's header timeout
/// (HandshakeTimeout, 3 s) must cut it off.
let private slowHead (port: int) (index: int) : Task<string> =
    task {
        use tcp = new TcpClient()
        do! tcp.ConnectAsync(IPAddress.Loopback, port)
        tcp.NoDelay <- true
        let stream = tcp.GetStream()
        let request = Encoding.ASCII.GetBytes(RawClient.upgradeRequest (target index "slow") "")
        use stop = new CancellationTokenSource()
        let trickle =
            task {
                try
                    let mutable next = 0
                    while next < request.Length && not stop.IsCancellationRequested do
                        do! stream.WriteAsync(request, next, 1, stop.Token)
                        next <- next + 1
                        do! Task.Delay(500, stop.Token)
                with _ -> ()
            }
        let! ended, received = untilEnded stream (seconds 12.0)
        stop.Cancel()
        do! trickle
        return
            if not ended then "not cut off within 12 s"
            elif received = "" then "cut off"
            else $"cut off with {statusOf received}"
    }

/// 10,000 header lines in one request.
let private headerFloodAttack (requests: byte[][]) (port: int) (index: int) : Task<string> =
    task {
        let! tcp, _, head = send port false requests[index % 2]
        tcp.Dispose()
        return if head = "" then "closed without an answer" else $"answered {statusOf head}"
    }

/// permessage-deflate negotiated, then one small compressed frame that inflates to 16 MiB.
let private zipBombAttack (port: int) (index: int) : Task<string> =
    task {
        match! openSocket port false (target index "bombs") deflateOffer with
        | Error refused -> return refused
        | Ok raw ->
            use raw = raw
            if not (raw.HandshakeResponse.Contains "permessage-deflate") then return "compression not negotiated"
            else
                do! raw.SendRaw zipBomb.Value
                match! raw.ReceiveClose(seconds 10.0) with
                | Some code -> return $"closed with {code}"
                | None -> return "ended without a close frame"
    }

/// The first fragment of a large message (plain or compressed), then either nothing (the idle
/// timeout must close it) or empty continuations every 500 ms for up to 8 s (activity without
/// progress: the server must end it once IdleTimeout passes with no payload), then the attacker
/// hangs up.
let private unfinishedAttack (compressed: bool) (port: int) (index: int) : Task<string> =
    task {
        let room = if compressed then "unfinished-deflate" else "unfinished"
        match! openSocket port false (target index room) (if compressed then deflateOffer else "") with
        | Error refused -> return refused
        | Ok raw ->
            use raw = raw
            let plain, deflated = firstFragment.Value
            do! raw.SendRaw(if compressed then deflated else plain)
            if index % 4 < 2 then
                // Silent: the server pings after IdleTimeout and closes with 1001 after as long again.
                match! raw.ReceiveClose(seconds 12.0) with
                | Some code -> return $"silent: closed with {code}"
                | None -> return "silent: ended without a close frame"
            else
                let stream = raw.Tcp.GetStream()
                let clock = Stopwatch.StartNew()
                let mutable open' = true
                while open' && clock.Elapsed < seconds 8.0 do
                    let! written = tryWrite stream emptyContinuation.Value CancellationToken.None
                    open' <- written
                    if open' then do! Task.Delay 500
                return if open' then "kept alive 8 s, then hung up" else "kept alive: ended by the server"
    }

/// Joins the busy room and never reads; the server fills its outgoing buffer to MaxBufferedAmount,
/// then drops what the room publishes to it, and closes it as idle.
let private nonReaderAttack (port: int) (index: int) : Task<string> =
    task {
        match! openSocket port true (target index busyRoom) "" with
        | Error refused -> return refused
        | Ok raw ->
            use raw = raw
            // Idle: a ping after 3 s, 1001 after 6 s, the TCP connection dropped CloseTimeout (2 s) later.
            do! Task.Delay(seconds 12.0)
            let! ended, _ = untilEnded (raw.Tcp.GetStream()) (seconds 5.0)
            return if ended then "ended by the server" else "still open after 12 s"
    }

/// Opens and ends a connection: a closing handshake, an abort after the 101 (FIN or RST), or a
/// reset in the middle of the request head.
let private churnAttack (port: int) (index: int) : Task<string> =
    task {
        let! outcome =
            task {
                match index % 4 with
                | 0 ->
                    match! openSocket port false (target index "churn") "" with
                    | Error refused -> return refused
                    | Ok raw ->
                        use raw = raw
                        do! raw.SendClose(1000us, "bye")
                        match! raw.ReceiveClose(seconds 10.0) with
                        | Some code -> return $"closing handshake answered with {code}"
                        | None -> return "closing handshake not answered"
                | 1
                | 2 ->
                    match! openSocket port false (target index "churn") "" with
                    | Error refused -> return refused
                    | Ok raw ->
                        if index % 4 = 2 then raw.Tcp.Client.LingerState <- LingerOption(true, 0)
                        (raw :> IDisposable).Dispose()
                        return if index % 4 = 2 then "reset after the 101" else "hung up after the 101"
                | _ ->
                    use tcp = new TcpClient()
                    do! tcp.ConnectAsync(IPAddress.Loopback, port)
                    let half = Encoding.ASCII.GetBytes(RawClient.upgradeRequest (target index "churn") "")
                    do! tcp.GetStream().WriteAsync(half, 0, half.Length / 2)
                    tcp.Client.LingerState <- LingerOption(true, 0)
                    return "reset during the request head"
            }
        do! Task.Delay 20
        return outcome
    }

/// Pings as fast as the server takes them for 8 s, never reading a pong; returns the outcome and
/// how many pings were written.
let private pingFloodAttack (pings: int64 ref) (port: int) (index: int) : Task<string> =
    task {
        match! openSocket port true (target index "pings") "" with
        | Error refused -> return refused
        | Ok raw ->
            use raw = raw
            let stream = raw.Tcp.GetStream()
            use hold = new CancellationTokenSource(seconds 8.0)
            let batch = pingBatch.Value
            let mutable outcome = None
            while outcome.IsNone do
                try
                    do! stream.WriteAsync(batch, 0, batch.Length, hold.Token)
                    Interlocked.Add(&pings.contents, 64L) |> ignore
                    if hold.IsCancellationRequested then outcome <- Some "never held back in 8 s"
                with
                | :? OperationCanceledException -> outcome <- Some "held back by TCP, then hung up"
                | :? IOException -> outcome <- Some "ended by the server"
            return outcome.Value
    }

/// A room name of 65 to 4,064 ASCII characters, or (every third) of fewer characters than the
/// limit whose UTF-8 bytes pass it (MaxTopicLength counts bytes).
let private oversizedRoomAttack (port: int) (index: int) : Task<string> =
    task {
        let room =
            if index % 3 = 2 then Uri.EscapeDataString(String('é', SoakServer.maxRoomLength / 2 + 1 + index % 8))
            else String('r', SoakServer.maxRoomLength + 1 + (index * 7919) % 4000)
        let! tcp, _, head = send port false (Encoding.ASCII.GetBytes(RawClient.upgradeRequest (target index room) ""))
        tcp.Dispose()
        do! Task.Delay 10
        return if head = "" then "closed without an answer" else $"answered {statusOf head}"
    }

/// Counts of outcomes per attack kind.
type private Tally() =
    let counts = ConcurrentDictionary<string, ConcurrentDictionary<string, int>>()

    member _.Record(kind: string, outcome: string) =
        counts.GetOrAdd(kind, fun _ -> ConcurrentDictionary()).AddOrUpdate(outcome, 1, fun _ n -> n + 1) |> ignore

    /// How many attacks of a kind were made.
    member _.Count(kind: string) =
        match counts.TryGetValue kind with
        | true, outcomes -> outcomes |> Seq.sumBy (fun pair -> pair.Value)
        | _ -> 0

    member _.Outcomes(kind: string) : (string * int) list =
        match counts.TryGetValue kind with
        | true, outcomes -> outcomes |> Seq.map (fun pair -> pair.Key, pair.Value) |> Seq.sortByDescending snd |> List.ofSeq
        | _ -> []

/// `concurrency` loops of one attack kind, each starting attacks while one of `lasts` (the longest
/// an attack of the kind runs when the server does its part) can still end by `until`; each
/// attack bounded by 30 s.
let private attackers (tally: Tally) (kind: string) (concurrency: int) (lasts: TimeSpan) (until: DateTime) (attack: int -> Task<string>) : Task list =
    [ for worker in 0 .. concurrency - 1 ->
          task {
              let mutable round = 0
              while DateTime.UtcNow + lasts < until && round < 100_000 do
                  let index = round * concurrency + worker
                  round <- round + 1
                  let! outcome =
                      task {
                          try
                              return! (attack index).WaitAsync(seconds 30.0)
                          with
                          | :? TimeoutException -> return "the attack did not finish in 30 s"
                          | :? IOException
                          | :? SocketException -> return "connection refused or reset"
                          | error -> return $"client failure: {error.GetType().Name}: {error.Message}"
                      }
                  tally.Record(kind, outcome)
          }
          :> Task ]

// ---------------------------------------------------------------------------------------------
// Well-behaved clients
// ---------------------------------------------------------------------------------------------

/// A chatter: sends "good SENDER N padding" and checks that every other chatter's messages arrive
/// in order, none missing, none twice.
type private Chatter(index: int, socket: ClientWebSocket) =
    let received = Array.zeroCreate<int> goodClients
    let problems = ConcurrentQueue<string>()
    let mutable sent = 0
    let mutable delivered = 0L
    let padding = String('x', 1000)

    member _.Index = index
    member _.Socket = socket
    member _.Sent = Volatile.Read &sent
    /// The highest number received from `sender`.
    member _.Received(sender: int) = Volatile.Read &received[sender]

    /// How many messages of other chatters arrived.
    member _.Delivered = Interlocked.Read &delivered
    member _.Problems = problems.ToArray()

    member _.Problem(text: string) = problems.Enqueue $"chatter {index}: {text}"

    /// Sends a numbered message every ~20 ms until `until`.
    member this.Talk(until: DateTime) : Task =
        task {
            try
                while DateTime.UtcNow < until do
                    let bytes = Encoding.UTF8.GetBytes $"good {index} {sent + 1} {padding}"
                    use cancel = new CancellationTokenSource(seconds 15.0)
                    do! socket.SendAsync(ArraySegment bytes, WebSocketMessageType.Text, true, cancel.Token)
                    Volatile.Write(&sent, sent + 1)
                    do! Task.Delay 20
            with error -> this.Problem $"sending failed after {sent} messages: {error.Message}"
        }

    /// Reads every message until the server's close frame.
    member this.Listen() : Task =
        task {
            let buffer = Array.zeroCreate<byte> 65536
            use message = new MemoryStream()
            let mutable listening = true
            try
                while listening do
                    use cancel = new CancellationTokenSource(seconds 30.0)
                    let! result = socket.ReceiveAsync(ArraySegment buffer, cancel.Token)
                    if result.MessageType = WebSocketMessageType.Close then
                        listening <- false
                        if socket.CloseStatus <> Nullable WebSocketCloseStatus.NormalClosure then
                            this.Problem $"closed by the server with {socket.CloseStatus} {socket.CloseStatusDescription}"
                    else
                        message.Write(buffer, 0, result.Count)
                        if result.EndOfMessage then
                            let text = Encoding.UTF8.GetString(message.GetBuffer(), 0, int message.Length)
                            message.SetLength 0L
                            match text.Split(' ', 4) with
                            | [| "good"; sender; number; _ |] when int sender <> index && int sender >= 0 && int sender < goodClients ->
                                let sender, number = int sender, int number
                                let expected = received[sender] + 1
                                Interlocked.Increment &delivered |> ignore
                                if number <> expected then this.Problem $"from chatter {sender} expected #{expected}, got #{number}"
                                Volatile.Write(&received[sender], max number received[sender])
                            | _ -> this.Problem $"unexpected message: {text.Substring(0, min 60 text.Length)}"
            with error -> this.Problem $"receiving failed: {error.Message}"
        }

let private connectChatter (port: int) (index: int) : Task<Chatter> =
    task {
        let socket = new ClientWebSocket()
        // Half of them negotiate permessage-deflate; half go through the route.
        if index % 4 >= 2 then socket.Options.DangerousDeflateOptions <- WebSocketDeflateOptions()
        use cancel = new CancellationTokenSource(seconds 15.0)
        do! socket.ConnectAsync(Uri $"ws://127.0.0.1:{port}{pathFor index}?room={busyRoom}&name=good{index}", cancel.Token)
        return Chatter(index, socket)
    }

// ---------------------------------------------------------------------------------------------
// The soak
// ---------------------------------------------------------------------------------------------

/// Each kind: how many at once, and how long one attack lasts when the server does its part
/// (a slow head is cut off in about HandshakeTimeout; an idle connection is closed in about twice
/// IdleTimeout plus CloseTimeout; the others hold for fixed times or end at once).
let private kinds =
    [ "slow request heads", slowHeads, seconds 5.0
      "header floods", headerFloods, TimeSpan.Zero
      "zip bombs", zipBombs, TimeSpan.Zero
      "unfinished fragmented", unfinishedFragmented, seconds 9.0
      "unfinished compressed", unfinishedCompressed, seconds 9.0
      "non-reading subscribers", nonReaders, seconds 13.0
      "connect/close churn", churners, TimeSpan.Zero
      "ping floods", pingFlooders, seconds 8.0
      "oversized room names", oversizedRooms, TimeSpan.Zero ]

/// Outcomes each kind may end with; anything else is a failure.
let private allowed (kind: string) (outcome: string) =
    match kind with
    | "slow request heads" -> outcome = "cut off" || outcome = "cut off with 408"
    | "header floods" -> outcome = "answered 431" || outcome = "closed without an answer"
    | "zip bombs" -> outcome = "closed with 1009"
    | "unfinished fragmented"
    | "unfinished compressed" ->
        // Kept alive by empty continuations, the message makes no progress: closed (1008) after IdleTimeout.
        outcome = "silent: closed with 1001" || outcome = "kept alive: ended by the server"
    | "non-reading subscribers" -> outcome = "ended by the server"
    | "connect/close churn" ->
        List.contains outcome [ "closing handshake answered with 1000"; "hung up after the 101"; "reset after the 101"; "reset during the request head" ]
    | "ping floods" -> outcome = "held back by TCP, then hung up" || outcome = "ended by the server"
    | "oversized room names" -> outcome = "answered 400"
    | _ -> false

let private soak () : Task =
    task {
        use http = new HttpClient(Timeout = seconds 5.0)
        let! server, output, port = startSoakServer http
        try
            let sampler = RssSampler(server.Id)
            // Chatters first: all of them in the room before anyone talks, so every message has
            // every other chatter as a recipient.
            let! chatters = Task.WhenAll [ for index in 0 .. goodClients - 1 -> connectChatter port index ]
            let listening = [ for chatter in chatters -> chatter.Listen() ]
            let mutable subscribed = 0
            let joinedBy = DateTime.UtcNow + seconds 15.0
            while subscribed < goodClients && DateTime.UtcNow < joinedBy do
                let! stats = statsOf http port
                subscribed <- stats.GetProperty("subscribers").GetInt32()
                if subscribed < goodClients then do! Task.Delay 50
            Expect.equal subscribed goodClients "every chatter joined the busy room"

            let warmUp = seconds 3.0
            let attackStart = DateTime.UtcNow + warmUp
            let attackEnd = attackStart + attackTime
            let talking = [ for chatter in chatters -> chatter.Talk attackEnd ]
            do! Task.Delay warmUp
            let baseline = sampler.Latest
            let! baselineStats = statsOf http port
            let! liveBefore = liveHeapOf http port
            sampler.ResetPeak()

            let tally = Tally()
            let pings = ref 0L
            let floods = [| headerFlood (target 0 "floods"); headerFlood (target 1 "floods") |]
            let attack (kind: string) (run: int -> Task<string>) =
                let _, concurrency, lasts = kinds |> List.find (fun (name, _, _) -> name = kind)
                attackers tally kind concurrency lasts attackEnd run
            let clock = Stopwatch.StartNew()
            let attacks =
                [ yield! attack "slow request heads" (slowHead port)
                  yield! attack "header floods" (headerFloodAttack floods port)
                  yield! attack "zip bombs" (zipBombAttack port)
                  yield! attack "unfinished fragmented" (unfinishedAttack false port)
                  yield! attack "unfinished compressed" (unfinishedAttack true port)
                  yield! attack "non-reading subscribers" (nonReaderAttack port)
                  yield! attack "connect/close churn" (churnAttack port)
                  yield! attack "ping floods" (pingFloodAttack pings port)
                  yield! attack "oversized room names" (oversizedRoomAttack port) ]
            do! Task.WhenAll(talking)
            do! Task.WhenAll(attacks)
            let attacking = clock.Elapsed

            // Drain: every chatter has every other chatter's last message.
            let delivered () =
                chatters |> Array.forall (fun receiver -> chatters |> Array.forall (fun sender -> sender.Index = receiver.Index || receiver.Received sender.Index >= sender.Sent))
            let! caughtUp = eventually (seconds 15.0) delivered
            for chatter in chatters do
                use cancel = new CancellationTokenSource(seconds 10.0)
                try do! chatter.Socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "done", cancel.Token)
                with error -> chatter.Problem $"closing failed: {error.Message}"
            let! _ = Task.WhenAll(listening).WaitAsync(seconds 15.0)
            for chatter in chatters do chatter.Socket.Dispose()

            let mutable connections = -1
            let mutable finalStats = Unchecked.defaultof<JsonElement>
            let zeroBy = DateTime.UtcNow + seconds 15.0
            while connections <> 0 && DateTime.UtcNow < zeroBy do
                let! stats = statsOf http port
                finalStats <- stats
                connections <- stats.GetProperty("connectionCount").GetInt32()
                if connections <> 0 then do! Task.Delay 100
            let alive = not server.HasExited
            do! sampler.StopAsync()
            let! liveAfter = liveHeapOf http port
            let peak = sampler.Peak
            let highWater = memoryOf server.Id |> Option.map snd |> Option.defaultValue 0L

            let lines = (lock output (fun () -> output.ToString())).Split('\n')
            let errors = lines |> Array.filter (fun line -> line.StartsWith "fail:" || line.StartsWith "crit:")
            let warnings = lines |> Array.filter (fun line -> line.StartsWith "warn:")
            let problems = chatters |> Array.collect (fun chatter -> chatter.Problems)
            let sent = chatters |> Array.sumBy (fun chatter -> int64 chatter.Sent)
            let expected = sent * int64 (goodClients - 1)
            let received = chatters |> Array.sumBy (fun chatter -> chatter.Delivered)
            let budget = SoakServer.budgetBytes
            let summary = StringBuilder()
            let line (text: string) = summary.AppendLine text |> ignore
            line $"soak: {attacking.TotalSeconds:F1} s of attacks (direct connections and the route alternating) beside {goodClients} chatters"
            for kind, concurrency, _ in kinds do
                let count = tally.Count kind
                let outcomes = tally.Outcomes kind |> List.map (fun (outcome, n) -> $"{n} {outcome}") |> String.concat ", "
                line $"  {kind,-24} x{concurrency}: {count,6} attacks, {float count / attackTime.TotalSeconds,7:F1}/s  ({outcomes})"
            line $"  pings written by the ping floods: {pings.Value}"
            line $"  chatters: {sent} messages sent, {received} of {expected} deliveries arrived, {problems.Length} problems"
            line $"  RSS: baseline {mib baseline:F1} MiB, peak {mib peak:F1} MiB (+{mib (peak - baseline):F1} MiB), VmHWM {mib highWater:F1} MiB, {sampler.Samples} samples"
            let peakBuffered = finalStats.GetProperty("peakBufferedBytes").GetInt64()
            line $"  budget (MaxServerBufferedBytes) {mib budget:F1} MiB, the most it held {mib peakBuffered:F2} MiB; RSS margin {mib marginBytes:F1} MiB"
            let heap (stats: JsonElement) = mib (stats.GetProperty("managedHeapBytes").GetInt64())
            let gcs (stats: JsonElement) = stats.GetProperty("gcCollections").GetInt32()
            let committedAtLastGc = mib (finalStats.GetProperty("committedAtLastGcBytes").GetInt64())
            line $"  managed heap, garbage included: {heap baselineStats:F1} MiB before the attack ({gcs baselineStats} gen0 GCs so far), {heap finalStats:F1} MiB after it ({gcs finalStats} gen0 GCs, {committedAtLastGc:F1} MiB committed at the last)"
            line $"  managed heap after a full GC: {mib liveBefore:F1} MiB before the attack, {mib liveAfter:F1} MiB after it"
            line $"  server: {finalStats}"
            line $"  log lines: {errors.Length} fail/crit, {warnings.Length} warn"
            printfn "%s" (summary.ToString())

            Expect.isTrue alive "the soak server is still running"
            Expect.isEmpty errors $"""no Error or Critical log lines; {errors.Length}: {String.Join("\n", Array.truncate 10 errors)}"""
            Expect.isEmpty problems $"""no chatter saw a lost, reordered, doubled or foreign message; {problems.Length}: {String.Join("\n", Array.truncate 10 problems)}"""
            Expect.isTrue caughtUp $"every chatter received every other chatter's messages ({received} of {expected})"
            Expect.equal received expected "every delivery arrived"
            Expect.isGreaterThan sent (int64 goodClients * 100L) "the chatters kept talking through the run"
            Expect.equal connections 0 $"the connection count returned to 0 within 15 s (still {connections})"
            Expect.isLessThanOrEqual peakBuffered budget "the server's own figure never passed its budget"
            Expect.isGreaterThan peakBuffered 0L "the figure was sampled while the server held bytes"
            Expect.isLessThanOrEqual (peak - baseline) (budget + marginBytes) "RSS grew by no more than the budget plus the margin"
            for kind, _, _ in kinds do
                Expect.isGreaterThan (tally.Count kind) 0 $"{kind}: attacks were made"
                let unexpected = tally.Outcomes kind |> List.filter (fun (outcome, _) -> not (allowed kind outcome))
                Expect.isEmpty unexpected $"{kind}: every attack ended as the server's defences say"
        finally
            stopProcess server
            server.Dispose()
    }

[<Tests>]
let soakTests =
    testSequenced
    <| testList "Soak: hostile clients beside well-behaved ones" [
        testCaseTask $"{attackTime.TotalSeconds} s of mixed attackers on both paths: chatters lose nothing, memory stays within the budget plus a margin, nothing is logged as an error, connections return to 0" (fun () -> task {
            do! (soak ()).WaitAsync(attackTime + seconds 120.0)
        })
    ]

/// permessage-deflate (RFC 7692) end to end on a real Kestrel: negotiation over the wire, Autobahn
/// 12.x/13.x style echoes checked against an INDEPENDENT deflate implementation (the runtime's
/// DeflateStream), compressed-frame violations, zip bombs, real clients (Node `ws`, .NET
/// ClientWebSocket), and the compress flag of Send and Publish.
///
/// The raw client compresses with DeflateStream (raw deflate, Flush = sync flush, the 00 00 FF FF
/// tail removed; a fresh stream per message when it promised client_no_context_takeover) and
/// inflates the server's RSV1 frames with DeflateStream (the tail put back; one long-lived stream
/// while the server keeps its context, a fresh one per message with server_no_context_takeover).
/// DeflateStream always compresses with a 15-bit window, so when the client agreed to a smaller
/// client_max_window_bits it compresses with the host's own MessageDeflater at that window instead;
/// the server's output is still inflated with DeflateStream.
module Realtime.Server.Tests.CompressionTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.IO.Compression
open System.Net.WebSockets
open System.Text
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Compression
open Realtime.Protocol
open Realtime.Server.Tests.RawClient
open Realtime.Server.Tests.TestHost

// ---------------------------------------------------------------------------------------------
// An independent permessage-deflate client.
// ---------------------------------------------------------------------------------------------

let private flushTail = [| 0x00uy; 0x00uy; 0xFFuy; 0xFFuy |]

/// RFC 7692 §7.2.1: a message's compressed bytes without the 00 00 FF FF its flush ended with.
let private stripTail (flushed: byte[]) =
    if flushed.Length >= 4 && flushed[flushed.Length - 4 ..] = flushTail then flushed[.. flushed.Length - 5]
    else failtestf "a flushed deflate block ends with 00 00 FF FF, got %s" (Convert.ToHexString flushed)

/// A readable stream that bytes are appended to later; Read returns 0 while it has none, which
/// DeflateStream takes as "no more input for now" (it does not remember it as the end).
type private FeedStream() =
    inherit Stream()
    let mutable data: byte[] = [||]
    let mutable position = 0

    member _.Append(bytes: byte[]) =
        data <- Array.append data[position..] bytes
        position <- 0

    override _.CanRead = true
    override _.CanSeek = false
    override _.CanWrite = false
    override _.Length = raise (NotSupportedException())
    override _.Position
        with get () = raise (NotSupportedException())
        and set _ = raise (NotSupportedException())
    override _.Flush() = ()
    override _.Read(buffer: byte[], offset: int, count: int) =
        let n = min count (data.Length - position)
        Buffer.BlockCopy(data, position, buffer, offset, n)
        position <- position + n
        n
    override _.Seek(_: int64, _: SeekOrigin) : int64 = raise (NotSupportedException())
    override _.SetLength(_: int64) = raise (NotSupportedException())
    override _.Write(_: byte[], _: int, _: int) = raise (NotSupportedException())

/// The client's compressor, as agreed: DeflateStream for a 15-bit window, else MessageDeflater.
type private ClientDeflater(contextTakeover: bool, windowBits: int) =
    let output = new MemoryStream()
    let mutable deflate: DeflateStream = null
    let own = if windowBits < 15 then Some(new MessageDeflater(windowBits, contextTakeover)) else None

    member _.Compress(message: byte[]) : byte[] =
        match own with
        | Some deflater ->
            let length, rented = deflater.Compress(ReadOnlySpan message)
            let compressed = rented[.. length - 1]
            Buffers.ArrayPool<byte>.Shared.Return rented
            compressed
        | None ->
            if isNull deflate || not contextTakeover then
                if not (isNull deflate) then deflate.Dispose()
                deflate <- new DeflateStream(output, CompressionLevel.Optimal, leaveOpen = true)
            output.SetLength 0L
            deflate.Write(message, 0, message.Length)
            deflate.Flush()
            if output.Length = 0L then
                // DeflateStream flushes nothing for an empty message: RFC 7692 §7.2.3.6's single 0x00.
                [| 0x00uy |]
            else stripTail (output.ToArray())

/// Inflates the server's compressed messages: one DeflateStream for the connection's lifetime
/// when the server keeps its context, a fresh one per message when it does not.
type private ServerInflater(contextTakeover: bool) =
    let mutable feed = new FeedStream()
    let mutable inflate: DeflateStream = null
    let buffer = Array.zeroCreate<byte> 65536

    member _.Inflate(payload: byte[]) : byte[] =
        if isNull inflate || not contextTakeover then
            if not (isNull inflate) then inflate.Dispose()
            feed <- new FeedStream()
            inflate <- new DeflateStream(feed, CompressionMode.Decompress)
        feed.Append(Array.append payload flushTail)
        use out = new MemoryStream()
        let mutable read = inflate.Read(buffer, 0, buffer.Length)
        while read > 0 do
            out.Write(buffer, 0, read)
            read <- inflate.Read(buffer, 0, buffer.Length)
        out.ToArray()

/// What the server's Sec-WebSocket-Extensions answer agreed.
type private Agreed =
    { ServerNoContextTakeover: bool
      ClientNoContextTakeover: bool
      ServerMaxWindowBits: int
      ClientMaxWindowBits: int }

/// The Sec-WebSocket-Extensions header of a handshake response, if any.
let private extensionsOf (head: string) : string option =
    head.Split("\r\n")
    |> Array.tryPick (fun line ->
        let colon = line.IndexOf ':'
        if colon > 0 && line.Substring(0, colon).Trim().Equals("Sec-WebSocket-Extensions", StringComparison.OrdinalIgnoreCase) then
            Some(line.Substring(colon + 1).Trim())
        else None)

let private agreedOf (head: string) : Agreed option =
    match extensionsOf head with
    | None -> None
    | Some value ->
        match PerMessageDeflate.parseHeaderValue value with
        | Ok [| offer |] when offer.Name = "permessage-deflate" ->
            let has name = offer.Parameters |> Array.exists (fun p -> p.Name = name)
            let bits name =
                offer.Parameters
                |> Array.tryPick (fun p -> if p.Name = name then p.Value |> Option.map int else None)
                |> Option.defaultValue 15
            Some
                { ServerNoContextTakeover = has "server_no_context_takeover"
                  ClientNoContextTakeover = has "client_no_context_takeover"
                  ServerMaxWindowBits = bits "server_max_window_bits"
                  ClientMaxWindowBits = bits "client_max_window_bits" }
        | _ -> failtestf "the server answered an unexpected Sec-WebSocket-Extensions: %s" value

/// Receives frames until a data message completes; control frames fail the test.
let private receiveFrames (connection: RawConnection) : Task<Opcode * bool * byte[]> =
    task {
        use parts = new MemoryStream()
        let mutable kind = Opcode.Continuation
        let mutable compressed = false
        let mutable finished = false
        while not finished do
            match! connection.ReceiveFrame() with
            | None -> failtest "the server closed the connection before the message arrived"
            | Some frame when frame.Opcode = Opcode.Close -> failtestf "the server closed with %d before the message arrived" frame.CloseCode
            | Some frame when Frame.isControl frame.Opcode -> ()
            | Some frame ->
                if frame.Opcode <> Opcode.Continuation then
                    kind <- frame.Opcode
                    compressed <- frame.Rsv1
                elif frame.Rsv1 then failtest "the server set RSV1 on a continuation frame"
                parts.Write(frame.Payload, 0, frame.Payload.Length)
                finished <- frame.Fin
        return kind, compressed, parts.ToArray()
    }

/// A raw connection that compresses and inflates as its handshake agreed.
type private DeflateSession(connection: RawConnection, agreed: Agreed) =
    let deflater = ClientDeflater(not agreed.ClientNoContextTakeover, agreed.ClientMaxWindowBits)
    let inflater = ServerInflater(not agreed.ServerNoContextTakeover)

    member _.Connection = connection
    member _.Agreed = agreed

    /// Compresses the message; sends it in one frame, or in frames of at most `fragment` compressed
    /// bytes with RSV1 on the first frame only (RFC 7692 §6.1).
    member _.Send(kind: Opcode, message: byte[], fragment: int option) : Task =
        task {
            let compressed = deflater.Compress message
            match fragment with
            | None -> do! connection.SendFrame(kind, compressed, rsv1 = true)
            | Some size ->
                let pieces = compressed |> Array.chunkBySize size
                for i in 0 .. pieces.Length - 1 do
                    let opcode = if i = 0 then kind else Opcode.Continuation
                    do! connection.SendFrame(opcode, pieces[i], fin = (i = pieces.Length - 1), rsv1 = (i = 0))
        }

    /// The next data message: its kind, whether it came compressed, and its (inflated) bytes.
    member _.Receive() : Task<Opcode * bool * byte[]> =
        task {
            let! kind, compressed, payload = receiveFrames connection
            return kind, compressed, (if compressed then inflater.Inflate payload else payload)
        }

    interface IDisposable with
        member _.Dispose() = (connection :> IDisposable).Dispose()

/// Opens a raw connection to `path` offering `offer` (no Sec-WebSocket-Extensions when None);
/// fails unless the server answers 101.
let private connectOffering (port: int) (path: string) (offer: string option) : Task<RawConnection> =
    task {
        let extra =
            match offer with
            | Some value -> $"Sec-WebSocket-Extensions: {value}\r\n"
            | None -> ""
        let! tcp, stream, head = handshakeRaw port (upgradeRequest path extra)
        if not (head.StartsWith "HTTP/1.1 101") then failtestf "expected 101 for the offer %A, got: %s" offer head
        return new RawConnection(tcp, stream, head)
    }

/// Opens a connection with an offer the server must accept, ready to compress both ways.
let private openSession (port: int) (path: string) (offer: string) : Task<DeflateSession> =
    task {
        let! connection = connectOffering port path (Some offer)
        match agreedOf connection.HandshakeResponse with
        | Some agreed -> return new DeflateSession(connection, agreed)
        | None ->
            (connection :> IDisposable).Dispose()
            return failtestf "the server declined the offer '%s':\n%s" offer connection.HandshakeResponse
    }

// ---------------------------------------------------------------------------------------------
// Payloads.
// ---------------------------------------------------------------------------------------------

let private words = [| "alpha"; "κόσμε"; "message"; "€"; "realtime"; "𤭢"; "deflate"; "window"; "echo"; "context"; "{\"seq\":"; "}," |]

/// Valid UTF-8 of exactly `size` bytes: words from a small vocabulary (so messages resemble each
/// other, as a context-takeover compressor exploits), numbers, and ASCII filler at the end.
let private textMessage (seed: int) (size: int) : byte[] =
    let random = Random(seed)
    let bytes = ResizeArray<byte>(size + 16)
    while bytes.Count < size do
        let word = Encoding.UTF8.GetBytes(words[random.Next words.Length] + (if random.Next 3 = 0 then string (random.Next 100000) else "") + " ")
        if bytes.Count + word.Length <= size then bytes.AddRange word
        else
            while bytes.Count < size do
                bytes.Add(byte 'a' + byte (random.Next 26))
    bytes.ToArray()

/// Compressible binary data: 16 distinct byte values in a random order.
let private binaryMessage (seed: int) (size: int) : byte[] =
    let random = Random(seed)
    Array.init size (fun _ -> byte (random.Next 16) * 17uy)

/// Incompressible binary data.
let private randomBytes (seed: int) (size: int) : byte[] =
    let bytes = Array.zeroCreate size
    Random(seed).NextBytes bytes
    bytes

/// Autobahn 12.x/13.x message sizes (16 B to 128 KiB).
let private sizes = [ 16; 64; 256; 1024; 4096; 8192; 16384; 32768; 65536; 131072 ]

let private describe (data: byte[]) =
    if data.Length <= 24 then Convert.ToHexString data else $"{Convert.ToHexString(data, 0, 12)}... ({data.Length} bytes)"

/// Sends each message compressed and expects it back compressed, same kind, same bytes.
let private expectEchoes (session: DeflateSession) (messages: (Opcode * byte[] * int option) list) : Task<int> =
    task {
        let mutable count = 0
        for kind, message, fragment in messages do
            do! session.Send(kind, message, fragment)
            let! echoedKind, compressed, echoed = session.Receive()
            let split =
                match fragment with
                | Some size -> $", in frames of {size} compressed bytes"
                | None -> ""
            let what = $"message {count} ({kind}, {message.Length} bytes{split})"
            Expect.equal echoedKind kind $"{what}: same kind"
            Expect.isTrue compressed $"{what}: echoed compressed (RSV1), as ws.Send(message) does for a compressed message"
            if echoed <> message then failtestf "%s: echo differs: sent %s, got %s" what (describe message) (describe echoed)
            count <- count + 1
        return count
    }

/// Expects a close frame with `code` as the very next frame, then the TCP connection to end.
let private expectClose (connection: RawConnection) (code: uint16) (what: string) : Task<unit> =
    task {
        match! connection.ReceiveFrame() with
        | Some frame when frame.Opcode = Opcode.Close -> Expect.equal frame.CloseCode code $"{what}: close code"
        | Some frame -> failtestf "%s: expected close %d first, got %A frame" what code frame.Opcode
        | None -> failtestf "%s: the connection ended without a close frame" what
        let! dropped = connection.WaitForTransportClose(TimeSpan.FromSeconds 10.0)
        Expect.isTrue dropped $"{what}: the server dropped the TCP connection"
    }

/// Writes bytes; a server that has already failed the connection may refuse them, which is fine here.
let private tryWrite (connection: RawConnection) (bytes: byte[]) : Task<unit> =
    task {
        try do! connection.SendRaw bytes
        with :? IOException -> ()
    }


// ---------------------------------------------------------------------------------------------
// The servers.
// ---------------------------------------------------------------------------------------------

/// The options samples/Echo/Program.cs sets, PerMessageDeflate included.
let private sampleOptions (options: RealtimeOptions) =
    options.MaxPayloadLength <- 64 * 1024 * 1024
    options.MaxBufferedAmount <- 256L * 1024L * 1024L
    options.BackpressureLimit <- 1024L * 1024L
    options.PerMessageDeflate <- true

/// samples/Echo's /echo handler: the message goes back as it came, compressed when it came compressed.
let private sampleEcho () = RealtimeHandlers<obj>(Message = fun ws message -> ws.Send(message) |> ignore)

let private contextTakeover (options: RealtimeOptions) =
    options.ServerNoContextTakeover <- false
    options.ClientNoContextTakeover <- false

let private windows10 (options: RealtimeOptions) =
    options.ServerMaxWindowBits <- 10
    options.ClientMaxWindowBits <- 10

/// Echo endpoints with the sample's settings and with variations of the compression settings:
/// /echo (the sample: both sides reset their context), /takeover (context kept both ways unless
/// the client asks otherwise), /window10 (the server wants 10-bit windows), /off (no compression),
/// /small (1 MiB messages).
let private echoRoutes (app: WebApplication) =
    app.MapRealtime("/echo", sampleEcho ()) |> ignore
    app.MapRealtime("/takeover", sampleEcho (), Action<RealtimeOptions> contextTakeover) |> ignore
    app.MapRealtime("/window10", sampleEcho (), Action<RealtimeOptions> windows10) |> ignore
    app.MapRealtime("/off", sampleEcho (), fun options -> options.PerMessageDeflate <- false) |> ignore
    app.MapRealtime("/small", sampleEcho (), fun options -> options.MaxPayloadLength <- 1024 * 1024) |> ignore

/// One server for the lists that only echo (it lives until the test run ends).
let private echoServer = lazy (start sampleOptions echoRoutes)

let private echoPort () : Task<int> =
    task {
        let! server = echoServer.Value
        return server.Port
    }

// ---------------------------------------------------------------------------------------------
// 1. Negotiation over the wire.
// ---------------------------------------------------------------------------------------------

/// The server's Sec-WebSocket-Extensions answer to `offer` on `path`.
let private answerTo (path: string) (offer: string) : Task<string option> =
    task {
        let! port = echoPort ()
        use! connection = connectOffering port path (Some offer)
        return extensionsOf connection.HandshakeResponse
    }

let private bothReset = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

[<Tests>]
let negotiationTests =
    testList "Compression: negotiation over the wire (RFC 7692 §7.1)" [
        testCaseTask "a plain offer is accepted with the server's defaults: both sides reset their context" (fun () -> task {
            let! answer = answerTo "/echo" "permessage-deflate"
            Expect.equal answer (Some bothReset) "the sample's settings"
        })

        testCaseTask "a plain offer to a server that allows context takeover is accepted without parameters" (fun () -> task {
            let! answer = answerTo "/takeover" "permessage-deflate"
            Expect.equal answer (Some "permessage-deflate") "15-bit windows and context takeover are the defaults, left unsaid"
        })

        testCaseTask "client_max_window_bits without a value lets the server name the client's window (or leave the default 15 unsaid)" (fun () -> task {
            let! byDefault = answerTo "/echo" "permessage-deflate; client_max_window_bits"
            Expect.equal byDefault (Some bothReset) "15 is not written"
            let! limited = answerTo "/window10" "permessage-deflate; client_max_window_bits"
            Expect.equal limited (Some(bothReset + "; server_max_window_bits=10; client_max_window_bits=10")) "the server's 10 bits"
            let! notOffered = answerTo "/window10" "permessage-deflate"
            Expect.equal notOffered (Some(bothReset + "; server_max_window_bits=10")) "no client_max_window_bits in the answer when the client did not offer it (§7.1.2.2)"
        })

        testCaseTask "client_max_window_bits with a value is answered with at most that value" (fun () -> task {
            for bits in 9..15 do
                let! answer = answerTo "/takeover" $"permessage-deflate; client_max_window_bits={bits}"
                let expected = if bits = 15 then "permessage-deflate" else $"permessage-deflate; client_max_window_bits={bits}"
                Expect.equal answer (Some expected) $"client_max_window_bits={bits}"
            let! tighter = answerTo "/window10" "permessage-deflate; client_max_window_bits=12"
            Expect.equal tighter (Some(bothReset + "; server_max_window_bits=10; client_max_window_bits=10")) "the server's smaller limit wins"
        })

        testCaseTask "server_no_context_takeover asked by the client is granted" (fun () -> task {
            let! answer = answerTo "/takeover" "permessage-deflate; server_no_context_takeover"
            Expect.equal answer (Some "permessage-deflate; server_no_context_takeover") "granted"
            let! both = answerTo "/takeover" "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            Expect.equal both (Some bothReset) "both granted"
        })

        testCaseTask "server_max_window_bits 9 to 15 is honoured (15 left unsaid)" (fun () -> task {
            for bits in 9..15 do
                let! answer = answerTo "/takeover" $"permessage-deflate; server_max_window_bits={bits}"
                let expected = if bits = 15 then "permessage-deflate" else $"permessage-deflate; server_max_window_bits={bits}"
                Expect.equal answer (Some expected) $"server_max_window_bits={bits}"
            let! smaller = answerTo "/window10" "permessage-deflate; server_max_window_bits=12"
            Expect.equal smaller (Some(bothReset + "; server_max_window_bits=10")) "the server's own smaller limit"
        })

        testCaseTask "the first acceptable offer in the client's order is taken" (fun () -> task {
            let! answer = answerTo "/takeover" "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12, permessage-deflate"
            Expect.equal answer (Some "permessage-deflate; server_max_window_bits=12") "the 8-bit offer (which zlib cannot honour) is skipped"
        })

        testCaseTask "invalid offers are declined and the connection still opens, without compression" (fun () -> task {
            let! port = echoPort ()
            let invalid =
                [ "permessage-deflate; server_max_window_bits=16"
                  "permessage-deflate; server_max_window_bits=09"
                  "permessage-deflate; server_max_window_bits"
                  "permessage-deflate; server_max_window_bits=8"
                  "permessage-deflate; client_max_window_bits=7"
                  "permessage-deflate; client_no_context_takeover=yes"
                  "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
                  "permessage-deflate; mystery_parameter"
                  "permessage-deflate; \"unterminated"
                  "x-webkit-deflate-frame" ]
            for offer in invalid do
                use! connection = connectOffering port "/echo" (Some offer)
                Expect.isNone (extensionsOf connection.HandshakeResponse) $"'{offer}': no extension in the answer"
                do! connection.SendText "plain"
                match! connection.ReceiveFrame() with
                | Some frame ->
                    Expect.isFalse frame.Rsv1 $"'{offer}': the echo is not compressed"
                    Expect.equal frame.Text "plain" $"'{offer}': echoed"
                | None -> failtestf "'%s': the connection ended" offer
        })

        testCaseTask "with PerMessageDeflate off the answer names no extension, whatever the offer" (fun () -> task {
            for offer in [ "permessage-deflate"; "permessage-deflate; client_max_window_bits"; bothReset ] do
                let! answer = answerTo "/off" offer
                Expect.isNone answer $"'{offer}' declined"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 2. Autobahn 12.x and 13.x style echoes.
// ---------------------------------------------------------------------------------------------

/// Text and binary of every size, then two fragmented messages (one cut into 1-byte frames).
let private autobahnMessages (seed: int) =
    [ for size in sizes do
          (Opcode.Text, textMessage (seed + size) size, None)
          (Opcode.Binary, binaryMessage (seed + size) size, None)
      (Opcode.Text, textMessage (seed + 1) 20000, Some 1000)
      (Opcode.Binary, binaryMessage (seed + 2) 300, Some 1) ]

let private echoCase (path: string) (offer: string) (expected: string) =
    testCaseTask $"{path}, offer '{offer}': answered '{expected}', and every compressed echo matches" (fun () -> task {
        let! port = echoPort ()
        use! session = openSession port path offer
        Expect.equal (extensionsOf session.Connection.HandshakeResponse) (Some expected) "the answer"
        let! count = expectEchoes session (autobahnMessages (offer.GetHashCode()))
        Expect.equal count (2 * sizes.Length + 2) "all echoed"
    })

[<Tests>]
let autobahn12Tests =
    testList "Compression: Autobahn 12 - compressed echoes of payloads of every kind and size" [
        testCaseTask "text of 16 B to 128 KiB comes back byte for byte, compressed" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/echo" "permessage-deflate"
            let! count = expectEchoes session [ for size in sizes -> Opcode.Text, textMessage size size, None ]
            Expect.equal count sizes.Length "all echoed"
        })

        testCaseTask "incompressible binary of 16 B to 128 KiB comes back byte for byte, compressed" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/echo" "permessage-deflate"
            let! count = expectEchoes session [ for size in sizes -> Opcode.Binary, randomBytes size size, None ]
            Expect.equal count sizes.Length "all echoed"
        })

        testCaseTask "1000 similar small messages in a row keep both contexts in step" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/takeover" "permessage-deflate"
            let! count = expectEchoes session [ for i in 1..1000 -> Opcode.Text, Encoding.UTF8.GetBytes $"{{\"seq\":{i},\"text\":\"hello κόσμε {i % 7}\"}}", None ]
            Expect.equal count 1000 "all echoed"
        })

        testCaseTask "an empty compressed message (the single 0x00 of RFC 7692 §7.2.3.6) comes back empty" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/echo" "permessage-deflate"
            do! session.Connection.SendFrame(Opcode.Text, [| 0x00uy |], rsv1 = true)
            let! kind, _, echoed = session.Receive()
            Expect.equal kind Opcode.Text "text"
            Expect.isEmpty echoed "empty"
        })

        testCaseTask "compressed messages split at every size into continuation frames (RSV1 on the first only) echo whole" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/takeover" "permessage-deflate"
            let! count =
                expectEchoes session [ for size in [ 1; 7; 64; 4096 ] -> Opcode.Text, textMessage size 50000, Some size ]
            Expect.equal count 4 "all echoed"
        })

        testCaseTask "a ping between the fragments of a compressed message is answered first and the message still echoes whole" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/takeover" "permessage-deflate"
            let message = textMessage 11 30000
            let compressed = ClientDeflater(false, 15).Compress message
            let half = compressed.Length / 2
            do! session.Connection.SendFrame(Opcode.Text, compressed[.. half - 1], fin = false, rsv1 = true)
            do! session.Connection.SendFrame(Opcode.Ping, Encoding.UTF8.GetBytes "mid-message")
            do! session.Connection.SendFrame(Opcode.Continuation, compressed[half ..])
            match! session.Connection.ReceiveFrame() with
            | Some frame when frame.Opcode = Opcode.Pong -> Expect.equal frame.Text "mid-message" "the pong carries the ping's data"
            | other -> failtestf "expected the pong first, got %A" other
            // The raw session's own compressor did not see that message: inflate the echo on a fresh stream.
            let! kind, compressedEcho, payload = receiveFrames session.Connection
            Expect.equal kind Opcode.Text "text"
            Expect.isTrue compressedEcho "compressed"
            Expect.equal (ServerInflater(false).Inflate payload) message "the whole message"
        })

        testCaseTask "a compressed message whose first and last frames are empty echoes whole" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/echo" "permessage-deflate"
            let message = textMessage 12 5000
            let compressed = ClientDeflater(false, 15).Compress message
            do! session.Connection.SendFrame(Opcode.Text, [||], fin = false, rsv1 = true)
            do! session.Connection.SendFrame(Opcode.Continuation, compressed, fin = false)
            do! session.Connection.SendFrame(Opcode.Continuation, [||])
            let! kind, compressedEcho, echoed = session.Receive()
            Expect.equal kind Opcode.Text "text"
            Expect.isTrue compressedEcho "compressed"
            Expect.equal echoed message "the whole message"
        })

        testCaseTask "uncompressed messages between compressed ones leave both compression contexts as they were" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/takeover" "permessage-deflate"
            let first = textMessage 13 4000
            let! _ = expectEchoes session [ Opcode.Text, first, None ]
            for i in 1..3 do
                do! session.Connection.SendFrame(Opcode.Binary, binaryMessage i 3000)
                let! kind, compressed, echoed = receiveFrames session.Connection
                Expect.equal (kind, compressed) (Opcode.Binary, false) "an uncompressed message is echoed uncompressed"
                Expect.equal echoed (binaryMessage i 3000) "same bytes"
            // Mostly a repeat of the first: both compressors refer back to it across the plain messages.
            let again = Array.append first (Encoding.UTF8.GetBytes " and again")
            let! count = expectEchoes session [ Opcode.Text, again, None ]
            Expect.equal count 1 "echoed"
        })
    ]

/// Autobahn 13.x: the same messages under every combination of the negotiable parameters.
[<Tests>]
let autobahn13Tests =
    let withWindows (path: string) (offerPrefix: string) (answerPrefix: string) (parameter: string) =
        [ for bits in 9..15 ->
              let offer = $"{offerPrefix}; {parameter}={bits}"
              let answer = if bits = 15 then answerPrefix else $"{answerPrefix}; {parameter}={bits}"
              echoCase path offer answer ]
    testList "Compression: Autobahn 13 - every parameter combination echoes correctly" [
        // The sample's settings: the server resets both contexts.
        echoCase "/echo" "permessage-deflate" bothReset
        echoCase "/echo" "permessage-deflate; client_max_window_bits" bothReset
        yield! withWindows "/echo" "permessage-deflate" bothReset "server_max_window_bits"
        yield! withWindows "/echo" "permessage-deflate" bothReset "client_max_window_bits"
        // Context takeover allowed: the client decides.
        echoCase "/takeover" "permessage-deflate" "permessage-deflate"
        echoCase "/takeover" "permessage-deflate; client_no_context_takeover" "permessage-deflate; client_no_context_takeover"
        echoCase "/takeover" "permessage-deflate; server_no_context_takeover" "permessage-deflate; server_no_context_takeover"
        echoCase "/takeover" bothReset bothReset
        yield! withWindows "/takeover" "permessage-deflate" "permessage-deflate" "server_max_window_bits"
        yield! withWindows "/takeover" "permessage-deflate" "permessage-deflate" "client_max_window_bits"
        yield! withWindows "/takeover" "permessage-deflate; client_no_context_takeover" "permessage-deflate; client_no_context_takeover" "client_max_window_bits"
        echoCase "/takeover" "permessage-deflate; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=9" "permessage-deflate; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=9"
        echoCase "/takeover" "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits; server_max_window_bits=11" "permessage-deflate; server_max_window_bits=11"
        // The server's own small windows.
        echoCase "/window10" "permessage-deflate; client_max_window_bits" (bothReset + "; server_max_window_bits=10; client_max_window_bits=10")
        echoCase "/window10" "permessage-deflate" (bothReset + "; server_max_window_bits=10")
    ]

[<Tests>]
let compressedViolationTests =
    testList "Compression: compressed frames that break the rules fail the connection" [
        testCaseTask "RSV1 on a continuation frame is closed with 1002 (RFC 7692 §6.1)" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/echo" "permessage-deflate"
            let compressed = ClientDeflater(false, 15).Compress(textMessage 1 1000)
            let half = compressed.Length / 2
            do! tryWrite session.Connection (RawClient.clientFrame Opcode.Text false true compressed[.. half - 1])
            do! tryWrite session.Connection (RawClient.clientFrame Opcode.Continuation true true compressed[half ..])
            do! expectClose session.Connection CloseCode.ProtocolError "RSV1 on the continuation"
        })

        testCaseTask "RSV1 on a control frame is closed with 1002" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/echo" "permessage-deflate"
            do! tryWrite session.Connection (RawClient.clientFrame Opcode.Ping true true [| 1uy |])
            do! expectClose session.Connection CloseCode.ProtocolError "RSV1 on a ping"
        })

        testCaseTask "RSV1 without negotiated compression is closed with 1002 (RFC 6455 §5.2)" (fun () -> task {
            let! port = echoPort ()
            use! connection = connectOffering port "/echo" None
            do! tryWrite connection (RawClient.clientFrame Opcode.Text true true (ClientDeflater(false, 15).Compress(Encoding.UTF8.GetBytes "hello")))
            do! expectClose connection CloseCode.ProtocolError "RSV1 not negotiated"
            use! declined = connectOffering port "/off" (Some "permessage-deflate")
            do! tryWrite declined (RawClient.clientFrame Opcode.Binary true true [| 0x00uy |])
            do! expectClose declined CloseCode.ProtocolError "RSV1 when the offer was declined"
        })

        testCaseTask "corrupt deflate data is closed with 1007 (RFC 7692 §7.2.2)" (fun () -> task {
            let! port = echoPort ()
            // 0x06: a block of the reserved type 3.
            use! session = openSession port "/echo" "permessage-deflate"
            do! tryWrite session.Connection (RawClient.clientFrame Opcode.Binary true true [| 0x06uy; 0x12uy; 0x34uy |])
            do! expectClose session.Connection CloseCode.InvalidPayload "reserved block type"
            // A valid start followed by a distance that reaches before the start of the data.
            use! second = openSession port "/takeover" "permessage-deflate"
            let valid = ClientDeflater(false, 15).Compress(textMessage 5 5000)
            let corrupt = Array.copy valid
            for i in 2 .. 3 .. corrupt.Length - 1 do
                corrupt[i] <- corrupt[i] ^^^ 0x5Auy
            do! tryWrite second.Connection (RawClient.clientFrame Opcode.Binary true true corrupt)
            do! expectClose second.Connection CloseCode.InvalidPayload "garbled deflate data"
        })

        testCaseTask "compressed text that inflates to invalid UTF-8 is closed with 1007" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/echo" "permessage-deflate"
            let invalid = Array.append (textMessage 3 2000) [| 0xC3uy; 0x28uy |]
            do! tryWrite session.Connection (RawClient.clientFrame Opcode.Text true true (ClientDeflater(false, 15).Compress invalid))
            do! expectClose session.Connection CloseCode.InvalidPayload "invalid UTF-8 after inflating"
            // The same bytes as binary are fine.
            use! binary = openSession port "/echo" "permessage-deflate"
            let! count = expectEchoes binary [ Opcode.Binary, invalid, None ]
            Expect.equal count 1 "binary echoed"
        })

        testCaseTask "compressed text with a bad byte early is closed with 1007 before its last fragment arrives (RFC 6455 §8.1: fail fast)" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/echo" "permessage-deflate"
            let invalid = Array.append [| 0x41uy; 0xC3uy; 0x28uy |] (textMessage 5 4000)
            let compressed = ClientDeflater(false, 15).Compress invalid
            // Only the first half: it inflates to the message's start, bad byte included; the rest never comes.
            do! tryWrite session.Connection (RawClient.clientFrame Opcode.Text false true compressed[.. compressed.Length / 2 - 1])
            do! expectClose session.Connection CloseCode.InvalidPayload "invalid UTF-8 in the first inflated bytes"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 3. Zip bombs.
// ---------------------------------------------------------------------------------------------

/// Raw deflate of `length` zero bytes at the best ratio (about 1:1000), sync-flushed, tail removed.
let private zeros (length: int) : byte[] =
    use output = new MemoryStream()
    use deflate = new DeflateStream(output, CompressionLevel.SmallestSize, leaveOpen = true)
    let chunk = Array.zeroCreate<byte> (1024 * 1024)
    let mutable left = length
    while left > 0 do
        let count = min left chunk.Length
        deflate.Write(chunk, 0, count)
        left <- left - count
    deflate.Flush()
    stripTail (output.ToArray())

/// Made once: a 100 MiB bomb.
let private bomb = lazy (zeros (100 * 1024 * 1024))

let private mib (bytes: int64) = float bytes / (1024.0 * 1024.0)

[<Tests>]
let zipBombTests =
    testSequenced <| testList "Compression: zip bombs are stopped at the message limit" [
        testCaseTask "a compressed message that inflates to 100 MiB, on a 1 MiB limit, is closed with 1009 at once, without inflating it" (fun () -> task {
            let! port = echoPort ()
            let compressed = bomb.Value
            Expect.isLessThan compressed.Length (1024 * 1024) "the compressed message itself is under the limit, so only inflating can find it too big"
            use! session = openSession port "/small" "permessage-deflate"
            let frame = RawClient.clientFrame Opcode.Binary true true compressed
            GC.Collect()
            GC.WaitForPendingFinalizers()
            let before = GC.GetTotalMemory true
            let allocatedBefore = GC.GetTotalAllocatedBytes true
            let clock = Stopwatch.StartNew()
            do! tryWrite session.Connection frame
            do! expectClose session.Connection CloseCode.MessageTooBig "inflated past 1 MiB"
            let elapsed = clock.Elapsed
            let allocated = GC.GetTotalAllocatedBytes true - allocatedBefore
            let after = GC.GetTotalMemory true
            printfn
                "zip bomb: %d compressed bytes (100 MiB inflated) closed with 1009 in %.1f ms; heap %.1f -> %.1f MiB; %.1f MiB allocated process-wide meanwhile"
                compressed.Length elapsed.TotalMilliseconds (mib before) (mib after) (mib allocated)
            Expect.isLessThan elapsed (TimeSpan.FromSeconds 1.0) "well under a second"
            // Generous: other tests run in the same process; inflating the bomb would hold 100 MiB.
            Expect.isLessThan (after - before) (32L * 1024L * 1024L) "the live heap did not grow by anything like 100 MiB"
            // The pooled inflater that met the bomb serves the next connection cleanly.
            for _ in 1..3 do
                use! next = openSession port "/small" "permessage-deflate"
                let! count = expectEchoes next [ Opcode.Text, textMessage 21 10000, None ]
                Expect.equal count 1 "a later connection's message inflates correctly"
        })

        testCaseTask "the same bomb cut into 64 KiB continuation frames is stopped the same way" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/small" "permessage-deflate"
            let pieces = bomb.Value |> Array.chunkBySize 65536
            let frames =
                pieces |> Array.mapi (fun i piece -> RawClient.clientFrame (if i = 0 then Opcode.Binary else Opcode.Continuation) (i = pieces.Length - 1) (i = 0) piece)
            do! tryWrite session.Connection (Array.concat frames)
            do! expectClose session.Connection CloseCode.MessageTooBig "inflated past 1 MiB over several frames"
        })

        testCaseTask "a compressed message that inflates to exactly the limit is delivered, one byte more is 1009" (fun () -> task {
            let! port = echoPort ()
            use! session = openSession port "/small" "permessage-deflate"
            let atLimit = binaryMessage 9 (1024 * 1024)
            let! count = expectEchoes session [ Opcode.Binary, atLimit, None ]
            Expect.equal count 1 "1 MiB echoed"
            do! tryWrite session.Connection (RawClient.clientFrame Opcode.Binary true true (ClientDeflater(false, 15).Compress(binaryMessage 9 (1024 * 1024 + 1))))
            do! expectClose session.Connection CloseCode.MessageTooBig "1 MiB + 1"
        })
    ]

// ---------------------------------------------------------------------------------------------
// 4. Real clients: Node ws and .NET ClientWebSocket.
// ---------------------------------------------------------------------------------------------

/// A server whose /echo is the sample's and records whether each message arrived compressed.
let private startRecording (configure: RealtimeOptions -> unit) : Task<RunningServer * ConcurrentQueue<bool>> =
    let flags = ConcurrentQueue<bool>()
    let echo =
        RealtimeHandlers<obj>(
            Message =
                fun ws message ->
                    flags.Enqueue message.Compressed
                    ws.Send(message) |> ignore
        )
    task {
        let! server = start (fun options -> sampleOptions options; configure options) (fun app -> app.MapRealtime("/echo", echo) |> ignore)
        return server, flags
    }

let private nodeCase (name: string) (configure: RealtimeOptions -> unit) (clientOptions: string) (expectedAnswer: string) =
    testCaseTask name (fun () -> task {
        let! server, flags = startRecording configure
        use _ = server
        let! result = NodeClientTests.runNode (TimeSpan.FromSeconds 30.0) "deflate-echo.mjs" [ server.WsUrl + "/echo"; clientOptions ]
        match result.TryGetProperty "error" with
        | true, error -> failtestf "the ws client failed: %s (%O)" (error.GetString()) result
        | _ -> ()
        Expect.equal (result.GetProperty("extensions").GetString()) expectedAnswer "the negotiated parameters"
        let sent = result.GetProperty("sent").GetInt32()
        Expect.equal (result.GetProperty("received").GetInt32()) sent "every message came back"
        Expect.isEmpty [ for index in result.GetProperty("mismatches").EnumerateArray() -> index.GetInt32() ] "every echo equal to what was sent"
        Expect.equal (result.GetProperty("inflated").GetInt32()) sent "every echo arrived compressed (ws inflated it)"
        Expect.equal (result.GetProperty("code").GetInt32()) 1000 "closed normally"
        Expect.equal (flags.ToArray()) (Array.create sent true) "the server saw every message as compressed (message.Compressed)"
    })

/// Sends text and binary of several sizes with a ClientWebSocket and checks each echo.
let private dotnetExchange (client: ClientWebSocket) : Task<int> =
    task {
        let mutable count = 0
        for size in [ 1; 100; 1000; 20000; 200000 ] do
            for kind in [ WebSocketMessageType.Text; WebSocketMessageType.Binary ] do
                let data = if kind = WebSocketMessageType.Text then textMessage count size else binaryMessage count size
                use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
                do! client.SendAsync(ArraySegment data, kind, true, cancel.Token)
                let! echoedKind, echoed = receive client
                Expect.equal echoedKind kind $"message {count}: same kind"
                if echoed <> data then failtestf "message %d (%d bytes): the echo differs" count size
                count <- count + 1
        return count
    }

let private dotnetCase (name: string) (configure: RealtimeOptions -> unit) (options: WebSocketDeflateOptions) (expectedAnswer: string) =
    testCaseTask name (fun () -> task {
        let! server, flags = startRecording configure
        use _ = server
        use client = new ClientWebSocket()
        client.Options.DangerousDeflateOptions <- options
        client.Options.CollectHttpResponseDetails <- true
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        do! client.ConnectAsync(Uri(server.WsUrl + "/echo"), cancel.Token)
        Expect.equal (client.HttpResponseHeaders["Sec-WebSocket-Extensions"] |> Seq.toList) [ expectedAnswer ] "the negotiated parameters"
        let! count = dotnetExchange client
        do! client.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cancel.Token)
        Expect.equal client.CloseStatus (Nullable WebSocketCloseStatus.NormalClosure) "closed normally"
        Expect.equal (flags.ToArray()) (Array.create count true) "the client compressed every message and the server saw it (message.Compressed)"
    })

[<Tests>]
let realClientTests =
    testList "Compression: real clients (Node ws, .NET ClientWebSocket) exchange compressed messages" [
        nodeCase "a ws client with context takeover both ways" contextTakeover "{}" "permessage-deflate"
        nodeCase "a ws client asking both sides to reset their context"
            ignore """{"serverNoContextTakeover":true,"clientNoContextTakeover":true}""" bothReset
        nodeCase "a ws client with the sample's settings (the server asks for resets the client did not offer)"
            ignore "{}" bothReset
        nodeCase "a ws client with small windows and context takeover (server 10 bits, client 9 bits)"
            contextTakeover """{"serverMaxWindowBits":10,"clientMaxWindowBits":9}""" "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9"
        nodeCase "a ws client with small windows and no context takeover (server 9 bits, client 10 bits)"
            ignore """{"serverMaxWindowBits":9,"clientMaxWindowBits":10}""" (bothReset + "; server_max_window_bits=9; client_max_window_bits=10")

        dotnetCase "a ClientWebSocket with ClientContextTakeover = true, against a server allowing it"
            contextTakeover (WebSocketDeflateOptions(ClientContextTakeover = true)) "permessage-deflate"
        dotnetCase "a ClientWebSocket with ClientContextTakeover = false, against a server allowing context takeover"
            contextTakeover (WebSocketDeflateOptions(ClientContextTakeover = false)) "permessage-deflate; client_no_context_takeover"
        dotnetCase "a ClientWebSocket with ClientContextTakeover = true, against the sample's settings (the server asks it to reset)"
            ignore (WebSocketDeflateOptions(ClientContextTakeover = true)) bothReset
        dotnetCase "a ClientWebSocket with ClientContextTakeover = false and ServerContextTakeover = false"
            contextTakeover (WebSocketDeflateOptions(ClientContextTakeover = false, ServerContextTakeover = false)) bothReset
        dotnetCase "a ClientWebSocket with 10-bit windows both ways"
            contextTakeover (WebSocketDeflateOptions(ClientMaxWindowBits = 10, ServerMaxWindowBits = 10)) "permessage-deflate; server_max_window_bits=10; client_max_window_bits=10"
    ]

// ---------------------------------------------------------------------------------------------
// 5. The compress flag of Send and Publish.
// ---------------------------------------------------------------------------------------------

/// /send answers "compress:TEXT" with ws.Send(TEXT, compress: true) and "plain:TEXT" with ws.Send(TEXT);
/// /threshold (CompressionThreshold 100) answers every text with ws.Send(text), no flag.
let private sendRoutes (app: WebApplication) =
    app.MapRealtime(
        "/send",
        RealtimeHandlers<obj>(
            Message =
                fun ws message ->
                    let text = message.Text
                    if text.StartsWith "compress:" then ws.Send(text.Substring 9, compress = true) |> ignore
                    elif text.StartsWith "binary:" then ws.Send(Encoding.UTF8.GetBytes(text.Substring 7), compress = true) |> ignore
                    else ws.Send(text.Substring 6) |> ignore
        )
    )
    |> ignore
    app.MapRealtime(
        "/threshold",
        RealtimeHandlers<obj>(Message = fun ws message -> ws.Send(message.Text) |> ignore),
        fun options -> options.CompressionThreshold <- Nullable 100
    )
    |> ignore

let private sendServer = lazy (start sampleOptions sendRoutes)

/// Sends a plain text frame and returns the next data message: whether it was compressed, and its text.
let private ask (connection: RawConnection) (inflate: byte[] -> byte[]) (request: string) : Task<Opcode * bool * string> =
    task {
        do! connection.SendText request
        let! kind, compressed, payload = receiveFrames connection
        return kind, compressed, Encoding.UTF8.GetString(if compressed then inflate payload else payload)
    }

let private chatText (i: int) =
    $"{{\"type\":\"message\",\"room\":\"general\",\"user\":{{\"id\":{1000 + i % 17},\"name\":\"user-{i % 17}\"}},\"text\":\"{Encoding.UTF8.GetString(textMessage i (40 + i % 200))}\",\"ts\":{1_700_000_000_000L + int64 i * 1234L}}}"

/// A subscriber of the publish test: how it connected and how to read what it gets.
type private Subscriber =
    | Negotiated of label: string * session: DeflateSession
    | Plain of label: string * connection: RawConnection

[<Tests>]
let sendAndPublishTests =
    testList "Compression: the compress flag of Send and Publish" [
        testCaseTask "Send(text, compress: true) gives an RSV1 frame to a client that negotiated and a plain frame to one that did not, same text" (fun () -> task {
            let! server = sendServer.Value
            use! session = openSession server.Port "/send" "permessage-deflate"
            use! plain = connectOffering server.Port "/send" None
            let text = Encoding.UTF8.GetString(textMessage 42 3000)
            let inflater = ServerInflater(false)
            let! kind, compressed, got = ask session.Connection inflater.Inflate ("compress:" + text)
            Expect.equal kind Opcode.Text "text"
            Expect.isTrue compressed "RSV1 for the negotiated client"
            Expect.equal got text "same text after inflating"
            let! kind, compressed, got = ask plain id ("compress:" + text)
            Expect.equal kind Opcode.Text "text"
            Expect.isFalse compressed "no RSV1 without negotiation"
            Expect.equal got text "same text"
            let! kind, compressed, got = ask session.Connection inflater.Inflate ("binary:" + text)
            Expect.equal kind Opcode.Binary "binary"
            Expect.isTrue compressed "binary compressed too"
            Expect.equal got text "same bytes"
            let! _, compressed, got = ask session.Connection inflater.Inflate ("plain:" + text)
            Expect.isFalse compressed "Send without the flag (and no threshold) stays plain"
            Expect.equal got text "same text"
        })

        testCaseTask "CompressionThreshold compresses messages of at least that many bytes without the flag, only for clients that negotiated" (fun () -> task {
            let! server = sendServer.Value
            use! session = openSession server.Port "/threshold" "permessage-deflate"
            use! plain = connectOffering server.Port "/threshold" None
            let inflater = ServerInflater(false)
            for length, expected in [ 10, false; 99, false; 100, true; 5000, true ] do
                let text = String('x', length)
                let! _, compressed, got = ask session.Connection inflater.Inflate text
                Expect.equal compressed expected $"{length} bytes against a threshold of 100"
                Expect.equal got text $"{length} bytes: same text"
                let! _, compressed, got = ask plain id text
                Expect.isFalse compressed $"{length} bytes to a client without compression"
                Expect.equal got text $"{length} bytes: same text, plain"
        })

        testCaseTask "a compressed publish reaches subscribers of every kind with the right content, compressing once per publish for the shared ones" (fun () -> task {
            let topicRoutes (app: WebApplication) =
                let subscribe = RealtimeHandlers<obj>(Open = fun ws -> ws.Subscribe "room" |> ignore)
                app.MapRealtime("/sub", subscribe) |> ignore
                app.MapRealtime("/subtakeover", subscribe, Action<RealtimeOptions> contextTakeover) |> ignore
            let! server = start sampleOptions topicRoutes
            use _ = server
            let negotiated label path offer =
                task {
                    let! session = openSession server.Port path offer
                    return Negotiated(label, session)
                }
            let! subscribers =
                task {
                    let list = ResizeArray<Subscriber>()
                    for i in 1..3 do
                        let! s = negotiated $"shared {i} (server defaults)" "/sub" "permessage-deflate"
                        list.Add s
                    for i in 1..2 do
                        let! s = negotiated $"context takeover {i}" "/subtakeover" "permessage-deflate"
                        list.Add s
                    for i in 1..2 do
                        let! s = negotiated $"window 10 {i}" "/sub" "permessage-deflate; server_max_window_bits=10"
                        list.Add s
                    for i in 1..2 do
                        let! connection = connectOffering server.Port "/sub" None
                        list.Add(Plain($"uncompressed {i}", connection))
                    return list.ToArray()
                }
            try
                let! subscribed = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.SubscriberCount "room" = subscribers.Length)
                Expect.isTrue subscribed "everyone subscribed"
                let realtime = server.Realtime :?> RealtimeServer
                let before = realtime.SharedPublishCompressions
                let texts = [ for i in 1..5 -> chatText i ]
                for text in texts do
                    Expect.equal (server.Realtime.Publish("room", text, compress = true)) subscribers.Length "queued to every subscriber"
                let binary = binaryMessage 77 5000
                Expect.equal (server.Realtime.Publish("room", ReadOnlySpan binary, compress = true)) subscribers.Length "binary queued to every subscriber"
                Expect.equal (realtime.SharedPublishCompressions - before) 6L "one shared compression per publish, however many subscribers take it"
                let plainText = chatText 99
                server.Realtime.Publish("room", plainText, compress = false) |> ignore
                Expect.equal (realtime.SharedPublishCompressions - before) 6L "no compression for a publish without the flag"
                let expected =
                    [ for text in texts -> Opcode.Text, Encoding.UTF8.GetBytes text, true ]
                    @ [ Opcode.Binary, binary, true; Opcode.Text, Encoding.UTF8.GetBytes plainText, false ]
                for subscriber in subscribers do
                    for kind, data, flagged in expected do
                        let! label, (gotKind, compressed, got) =
                            match subscriber with
                            | Negotiated(label, session) ->
                                task {
                                    let! message = session.Receive()
                                    return label, message
                                }
                            | Plain(label, connection) ->
                                task {
                                    let! message = receiveFrames connection
                                    return label, message
                                }
                        let negotiatedHere = match subscriber with Negotiated _ -> true | Plain _ -> false
                        Expect.equal gotKind kind $"{label}: kind"
                        Expect.equal compressed (flagged && negotiatedHere) $"{label}: compressed exactly when asked and negotiated"
                        if got <> data then failtestf "%s: content differs (%s)" label (describe got)
            finally
                for subscriber in subscribers do
                    match subscriber with
                    | Negotiated(_, session) -> (session :> IDisposable).Dispose()
                    | Plain(_, connection) -> (connection :> IDisposable).Dispose()
        })

        testCaseTask "Broadcast compresses by CompressionThreshold like a publish: once per window for the shared ones, for itself with context takeover, plain for the others" (fun () -> task {
            let routes (app: WebApplication) =
                let threshold (options: RealtimeOptions) = options.CompressionThreshold <- Nullable 100
                app.MapRealtime("/everyone", RealtimeHandlers<obj>(), Action<RealtimeOptions> threshold) |> ignore
                app.MapRealtime("/everyone-takeover", RealtimeHandlers<obj>(), Action<RealtimeOptions>(fun o -> contextTakeover o; threshold o)) |> ignore
            let! server = start sampleOptions routes
            use _ = server
            let! shared = openSession server.Port "/everyone" "permessage-deflate"
            let! window10 = openSession server.Port "/everyone" "permessage-deflate; server_max_window_bits=10"
            let! takeover = openSession server.Port "/everyone-takeover" "permessage-deflate"
            let! plain = connectOffering server.Port "/everyone" None
            try
                let! opened = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.ConnectionsOf("/everyone").Count = 3)
                Expect.isTrue opened "three connections on /everyone"
                let realtime = server.Realtime :?> RealtimeServer
                let before = realtime.SharedPublishCompressions
                let large = chatText 7 + chatText 8
                let small = "hi"
                Expect.equal (server.Realtime.Broadcast("/everyone", large)) 3 "queued to the three"
                Expect.equal (server.Realtime.Broadcast("/everyone-takeover", large)) 1 "queued to the one"
                Expect.equal (server.Realtime.Broadcast("/everyone", small)) 3 "queued to the three"
                Expect.equal (realtime.SharedPublishCompressions - before) 1L "one full-window compression for the large broadcast, none for the small one"
                for label, session in [ "shared", shared; "window 10", window10; "context takeover", takeover ] do
                    let! kind, compressed, got = session.Receive()
                    Expect.equal kind Opcode.Text $"{label}: text"
                    Expect.isTrue compressed $"{label}: over the threshold, compressed"
                    Expect.equal (Encoding.UTF8.GetString got) large $"{label}: same text"
                for label, session in [ "shared", shared; "window 10", window10 ] do
                    let! _, compressed, got = session.Receive()
                    Expect.isFalse compressed $"{label}: under the threshold, plain"
                    Expect.equal (Encoding.UTF8.GetString got) small $"{label}: same small text"
                let! _, compressed, got = receiveFrames plain
                Expect.isFalse compressed "no compression without negotiation"
                Expect.equal (Encoding.UTF8.GetString got) large "same text, plain"
            finally
                for session in [ shared; window10; takeover ] do (session :> IDisposable).Dispose()
                (plain :> IDisposable).Dispose()
        })

        testCaseTask "measure: compression ratio and compress throughput for chat-like JSON messages (printed, not asserted)" (fun () -> task {
            let corpus = [| for i in 1..2000 -> Encoding.UTF8.GetBytes(chatText i) |]
            let rawBytes = corpus |> Array.sumBy (fun m -> int64 m.Length)
            let measure (label: string) (deflater: MessageDeflater) =
                // One pass for the ratio, then repeat for at least 300 ms for the throughput.
                let mutable compressedBytes = 0L
                for message in corpus do
                    let length, rented = deflater.Compress(ReadOnlySpan message)
                    compressedBytes <- compressedBytes + int64 length
                    Buffers.ArrayPool<byte>.Shared.Return rented
                let clock = Stopwatch.StartNew()
                let mutable passes = 0
                while clock.ElapsedMilliseconds < 300L do
                    for message in corpus do
                        let _, rented = deflater.Compress(ReadOnlySpan message)
                        Buffers.ArrayPool<byte>.Shared.Return rented
                    passes <- passes + 1
                let seconds = clock.Elapsed.TotalSeconds
                printfn
                    "compression, %s: %d messages averaging %d B: compressed to %.1f%% of the size (ratio %.2f:1); %.1f MB/s, %.0f messages/s"
                    label corpus.Length (int (rawBytes / int64 corpus.Length)) (100.0 * float compressedBytes / float rawBytes)
                    (float rawBytes / float compressedBytes) (float rawBytes * float passes / seconds / 1e6) (float corpus.Length * float passes / seconds)
            use shared = new MessageDeflater(15, contextTakeover = false)
            measure "no context takeover (shared compressor), 15-bit window" shared
            use own = new MessageDeflater(15, contextTakeover = true)
            measure "context takeover (per-connection compressor), 15-bit window" own
            use small = new MessageDeflater(10, contextTakeover = false)
            measure "no context takeover, 10-bit window" small
        })
    ]

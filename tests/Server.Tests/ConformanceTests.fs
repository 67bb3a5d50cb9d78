/// RFC 6455 conformance of `/echo` (samples/Echo), mirroring Autobahn|Testsuite categories 1-7, 9
/// and 10: what each case sends and what it accepts as the server's answer. The tests speak raw
/// frames through `RawClient`, so they can send what a well-behaved client never would.
///
/// Autobahn's verdicts, as checked here:
/// - a valid exchange gets its echo (same kind, same bytes), then our close 1000 is answered with
///   a close and the server drops the TCP connection (Autobahn prefers the server to drop it);
/// - a protocol violation gets a close frame with 1002 (1007 for invalid UTF-8) and nothing else
///   first, then the server drops the TCP connection;
/// - nothing the client sends after its close frame is answered.
///
/// Stricter than Autobahn in places: where Autobahn accepts a "non-strict" outcome (6.4.x failing
/// only at the end of the message, 7.1.6 answering the close before the message) these tests
/// require the strict one, and the 9.x payloads are checked byte for byte, not only by length.
module Realtime.Server.Tests.ConformanceTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.RawClient

// ---------------------------------------------------------------------------------------------
// The endpoint under test.
//
// samples/Echo/Program.cs is a top-level program that blocks in app.Run(), so it cannot be started
// in-process. Its /echo contract is replicated here exactly - the same three options and the same
// one-line Message handler - and one test below ("the real samples/Echo ...") builds and runs the
// sample itself as a process to check the replica against it.
// ---------------------------------------------------------------------------------------------

/// The options samples/Echo/Program.cs sets.
let private echoOptions (options: RealtimeOptions) =
    options.MaxPayloadLength <- 64 * 1024 * 1024
    options.MaxBufferedAmount <- 256L * 1024L * 1024L
    options.BackpressureLimit <- 1024L * 1024L

/// The /echo route of samples/Echo/Program.cs: every message goes back, same kind, same bytes.
let private echoRoutes (app: WebApplication) =
    app.MapRealtime("/echo", RealtimeHandlers<obj>(Message = fun ws message -> ws.Send(message.Data.Span, message.Kind) |> ignore))
    |> ignore

/// How the server under test accepts its connections.
type private Transport =
    /// Kestrel's HTTP upgrade through the route.
    | ThroughRoute
    /// Realtime's connection middleware (UseRealtimeDirectConnections).
    | Direct
    /// Realtime's native epoll transport (UseRealtimeNativeTransport), on Linux.
    | Native

/// A server started on first use and shared by one test list (it lives until the test run ends).
let private echoServer (transport: Transport) : Lazy<Task<TestHost.RunningServer>> =
    lazy (
        match transport with
        | ThroughRoute -> TestHost.startThroughRoute echoOptions echoRoutes
        | Direct -> TestHost.startIn true echoOptions echoRoutes
        | Native -> TestHost.startOn TestHost.OwnTransport (fun builder -> builder.WebHost.UseRealtimeNativeTransport() |> ignore) echoOptions echoRoutes)

let private connectTo (server: Lazy<Task<TestHost.RunningServer>>) : Task<RawConnection> =
    task {
        let! running = server.Value
        return! RawClient.connect running.Port "/echo"
    }

/// A test on a fresh raw connection to the list's server.
let private echoCase (server: Lazy<Task<TestHost.RunningServer>>) (name: string) (body: RawConnection -> Task<unit>) =
    testCaseTask name (fun () ->
        task {
            let! connection = connectTo server
            use _ = connection
            do! body connection
        })

// ---------------------------------------------------------------------------------------------
// Frames on the wire.
// ---------------------------------------------------------------------------------------------

let private ascii (text: string) = Encoding.ASCII.GetBytes text
let private utf8 (text: string) = Encoding.UTF8.GetBytes text
let private hex (digits: string) = Convert.FromHexString digits
let private opcode (value: int) : Opcode = LanguagePrimitives.EnumOfValue(byte value)

/// A client's masked frame as wire bytes. `rsv` numbers the reserved bits as Autobahn does:
/// 4 = RSV1, 2 = RSV2, 1 = RSV3. Nothing is checked, so malformed frames can be built.
let private frameOf (op: Opcode) (fin: bool) (rsv: int) (payload: byte[]) : byte[] =
    let header: FrameHeader =
        { Fin = fin
          Rsv1 = rsv &&& 4 <> 0
          Rsv2 = rsv &&& 2 <> 0
          Rsv3 = rsv &&& 1 <> 0
          Opcode = op
          Masked = true
          MaskKey = 0x9A3B5C71u
          PayloadLength = int64 payload.Length }
    (Frame.encode header (ReadOnlyMemory payload)).ToArray()

/// A whole (final, unreserved) frame.
let private whole (op: Opcode) (payload: byte[]) = frameOf op true 0 payload

/// A message cut into frames of at most `size` payload bytes (at least one frame).
let private fragmented (kind: Opcode) (size: int) (payload: byte[]) : byte[] =
    use out = new MemoryStream(payload.Length + (payload.Length / size + 1) * Frame.MaxHeaderSize)
    let mutable offset = 0
    let mutable first = true
    while first || offset < payload.Length do
        let count = min size (payload.Length - offset)
        let piece = frameOf (if first then kind else Opcode.Continuation) (offset + count >= payload.Length) 0 (Array.sub payload offset count)
        out.Write(piece, 0, piece.Length)
        offset <- offset + count
        first <- false
    out.ToArray()

/// Writes bytes; a write the server refuses because it has already failed the connection (as it
/// should, fast, on a bad frame) is not an error here: what the server sent is checked next.
/// Returns false when the write failed.
let private tryWrite (connection: RawConnection) (bytes: byte[]) : Task<bool> =
    task {
        try
            do! connection.SendRaw bytes
            return true
        with :? IOException ->
            return false
    }

/// Sends all frames in one write ("in one chop").
let private sendAll (connection: RawConnection) (frames: byte[] list) : Task<unit> =
    task {
        let! _ = tryWrite connection (Array.concat frames)
        ()
    }

/// Sends each frame in its own write with a short pause between ("frame-wise", Autobahn's sync mode).
let private sendFramewise (connection: RawConnection) (frames: byte[] list) : Task<unit> =
    task {
        let mutable remaining = frames
        while not remaining.IsEmpty do
            let! written = tryWrite connection remaining.Head
            remaining <- if written then remaining.Tail else []
            do! Task.Delay 20
    }

/// Sends the bytes in writes of `chop` bytes; with `pause`, waits a moment after each so the
/// server really reads them apart (octet-wise cases split headers anywhere).
let private sendChopped (connection: RawConnection) (chop: int) (pause: bool) (bytes: byte[]) : Task<unit> =
    task {
        let mutable offset = 0
        while offset < bytes.Length do
            let count = min chop (bytes.Length - offset)
            let! written = tryWrite connection (Array.sub bytes offset count)
            if pause then do! Task.Delay 1
            offset <- if written then offset + count else bytes.Length
    }

/// Octet-wise: one byte per write.
let private sendOctetwise (connection: RawConnection) (frames: byte[] list) = sendChopped connection 1 true (Array.concat frames)

/// `length` bytes repeating `pattern`.
let private repeated (pattern: byte[]) (length: int) = Array.init length (fun i -> pattern[i % pattern.Length])

/// Valid UTF-8 text of exactly `length` bytes with multi-byte characters throughout, so that
/// fragment and read boundaries fall inside characters (Autobahn sends ASCII only; this is harder).
let private textOf (length: int) : byte[] =
    let unit = utf8 "BAsd7&jh23-κόσμε-€-𤭢|"
    let bytes = Array.create length (byte '*')
    let mutable offset = 0
    while offset + unit.Length <= length do
        Buffer.BlockCopy(unit, 0, bytes, offset, unit.Length)
        offset <- offset + unit.Length
    bytes

/// Binary data of `length` bytes that is not periodic in any small power of two.
let private binaryOf (length: int) = Array.init length (fun i -> byte (i % 251))

// ---------------------------------------------------------------------------------------------
// What the server sends back.
// ---------------------------------------------------------------------------------------------

/// One thing the server did, as Autobahn records it.
type private Event =
    /// A whole data message (fragments joined).
    | Message of kind: Opcode * data: byte[]
    | Ping of pingData: byte[]
    | Pong of pongData: byte[]
    /// A close frame with its code (1005 when it carried none).
    | Closed of code: uint16
    /// The TCP connection ended without (more) frames.
    | Dropped

let private preview (data: byte[]) =
    if data.Length <= 24 then $"[{Convert.ToHexString data}]"
    else $"[{Convert.ToHexString(data, 0, 12)}... {data.Length} bytes]"

let private show (event: Event) =
    match event with
    | Message(kind, data) -> $"{kind} message {preview data}"
    | Ping data -> $"ping {preview data}"
    | Pong data -> $"pong {preview data}"
    | Closed code -> $"close {code}"
    | Dropped -> "TCP connection dropped"

let private sameBytes (a: byte[]) (b: byte[]) = MemoryExtensions.SequenceEqual(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)

let private same (expected: Event) (actual: Event) =
    match expected, actual with
    | Message(k1, d1), Message(k2, d2) -> k1 = k2 && sameBytes d1 d2
    | Ping d1, Ping d2
    | Pong d1, Pong d2 -> sameBytes d1 d2
    | Closed c1, Closed c2 -> c1 = c2
    | Dropped, Dropped -> true
    | _ -> false

/// The next thing the server does (our server never fragments, so a control frame between the
/// fragments of one of its messages is not expected and not handled).
let private nextEvent (connection: RawConnection) (timeout: TimeSpan) : Task<Event> =
    task {
        use parts = new MemoryStream()
        let mutable kind = Opcode.Continuation
        let mutable result = None
        while result.IsNone do
            match! connection.ReceiveFrame timeout with
            | None -> result <- Some Dropped
            | Some frame ->
                match frame.Opcode with
                | Opcode.Close -> result <- Some(Closed frame.CloseCode)
                | Opcode.Ping -> result <- Some(Ping frame.Payload)
                | Opcode.Pong -> result <- Some(Pong frame.Payload)
                | op ->
                    if op <> Opcode.Continuation then kind <- op
                    parts.Write(frame.Payload, 0, frame.Payload.Length)
                    if frame.Fin then result <- Some(Message(kind, parts.ToArray()))
        return result.Value
    }

/// Fails unless the server's next action is `expected` (within 10 s).
let private expectNext (connection: RawConnection) (expected: Event) (what: string) : Task<unit> =
    task {
        let! actual = nextEvent connection (TimeSpan.FromSeconds 10.0)
        if not (same expected actual) then failtestf "%s: expected %s, got %s" what (show expected) (show actual)
    }

/// Fails if the server sends anything or drops the connection within `milliseconds`.
let private expectSilence (connection: RawConnection) (milliseconds: int) (what: string) : Task<unit> =
    task {
        let! outcome =
            task {
                try
                    let! frame = connection.ReceiveFrame(TimeSpan.FromMilliseconds(float milliseconds))
                    return Some frame
                with :? TimeoutException ->
                    return None
            }
        match outcome with
        | None -> ()
        | Some(Some frame) -> failtestf "%s: expected nothing yet, got a %A frame %s" what frame.Opcode (preview frame.Payload)
        | Some None -> failtestf "%s: expected nothing yet, but the server dropped the connection" what
    }

let private expectDropped (connection: RawConnection) (what: string) : Task<unit> =
    task {
        let! dropped = connection.WaitForTransportClose(TimeSpan.FromSeconds 5.0)
        Expect.isTrue dropped $"{what}: the server drops the TCP connection"
    }

/// Autobahn's verdict on a violation: the very next thing is a close with `code`, then the server
/// drops the TCP connection.
let private expectFailure (connection: RawConnection) (code: uint16) (what: string) : Task<unit> =
    task {
        do! expectNext connection (Closed code) what
        do! expectDropped connection what
    }

/// Autobahn's ending of a valid case: our close 1000 is answered with 1000, then TCP is dropped.
let private closeNormally (connection: RawConnection) (what: string) : Task<unit> =
    task {
        do! connection.SendClose(CloseCode.NormalClosure, "")
        do! expectNext connection (Closed CloseCode.NormalClosure) $"{what} (closing handshake)"
        do! expectDropped connection what
    }

// ---------------------------------------------------------------------------------------------
// Autobahn 1: framing.
// ---------------------------------------------------------------------------------------------

let private framingTestsOn (transport: Transport) =
    let server = echoServer transport
    let kinds = [ 1, Opcode.Text, "text", byte '*'; 2, Opcode.Binary, "binary", 0xFEuy ]
    let sizes = [ 0; 125; 126; 127; 128; 65535; 65536 ]
    testList "Autobahn 1: framing (text and binary)" [
        for group, kind, name, fill in kinds do
            for index, size in List.indexed sizes do
                let case = $"1.{group}.{index + 1}"
                echoCase server $"{case} {name} message of {size} bytes echoes" (fun connection ->
                    task {
                        let payload = Array.create size fill
                        do! connection.SendFrame(kind, payload)
                        do! expectNext connection (Message(kind, payload)) case
                        do! closeNormally connection case
                    })
            let case = $"1.{group}.8"
            echoCase server $"{case} {name} message of 65536 bytes sent in 997-byte chops echoes" (fun connection ->
                task {
                    let payload = Array.create 65536 fill
                    do! sendChopped connection 997 true (whole kind payload)
                    do! expectNext connection (Message(kind, payload)) case
                    do! closeNormally connection case
                })
    ]

// ---------------------------------------------------------------------------------------------
// Autobahn 2: pings and pongs.
// ---------------------------------------------------------------------------------------------

let private pingTestsOn (transport: Transport) =
    let server = echoServer transport
    let pingCase name (payload: byte[]) =
        echoCase server name (fun connection ->
            task {
                do! connection.SendFrame(Opcode.Ping, payload)
                do! expectNext connection (Pong payload) name
                do! closeNormally connection name
            })
    testList "Autobahn 2: pings and pongs" [
        pingCase "2.1 ping without payload is answered by an empty pong" [||]
        pingCase "2.2 ping with a small text payload is answered with the same payload" (ascii "Hello, world!")
        pingCase "2.3 ping with a small binary payload is answered with the same payload" [| 0x00uy; 0xFFuy; 0xFEuy; 0xFDuy; 0xFCuy; 0xFBuy; 0x00uy; 0xFFuy |]
        pingCase "2.4 ping with a 125-byte payload is answered with the same payload" (Array.create 125 0xFEuy)
        echoCase server "2.5 ping with a 126-byte payload fails with 1002 and gets no pong" (fun connection ->
            task {
                do! connection.SendRaw(whole Opcode.Ping (Array.create 126 0xFEuy))
                do! expectFailure connection CloseCode.ProtocolError "2.5"
            })
        echoCase server "2.6 ping with a 125-byte payload sent octet-wise is answered" (fun connection ->
            task {
                let payload = Array.create 125 0xFEuy
                do! sendOctetwise connection [ whole Opcode.Ping payload ]
                do! expectNext connection (Pong payload) "2.6"
                do! closeNormally connection "2.6"
            })
        echoCase server "2.7 unsolicited pong without payload is ignored" (fun connection ->
            task {
                do! connection.SendFrame(Opcode.Pong, [||])
                // Autobahn expects no event at all: the next thing is the answer to our close.
                do! closeNormally connection "2.7"
            })
        echoCase server "2.8 unsolicited pong with payload is ignored" (fun connection ->
            task {
                do! connection.SendFrame(Opcode.Pong, ascii "unsolicited pong payload")
                do! closeNormally connection "2.8"
            })
        echoCase server "2.9 unsolicited pong then ping: only the ping is answered" (fun connection ->
            task {
                do! sendAll connection [ whole Opcode.Pong (ascii "unsolicited pong payload"); whole Opcode.Ping (ascii "ping payload") ]
                do! expectNext connection (Pong(ascii "ping payload")) "2.9"
                do! closeNormally connection "2.9"
            })
        echoCase server "2.10 ten pings in one write get ten pongs in order" (fun connection ->
            task {
                let payloads = [ for i in 0..9 -> ascii $"payload-{i}" ]
                do! sendAll connection [ for payload in payloads -> whole Opcode.Ping payload ]
                for payload in payloads do
                    do! expectNext connection (Pong payload) "2.10"
                do! closeNormally connection "2.10"
            })
        echoCase server "2.11 ten pings sent octet-wise get ten pongs in order" (fun connection ->
            task {
                let payloads = [ for i in 0..9 -> ascii $"payload-{i}" ]
                do! sendOctetwise connection [ for payload in payloads -> whole Opcode.Ping payload ]
                for payload in payloads do
                    do! expectNext connection (Pong payload) "2.11"
                do! closeNormally connection "2.11"
            })
    ]

// ---------------------------------------------------------------------------------------------
// Autobahn 3: reserved bits (no extension is negotiated, so any RSV bit fails the connection).
// ---------------------------------------------------------------------------------------------

let private reservedBitTestsOn (transport: Transport) =
    let server = echoServer transport
    let hello = ascii "Hello, world!"
    /// 3.2-3.4: a good message (echoed), the bad frame, a ping (never answered).
    let afterGoodMessage name rsv (send: RawConnection -> byte[] list -> Task<unit>) =
        echoCase server name (fun connection ->
            task {
                do! send connection [ whole Opcode.Text hello; frameOf Opcode.Text true rsv hello; whole Opcode.Ping [||] ]
                do! expectNext connection (Message(Opcode.Text, hello)) name
                do! expectFailure connection CloseCode.ProtocolError $"{name} (no pong after the bad frame)"
            })
    let alone name op rsv (payload: byte[]) =
        echoCase server name (fun connection ->
            task {
                do! connection.SendRaw(frameOf op true rsv payload)
                do! expectFailure connection CloseCode.ProtocolError name
            })
    testList "Autobahn 3: reserved bits" [
        alone "3.1 text message with RSV3 (rsv = 1) fails with 1002" Opcode.Text 1 hello
        afterGoodMessage "3.2 text echoes, then a text with RSV2 (rsv = 2) fails with 1002 before the ping" 2 sendAll
        afterGoodMessage "3.3 frame-wise: text echoes, then a text with RSV2+RSV3 (rsv = 3) fails with 1002" 3 sendFramewise
        afterGoodMessage "3.4 octet-wise: text echoes, then a text with RSV1 (rsv = 4) fails with 1002" 4 sendOctetwise
        alone "3.5 binary message with RSV1+RSV3 (rsv = 5) fails with 1002" Opcode.Binary 5 [| 0x00uy; 0xFFuy; 0xFEuy; 0xFDuy |]
        alone "3.6 ping with RSV1+RSV2 (rsv = 6) fails with 1002 and gets no pong" Opcode.Ping 6 hello
        alone "3.7 close with all reserved bits (rsv = 7) fails with 1002" Opcode.Close 7 (Frame.closePayload CloseCode.NormalClosure "")
    ]

// ---------------------------------------------------------------------------------------------
// Autobahn 4: opcodes (3-7 and 11-15 are reserved).
// ---------------------------------------------------------------------------------------------

let private opcodeTestsOn (transport: Transport) =
    let server = echoServer transport
    let hello = ascii "Hello, world!"
    let payload = ascii "reserved opcode payload"
    let alone name code (body: byte[]) =
        echoCase server name (fun connection ->
            task {
                do! connection.SendRaw(whole (opcode code) body)
                do! expectFailure connection CloseCode.ProtocolError name
            })
    let afterGoodMessage name code (body: byte[]) =
        echoCase server name (fun connection ->
            task {
                do! sendAll connection [ whole Opcode.Text hello; whole (opcode code) body; whole Opcode.Ping [||] ]
                do! expectNext connection (Message(Opcode.Text, hello)) name
                do! expectFailure connection CloseCode.ProtocolError $"{name} (no pong after the bad frame)"
            })
    testList "Autobahn 4: opcodes" [
        alone "4.1.1 reserved data opcode 3 fails with 1002" 3 [||]
        alone "4.1.2 reserved data opcode 4 with payload fails with 1002" 4 payload
        afterGoodMessage "4.1.3 text echoes, then reserved opcode 5 fails with 1002 before the ping" 5 [||]
        afterGoodMessage "4.1.4 text echoes, then reserved opcode 6 with payload fails with 1002" 6 payload
        afterGoodMessage "4.1.5 text echoes, then reserved opcode 7 with payload fails with 1002" 7 payload
        alone "4.2.1 reserved control opcode 11 fails with 1002" 11 [||]
        alone "4.2.2 reserved control opcode 12 with payload fails with 1002" 12 payload
        afterGoodMessage "4.2.3 text echoes, then reserved opcode 13 fails with 1002 before the ping" 13 [||]
        afterGoodMessage "4.2.4 text echoes, then reserved opcode 14 with payload fails with 1002" 14 payload
        afterGoodMessage "4.2.5 text echoes, then reserved opcode 15 with payload fails with 1002" 15 payload
    ]

// ---------------------------------------------------------------------------------------------
// Autobahn 5: fragmentation.
// ---------------------------------------------------------------------------------------------

let private fragmentationTestsOn (transport: Transport) =
    let server = echoServer transport
    let f1 = ascii "fragment1"
    let f2 = ascii "fragment2"
    let ways: (string * (RawConnection -> byte[] list -> Task<unit>)) list =
        [ "in one write", sendAll; "frame-wise", sendFramewise; "octet-wise", sendOctetwise ]
    let failing name (frames: byte[] list) send =
        echoCase server name (fun connection ->
            task {
                do! send connection frames
                do! expectFailure connection CloseCode.ProtocolError name
            })
    testList "Autobahn 5: fragmentation" [
        failing "5.1 ping in two fragments fails with 1002" [ frameOf Opcode.Ping false 0 f1; frameOf Opcode.Continuation true 0 f2 ] sendAll
        failing "5.2 pong in two fragments fails with 1002" [ frameOf Opcode.Pong false 0 f1; frameOf Opcode.Continuation true 0 f2 ] sendAll
        for number, (way, send) in List.zip [ 3; 4; 5 ] ways do
            let case = $"5.{number}"
            echoCase server $"{case} text message in two fragments ({way}) echoes whole" (fun connection ->
                task {
                    do! send connection [ frameOf Opcode.Text false 0 f1; frameOf Opcode.Continuation true 0 f2 ]
                    do! expectNext connection (Message(Opcode.Text, Array.append f1 f2)) case
                    do! closeNormally connection case
                })
        for number, (way, send) in List.zip [ 6; 7; 8 ] ways do
            let case = $"5.{number}"
            echoCase server $"{case} ping between two text fragments ({way}) is answered, then the message echoes" (fun connection ->
                task {
                    let ping = ascii "ping payload"
                    do! send connection [ frameOf Opcode.Text false 0 f1; whole Opcode.Ping ping; frameOf Opcode.Continuation true 0 f2 ]
                    do! expectNext connection (Pong ping) case
                    do! expectNext connection (Message(Opcode.Text, Array.append f1 f2)) case
                    do! closeNormally connection case
                })
        for number, (way, send) in List.zip [ 9; 10; 11 ] ways do
            failing
                $"5.{number} final continuation with nothing to continue, then a text ({way}), fails with 1002 and nothing echoes"
                [ frameOf Opcode.Continuation true 0 (ascii "non-continuation payload"); whole Opcode.Text (ascii "Hello, world!") ]
                send
        for number, (way, send) in List.zip [ 12; 13; 14 ] ways do
            failing
                $"5.{number} non-final continuation with nothing to continue, then a text ({way}), fails with 1002"
                [ frameOf Opcode.Continuation false 0 (ascii "non-continuation payload"); whole Opcode.Text (ascii "Hello, world!") ]
                send
        echoCase server "5.15 continuation after final fragment fails with 1002 (the complete message echoes first)" (fun connection ->
            task {
                do! sendAll connection [
                    frameOf Opcode.Text false 0 f1
                    frameOf Opcode.Continuation true 0 f2
                    frameOf Opcode.Continuation false 0 (ascii "fragment3")
                    frameOf Opcode.Text true 0 (ascii "fragment4") ]
                do! expectNext connection (Message(Opcode.Text, Array.append f1 f2)) "5.15"
                do! expectFailure connection CloseCode.ProtocolError "5.15"
            })
        for number, fin in [ 16, false; 17, true ] do
            failing
                $"5.{number} twice: a continuation (FIN = {fin}) with nothing to continue, then a two-fragment text, fails with 1002"
                [ for _ in 1..2 do
                      frameOf Opcode.Continuation fin 0 f1
                      frameOf Opcode.Text false 0 f2
                      frameOf Opcode.Continuation true 0 (ascii "fragment3") ]
                sendAll
        failing "5.18 a text frame where a continuation is due fails with 1002" [ frameOf Opcode.Text false 0 f1; frameOf Opcode.Text true 0 f2 ] sendAll
        for number, (way, send) in [ 19, ("in writes", sendAll); 20, ("frame-wise", sendFramewise) ] do
            let case = $"5.{number}"
            echoCase server $"{case} five text fragments with two pings between ({way}): each ping is answered before the message ends" (fun connection ->
                task {
                    let fragments = [ for i in 1..5 -> ascii $"fragment{i}" ]
                    let ping1, ping2 = ascii "pongme 1!", ascii "pongme 2!"
                    do! send connection [
                        frameOf Opcode.Text false 0 fragments[0]
                        frameOf Opcode.Continuation false 0 fragments[1]
                        whole Opcode.Ping ping1 ]
                    // The first pong comes while the message is still open (Autobahn waits 1 s here).
                    do! expectNext connection (Pong ping1) case
                    do! send connection [
                        frameOf Opcode.Continuation false 0 fragments[2]
                        frameOf Opcode.Continuation false 0 fragments[3]
                        whole Opcode.Ping ping2
                        frameOf Opcode.Continuation true 0 fragments[4] ]
                    do! expectNext connection (Pong ping2) case
                    do! expectNext connection (Message(Opcode.Text, Array.concat fragments)) case
                    do! closeNormally connection case
                })
    ]

// ---------------------------------------------------------------------------------------------
// Autobahn 6: UTF-8 handling.
// ---------------------------------------------------------------------------------------------

/// κόσμε, the multi-byte sample Autobahn uses throughout category 6.
let private kosme = hex "CEBAE1BDB9CF83CEBCCEB5"

/// The sequences of Autobahn 6.5-6.23 (from Markus Kuhn's UTF-8 decoder test): per sub-category
/// its number, a description, and (valid, payload) pairs sent as one text frame each.
let private utf8Sequences: (int * string * (bool * byte[]) list) list =
    let valid digits = true, hex digits
    let invalid digits = false, hex digits
    let hello middle = true, Array.concat [ ascii "hello"; hex middle; ascii "world" ]
    let missingLast = [ "C0"; "E080"; "F08080"; "F8808080"; "FC80808080"; "DF"; "EFBF"; "F7BFBF"; "FBBFBFBF"; "FDBFBFBFBF" ]
    let nonCharacters =
        [ "EFBFBE"; "EFBFBF"
          for z1 in [ "F0"; "F1"; "F2"; "F3"; "F4" ] do
              for z2 in [ "8F"; "9F"; "AF"; "BF" ] do
                  if not (z1 = "F4" && z2 <> "8F") then
                      for z3 in [ "BE"; "BF" ] do
                          let sequence = z1 + z2 + "BF" + z3
                          if sequence <> "F08FBFBE" && sequence <> "F08FBFBF" then sequence ]
    [ 5, "some valid UTF-8 sequences", [ hello "24"; hello "C2A2"; hello "E282AC"; hello "F0A4ADA2"; true, kosme ]
      6, "all prefixes of a valid multi-byte string (complete ones valid)",
      [ for length in 1 .. kosme.Length -> List.contains length [ 2; 5; 7; 9; 11 ], kosme[.. length - 1] ]
      7, "first possible sequence of each length", [ valid "00"; valid "C280"; valid "E0A080"; valid "F0908080" ]
      8, "first possible sequences of length 5 and 6 (invalid)", [ invalid "F888808080"; invalid "FC8480808080" ]
      9, "last possible sequence of each length", [ valid "7F"; valid "DFBF"; valid "EFBFBF"; valid "F48FBFBF" ]
      10, "last possible sequences of length 4-6 past U+10FFFF (invalid)", [ invalid "F7BFBFBF"; invalid "FBBFBFBFBF"; invalid "FDBFBFBFBFBF" ]
      11, "other boundary conditions", [ valid "ED9FBF"; valid "EE8080"; valid "EFBFBD"; valid "F48FBFBF"; invalid "F4908080" ]
      12, "unexpected continuation bytes (invalid)",
      [ invalid "80"; invalid "BF"; invalid "80BF"; invalid "80BF80"; invalid "80BF80BF"; invalid "80BF80BF80"; invalid "80BF80BF80BF"
        false, [| for b in 0x80 .. 0xBE -> byte b |] ]
      13, "lonely start characters (invalid)",
      [ for low, high in [ 0xC0, 0xDF; 0xE0, 0xEF; 0xF0, 0xF7; 0xF8, 0xFB; 0xFC, 0xFD ] ->
            false, [| for b in low .. high - 1 do
                          byte b
                          0x20uy |] ]
      14, "sequences with the last continuation byte missing (invalid)", [ for digits in missingLast -> invalid digits ]
      15, "concatenation of incomplete sequences (invalid)", [ invalid (String.concat "" missingLast) ]
      16, "impossible bytes (invalid)", [ invalid "FE"; invalid "FF"; invalid "FEFEFFFF" ]
      17, "overlong ASCII characters (invalid)", [ for digits in [ "C0AF"; "E080AF"; "F08080AF"; "F8808080AF"; "FC80808080AF" ] -> invalid digits ]
      18, "maximum overlong sequences (invalid)", [ for digits in [ "C1BF"; "E09FBF"; "F08FBFBF"; "F887BFBFBF"; "FC83BFBFBFBF" ] -> invalid digits ]
      19, "overlong NUL (invalid)", [ for digits in [ "C080"; "E08080"; "F0808080"; "F880808080"; "FC8080808080" ] -> invalid digits ]
      20, "single UTF-16 surrogates (invalid)", [ for digits in [ "EDA080"; "EDADBF"; "EDAE80"; "EDAFBF"; "EDB080"; "EDBE80"; "EDBFBF" ] -> invalid digits ]
      21, "paired UTF-16 surrogates (invalid)",
      [ for digits in [ "EDA080EDB080"; "EDA080EDBFBF"; "EDADBFEDB080"; "EDADBFEDBFBF"; "EDAE80EDB080"; "EDAE80EDBFBF"; "EDAFBFEDB080"; "EDAFBFEDBFBF" ] ->
            invalid digits ]
      22, "non-character code points (valid UTF-8)", [ for digits in nonCharacters -> valid digits ]
      23, "Unicode specials (valid)", [ for digits in [ "EFBFB9"; "EFBFBA"; "EFBFBB"; "EFBFBC"; "EFBFBD"; "EFBFBE"; "EFBFBF" ] -> valid digits ] ]

let private utf8TestsOn (transport: Transport) =
    let server = echoServer transport
    let textEchoes (connection: RawConnection) (expected: byte[]) (what: string) =
        task {
            do! expectNext connection (Message(Opcode.Text, expected)) what
            do! closeNormally connection what
        }
    let helloUtf8 = utf8 "Hello-µ@ßöäüàá-UTF-8!!"
    /// 6.3.x: κόσμε, a lone surrogate (ED A0 80), "edited".
    let invalidText = Array.concat [ kosme; hex "EDA080"; ascii "edited" ]
    let octetFrames (payload: byte[]) =
        [ for i in 0 .. payload.Length - 1 -> frameOf (if i = 0 then Opcode.Text else Opcode.Continuation) (i = payload.Length - 1) 0 [| payload[i] |] ]
    /// 6.4.x fail fast: part 1 is valid alone and is accepted (silence); part 2 makes the text
    /// invalid, and the server must fail with 1007 at once - before part 3 is ever sent.
    let failFast name (part1: byte[]) (part2: byte[]) (part3: byte[]) (asOneFrame: bool) =
        echoCase server name (fun connection ->
            task {
                if asOneFrame then
                    // One frame whose payload arrives in three chops.
                    let bytes = whole Opcode.Text (Array.concat [ part1; part2; part3 ])
                    let headerLength = bytes.Length - part1.Length - part2.Length - part3.Length
                    do! connection.SendRaw(bytes[.. headerLength + part1.Length - 1])
                    do! expectSilence connection 500 $"{name} after part 1"
                    do! connection.SendRaw(bytes[headerLength + part1.Length .. headerLength + part1.Length + part2.Length - 1])
                else
                    do! connection.SendRaw(frameOf Opcode.Text false 0 part1)
                    do! expectSilence connection 500 $"{name} after part 1"
                    do! connection.SendRaw(frameOf Opcode.Continuation false 0 part2)
                let clock = Stopwatch.StartNew()
                do! expectFailure connection CloseCode.InvalidPayload $"{name} right after part 2"
                Expect.isLessThan clock.Elapsed (TimeSpan.FromSeconds 2.0) $"{name}: failed fast, without waiting for part 3"
            })
    testList "Autobahn 6: UTF-8 handling" [
        echoCase server "6.1.1 empty text message echoes" (fun connection ->
            task {
                do! connection.SendFrame(Opcode.Text, [||])
                do! textEchoes connection [||] "6.1.1"
            })
        echoCase server "6.1.2 text message of three empty fragments echoes empty" (fun connection ->
            task {
                do! sendAll connection [ frameOf Opcode.Text false 0 [||]; frameOf Opcode.Continuation false 0 [||]; frameOf Opcode.Continuation true 0 [||] ]
                do! textEchoes connection [||] "6.1.2"
            })
        echoCase server "6.1.3 empty, non-empty, empty text fragments echo the middle payload" (fun connection ->
            task {
                let middle = ascii "middle frame payload"
                do! sendAll connection [ frameOf Opcode.Text false 0 [||]; frameOf Opcode.Continuation false 0 middle; frameOf Opcode.Continuation true 0 [||] ]
                do! textEchoes connection middle "6.1.3"
            })
        echoCase server "6.2.1 valid multi-byte UTF-8 in one frame echoes" (fun connection ->
            task {
                do! connection.SendFrame(Opcode.Text, helloUtf8)
                do! textEchoes connection helloUtf8 "6.2.1"
            })
        echoCase server "6.2.2 valid UTF-8 in two fragments split at a code point boundary echoes" (fun connection ->
            task {
                let split = Encoding.UTF8.GetByteCount "Hello-µ@ß" // 11: ends after a whole character
                do! sendAll connection [ frameOf Opcode.Text false 0 helloUtf8[.. split - 1]; frameOf Opcode.Continuation true 0 helloUtf8[split ..] ]
                do! textEchoes connection helloUtf8 "6.2.2"
            })
        echoCase server "6.2.3 valid UTF-8 in one-octet fragments (ending inside code points) echoes" (fun connection ->
            task {
                do! sendAll connection (octetFrames helloUtf8)
                do! textEchoes connection helloUtf8 "6.2.3"
            })
        echoCase server "6.2.4 κόσμε in one-octet fragments echoes" (fun connection ->
            task {
                do! sendAll connection (octetFrames kosme)
                do! textEchoes connection kosme "6.2.4"
            })
        echoCase server "6.3.1 invalid UTF-8 (a lone surrogate) in one frame fails with 1007" (fun connection ->
            task {
                do! connection.SendFrame(Opcode.Text, invalidText)
                do! expectFailure connection CloseCode.InvalidPayload "6.3.1"
            })
        echoCase server "6.3.2 invalid UTF-8 in one-octet fragments fails with 1007" (fun connection ->
            task {
                do! sendAll connection (octetFrames invalidText)
                do! expectFailure connection CloseCode.InvalidPayload "6.3.2"
            })
        // 6.4.1/6.4.3: part 2 is F4 90 80 80 (past U+10FFFF): invalid on its second byte.
        failFast "6.4.1 fail fast: a fragment that makes the text invalid fails with 1007 before the final fragment" kosme (hex "F4908080") (ascii "edited") false
        // 6.4.2/6.4.4: part 1 ends with the lead byte F4, part 2 is the single bad byte 90.
        failFast "6.4.2 fail fast: a fragment whose first byte is invalid fails with 1007 before the final fragment"
            (Array.append kosme (hex "F4")) (hex "90") (hex "8080656469746564") false
        failFast "6.4.3 fail fast: invalid bytes in the middle of one frame fail with 1007 before the frame ends" kosme (hex "F4908080") (ascii "edited") true
        failFast "6.4.4 fail fast: one invalid byte in the middle of one frame fails with 1007 before the frame ends"
            (Array.append kosme (hex "F4")) (hex "90") (hex "8080656469746564") true
        for number, description, sequences in utf8Sequences do
            let name = $"6.{number}.1-6.{number}.{sequences.Length} {description}: valid ones echo, invalid ones fail with 1007"
            testCaseTask name (fun () ->
                task {
                    for index, (isValid, payload) in List.indexed sequences do
                        let case = $"6.{number}.{index + 1} {preview payload}"
                        let! connection = connectTo server
                        use _ = connection
                        do! connection.SendFrame(Opcode.Text, payload)
                        if isValid then do! textEchoes connection payload case
                        else do! expectFailure connection CloseCode.InvalidPayload case
                })
    ]

// ---------------------------------------------------------------------------------------------
// Autobahn 7: close handling.
// ---------------------------------------------------------------------------------------------

let private closeTestsOn (transport: Transport) =
    let server = echoServer transport
    let closeWith (code: uint16) = Frame.closePayload code ""
    /// The client sends `payload` as its close frame; the server must answer with `expected`.
    let answered name (payload: byte[]) (expected: uint16) =
        echoCase server name (fun connection ->
            task {
                do! connection.SendFrame(Opcode.Close, payload)
                do! expectFailure connection expected name
            })
    testList "Autobahn 7: close handling" [
        echoCase server "7.1.1 a message then a close: the echo, then the close answered with 1000" (fun connection ->
            task {
                let hello = ascii "Hello World!"
                do! connection.SendFrame(Opcode.Text, hello)
                do! expectNext connection (Message(Opcode.Text, hello)) "7.1.1"
                do! closeNormally connection "7.1.1"
            })
        echoCase server "7.1.2 a second close after the first is not answered" (fun connection ->
            task {
                do! sendAll connection [ whole Opcode.Close (closeWith 1000us); whole Opcode.Close (closeWith 1000us) ]
                do! expectNext connection (Closed 1000us) "7.1.2"
                do! expectNext connection Dropped "7.1.2 (nothing after the one close)"
            })
        echoCase server "7.1.3 a ping after the close is not answered" (fun connection ->
            task {
                do! sendAll connection [ whole Opcode.Close (closeWith 1000us); whole Opcode.Ping (ascii "Hello World!") ]
                do! expectNext connection (Closed 1000us) "7.1.3"
                do! expectNext connection Dropped "7.1.3 (no pong after the close)"
            })
        echoCase server "7.1.4 a text message after the close is not echoed" (fun connection ->
            task {
                do! sendAll connection [ whole Opcode.Close (closeWith 1000us); whole Opcode.Text (ascii "Hello World!") ]
                do! expectNext connection (Closed 1000us) "7.1.4"
                do! expectNext connection Dropped "7.1.4 (no echo after the close)"
            })
        echoCase server "7.1.5 a message finished after the close is not echoed" (fun connection ->
            task {
                do! sendAll connection [ frameOf Opcode.Text false 0 (ascii "fragment1"); whole Opcode.Close (closeWith 1000us); frameOf Opcode.Continuation true 0 (ascii "fragment2") ]
                do! expectNext connection (Closed 1000us) "7.1.5"
                do! expectNext connection Dropped "7.1.5 (no echo after the close)"
            })
        echoCase server "7.1.6 256 KiB message, small message, close, ping: both echo in order, the close is answered, the ping is not" (fun connection ->
            task {
                let big = repeated (ascii "BAsd7&jh23") (256 * 1024)
                let hello = ascii "Hello World!"
                do! sendAll connection [ whole Opcode.Text big; whole Opcode.Text hello; whole Opcode.Close (closeWith 1000us); whole Opcode.Ping [||] ]
                do! expectNext connection (Message(Opcode.Text, big)) "7.1.6"
                do! expectNext connection (Message(Opcode.Text, hello)) "7.1.6"
                do! expectNext connection (Closed 1000us) "7.1.6"
                do! expectNext connection Dropped "7.1.6 (no pong after the close)"
            })
        echoCase server "7.3.1 an empty close is answered with an empty close (or 1000)" (fun connection ->
            task {
                do! connection.SendFrame(Opcode.Close, [||])
                let! answer = nextEvent connection (TimeSpan.FromSeconds 10.0)
                match answer with
                | Closed code when code = CloseCode.NoStatusReceived || code = CloseCode.NormalClosure -> ()
                | other -> failtestf "7.3.1: expected an empty close or 1000, got %s" (show other)
                do! expectDropped connection "7.3.1"
            })
        answered "7.3.2 a close payload of one byte fails with 1002" [| 0x03uy |] CloseCode.ProtocolError
        answered "7.3.3 close 1000 without a reason is answered with 1000" (closeWith 1000us) 1000us
        answered "7.3.4 close 1000 with a reason is answered with 1000" (Frame.closePayload 1000us "Hello World!") 1000us
        answered "7.3.5 close 1000 with a 123-byte reason (the most that fits) is answered with 1000" (Frame.closePayload 1000us (String('*', 123))) 1000us
        answered "7.3.6 close with a 124-byte reason (payload over 125) fails with 1002"
            (Array.append (closeWith 1000us) (Array.create 124 (byte '*'))) CloseCode.ProtocolError
        answered "7.5.1 close reason that is not valid UTF-8 fails with 1007"
            (Array.append (closeWith 1000us) (Array.concat [ kosme; hex "EDA080"; ascii "edited" ])) CloseCode.InvalidPayload
        for index, code in List.indexed [ 1000; 1001; 1002; 1003; 1007; 1008; 1009; 1010; 1011; 3000; 3999; 4000; 4999 ] do
            answered $"7.7.{index + 1} valid close code {code} is echoed" (closeWith (uint16 code)) (uint16 code)
        // Autobahn's 7.9.1-7.9.9 (0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999) plus 1012-1015,
        // which this server does not accept from a client either.
        for code in [ 0; 999; 1004; 1005; 1006; 1012; 1013; 1014; 1015; 1016; 1100; 2000; 2999 ] do
            answered $"7.9.x invalid close code {code} fails with 1002" (closeWith (uint16 code)) CloseCode.ProtocolError
        answered "7.13.1 close code 5000 (out of range) fails with 1002" (closeWith 5000us) CloseCode.ProtocolError
        answered "7.13.2 close code 65535 (out of range) fails with 1002" (closeWith 65535us) CloseCode.ProtocolError
    ]

// ---------------------------------------------------------------------------------------------
// Autobahn 9: limits and performance (run one at a time: they are the heavy ones).
// ---------------------------------------------------------------------------------------------

let private largeMessageTestsOn (transport: Transport) =
    let server = echoServer transport
    let mib = 1024 * 1024
    let kinds = [ Opcode.Text, "text", textOf; Opcode.Binary, "binary", binaryOf ]
    /// Sends the message with `send` and expects its echo within `limit` seconds.
    let timedEcho' (connection: RawConnection) (kind: Opcode) (payload: byte[]) (send: unit -> Task<unit>) (limit: float) (case: string) =
        task {
            let clock = Stopwatch.StartNew()
            do! send ()
            do! expectNext connection (Message(kind, payload)) case
            Expect.isLessThan clock.Elapsed.TotalSeconds limit $"{case}: echoed within {limit} s"
        }
    let timedEcho (connection: RawConnection) kind payload send limit case =
        task {
            do! timedEcho' connection kind payload send limit case
            do! closeNormally connection case
        }
    let sizeName (bytes: int) = if bytes >= mib then $"{bytes / mib} MiB" elif bytes >= 1024 then $"{bytes / 1024} KiB" else $"{bytes} B"
    testSequenced <| testList "Autobahn 9: limits and performance" [
        // 9.1.x text, 9.2.x binary: one frame of 64 KiB ... 16 MiB.
        for group, (kind, name, make) in List.zip [ 1; 2 ] kinds do
            for index, size in List.indexed [ 64 * 1024; 256 * 1024; mib; 4 * mib; 8 * mib; 16 * mib ] do
                let case = $"9.{group}.{index + 1}"
                echoCase server $"{case} {name} message of {sizeName size} in one frame echoes" (fun connection ->
                    task {
                        let payload = make size
                        do! timedEcho connection kind payload (fun () -> sendAll connection [ whole kind payload ]) 30.0 case
                    })
        // 9.3.x text, 9.4.x binary: 4 MiB in fragments of 64 B ... 4 MiB.
        for group, (kind, name, make) in List.zip [ 3; 4 ] kinds do
            let payload = lazy (make (4 * mib))
            for index, fragment in List.indexed [ 64; 256; 1024; 4096; 16384; 65536; 256 * 1024; mib; 4 * mib ] do
                let case = $"9.{group}.{index + 1}"
                echoCase server $"{case} {name} message of 4 MiB in fragments of {sizeName fragment} echoes" (fun connection ->
                    task {
                        let wire = fragmented kind fragment payload.Value
                        do! timedEcho connection kind payload.Value (fun () -> sendAll connection [ wire ]) 30.0 case
                    })
        // 9.5.x text, 9.6.x binary: 1 MiB in one frame, written in chops of 64 B ... 2 KiB.
        for group, (kind, name, make) in List.zip [ 5; 6 ] kinds do
            let payload = lazy (make mib)
            for index, chop in List.indexed [ 64; 128; 256; 512; 1024; 2048 ] do
                let case = $"9.{group}.{index + 1}"
                echoCase server $"{case} {name} message of 1 MiB written in chops of {chop} B echoes" (fun connection ->
                    task {
                        let wire = whole kind payload.Value
                        do! timedEcho connection kind payload.Value (fun () -> sendChopped connection chop false wire) 30.0 case
                    })
        // Not an Autobahn case (each of its cases has a connection of its own): one connection
        // carries more than Kestrel's default 30 MB request body limit, which must not apply to
        // the upgraded stream.
        echoCase server "9.x extra: three 12 MiB binary messages on one connection (36 MiB in all) echo" (fun connection ->
            task {
                for round in 1..3 do
                    let payload = binaryOf (12 * mib)
                    payload[0] <- byte round
                    do! timedEcho' connection Opcode.Binary payload (fun () -> sendAll connection [ whole Opcode.Binary payload ]) 30.0 $"message {round}"
                do! closeNormally connection "9.x extra"
            })
        // 9.7.x text, 9.8.x binary: 1000 round trips of 0 B ... 4 KiB.
        for group, (kind, name, make) in List.zip [ 7; 8 ] kinds do
            for index, size in List.indexed [ 0; 16; 64; 256; 1024; 4096 ] do
                let case = $"9.{group}.{index + 1}"
                echoCase server $"{case} 1000 {name} messages of {size} B echo one after another" (fun connection ->
                    task {
                        let payload = make size
                        let wire = whole kind payload
                        let clock = Stopwatch.StartNew()
                        for _ in 1..1000 do
                            do! connection.SendRaw wire
                            do! expectNext connection (Message(kind, payload)) case
                        Expect.isLessThan clock.Elapsed.TotalSeconds 30.0 $"{case}: 1000 round trips within 30 s"
                        do! closeNormally connection case
                    })
    ]

// ---------------------------------------------------------------------------------------------
// Autobahn 10: auto-fragmentation.
// ---------------------------------------------------------------------------------------------

let private autoFragmentationTestsOn (transport: Transport) =
    let server = echoServer transport
    testList "Autobahn 10: auto-fragmentation" [
        echoCase server "10.1.1 65536-byte text message auto-fragmented into 1300-byte frames echoes" (fun connection ->
            task {
                let payload = Array.create 65536 (byte '*')
                do! connection.SendRaw(fragmented Opcode.Text 1300 payload)
                do! expectNext connection (Message(Opcode.Text, payload)) "10.1.1"
                do! closeNormally connection "10.1.1"
            })
    ]

// ---------------------------------------------------------------------------------------------
// Every case above through the ordinary route (Kestrel's HTTP upgrade), on a listener that accepts
// connections directly (Realtime's connection middleware, no HTTP layer), and on the native transport.
// ---------------------------------------------------------------------------------------------

let private conformance (transport: Transport) =
    testList
        (match transport with
         | ThroughRoute -> "through the HTTP route"
         | Direct -> "on direct connections"
         | Native -> "on the native transport") [
        framingTestsOn transport
        pingTestsOn transport
        reservedBitTestsOn transport
        opcodeTestsOn transport
        fragmentationTestsOn transport
        utf8TestsOn transport
        closeTestsOn transport
        largeMessageTestsOn transport
        autoFragmentationTestsOn transport
    ]

[<Tests>]
let conformanceThroughRoute = conformance ThroughRoute

[<Tests>]
let conformanceOnDirectConnections = conformance Direct

[<Tests>]
let conformanceOnNativeTransport = conformance Native

// ---------------------------------------------------------------------------------------------
// The real samples/Echo, as a process.
// ---------------------------------------------------------------------------------------------

[<Tests>]
let sampleProcessTests =
    testSequenced <| testList "Autobahn smoke: the real samples/Echo as a process" [
        testCaseTask "the built samples/Echo echoes text and binary, takes a 16 MiB + 1 message, and fails a reserved opcode with 1002" (fun () ->
            task {
                match! TestHost.ensureEchoSampleBuilt () with
                | Some problem -> failtest problem
                | None -> ()
                let port = TestHost.freePort ()
                let! sample, _ = TestHost.startEchoSample port $"--urls http://127.0.0.1:{port}"
                use _ = sample
                try
                    let! connection = RawClient.connect port "/echo"
                    use _ = connection
                    let text = utf8 "Hello from the real sample, κόσμε"
                    do! connection.SendFrame(Opcode.Text, text)
                    do! expectNext connection (Message(Opcode.Text, text)) "text echo"
                    let binary = binaryOf 1000
                    do! connection.SendFrame(Opcode.Binary, binary)
                    do! expectNext connection (Message(Opcode.Binary, binary)) "binary echo"
                    // Over the default 16 MiB MaxPayloadLength: echoes only with the sample's 64 MiB.
                    let big = binaryOf (16 * 1024 * 1024 + 1)
                    do! connection.SendRaw(whole Opcode.Binary big)
                    do! expectNext connection (Message(Opcode.Binary, big)) "16 MiB + 1 echo"
                    do! closeNormally connection "sample"

                    let! violator = RawClient.connect port "/echo"
                    use _ = violator
                    do! violator.SendRaw(whole (opcode 3) [||])
                    do! expectFailure violator CloseCode.ProtocolError "reserved opcode 3"
                finally
                    TestHost.stopProcess sample
            })
    ]

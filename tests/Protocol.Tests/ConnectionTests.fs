module Realtime.Protocol.Tests.ConnectionTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Tests.Properties
open Realtime.Protocol.Tests.ClientFrames
open Realtime.Protocol.Tests.Utf8ValidatorTests

/// The close frame the core writes when it fails the connection with `error`.
let private violation (error: ProtocolError) = Violation(error, expectedClose error.CloseCode error.Message)

/// A text fragment.
let private fragment (fin: bool) (opcode: Opcode) (payload: byte[]) = clientFrame fin opcode key payload

/// The server's pong for a ping payload.
let private expectedPong (payload: byte[]) = serverFrame true Opcode.Pong payload

/// Options with a small message limit.
let private limited (limit: int64) = { Connection.defaultOptions with MaxMessageSize = limit }

/// Keep-alive options: 1 s idle timeout, 0.5 s close timeout.
let private keepAlive = { Connection.defaultOptions with IdleTimeout = 1000L; CloseTimeout = 500L }

let private receiveOnce (connection: Connection) (bytes: byte[]) (now: int64) =
    Connection.receive (connection, ReadOnlySpan bytes, now)

let private tick (connection: Connection) (now: int64) = Connection.tick (connection, now)

let private closeWith (connection: Connection) (code: uint16) (reason: string) = Connection.close (connection, code, reason, 0L)

/// The close code carried by a close frame the core wrote (unmasked, payload under 126 bytes).
let closeCodeOf (frame: byte[]) : uint16 voption =
    if frame.Length >= 4 && frame[0] = 0x88uy then ValueSome(uint16 frame[2] <<< 8 ||| uint16 frame[3]) else ValueNone

/// Expects `driver` to have received exactly `expected` and then to accept nothing more.
let private expectClosedAfter (driver: Driver) (expected: Received list) =
    Expect.equal driver.Received expected "received"
    Expect.isTrue driver.Connection.IsClosed "closed"
    let more = Array.concat [ text "more"; ping (utf8 "p"); close 1000us "" ]
    let struct (_, consumed, event) = receiveOnce driver.Connection more 0L
    Expect.equal (consumed, event) (more.Length, NeedMoreData) "nothing more is accepted"

// ---------------------------------------------------------------------------------------------
// Generators for the stream properties.

/// A client message and how it goes on the wire.
type private Sent =
    { Kind: MessageKind
      Payload: byte[]
      /// Where the payload is cut into fragments.
      Cuts: int list
      /// Pings (payload, key) sent after fragment i, for each fragment.
      Pings: (byte[] * uint32) list list
      Keys: uint32 list }

let private keyGen = Gen.oneof [ Gen.choose (Int32.MinValue, Int32.MaxValue) |> Gen.map uint32; Gen.constant 0u ]

let private payloadLengthGen = Gen.frequency [ 16, Gen.choose (0, 140); 4, Gen.choose (126, 700); 1, Gen.choose (65530, 66000) ]

let private messageGen: Gen<Sent> =
    gen {
        let! isText = Gen.elements [ true; false ]
        let! payload =
            if isText then unicodeStringGen |> Gen.map utf8
            else payloadLengthGen |> Gen.bind bytesOfLength
        let! fragments = Gen.frequency [ 3, Gen.constant 1; 3, Gen.choose (2, 4); 1, Gen.choose (5, 12) ]
        let! cuts = Gen.listOfLength (fragments - 1) (Gen.choose (0, payload.Length)) |> Gen.map List.sort
        let pingGen = Gen.zip (Gen.choose (0, 125) |> Gen.bind bytesOfLength) keyGen
        let! pings = Gen.listOfLength fragments (Gen.frequency [ 3, Gen.constant []; 1, Gen.nonEmptyListOf pingGen |> Gen.map (List.truncate 3) ])
        let! keys = Gen.listOfLength fragments keyGen
        return { Kind = (if isText then MessageKind.Text else MessageKind.Binary); Payload = payload; Cuts = cuts; Pings = pings; Keys = keys }
    }

/// The wire bytes of a message with its interleaved pings, and what the application should see.
let private wire (sent: Sent) : byte[] * Received list =
    let points = 0 :: sent.Cuts @ [ sent.Payload.Length ]
    let pieces = points |> List.pairwise |> List.map (fun (a, b) -> sent.Payload[a .. b - 1])
    let count = pieces.Length
    let bytes = ResizeArray<byte>()
    let expected = ResizeArray<Received>()
    for i, (piece, (pings, key)) in List.indexed (List.zip pieces (List.zip sent.Pings sent.Keys)) do
        let opcode = if i = 0 then LanguagePrimitives.EnumOfValue<byte, Opcode> (byte sent.Kind) else Opcode.Continuation
        let fin = i = count - 1
        bytes.AddRange(clientFrame fin opcode key piece)
        for payload, pingKey in pings do
            bytes.AddRange(clientFrame true Opcode.Ping pingKey payload)
            // A ping after the final fragment comes after the message.
            if not fin then expected.Add(Pinged(payload, expectedPong payload))
        if fin then
            expected.Add(Message(sent.Kind, sent.Payload))
            for payload, _ in pings do
                expected.Add(Pinged(payload, expectedPong payload))
    bytes.ToArray(), List.ofSeq expected

let private streamGen =
    gen {
        let! messages = Gen.listOf messageGen |> Gen.map (List.truncate 8)
        let parts = messages |> List.map wire
        let bytes = parts |> List.map fst |> Array.concat
        let expected = parts |> List.collect snd
        let! cuts =
            Gen.frequency [ 4, Gen.listOf (Gen.choose (0, bytes.Length)); 1, Gen.constant [ 0 .. min bytes.Length 600 ] ]
        return bytes, expected, cuts
    }

/// Arbitrary byte soup with a bias to bytes that look like headers.
let private soupGen =
    Gen.arrayOf (Gen.frequency [ 3, Gen.choose (0, 255); 1, Gen.elements [ 0x80; 0x81; 0x82; 0x88; 0x89; 0x8a; 0x00; 0x01; 0x7e; 0x7f; 0xfe; 0xff ] ] |> Gen.map byte)

/// Checks the end of a run on arbitrary bytes: data, pings and pongs, then at most one terminal
/// event (a violation with its close code on its close frame, or a close), after which nothing more.
let private endsWell (driver: Driver) : bool =
    let received = driver.Received
    let terminal = received |> List.filter (function Violation _ | Closed _ -> true | _ -> false)
    let lastIsTerminal = match List.tryLast received with Some(Violation _ | Closed _) -> true | _ -> false
    let terminalOk =
        match terminal with
        | [] -> not driver.Connection.IsClosed
        | [ Violation(error, frame) ] ->
            lastIsTerminal
            && set [ 1002us; 1007us; 1009us ] |> Set.contains error.CloseCode
            && closeCodeOf frame = ValueSome error.CloseCode
            && frame = Frame.close error.CloseCode error.Message
            && driver.Connection.IsClosed
        | [ Closed(code, _, _) ] -> lastIsTerminal && (CloseCode.isValidReceived code || code = 1005us) && driver.Connection.IsClosed
        | _ -> false
    let afterwards =
        if driver.Connection.IsClosed then
            let more = Array.concat [ text "more"; ping [||] ]
            let struct (_, consumed, event) = receiveOnce driver.Connection more 0L
            consumed = more.Length && event = NeedMoreData
        else true
    terminalOk && afterwards

// ---------------------------------------------------------------------------------------------

[<Tests>]
let tests =
    testList "Connection" [
        testList "data messages" [
            testCase "§5.7 masked \"Hello\" arrives as one text message" <| fun () ->
                Expect.equal (runBytes (hex "81 85 37 fa 21 3d 7f 9f 4d 51 58")) [ Message(MessageKind.Text, utf8 "Hello") ] "Hello"
            testCase "a binary message" <| fun () ->
                Expect.equal (runBytes (binary [| 0uy; 255uy; 128uy |])) [ Message(MessageKind.Binary, [| 0uy; 255uy; 128uy |]) ] "binary"
            testCase "an empty text message ends with an event of length 0" <| fun () ->
                let driver = runWith Connection.defaultOptions [ text "" ]
                Expect.equal driver.Received [ Message(MessageKind.Text, [||]) ] "empty"
                Expect.equal driver.DataEvents [ MessageKind.Text, 0, true, false ] "one empty final event"
            testCase "MessageData points into the input, still masked" <| fun () ->
                let bytes = text "Hi"
                let struct (_, consumed, event) = receiveOnce (Connection.create (Connection.defaultOptions, 0L)) bytes 0L
                Expect.equal consumed bytes.Length "all consumed"
                Expect.equal event (MessageData(MessageKind.Text, 6, 2, key, 0L, true, false)) "event"
            testCase "a 64 KiB binary message split into 1000-byte chunks" <| fun () ->
                let payload = Array.init 65536 byte
                Expect.equal (run (chunksOf 1000 (binary payload))) [ Message(MessageKind.Binary, payload) ] "64 KiB"
            testCase "several messages in one buffer come out in order" <| fun () ->
                let bytes = Array.concat [ text "one"; binary [| 2uy |]; text "three" ]
                Expect.equal (runBytes bytes) [ Message(MessageKind.Text, utf8 "one"); Message(MessageKind.Binary, [| 2uy |]); Message(MessageKind.Text, utf8 "three") ] "in order"
            testCase "every byte fed on its own" <| fun () ->
                let bytes = Array.concat [ text "héllo €😀"; ping (utf8 "p"); binary (Array.init 300 byte) ]
                Expect.equal
                    (run (chunksOf 1 bytes))
                    [ Message(MessageKind.Text, utf8 "héllo €😀"); Pinged(utf8 "p", expectedPong (utf8 "p")); Message(MessageKind.Binary, Array.init 300 byte) ]
                    "byte by byte"
            testCase "an unmasked client frame fails with 1002" <| fun () ->
                Expect.equal (runBytes (hex "81 05 48 65 6c 6c 6f")) [ violation UnmaskedFrame ] "unmasked"
            testCase "a reserved opcode fails with 1002" <| fun () ->
                Expect.equal (runBytes (clientFrameRsv true 0uy 3uy key [||])) [ violation (ReservedOpcode 3uy) ] "reserved"
            testCase "RSV1 without permessage-deflate fails with 1002" <| fun () ->
                Expect.equal (runBytes (clientFrameRsv true 4uy 1uy key (utf8 "a"))) [ violation ReservedBitsSet ] "RSV1"
            testCase "with permessage-deflate, a compressed text message is passed on unvalidated" <| fun () ->
                let options = { Connection.defaultOptions with PerMessageDeflate = true }
                let driver = runWith options [ clientFrameRsv true 4uy 1uy key (hex "ff fe fd") ]
                Expect.equal driver.Received [ Message(MessageKind.Text, hex "ff fe fd") ] "passed on"
                Expect.equal driver.DataEvents [ MessageKind.Text, 3, true, true ] "compressed"
            testCase "with permessage-deflate, compression is per message" <| fun () ->
                let options = { Connection.defaultOptions with PerMessageDeflate = true }
                let bytes = Array.concat [ clientFrameRsv false 4uy 2uy key [| 1uy |]; fragment true Opcode.Continuation [| 2uy |]; text "plain" ]
                let driver = runWith options [ bytes ]
                Expect.equal (driver.DataEvents |> List.map (fun (_, _, _, c) -> c)) [ true; true; false ] "compressed flags"
        ]

        testList "RFC 6455 §5.4 fragmentation" [
            testCase "§5.7 fragmented \"Hel\" + \"lo\" (masked) is one message" <| fun () ->
                let bytes = Array.append (fragment false Opcode.Text (utf8 "Hel")) (fragment true Opcode.Continuation (utf8 "lo"))
                Expect.equal (runBytes bytes) [ Message(MessageKind.Text, utf8 "Hello") ] "Hello"
            testCase "a binary message in three fragments" <| fun () ->
                let bytes = Array.concat [ fragment false Opcode.Binary [| 1uy |]; fragment false Opcode.Continuation [| 2uy |]; fragment true Opcode.Continuation [| 3uy |] ]
                let driver = runWith Connection.defaultOptions [ bytes ]
                Expect.equal driver.Received [ Message(MessageKind.Binary, [| 1uy; 2uy; 3uy |]) ] "message"
                Expect.equal driver.DataEvents [ MessageKind.Binary, 1, false, false; MessageKind.Binary, 1, false, false; MessageKind.Binary, 1, true, false ] "continuations keep the kind"
            testCase "empty fragments are allowed" <| fun () ->
                let bytes = Array.concat [ fragment false Opcode.Text [||]; fragment false Opcode.Continuation (utf8 "a"); fragment false Opcode.Continuation [||]; fragment true Opcode.Continuation [||] ]
                Expect.equal (runBytes bytes) [ Message(MessageKind.Text, utf8 "a") ] "a"
            testCase "a continuation with no message in progress fails with 1002" <| fun () ->
                Expect.equal (runBytes (fragment true Opcode.Continuation (utf8 "x"))) [ violation UnexpectedContinuation ] "unexpected"
            testCase "a continuation after a complete message fails with 1002" <| fun () ->
                let bytes = Array.append (text "done") (fragment true Opcode.Continuation (utf8 "x"))
                Expect.equal (runBytes bytes) [ Message(MessageKind.Text, utf8 "done"); violation UnexpectedContinuation ] "unexpected"
            testCase "a new text frame inside a fragmented message fails with 1002" <| fun () ->
                let bytes = Array.append (fragment false Opcode.Text (utf8 "a")) (text "b")
                Expect.equal (runBytes bytes) [ violation ExpectedContinuation ] "expected continuation"
            testCase "a new binary frame inside a fragmented text message fails with 1002" <| fun () ->
                let bytes = Array.append (fragment false Opcode.Text (utf8 "a")) (fragment false Opcode.Binary [| 1uy |])
                Expect.equal (runBytes bytes) [ violation ExpectedContinuation ] "expected continuation"
            testCase "the violation is reported at the offending header, before its payload arrives" <| fun () ->
                let second = text "b"
                let bytes = Array.append (fragment false Opcode.Text (utf8 "a")) second[.. 5]
                Expect.equal (runBytes bytes) [ violation ExpectedContinuation ] "at the header"
            testCase "a ping between fragments is answered at once" <| fun () ->
                let bytes = Array.concat [ fragment false Opcode.Text (utf8 "Hel"); ping (utf8 "!"); fragment true Opcode.Continuation (utf8 "lo") ]
                Expect.equal (runBytes bytes) [ Pinged(utf8 "!", expectedPong (utf8 "!")); Message(MessageKind.Text, utf8 "Hello") ] "ping first"
            testCase "pings and pongs between fragments keep the message intact" <| fun () ->
                let bytes =
                    Array.concat [ fragment false Opcode.Binary [| 1uy |]; pong (utf8 "a"); fragment false Opcode.Continuation [| 2uy |]; ping [||]; pong [||]; fragment true Opcode.Continuation [| 3uy |] ]
                Expect.equal
                    (runBytes bytes)
                    [ Ponged(utf8 "a"); Pinged([||], expectedPong [||]); Ponged [||]; Message(MessageKind.Binary, [| 1uy; 2uy; 3uy |]) ]
                    "interleaved"
            testCase "a text message split across fragments inside a multi-byte character" <| fun () ->
                let bytes = utf8 "€"
                let frames = Array.concat [ fragment false Opcode.Text bytes[..0]; ping [||]; fragment false Opcode.Continuation bytes[1..1]; fragment true Opcode.Continuation bytes[2..] ]
                Expect.equal (runBytes frames) [ Pinged([||], expectedPong [||]); Message(MessageKind.Text, bytes) ] "euro"
            testCase "a close between fragments ends the connection" <| fun () ->
                let bytes = Array.concat [ fragment false Opcode.Text (utf8 "a"); close 1000us "" ; fragment true Opcode.Continuation (utf8 "b") ]
                let driver = runWith Connection.defaultOptions [ bytes ]
                expectClosedAfter driver [ Closed(1000us, "", hex "88 02 03 e8") ]
            testCase "a fragmented control frame fails with 1002" <| fun () ->
                Expect.equal (runBytes (clientFrame false Opcode.Ping key [||])) [ violation FragmentedControlFrame ] "fragmented ping"
        ]

        testList "RFC 6455 §5.5.2 ping and pong" [
            testCase "a ping is answered with a pong carrying the same payload" <| fun () ->
                Expect.equal (runBytes (ping (utf8 "Hello"))) [ Pinged(utf8 "Hello", hex "8a 05 48 65 6c 6c 6f") ] "pong"
            testCase "an empty ping gets an empty pong" <| fun () ->
                Expect.equal (runBytes (ping [||])) [ Pinged([||], hex "8a 00") ] "empty pong"
            testCase "a 125-byte ping gets a 125-byte pong" <| fun () ->
                let payload = Array.init 125 byte
                Expect.equal (runBytes (ping payload)) [ Pinged(payload, expectedPong payload) ] "125 bytes"
            testCase "a 126-byte ping fails with 1002" <| fun () ->
                Expect.equal (runBytes (ping (Array.zeroCreate 126))) [ violation ControlFrameTooLong ] "too long"
            testCase "a ping split across calls" <| fun () ->
                let payload = utf8 "split ping"
                Expect.equal (run (chunksOf 3 (ping payload))) [ Pinged(payload, expectedPong payload) ] "pong"
            testCase "a pong needs no answer" <| fun () ->
                Expect.equal (runBytes (pong (utf8 "beat"))) [ Ponged(utf8 "beat") ] "pong"
            testCase "no pong is owed after our close" <| fun () ->
                let driver = Driver()
                let struct (closing, _) = closeWith driver.Connection 1000us ""
                driver.Set closing
                driver.Feed(ping (utf8 "late"), 0L)
                Expect.equal driver.Received [ Pinged(utf8 "late", [||]) ] "no pong"
            testCase "data still arrives after our close, until the peer's close" <| fun () ->
                let driver = Driver()
                let struct (closing, _) = closeWith driver.Connection 1000us ""
                driver.Set closing
                driver.Feed(text "in flight", 0L)
                Expect.equal driver.Received [ Message(MessageKind.Text, utf8 "in flight") ] "in-flight data"
        ]

        testList "RFC 6455 §5.5.1 closing handshake" [
            testCase "the peer's code is echoed" <| fun () ->
                let driver = runWith Connection.defaultOptions [ close 1000us "bye" ]
                expectClosedAfter driver [ Closed(1000us, "bye", hex "88 02 03 e8") ]
            for code in CloseCodeTests.autobahnValidCodes do
                testCase (sprintf "a close with code %d is accepted and echoed" code) <| fun () ->
                    Expect.equal (runBytes (close code "")) [ Closed(code, "", serverFrame true Opcode.Close (closeBody code [||])) ] "echo"
            testCase "an empty close is reported as 1005 and answered with an empty close" <| fun () ->
                let driver = runWith Connection.defaultOptions [ clientFrame true Opcode.Close key [||] ]
                expectClosedAfter driver [ Closed(1005us, "", hex "88 00") ]
                Expect.equal (Connection.closeStatus driver.Connection) (struct (1005us, "")) "closeStatus"
            testCase "a 1-byte close payload fails with 1002" <| fun () ->
                let driver = runWith Connection.defaultOptions [ clientFrame true Opcode.Close key [| 3uy |] ]
                expectClosedAfter driver [ violation InvalidClosePayload ]
            for code in CloseCodeTests.autobahnInvalidCodes do
                testCase (sprintf "a close with code %d fails with 1002" code) <| fun () ->
                    Expect.equal (runBytes (close code "")) [ violation (InvalidCloseCode code) ] "invalid code"
            testCase "a close reason that is not UTF-8 fails with 1007" <| fun () ->
                let bytes = clientFrame true Opcode.Close key (closeBody 1000us (hex "ce ba e1 bd b9 ed a0 80"))
                let driver = runWith Connection.defaultOptions [ bytes ]
                expectClosedAfter driver [ violation InvalidUtf8 ]
            testCase "a close reason cut inside a character fails with 1007" <| fun () ->
                Expect.equal (runBytes (clientFrame true Opcode.Close key (closeBody 1000us (hex "e2 82")))) [ violation InvalidUtf8 ] "cut"
            testCase "a close with a 123-byte UTF-8 reason is accepted" <| fun () ->
                let reason = String.replicate 41 "€"
                Expect.equal (runBytes (close 4000us reason)) [ Closed(4000us, reason, hex "88 02 0f a0") ] "123 bytes"
            testCase "our close first, then the peer's: CloseReceived with an empty reply" <| fun () ->
                let driver = Driver()
                let struct (closing, request) = closeWith driver.Connection 1001us "going"
                Expect.equal request (SendCloseFrame(expectedClose 1001us "going")) "our close frame"
                driver.Set closing
                driver.Feed(close 1001us "", 0L)
                expectClosedAfter driver [ Closed(1001us, "", [||]) ]
            testCase "a violation after our close writes no second close frame" <| fun () ->
                let driver = Driver()
                let struct (closing, _) = closeWith driver.Connection 1000us ""
                driver.Set closing
                driver.Feed(clientFrame true Opcode.Close key [| 1uy |], 0L)
                expectClosedAfter driver [ Violation(InvalidClosePayload, [||]) ]
            testCase "nothing is accepted after the peer's close, in the same buffer or later" <| fun () ->
                let driver = runWith Connection.defaultOptions [ Array.concat [ close 1000us ""; text "after"; ping [||] ]; text "later" ]
                expectClosedAfter driver [ Closed(1000us, "", hex "88 02 03 e8") ]
            testCase "nothing is accepted after a violation" <| fun () ->
                let driver = runWith Connection.defaultOptions [ Array.concat [ hex "81 05 48 65 6c 6c 6f"; text "after" ]; text "later" ]
                expectClosedAfter driver [ violation UnmaskedFrame ]
            testCase "close sends the frame once, then AlreadyClosing" <| fun () ->
                let connection = Connection.create (Connection.defaultOptions, 0L)
                let struct (closing, request) = closeWith connection 1000us "done"
                Expect.equal request (SendCloseFrame(hex "88 06 03 e8 64 6f 6e 65")) "close frame"
                Expect.isFalse closing.CanSend "no more data frames"
                Expect.isTrue closing.IsClosing "closing"
                Expect.isFalse closing.IsClosed "waiting for the peer"
                let struct (_, again) = closeWith closing 1000us "done"
                Expect.equal again AlreadyClosing "already closing"
            testCase "close after the peer's close is AlreadyClosing" <| fun () ->
                let driver = runWith Connection.defaultOptions [ close 1000us "" ]
                let struct (_, request) = closeWith driver.Connection 1000us ""
                Expect.equal request AlreadyClosing "already closing"
            testCase "close after a violation is AlreadyClosing" <| fun () ->
                let driver = runWith Connection.defaultOptions [ hex "81 00" ]
                let struct (_, request) = closeWith driver.Connection 1000us ""
                Expect.equal request AlreadyClosing "already closing"
            for code in [ 0us; 999us; 1004us; 1005us; 1006us; 1015us; 2000us; 5000us ] do
                testCase (sprintf "close with %d is CodeNotSendable and changes nothing" code) <| fun () ->
                    let connection = Connection.create (Connection.defaultOptions, 0L)
                    let struct (after, request) = closeWith connection code ""
                    Expect.equal request (CodeNotSendable code) "rejected"
                    Expect.isTrue after.CanSend "still open"
                    Expect.equal after connection "unchanged"
            testCase "close cuts the reason at 123 bytes on a character boundary" <| fun () ->
                let connection = Connection.create (Connection.defaultOptions, 0L)
                let struct (_, request) = closeWith connection 1000us (String.replicate 100 "é")
                match request with
                | SendCloseFrame frame ->
                    Expect.equal frame.Length (2 + 2 + 122) "122 reason bytes"
                    Expect.equal frame[1] 124uy "payload length"
                    Expect.isTrue (Utf8Validator.isValid (ReadOnlySpan frame[4..])) "valid UTF-8"
                | other -> failwithf "unexpected %A" other
            testCase "closeStatus is the peer's code and reason" <| fun () ->
                let driver = runWith Connection.defaultOptions [ close 4321us "bye now" ]
                Expect.equal (Connection.closeStatus driver.Connection) (struct (4321us, "bye now")) "status"
            testCase "closeStatus is 1006 without a close frame" <| fun () ->
                Expect.equal (Connection.closeStatus (Connection.create (Connection.defaultOptions, 0L))) (struct (1006us, "")) "status"
            testCase "closeStatus is 1006 after our close alone" <| fun () ->
                let struct (closing, _) = closeWith (Connection.create (Connection.defaultOptions, 0L)) 1000us ""
                Expect.equal (Connection.closeStatus closing) (struct (1006us, "")) "status"
            testCase "closeStatus is 1006 after a violation" <| fun () ->
                let driver = runWith Connection.defaultOptions [ hex "81 00" ]
                Expect.equal (Connection.closeStatus driver.Connection) (struct (1006us, "")) "status"
            testCase "a new connection can send and is not closing" <| fun () ->
                let connection = Connection.create (Connection.defaultOptions, 0L)
                Expect.isTrue connection.CanSend "can send"
                Expect.isFalse connection.IsClosing "not closing"
                Expect.isFalse connection.IsClosed "not closed"
                Expect.equal connection.Settings Connection.defaultOptions "settings"
        ]

        testList "RFC 6455 §8.1 UTF-8 in text messages" [
            testCase "an invalid byte in a non-final fragment fails before the final fragment arrives" <| fun () ->
                let driver = runWith Connection.defaultOptions [ fragment false Opcode.Text (hex "41 42 ff 43") ]
                expectClosedAfter driver [ violation InvalidUtf8 ]
            testCase "an invalid byte fails before the rest of its frame arrives" <| fun () ->
                let bytes = fragment true Opcode.Text (Array.append (hex "ce ba ed a0 80") (Array.create 100 0x41uy))
                let driver = runWith Connection.defaultOptions [ bytes[.. 6 + 4] ]
                Expect.equal driver.Received [ violation InvalidUtf8 ] "fails early"
            testCase "a message ending inside a sequence fails with 1007" <| fun () ->
                Expect.equal (runBytes (fragment true Opcode.Text (hex "41 e2 82"))) [ violation InvalidUtf8 ] "truncated"
            testCase "a fragmented message ending inside a sequence fails with 1007" <| fun () ->
                let bytes = Array.append (fragment false Opcode.Text (hex "41 f0 9f")) (fragment true Opcode.Continuation (hex "98"))
                Expect.equal (runBytes bytes) [ violation InvalidUtf8 ] "truncated"
            testCase "a message ending inside a sequence with an empty final fragment fails with 1007" <| fun () ->
                let bytes = Array.append (fragment false Opcode.Text (hex "e2 82")) (fragment true Opcode.Continuation [||])
                Expect.equal (runBytes bytes) [ violation InvalidUtf8 ] "truncated"
            testCase "a surrogate in text fails with 1007" <| fun () ->
                Expect.equal (runBytes (fragment true Opcode.Text (hex "ed a0 80"))) [ violation InvalidUtf8 ] "surrogate"
            testCase "an overlong encoding in text fails with 1007" <| fun () ->
                Expect.equal (runBytes (fragment true Opcode.Text (hex "c0 80"))) [ violation InvalidUtf8 ] "overlong"
            testCase "invalid UTF-8 in a binary message is fine" <| fun () ->
                Expect.equal (runBytes (binary (hex "ff c0 80"))) [ Message(MessageKind.Binary, hex "ff c0 80") ] "binary"
            testCase "valid text split across two fragments at every byte position passes" <| fun () ->
                let bytes = utf8 "aé€😀κόσμεz"
                for cut in 0 .. bytes.Length do
                    let frames = Array.append (fragment false Opcode.Text bytes[.. cut - 1]) (fragment true Opcode.Continuation bytes[cut ..])
                    Expect.equal (runBytes frames) [ Message(MessageKind.Text, bytes) ] (sprintf "cut at %d" cut)
            testCase "valid text split into one-byte fragments passes" <| fun () ->
                let bytes = utf8 "😀€é"
                let frames = bytes |> Array.mapi (fun i b -> fragment (i = bytes.Length - 1) (if i = 0 then Opcode.Text else Opcode.Continuation) [| b |]) |> Array.concat
                Expect.equal (runBytes frames) [ Message(MessageKind.Text, bytes) ] "one byte each"
            testCase "valid text fed in chunks cutting characters and the mask cycle" <| fun () ->
                let message = String.replicate 20 "ab€😀é"
                for size in 1..9 do
                    Expect.equal (run (chunksOf size (text message))) [ Message(MessageKind.Text, utf8 message) ] (sprintf "chunks of %d" size)
        ]

        testList "RFC 6455 §10.4 size limits" [
            testCase "a header announcing more than MaxMessageSize fails with 1009 before any payload byte" <| fun () ->
                let bytes = binary (Array.zeroCreate 1001)
                let driver = runWith (limited 1000L) [ bytes[.. 7] ]
                Expect.equal driver.Received [ violation (MessageTooBig 1000L) ] "too big"
                Expect.equal (closeCodeOf (match driver.Received with [ Violation(_, f) ] -> f | _ -> [||])) (ValueSome 1009us) "1009"
            testCase "a message of exactly MaxMessageSize is accepted" <| fun () ->
                let payload = Array.zeroCreate 1000
                Expect.equal (runWith (limited 1000L) [ binary payload ]).Received [ Message(MessageKind.Binary, payload) ] "accepted"
            testCase "fragments summing past the limit fail with 1009 at the header that crosses it" <| fun () ->
                let bytes = Array.append (fragment false Opcode.Binary (Array.zeroCreate 600)) (fragment true Opcode.Continuation (Array.zeroCreate 401))
                let driver = runWith (limited 1000L) [ bytes[.. 8 + 600 + 7] ]
                Expect.equal driver.Received [ violation (MessageTooBig 1000L) ] "too big"
            testCase "fragments summing to the limit are accepted" <| fun () ->
                let bytes = Array.concat [ fragment false Opcode.Binary (Array.zeroCreate 600); ping [||]; fragment true Opcode.Continuation (Array.zeroCreate 400) ]
                Expect.equal (runWith (limited 1000L) [ bytes ]).Received [ Pinged([||], hex "8a 00"); Message(MessageKind.Binary, Array.zeroCreate 1000) ] "accepted"
            testCase "the limit applies per message, not per connection" <| fun () ->
                let bytes = Array.concat [ binary (Array.zeroCreate 800); binary (Array.zeroCreate 800) ]
                Expect.equal ((runWith (limited 1000L) [ bytes ]).Received |> List.length) 2 "two messages"
            testCase "a header announcing 2^63 bytes fails with 1009 at once" <| fun () ->
                let driver = runWith Connection.defaultOptions [ hex "82 ff 80 00 00 00 00 00 00 00 01 02 03 04" ]
                Expect.equal driver.Received [ violation (MessageTooBig Connection.defaultOptions.MaxMessageSize) ] "2^63"
            testCase "a header announcing 2^64 - 1 bytes fails with 1009 at once" <| fun () ->
                let driver = runWith Connection.defaultOptions [ hex "81 ff ff ff ff ff ff ff ff ff 01 02 03 04" ]
                Expect.equal driver.Received [ violation (MessageTooBig Connection.defaultOptions.MaxMessageSize) ] "2^64 - 1"
            testCase "a continuation announcing 2^63 bytes fails with 1009" <| fun () ->
                let bytes = Array.append (fragment false Opcode.Text (utf8 "a")) (hex "80 ff 80 00 00 00 00 00 00 00 01 02 03 04")
                Expect.equal (runBytes bytes) [ violation (MessageTooBig Connection.defaultOptions.MaxMessageSize) ] "2^63"
            testCase "the default limit is 16 MiB" <| fun () ->
                Expect.equal Connection.defaultOptions.MaxMessageSize (16L * 1024L * 1024L) "16 MiB"
                let header = hex "82 ff 00 00 00 00 01 00 00 01 01 02 03 04"
                Expect.equal (runBytes header) [ violation (MessageTooBig (16L * 1024L * 1024L)) ] "16 MiB + 1"
                Expect.equal (runBytes (hex "82 ff 00 00 00 00 01 00 00 00 01 02 03 04")) [] "16 MiB exactly is waited for"
        ]

        testList "Keep-alive and timeouts" [
            testCase "no action before the idle deadline" <| fun () ->
                let connection = Connection.create (keepAlive, 0L)
                Expect.equal (Connection.nextDeadline connection) 1000L "deadline"
                let struct (after, action) = tick connection 999L
                Expect.equal action NoAction "nothing yet"
                Expect.equal after connection "unchanged"
            testCase "a ping after IdleTimeout of silence" <| fun () ->
                let struct (_, action) = tick (Connection.create (keepAlive, 0L)) 1000L
                Expect.equal action (SendPing(hex "89 00")) "ping"
            testCase "then IdleTimedOut with a 1001 close when the silence continues" <| fun () ->
                let struct (pinged, _) = tick (Connection.create (keepAlive, 0L)) 1000L
                Expect.equal (Connection.nextDeadline pinged) 2000L "deadline after the ping"
                let struct (_, action) = tick pinged 1999L
                Expect.equal action NoAction "waiting for the pong"
                let struct (timedOut, action) = tick pinged 2000L
                match action with
                | IdleTimedOut frame ->
                    Expect.equal (closeCodeOf frame) (ValueSome 1001us) "1001"
                    Expect.equal frame (Frame.close 1001us "idle timeout") "close frame"
                | other -> failwithf "unexpected %A" other
                Expect.isTrue timedOut.IsClosed "closed"
                Expect.isFalse timedOut.CanSend "cannot send"
                Expect.equal (Connection.nextDeadline timedOut) Int64.MaxValue "no more deadlines"
                Expect.equal (Connection.closeStatus timedOut) (struct (1006us, "")) "1006"
                let struct (_, action) = tick timedOut 10_000L
                Expect.equal action NoAction "nothing more"
            testCase "received bytes reset the idle clock" <| fun () ->
                let driver = Driver(keepAlive, 0L)
                driver.Feed(pong [||], 800L)
                Expect.equal (Connection.nextDeadline driver.Connection) 1800L "deadline moved"
                let struct (_, action) = tick driver.Connection 1000L
                Expect.equal action NoAction "no ping"
            testCase "a single byte counts as activity" <| fun () ->
                let driver = Driver(keepAlive, 0L)
                driver.Feed([| 0x81uy |], 900L)
                Expect.equal (Connection.nextDeadline driver.Connection) 1900L "deadline moved"
            testCase "an empty receive is not activity" <| fun () ->
                let driver = Driver(keepAlive, 0L)
                driver.Feed([||], 900L)
                Expect.equal (Connection.nextDeadline driver.Connection) 1000L "deadline kept"
            testCase "the pong after our ping cancels the idle close" <| fun () ->
                let driver = Driver(keepAlive, 0L)
                let struct (pinged, _) = tick driver.Connection 1000L
                driver.Set pinged
                driver.Feed(pong [||], 1500L)
                let struct (_, action) = tick driver.Connection 2000L
                Expect.equal action NoAction "no close"
                Expect.equal (Connection.nextDeadline driver.Connection) 2500L "next ping due"
                let struct (_, action) = tick driver.Connection 2500L
                Expect.equal action (SendPing(hex "89 00")) "next ping"
            testCase "CloseHandshakeTimedOut after CloseTimeout" <| fun () ->
                let struct (closing, _) = Connection.close (Connection.create (keepAlive, 0L), 1000us, "", 300L)
                Expect.equal (Connection.nextDeadline closing) 800L "close deadline"
                let struct (_, action) = tick closing 799L
                Expect.equal action NoAction "still waiting"
                let struct (timedOut, action) = tick closing 800L
                Expect.equal action CloseHandshakeTimedOut "timed out"
                Expect.isTrue timedOut.IsClosed "closed"
                Expect.equal (Connection.nextDeadline timedOut) Int64.MaxValue "no more deadlines"
                let struct (_, action) = tick timedOut 5000L
                Expect.equal action NoAction "nothing more"
            testCase "the close timeout replaces the idle timeout" <| fun () ->
                let struct (closing, _) = Connection.close (Connection.create (keepAlive, 0L), 1000us, "", 990L)
                let struct (_, action) = tick closing 1000L
                Expect.equal action NoAction "no ping while closing"
            testCase "received bytes do not postpone the close timeout" <| fun () ->
                let driver = Driver(keepAlive, 0L)
                let struct (closing, _) = Connection.close (driver.Connection, 1000us, "", 100L)
                driver.Set closing
                driver.Feed(text "still talking", 500L)
                let struct (_, action) = tick driver.Connection 600L
                Expect.equal action CloseHandshakeTimedOut "timed out"
            testCase "IdleTimeout = 0 never pings" <| fun () ->
                let connection = Connection.create ({ keepAlive with IdleTimeout = 0L }, 0L)
                Expect.equal (Connection.nextDeadline connection) Int64.MaxValue "no deadline"
                for now in [ 0L; 1000L; 1L <<< 40; Int64.MaxValue - 1L; Int64.MaxValue ] do
                    let struct (_, action) = tick connection now
                    Expect.equal action NoAction (sprintf "at %d" now)
            testCase "after the closing handshake no deadline remains, even at the end of time" <| fun () ->
                let driver = Driver(keepAlive, 0L)
                driver.Feed(close 1000us "", 10L)
                Expect.equal (Connection.nextDeadline driver.Connection) Int64.MaxValue "no deadline"
                let struct (_, action) = tick driver.Connection Int64.MaxValue
                Expect.equal action NoAction "nothing"
            testCase "a huge idle timeout does not overflow into an immediate ping" <| fun () ->
                let connection = Connection.create ({ keepAlive with IdleTimeout = Int64.MaxValue }, 1000L)
                Expect.isGreaterThan (Connection.nextDeadline connection) 1000L "deadline in the future"
                let struct (_, action) = tick connection 2000L
                Expect.equal action NoAction "no ping"
            testCase "a huge close timeout does not overflow into an immediate timeout" <| fun () ->
                let struct (closing, _) = Connection.close (Connection.create ({ keepAlive with CloseTimeout = Int64.MaxValue }, 0L), 1000us, "", 1000L)
                let struct (_, action) = tick closing 2000L
                Expect.equal action NoAction "still waiting"
            testCase "a closed connection never times out" <| fun () ->
                let driver = runWith keepAlive [ hex "81 00" ]
                Expect.equal (Connection.nextDeadline driver.Connection) Int64.MaxValue "no deadline"
                let struct (_, action) = tick driver.Connection 1_000_000L
                Expect.equal action NoAction "nothing"

            property "nextDeadline is consistent with tick"
            <| Prop.forAll
                (Arb.fromGen (gen {
                    let! idle = Gen.elements [ 0L; 1L; 1000L; 5000L ]
                    let! closeTimeout = Gen.elements [ 0L; 1L; 500L ]
                    let! operations = Gen.listOf (Gen.zip (Gen.choose (0, 3)) (Gen.choose (0, 3000)))
                    return idle, closeTimeout, operations }))
                (fun (idle, closeTimeout, operations) ->
                    let options = { Connection.defaultOptions with IdleTimeout = idle; CloseTimeout = closeTimeout }
                    let mutable connection = Connection.create (options, 0L)
                    let mutable now = 0L
                    let mutable ok = true
                    for operation, delay in operations do
                        now <- now + int64 delay
                        let deadline = Connection.nextDeadline connection
                        // Just before the deadline nothing is due; at it, something is.
                        if deadline > now && deadline < Int64.MaxValue then
                            let struct (_, before) = tick connection (deadline - 1L)
                            let struct (_, at) = tick connection deadline
                            ok <- ok && before = NoAction && at <> NoAction
                        if deadline = Int64.MaxValue then
                            let struct (_, at) = tick connection (now + 1_000_000L)
                            ok <- ok && at = NoAction
                        match operation with
                        | 0 ->
                            let struct (next, action) = tick connection now
                            ok <- ok && ((now < deadline) = (action = NoAction))
                            connection <- next
                        | 1 ->
                            let bytes = pong [||]
                            let struct (next, _, _) = receiveOnce connection bytes now
                            connection <- next
                        | 2 ->
                            let struct (next, _) = Connection.close (connection, 1000us, "", now)
                            connection <- next
                        | _ ->
                            let struct (next, _, _) = receiveOnce connection (close 1000us "") now
                            connection <- next
                    ok)
        ]

        testList "Connections are immutable values" [
            testCase "createLike is create at the new time; closing one leaves the template and its siblings open" <| fun () ->
                let template = Connection.create (keepAlive, 0L)
                let first = Connection.createLike (template, 500L)
                let second = Connection.createLike (template, 700L)
                Expect.equal first (Connection.create (keepAlive, 500L)) "as made by create at 500"
                Expect.equal (Connection.nextDeadline second) 1700L "the idle deadline counts from its own start"
                let struct (closing, request) = closeWith first 1000us "done"
                Expect.equal request (SendCloseFrame(hex "88 06 03 e8 64 6f 6e 65")) "the first closes"
                Expect.isFalse closing.CanSend "the first takes no more data"
                Expect.isTrue second.CanSend "its sibling is still open"
                Expect.isTrue template.CanSend "the template is still open"
                Expect.equal (Connection.closeStatus second) (struct (1006us, "")) "the sibling has no close status"
            testCase "createLike from a template that has closed starts open all the same" <| fun () ->
                let struct (closed, _) = closeWith (Connection.create (keepAlive, 0L)) 4000us "gone"
                let ended = Connection.transportEnded closed
                let fresh = Connection.createLike (ended, 300L)
                Expect.equal fresh (Connection.create (keepAlive, 300L)) "as made by create"
                Expect.isTrue fresh.CanSend "open"
                Expect.isFalse fresh.IsClosing "not closing"
            testCase "an earlier value is not changed by later calls (a ping split across calls)" <| fun () ->
                let bytes = ping (utf8 "Hello")
                let first = Driver()
                first.Feed(bytes[.. 7], 0L)
                let middle = first.Connection
                // Continue from the same value twice: with other bytes, then with the real ones.
                let other = Driver()
                other.Set middle
                other.Feed(naiveMask key 2L (utf8 "XYZ"), 0L)
                let real = Driver()
                real.Set middle
                real.Feed(bytes[8..], 0L)
                Expect.equal other.Received [ Pinged(utf8 "HeXYZ", expectedPong (utf8 "HeXYZ")) ] "the other continuation"
                Expect.equal real.Received [ Pinged(utf8 "Hello", expectedPong (utf8 "Hello")) ] "the real continuation"
            testCase "a close payload split across calls is not shared between values" <| fun () ->
                let bytes = close 1000us "bye"
                let first = Driver()
                first.Feed(bytes[.. 8], 0L)
                let middle = first.Connection
                let other = Driver()
                other.Set middle
                other.Feed(naiveMask key 3L [| 0xffuy; 0xffuy |], 0L)
                let real = Driver()
                real.Set middle
                real.Feed(bytes[9..], 0L)
                Expect.equal other.Received [ violation InvalidUtf8 ] "the other continuation"
                Expect.equal real.Received [ Closed(1000us, "bye", hex "88 02 03 e8") ] "the real continuation"
            property "receive is a function: continuing twice from one value gives the same events"
            <| Prop.forAll
                (Arb.fromGen (gen {
                    let! bytes, expected, _ = streamGen
                    let! cut = Gen.choose (0, bytes.Length)
                    let! junk = soupGen
                    return bytes, expected, cut, junk }))
                (fun (bytes, expected, cut, junk) ->
                    let first = Driver()
                    first.Feed(bytes[.. cut - 1], 0L)
                    let real = first.Fork()
                    real.Feed(bytes[cut ..], 0L)
                    // Then other bytes from the same value: what `real` received must not change.
                    let other = first.Fork()
                    other.Feed(junk, 0L)
                    real.Received = expected)
            testCase "receiving data frames allocates nothing" <| fun () ->
                // Whole messages and fragments, text and binary: the per-frame path builds values
                // on the stack only (control frames and failures may allocate their arrays).
                let frames =
                    Array.concat [
                        for i in 0..99 do
                            text (String.replicate (i % 40) "a")
                            binary (Array.create (i % 130) 7uy)
                            fragment false Opcode.Text (utf8 "hé")
                            fragment true Opcode.Continuation (utf8 "llo") ]
                let receiveAll (start: Connection) =
                    let mutable connection = start
                    let mutable position = 0
                    let mutable events = 0
                    let mutable going = true
                    while going do
                        let struct (next, consumed, event) = Connection.receive (connection, ReadOnlySpan(frames, position, frames.Length - position), 1L)
                        connection <- next
                        position <- position + consumed
                        match event with
                        | MessageData _ -> events <- events + 1
                        | _ -> going <- false
                    events
                // Creating a connection allocates its settings and closing state, once.
                let start = Connection.create (Connection.defaultOptions, 0L)
                receiveAll start |> ignore
                let before = GC.GetAllocatedBytesForCurrentThread()
                let events = receiveAll start
                let allocated = GC.GetAllocatedBytesForCurrentThread() - before
                Expect.equal events 400 "one event per frame"
                Expect.equal allocated 0L "bytes allocated"
        ]

        testList "Stream properties" [
            property "messages, pings and their order are exactly the ones sent, however the stream is split"
            <| Prop.forAll (Arb.fromGen streamGen) (fun (bytes, expected, cuts) ->
                let driver = runWith Connection.defaultOptions (splitAt cuts bytes)
                driver.Received = expected && driver.Partial.Length = 0 && not driver.Connection.IsClosing)

            property "the stream properties see fragmented messages, pings and both kinds"
            <| Prop.forAll (Arb.fromGen (Gen.listOfLength 100 messageGen |> Gen.resize 30)) (fun messages ->
                let fragmented = messages |> List.filter (fun m -> not m.Cuts.IsEmpty) |> List.length
                let withPings = messages |> List.filter (fun m -> m.Pings |> List.exists (not << List.isEmpty)) |> List.length
                let texts = messages |> List.filter (fun m -> m.Kind = MessageKind.Text) |> List.length
                // Expected about 57, 49 and 50 of 100; the bounds are 5 or more standard deviations away.
                fragmented > 30 && withPings > 25 && texts > 20 && texts < 80)

            property "never throws on arbitrary bytes and ends in NeedMoreData or one terminal event"
            <| Prop.forAll
                (Arb.fromGen (gen {
                    let! bytes = soupGen
                    let! cuts = Gen.listOf (Gen.choose (0, bytes.Length))
                    return bytes, cuts }))
                (fun (bytes, cuts) -> endsWell (runWith (limited 4096L) (splitAt cuts bytes)))

            property "never throws on arbitrary bytes after a valid prefix"
            <| Prop.forAll
                (Arb.fromGen (gen {
                    let! prefix, expected, _ = streamGen
                    let! tail = soupGen
                    let bytes = Array.append prefix tail
                    let! cuts = Gen.listOf (Gen.choose (0, bytes.Length))
                    return bytes, expected, cuts }))
                (fun (bytes, expected, cuts) ->
                    let driver = runWith Connection.defaultOptions (splitAt cuts bytes)
                    endsWell driver && driver.Received |> List.truncate expected.Length = expected)

            property "never throws on a valid stream with bytes changed"
            <| Prop.forAll
                (Arb.fromGen (gen {
                    let! prefix, _, cuts = streamGen
                    let! changes = Gen.listOf (Gen.zip (Gen.choose (0, max 0 (prefix.Length - 1))) (Gen.choose (0, 255)))
                    let bytes = Array.copy prefix
                    for i, b in changes |> List.truncate 4 do
                        if i < bytes.Length then bytes[i] <- byte b
                    return bytes, cuts }))
                (fun (bytes, cuts) -> endsWell (runWith (limited 70000L) (splitAt cuts bytes)))

            property "a violation's close frame carries the error's close code"
            <| Prop.forAll (Arb.fromGen soupGen) (fun bytes ->
                let driver = runWith (limited 100L) [ bytes ]
                driver.Received
                |> List.forall (function
                    | Violation(error, frame) -> closeCodeOf frame = ValueSome error.CloseCode
                    | _ -> true))
        ]

        testList "receiveInPlace: receive, updating the caller's connection" [
            property "same event, bytes consumed and next connection at every step, on valid and broken streams however split"
            <| Prop.forAll
                (Arb.fromGen (gen {
                    let! prefix, _, cuts = streamGen
                    let! tail = soupGen
                    let! broken = Gen.elements [ false; true ]
                    return (if broken then Array.append prefix tail else prefix), cuts }))
                (fun (bytes, cuts) ->
                    let mutable reference = Connection.create (limited 70000L, 0L)
                    let mutable inPlace = reference
                    let mutable same = true
                    let mutable steps = 0
                    let mutable now = 0L
                    for chunk in splitAt cuts bytes do
                        now <- now + 1L
                        let mutable position = 0
                        let mutable going = true
                        while going && same do
                            steps <- steps + 1
                            if steps > 4 * bytes.Length + 64 then failwith "no progress"
                            let struct (next, consumed, event) = Connection.receive (reference, ReadOnlySpan(chunk, position, chunk.Length - position), now)
                            let mutable consumedInPlace = -1
                            let eventInPlace = Connection.receiveInPlace (&inPlace, ReadOnlySpan(chunk, position, chunk.Length - position), now, &consumedInPlace)
                            same <- eventInPlace = event && consumedInPlace = consumed && inPlace = next
                            reference <- next
                            position <- position + consumed
                            going <- (match event with NeedMoreData -> false | _ -> true)
                    same)
            testCase "receiving data frames in place allocates nothing" <| fun () ->
                let frames =
                    Array.concat [
                        for i in 0..99 do
                            text (String.replicate (i % 40) "a")
                            binary (Array.create (i % 130) 7uy)
                            fragment false Opcode.Text (utf8 "hé")
                            fragment true Opcode.Continuation (utf8 "llo") ]
                let receiveAll (start: Connection) =
                    let mutable connection = start
                    let mutable position = 0
                    let mutable events = 0
                    let mutable going = true
                    while going do
                        let mutable consumed = 0
                        let event = Connection.receiveInPlace (&connection, ReadOnlySpan(frames, position, frames.Length - position), 1L, &consumed)
                        position <- position + consumed
                        match event with
                        | MessageData _ -> events <- events + 1
                        | _ -> going <- false
                    events
                let start = Connection.create (Connection.defaultOptions, 0L)
                receiveAll start |> ignore
                let before = GC.GetAllocatedBytesForCurrentThread()
                let events = receiveAll start
                let allocated = GC.GetAllocatedBytesForCurrentThread() - before
                Expect.equal events 400 "one event per frame"
                Expect.equal allocated 0L "bytes allocated"
        ]
    ]

[<Tests>]
let failMessageTests =
    testList "RFC 7692 §7.2.2 failing a message found bad after inflating" [
        testCase "an inflated size over the limit fails with 1009 and a close frame" <| fun () ->
            let connection = Connection.create (Connection.defaultOptions, 0L)
            let struct (failed, closeFrame) = Connection.failMessage (connection, MessageTooBig 10L)
            Expect.isTrue failed.IsClosed "nothing more is read"
            Expect.isFalse failed.CanSend "no data after the close frame"
            Expect.equal closeFrame (Frame.close 1009us "message over 10 bytes") "close 1009 with the reason"
        testCase "corrupt DEFLATE data and invalid inflated UTF-8 fail with 1007" <| fun () ->
            for error in [ InvalidCompressedData; InvalidUtf8 ] do
                let connection = Connection.create (Connection.defaultOptions, 0L)
                let struct (_, closeFrame) = Connection.failMessage (connection, error)
                Expect.equal closeFrame[2..3] [| 0x03uy; 0xEFuy |] $"{error.Code} closes with 1007"
            Expect.equal InvalidCompressedData.Code "invalid-compressed-data" "stable code"
        testCase "after our own close frame no second close frame is produced" <| fun () ->
            let connection = Connection.create (Connection.defaultOptions, 0L)
            let struct (closing, _) = Connection.close (connection, 1000us, "bye", 0L)
            let struct (failed, closeFrame) = Connection.failMessage (closing, InvalidUtf8)
            Expect.isEmpty closeFrame "the close frame was already sent"
            Expect.isTrue failed.IsClosed "failed"
        testCase "a connection already closed stays as it is" <| fun () ->
            let connection = Connection.create (Connection.defaultOptions, 0L)
            let struct (failed, _) = Connection.failMessage (connection, InvalidUtf8)
            let struct (again, closeFrame) = Connection.failMessage (failed, MessageTooBig 1L)
            Expect.isEmpty closeFrame "nothing more to write"
            Expect.isTrue again.IsClosed "still closed"
    ]

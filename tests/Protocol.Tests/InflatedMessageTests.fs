/// Inflated data back through the core: a compressed message's inflated bytes meet the same size
/// limit and UTF-8 rule as an uncompressed message's payload (RFC 7692 §6, RFC 6455 §8.1, §10.4).
module Realtime.Protocol.Tests.InflatedMessageTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Tests.Properties
open Realtime.Protocol.Tests.ClientFrames
open Realtime.Protocol.Tests.Utf8ValidatorTests

/// Options with permessage-deflate negotiated and a message limit.
let private deflate (limit: int64) = { Connection.defaultOptions with PerMessageDeflate = true; MaxMessageSize = limit }

/// A compressed message of `kind` in one frame (RSV1, RFC 7692 §6). The core does not inflate, so
/// the compressed bytes are a placeholder: what counts is what the pieces handed to it say.
let private compressedFrame (kind: MessageKind) (compressed: byte[]) = clientFrameRsv true 4uy (byte kind) key compressed

/// Feeds `bytes` to `connection` and expects exactly one MessageData event, of a compressed message.
let private receiveCompressed (connection: Connection) (bytes: byte[]) : Connection =
    let struct (next, consumed, event) = Connection.receive (connection, ReadOnlySpan bytes, 0L)
    match event with
    | MessageData(_, _, _, _, _, true, true) when consumed = bytes.Length -> next
    | other -> failwithf "expected the end of a compressed message, got %A" other

/// A connection that has just received the whole (compressed) frame of a message of `kind`.
let private compressedMessage (limit: int64) (kind: MessageKind) : Connection =
    receiveCompressed (Connection.create (deflate limit, 0L)) (compressedFrame kind [||])

/// What became of a message.
type private Outcome =
    | Delivered
    | Refused of error: ProtocolError * closeFrame: byte[]

/// Hands the inflated `pieces` of the message to the core, as the host does with what each
/// chunk inflated to, stopping at the first refusal.
let rec private inflatePieces (connection: Connection) (pieces: byte[] list) : Connection * Outcome =
    match pieces with
    | [] -> failwith "a message has at least one piece"
    | piece :: rest ->
        let struct (next, verdict) = Connection.inflated (connection, ReadOnlySpan piece, List.isEmpty rest)
        match verdict with
        | InflatedAccepted when List.isEmpty rest -> next, Delivered
        | InflatedAccepted -> inflatePieces next rest
        | InflatedRefused(error, closeFrame) -> next, Refused(error, closeFrame)
        | InflatedIgnored -> failwith "an open connection ignored inflated bytes"

/// The same message sent uncompressed, in fragments cut where the pieces are.
let private sentUncompressed (limit: int64) (kind: MessageKind) (pieces: byte[] list) : Outcome =
    let last = List.length pieces - 1
    let frames =
        pieces
        |> List.mapi (fun i piece ->
            let opcode = if i = 0 then LanguagePrimitives.EnumOfValue<byte, Opcode>(byte kind) else Opcode.Continuation
            clientFrame (i = last) opcode key piece)
        |> Array.concat
    match (runWith { Connection.defaultOptions with MaxMessageSize = limit } [ frames ]).Received with
    | [ Message _ ] -> Delivered
    | [ Violation(error, closeFrame) ] -> Refused(error, closeFrame)
    | other -> failwithf "unexpected %A" other

/// Cuts `bytes` into pieces at `cuts` (sorted, repeats allowed: an inflater may give nothing for a chunk).
let private piecesAt (cuts: int list) (bytes: byte[]) : byte[] list =
    let points = 0 :: (cuts |> List.map (fun c -> min bytes.Length (max 0 c)) |> List.sort) @ [ bytes.Length ]
    points |> List.pairwise |> List.map (fun (a, b) -> bytes[a .. b - 1])

/// A message (text about half of it not UTF-8, or binary), a limit around its length, and two ways to cut it.
let private messageGen =
    gen {
        let! kind = Gen.elements [ MessageKind.Text; MessageKind.Binary ]
        let! bytes = mixedBytesGen
        let! limit = Gen.oneof [ Gen.choose (0, bytes.Length + 8); Gen.constant bytes.Length; Gen.constant (max 0 (bytes.Length - 1)) ]
        let cutsGen = Gen.listOf (Gen.choose (0, bytes.Length)) |> Gen.map (List.truncate 12)
        let! cuts = cutsGen
        let! otherCuts = cutsGen
        return kind, bytes, int64 limit, cuts, otherCuts
    }

let private isValidContent (kind: MessageKind) (bytes: byte[]) =
    kind = MessageKind.Binary || Utf8Validator.isValid (ReadOnlySpan bytes)

[<Tests>]
let tests =
    testList "RFC 7692 §6 inflated messages meet the core's message rules" [
        testCase "inflated text is accepted piece by piece and at its end" <| fun () ->
            let connection = compressedMessage 100L MessageKind.Text
            let _, outcome = inflatePieces connection [ utf8 "héllo "; [||]; utf8 "wörld" ]
            Expect.equal outcome Delivered "valid UTF-8 within the limit"
        testCase "inflated text that is not UTF-8 fails with 1007 at the piece with the bad byte" <| fun () ->
            let connection = compressedMessage 100L MessageKind.Text
            let struct (failed, verdict) = Connection.inflated (connection, ReadOnlySpan(hex "41 ff"), false)
            Expect.equal verdict (InflatedRefused(InvalidUtf8, Frame.close 1007us "invalid UTF-8")) "refused before the message ends"
            Expect.isTrue failed.IsClosed "nothing more is read"
            Expect.isFalse failed.CanSend "no data after the close frame"
        testCase "a character cut between two pieces is accepted" <| fun () ->
            let connection = compressedMessage 100L MessageKind.Text
            let _, outcome = inflatePieces connection [ hex "41 e2"; hex "82"; hex "ac 42" ]
            Expect.equal outcome Delivered "€ across three pieces"
        testCase "inflated text ending inside a character fails with 1007 (RFC 6455 §8.1)" <| fun () ->
            let connection = compressedMessage 100L MessageKind.Text
            let struct (_, verdict) = Connection.inflated (connection, ReadOnlySpan(hex "41 e2 82"), false)
            Expect.equal verdict InflatedAccepted "not yet: the character may go on"
            let _, outcome = inflatePieces connection [ hex "41 e2 82" ]
            Expect.equal outcome (Refused(InvalidUtf8, Frame.close 1007us "invalid UTF-8")) "the message ends inside it"
        testCase "inflated binary is not checked for UTF-8" <| fun () ->
            let _, outcome = inflatePieces (compressedMessage 100L MessageKind.Binary) [ hex "ff fe"; hex "e2" ]
            Expect.equal outcome Delivered "any bytes"
        testCase "an inflated message of exactly MaxMessageSize is accepted" <| fun () ->
            let _, outcome = inflatePieces (compressedMessage 10L MessageKind.Binary) [ Array.zeroCreate 6; Array.zeroCreate 4 ]
            Expect.equal outcome Delivered "10 bytes"
        testCase "inflated pieces summing past MaxMessageSize fail with 1009 at the piece that crosses it" <| fun () ->
            let connection = compressedMessage 10L MessageKind.Text
            let struct (half, first) = Connection.inflated (connection, ReadOnlySpan(Array.create 6 0x41uy), false)
            Expect.equal first InflatedAccepted "6 bytes"
            let struct (failed, second) = Connection.inflated (half, ReadOnlySpan(Array.create 5 0x41uy), false)
            Expect.equal second (InflatedRefused(MessageTooBig 10L, Frame.close 1009us "message over 10 bytes")) "11 bytes"
            Expect.isTrue failed.IsClosed "failed"
        testCase "the size is checked before the UTF-8 of the piece that crosses it, as at a fragment's header" <| fun () ->
            let _, outcome = inflatePieces (compressedMessage 3L MessageKind.Text) [ hex "ff ff ff ff" ]
            Expect.equal outcome (Refused(MessageTooBig 3L, Frame.close 1009us "message over 3 bytes")) "1009"
        testCase "the inflated size counts per message" <| fun () ->
            let first, outcome = inflatePieces (compressedMessage 10L MessageKind.Binary) [ Array.zeroCreate 8 ]
            Expect.equal outcome Delivered "first message"
            let second = receiveCompressed first (compressedFrame MessageKind.Text [| 1uy |])
            let _, outcome = inflatePieces second [ utf8 "12345678" ]
            Expect.equal outcome Delivered "second message: the count started over"
        testCase "a message of several compressed fragments, each inflated as it arrives" <| fun () ->
            let options = deflate 10L
            let frames = Array.concat [ clientFrameRsv false 4uy 1uy key [| 1uy |]; ping [||]; clientFrame true Opcode.Continuation key [| 2uy |] ]
            let pieces = Collections.Generic.Queue [ hex "41 e2"; hex "82 ac" ]
            let mutable connection = Connection.create (options, 0L)
            let mutable position = 0
            let verdicts = ResizeArray()
            while position < frames.Length do
                let struct (next, consumed, event) = Connection.receive (connection, ReadOnlySpan(frames, position, frames.Length - position), 0L)
                connection <- next
                position <- position + consumed
                match event with
                | MessageData(_, _, _, _, _, messageEnd, true) ->
                    let struct (afterPiece, verdict) = Connection.inflated (connection, ReadOnlySpan(pieces.Dequeue()), messageEnd)
                    connection <- afterPiece
                    verdicts.Add verdict
                | _ -> ()
            Expect.equal (List.ofSeq verdicts) [ InflatedAccepted; InflatedAccepted ] "A€, 4 bytes"
        testCase "after our close frame a refusal writes no second close frame" <| fun () ->
            let struct (closing, _) = Connection.close (compressedMessage 100L MessageKind.Text, 1000us, "bye", 0L)
            let struct (failed, verdict) = Connection.inflated (closing, ReadOnlySpan(hex "ff"), true)
            Expect.equal verdict (InflatedRefused(InvalidUtf8, [||])) "no second close frame"
            Expect.isTrue failed.IsClosed "failed"
        testCase "a closed connection ignores inflated bytes" <| fun () ->
            let failed, _ = inflatePieces (compressedMessage 100L MessageKind.Text) [ hex "ff" ]
            let struct (after, verdict) = Connection.inflated (failed, ReadOnlySpan(utf8 "more"), true)
            Expect.equal verdict InflatedIgnored "ignored"
            Expect.equal after failed "unchanged"
        property "inflated pieces get the verdict of the same bytes sent uncompressed in fragments cut there" <| Prop.forAll (Arb.fromGen messageGen) (fun (kind, bytes, limit, cuts, _) ->
            let pieces = piecesAt cuts bytes
            let _, inflatedOutcome = inflatePieces (compressedMessage limit kind) pieces
            inflatedOutcome = sentUncompressed limit kind pieces)
        property "within the limit the verdict does not depend on how the message was inflated in pieces" <| Prop.forAll (Arb.fromGen messageGen) (fun (kind, bytes, limit, cuts, otherCuts) ->
            let outcome cuts = snd (inflatePieces (compressedMessage limit kind) (piecesAt cuts bytes))
            let one, other = outcome cuts, outcome otherCuts
            if int64 bytes.Length <= limit then
                let expected = if isValidContent kind bytes then Delivered else Refused(InvalidUtf8, Frame.close 1007us "invalid UTF-8")
                one = expected && other = expected
            else
                // Past the limit it always fails: with 1009 unless a bad byte came before the crossing.
                let tooBig = Refused(MessageTooBig limit, Frame.close 1009us (sprintf "message over %d bytes" limit))
                let refused = function Refused _ -> true | Delivered -> false
                refused one && refused other && (not (isValidContent kind bytes) || (one = tooBig && other = tooBig)))
    ]

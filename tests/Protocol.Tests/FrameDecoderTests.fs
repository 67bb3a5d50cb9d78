module Realtime.Protocol.Tests.FrameDecoderTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Tests.Properties
open Realtime.Protocol.Tests.ClientFrames
open Realtime.Protocol.Tests.FrameTests

/// One step over a whole array.
let private step (role: Role) (allowRsv1: bool) (decoder: FrameDecoder) (input: byte[]) =
    FrameDecoder.step (role, allowRsv1, decoder, ReadOnlySpan input)

/// The first event decoding `bytes` as a server (client frames).
let private firstEvent (allowRsv1: bool) (bytes: byte[]) =
    let struct (_, consumed, event) = step Role.Server allowRsv1 FrameDecoder.initial bytes
    consumed, event

/// Decodes in one chunk and groups into frames.
let private decodeFrames (role: Role) (bytes: byte[]) = decodeChunks role false [ bytes ] |> snd |> framesOf

/// Expects the frame to fail with `error` consuming nothing.
let private expectFailure (allowRsv1: bool) (bytes: byte[]) (error: ProtocolError) =
    let consumed, event = firstEvent allowRsv1 bytes
    Expect.equal event (Failed error) "event"
    Expect.equal consumed 0 "consumed"

/// The unmasked payload of a decoded frame.
let private unmask (header: FrameHeader, wire: byte[]) = if header.Masked then naiveMask header.MaskKey 0L wire else wire

let private roleName (role: Role) = if role = Role.Server then "client frames (server role)" else "server frames (client role)"

let private allowedCodes = set [ 1002us; 1007us; 1009us ]

[<Tests>]
let tests =
    testList "RFC 6455 §5.2 frame decoding" [
        testList "RFC 6455 §5.7 examples (decoding)" [
            for name, header, payload, bytes in section57Examples do
                testCase name <| fun () ->
                    let role = if header.Masked then Role.Server else Role.Client
                    let frames, failure = decodeFrames role bytes
                    Expect.isNone failure "no failure"
                    match frames with
                    | [ decoded, wire ] ->
                        Expect.equal decoded { header with PayloadLength = int64 payload.Length } "header"
                        Expect.isTrue (unmask (decoded, wire) = payload) "payload"
                    | other -> failwithf "expected one frame, got %d" other.Length
        ]

        testCase "§5.7 masked \"Hello\": header, then the payload as one event" <| fun () ->
            let bytes = hex "81 85 37 fa 21 3d 7f 9f 4d 51 58"
            let struct (decoder, consumed, event) = step Role.Server false FrameDecoder.initial bytes
            Expect.equal consumed 6 "header bytes"
            Expect.equal event (Header { Frame.header Opcode.Text 5L with Masked = true; MaskKey = rfcKey }) "header"
            Expect.equal decoder.CurrentHeader.MaskKey rfcKey "current header"
            let struct (decoder, consumed, event) = step Role.Server false decoder bytes[6..]
            Expect.equal (consumed, event) (5, Payload(5, 0L, true)) "payload"
            Expect.isTrue decoder.AtFrameBoundary "at a frame boundary"
            let struct (_, consumed, event) = step Role.Server false decoder [||]
            Expect.equal (consumed, event) (0, NeedMore) "then nothing"

        testCase "§5.7 fragmented \"Hel\" + \"lo\" decodes to two frames" <| fun () ->
            let frames, failure = decodeFrames Role.Client (hex "01 03 48 65 6c 80 02 6c 6f")
            Expect.isNone failure "no failure"
            Expect.equal (frames |> List.map (fun (h, p) -> h.Fin, h.Opcode, p)) [ false, Opcode.Text, utf8 "Hel"; true, Opcode.Continuation, utf8 "lo" ] "frames"

        testList "length encodings at the boundaries decode to their length" [
            for headerHex, length in
                [ "82 00", 0L; "82 7d", 125L; "82 7e 00 7e", 126L; "82 7e ff ff", 65535L
                  "82 7f 00 00 00 00 00 01 00 00", 65536L; "82 7f 00 00 01 00 00 00 00 00", 1L <<< 40 ] do
                testCase (sprintf "%s → %d" headerHex length) <| fun () ->
                    let struct (_, consumed, event) = step Role.Client false FrameDecoder.initial (hex headerHex)
                    Expect.equal consumed (hex headerHex).Length "whole header"
                    Expect.equal event (Header(Frame.header Opcode.Binary length)) "header"
        ]

        testList "frame-level errors" [
            testCase "an unmasked client frame (§5.1)" <| fun () ->
                expectFailure false (hex "81 05 48 65 6c 6c 6f") UnmaskedFrame
            testCase "a masked frame in the client role (§5.1)" <| fun () ->
                let struct (_, consumed, event) = step Role.Client false FrameDecoder.initial (hex "81 85 37 fa 21 3d 7f 9f 4d 51 58")
                Expect.equal (consumed, event) (0, Failed MaskedFrame) "masked frame"
            for opcode in [ 3uy; 4uy; 5uy; 6uy; 7uy; 11uy; 12uy; 13uy; 14uy; 15uy ] do
                testCase (sprintf "reserved opcode %d (§5.2)" opcode) <| fun () ->
                    expectFailure false (clientFrameRsv true 0uy opcode key [| 1uy |]) (ReservedOpcode opcode)
            for deflate in [ false; true ] do
                testCase (sprintf "RSV2 set (§5.2, deflate %b)" deflate) <| fun () ->
                    expectFailure deflate (clientFrameRsv true 2uy 1uy key (utf8 "a")) ReservedBitsSet
                testCase (sprintf "RSV3 set (§5.2, deflate %b)" deflate) <| fun () ->
                    expectFailure deflate (clientFrameRsv true 1uy 2uy key [| 1uy |]) ReservedBitsSet
            testCase "RSV1 set without permessage-deflate (§5.2)" <| fun () ->
                expectFailure false (clientFrameRsv true 4uy 1uy key (utf8 "a")) ReservedBitsSet
            for opcode in [ 8uy; 9uy; 10uy ] do
                testCase (sprintf "RSV1 on control opcode %d with permessage-deflate (RFC 7692 §6.1)" opcode) <| fun () ->
                    expectFailure true (clientFrameRsv true 4uy opcode key [||]) CompressedBitMisplaced
            testCase "RSV1 on a continuation with permessage-deflate (RFC 7692 §6.1)" <| fun () ->
                expectFailure true (clientFrameRsv true 4uy 0uy key [| 1uy |]) CompressedBitMisplaced
            for opcode in [ Opcode.Close; Opcode.Ping; Opcode.Pong ] do
                testCase (sprintf "%A with a 126-byte payload (§5.5)" opcode) <| fun () ->
                    expectFailure false (clientFrame true opcode key (Array.zeroCreate 126)) ControlFrameTooLong
                testCase (sprintf "%A fragmented (§5.5)" opcode) <| fun () ->
                    expectFailure false (clientFrame false opcode key [||]) FragmentedControlFrame
            testCase "a ping announcing a 64-bit length (§5.5)" <| fun () ->
                expectFailure false (hex "89 ff 00 00 00 00 00 00 00 05") ControlFrameTooLong
            testCase "a failed decoder stays failed and consumes nothing" <| fun () ->
                let struct (failed, _, _) = step Role.Server false FrameDecoder.initial (hex "83 80 00 00 00 00")
                let struct (_, consumed, event) = step Role.Server false failed (text "fine")
                Expect.equal (consumed, event) (0, Failed(ReservedOpcode 3uy)) "sticky failure"
                Expect.isFalse failed.AtFrameBoundary "a failed decoder reads no more frames"
                // Asked with other settings, it still reports the error it failed with.
                let struct (_, _, event) = step Role.Client true failed (hex "81 05")
                Expect.equal event (Failed(ReservedOpcode 3uy)) "the same error"
            testCase "the first two bytes are enough to fail" <| fun () ->
                let struct (_, consumed, event) = step Role.Server false FrameDecoder.initial (hex "81 05")
                Expect.equal (consumed, event) (0, Failed UnmaskedFrame) "fails before the rest of the header"
            testCase "a failure whose first byte came in an earlier call" <| fun () ->
                let struct (decoder, consumed, event) = step Role.Server false FrameDecoder.initial (hex "8b")
                Expect.equal (consumed, event) (1, NeedMore) "one byte kept"
                let struct (_, consumed, event) = step Role.Server false decoder (hex "80")
                Expect.equal (consumed, event) (0, Failed(ReservedOpcode 11uy)) "fails on the second byte"
        ]

        testList "frames that obey the rules" [
            testCase "a control frame of exactly 125 bytes" <| fun () ->
                let frames, failure = decodeFrames Role.Server (ping (Array.create 125 7uy))
                Expect.isNone failure "no failure"
                Expect.equal (frames |> List.map (fun f -> (fst f).PayloadLength)) [ 125L ] "one 125-byte ping"
            testCase "RSV1 on a text frame with permessage-deflate" <| fun () ->
                let _, event = firstEvent true (clientFrameRsv true 4uy 1uy key (utf8 "a"))
                match event with
                | Header header -> Expect.isTrue header.Rsv1 "RSV1 reported"
                | other -> failwithf "unexpected %A" other
            testCase "an empty frame yields its header then one payload event of length 0" <| fun () ->
                let bytes = clientFrame true Opcode.Binary key [||]
                let struct (decoder, consumed, event) = step Role.Server false FrameDecoder.initial bytes
                Expect.equal consumed 6 "header"
                Expect.equal event (Header { Frame.header Opcode.Binary 0L with Masked = true; MaskKey = key }) "header event"
                Expect.isFalse decoder.AtFrameBoundary "still inside the frame"
                let struct (decoder, consumed, event) = step Role.Server false decoder [||]
                Expect.equal (consumed, event) (0, Payload(0, 0L, true)) "empty payload"
                Expect.isTrue decoder.AtFrameBoundary "boundary"
            testCase "the payload stops at the frame's end; the next header follows" <| fun () ->
                let bytes = Array.append (binary [| 1uy; 2uy; 3uy |]) (text "x")
                let frames, failure = decodeFrames Role.Server bytes
                Expect.isNone failure "no failure"
                Expect.equal (frames |> List.map unmask) [ [| 1uy; 2uy; 3uy |]; utf8 "x" ] "two frames"
            testCase "a 64-bit length with the top bit set is read as Int64.MaxValue" <| fun () ->
                let _, event = firstEvent false (hex "82 ff 80 00 00 00 00 00 00 00 01 02 03 04")
                match event with
                | Header header -> Expect.equal header.PayloadLength Int64.MaxValue "largest length"
                | other -> failwithf "unexpected %A" other
            testCase "a 64-bit length of all ones is read as Int64.MaxValue" <| fun () ->
                let _, event = firstEvent false (hex "82 ff ff ff ff ff ff ff ff ff 01 02 03 04")
                match event with
                | Header header -> Expect.equal header.PayloadLength Int64.MaxValue "largest length"
                | other -> failwithf "unexpected %A" other
            testCase "a 64-bit length of 2^63 - 1 is read as it is" <| fun () ->
                let _, event = firstEvent false (hex "82 ff 7f ff ff ff ff ff ff ff 01 02 03 04")
                match event with
                | Header header -> Expect.equal header.PayloadLength Int64.MaxValue "2^63 - 1"
                | other -> failwithf "unexpected %A" other
            testCase "payload events carry their offset into the frame" <| fun () ->
                let bytes = binary (Array.init 10 byte)
                let _, events = decodeChunks Role.Server false [ bytes[.. 8]; bytes[9 .. 11]; bytes[12..] ]
                Expect.equal events.Tail [ DPayload(bytes[6..8], 0L, false); DPayload(bytes[9..11], 3L, false); DPayload(bytes[12..], 6L, true) ] "payload offsets"
        ]

        testList "partial headers are kept across calls" [
            testCase "an empty input at a frame boundary" <| fun () ->
                let struct (decoder, consumed, event) = step Role.Server false FrameDecoder.initial [||]
                Expect.equal (consumed, event) (0, NeedMore) "need more"
                Expect.isTrue decoder.AtFrameBoundary "boundary"
            testCase "one byte is kept and consumed" <| fun () ->
                let struct (decoder, consumed, event) = step Role.Server false FrameDecoder.initial (hex "82")
                Expect.equal (consumed, event) (1, NeedMore) "kept"
                Expect.isFalse decoder.AtFrameBoundary "a partial header is kept"
            testCase "a 14-byte header fed one byte at a time" <| fun () ->
                let bytes = clientFrame true Opcode.Binary rfcKey (Array.zeroCreate 70000)
                let mutable decoder = FrameDecoder.initial
                for i in 0..12 do
                    let struct (next, consumed, event) = step Role.Server false decoder [| bytes[i] |]
                    Expect.equal (consumed, event) (1, NeedMore) (sprintf "byte %d" i)
                    decoder <- next
                let struct (decoder, consumed, event) = step Role.Server false decoder bytes[13..20]
                Expect.equal consumed 1 "the last header byte"
                Expect.equal event (Header { Frame.header Opcode.Binary 70000L with Masked = true; MaskKey = rfcKey }) "header"
                Expect.isFalse decoder.AtFrameBoundary "in the payload"
            for split in [ 1; 2; 3; 4; 5; 7 ] do
                testCase (sprintf "an 8-byte header split after %d bytes consumes the rest exactly" split) <| fun () ->
                    let bytes = clientFrame true Opcode.Text rfcKey (Array.create 300 0x61uy)
                    let struct (decoder, consumed, event) = step Role.Server false FrameDecoder.initial bytes[.. split - 1]
                    Expect.equal (consumed, event) (split, NeedMore) "first part kept"
                    let struct (_, consumed, event) = step Role.Server false decoder bytes[split..]
                    Expect.equal consumed (8 - split) "rest of the header"
                    Expect.equal event (Header { Frame.header Opcode.Text 300L with Masked = true; MaskKey = rfcKey }) "header"
            testCase "a header split across three calls" <| fun () ->
                let bytes = clientFrame true Opcode.Ping rfcKey (utf8 "Hello")
                let _, events = decodeChunks Role.Server false [ bytes[..0]; bytes[1..3]; bytes[4..] ]
                let frames, failure = framesOf events
                Expect.isNone failure "no failure"
                Expect.equal (frames |> List.map unmask) [ utf8 "Hello" ] "ping"
        ]

        testList "Decoder robustness" [
            for role in [ Role.Server; Role.Client ] do
                property (sprintf "encode → decode round trip, %s" (roleName role))
                <| Prop.forAll (Arb.fromGen (Gen.listOf (frameGen role true))) (fun frames ->
                    let bytes = frames |> List.map (fun (h, p) -> encode h p) |> Array.concat
                    let decoded, failure = decodeChunks role true [ bytes ] |> snd |> framesOf
                    failure.IsNone
                    && decoded |> List.map (fun (h, wire) -> h, unmask (h, wire)) = frames)

                property (sprintf "the same frames however the input is split, %s" (roleName role))
                <| Prop.forAll
                    (Arb.fromGen (gen {
                        let! frames = Gen.listOf (frameGen role true)
                        let bytes = frames |> List.map (fun (h, p) -> encode h p) |> Array.concat
                        let! cuts = Gen.oneof [ Gen.listOf (Gen.choose (0, bytes.Length)); Gen.constant [ 0 .. min bytes.Length 400 ] ]
                        return bytes, cuts }))
                    (fun (bytes, cuts) ->
                        let whole = decodeChunks role true [ bytes ] |> snd |> framesOf
                        let pieces = decodeChunks role true (splitAt cuts bytes) |> snd |> framesOf
                        pieces = whole)

            for role in [ Role.Server; Role.Client ] do
                for deflate in [ false; true ] do
                    property (sprintf "never throws on arbitrary bytes and ends in frames or one failure, %s, deflate %b" (roleName role) deflate)
                    <| Prop.forAll
                        (Arb.fromGen (gen {
                            let! bytes = Gen.arrayOf (Gen.choose (0, 255) |> Gen.map byte)
                            let! cuts = Gen.listOf (Gen.choose (0, bytes.Length))
                            return bytes, cuts }))
                        (fun (bytes, cuts) ->
                            let decoder, events = decodeChunks role deflate (splitAt cuts bytes)
                            let failures = events |> List.choose (function DFailed e -> Some e | _ -> None)
                            let frames, failure = framesOf events
                            let last = List.tryLast events
                            match failures with
                            | [] -> ignore frames; true
                            | [ error ] ->
                                // The failure is sticky: more bytes give it again and are not consumed.
                                let struct (_, consumed, again) = FrameDecoder.step (role, deflate, decoder, ReadOnlySpan bytes)
                                allowedCodes.Contains error.CloseCode && last = Some(DFailed error) && failure = Some error
                                && consumed = 0 && again = Failed error
                            | _ -> false)

            property "arbitrary bytes after valid frames: the valid frames decode first"
            <| Prop.forAll
                (Arb.fromGen (Gen.zip (Gen.listOf (frameGen Role.Server false)) (Gen.arrayOf (Gen.choose (0, 255) |> Gen.map byte))))
                (fun (frames, tail) ->
                    let bytes = Array.append (frames |> List.map (fun (h, p) -> encode h p) |> Array.concat) tail
                    let decoded, failure = decodeChunks Role.Server false [ bytes ] |> snd |> framesOf
                    let prefix = decoded |> List.truncate frames.Length |> List.map (fun (h, w) -> h, unmask (h, w))
                    prefix = frames && (failure |> Option.forall (fun e -> allowedCodes.Contains e.CloseCode)))
        ]
    ]

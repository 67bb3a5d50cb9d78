module Realtime.Protocol.Tests.FrameTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Tests.Properties
open Realtime.Protocol.Tests.ClientFrames

/// Encodes with `Frame.encode` into one array.
let encode (header: FrameHeader) (payload: byte[]) : byte[] = (Frame.encode header (ReadOnlyMemory payload)).ToArray()

let private unmasked (opcode: Opcode) = Frame.header opcode 0L

let private maskedWith (key: uint32) (opcode: Opcode) = { Frame.header opcode 0L with Masked = true; MaskKey = key }

let private pattern (length: int) = Array.init length (fun i -> byte (i * 7 + 3))

/// RFC 6455 §5.7, all examples: name, header, payload, expected bytes.
let section57Examples: (string * FrameHeader * byte[] * byte[]) list =
    [ "a single-frame unmasked text message \"Hello\"", unmasked Opcode.Text, utf8 "Hello", hex "81 05 48 65 6c 6c 6f"
      "a single-frame masked text message \"Hello\"", maskedWith rfcKey Opcode.Text, utf8 "Hello", hex "81 85 37 fa 21 3d 7f 9f 4d 51 58"
      "the first fragment \"Hel\" of an unmasked text message", { unmasked Opcode.Text with Fin = false }, utf8 "Hel", hex "01 03 48 65 6c"
      "the final fragment \"lo\" of an unmasked text message", unmasked Opcode.Continuation, utf8 "lo", hex "80 02 6c 6f"
      "an unmasked ping \"Hello\"", unmasked Opcode.Ping, utf8 "Hello", hex "89 05 48 65 6c 6c 6f"
      "a masked pong \"Hello\"", maskedWith rfcKey Opcode.Pong, utf8 "Hello", hex "8a 85 37 fa 21 3d 7f 9f 4d 51 58"
      "256 bytes of binary data in one unmasked frame", unmasked Opcode.Binary, pattern 256, Array.append (hex "82 7E 01 00") (pattern 256)
      "64 KiB of binary data in one unmasked frame", unmasked Opcode.Binary, pattern 65536, Array.append (hex "82 7F 00 00 00 00 00 01 00 00") (pattern 65536) ]

/// A valid frame for a role: header fields, payload.
let frameGen (role: Role) (allowRsv1: bool) : Gen<FrameHeader * byte[]> =
    gen {
        let! opcode = Gen.elements [ Opcode.Continuation; Opcode.Text; Opcode.Binary; Opcode.Close; Opcode.Ping; Opcode.Pong ]
        let control = Frame.isControl opcode
        let! fin = if control then Gen.constant true else Gen.elements [ true; false ]
        let! rsv1 = if allowRsv1 && (opcode = Opcode.Text || opcode = Opcode.Binary) then Gen.elements [ true; false ] else Gen.constant false
        let! length =
            if control then Gen.choose (0, 125)
            else Gen.frequency [ 24, Gen.choose (0, 130); 8, Gen.choose (126, 1000); 1, Gen.choose (65530, 65600) ]
        let! payload = bytesOfLength length
        let! key = Gen.choose (Int32.MinValue, Int32.MaxValue) |> Gen.map uint32
        let masked = role = Role.Server
        return
            { Fin = fin; Rsv1 = rsv1; Rsv2 = false; Rsv3 = false; Opcode = opcode; Masked = masked
              MaskKey = (if masked then key else 0u); PayloadLength = int64 length },
            payload
    }

[<Tests>]
let tests =
    testList "RFC 6455 §5.2 frame encoding" [
        testList "RFC 6455 §5.7 examples (encoding)" [
            for name, header, payload, expected in section57Examples do
                testCase name <| fun () ->
                    let bytes = encode header payload
                    Expect.equal bytes.Length expected.Length "length"
                    if expected.Length <= 64 then Expect.equal (toHex bytes) (toHex expected) "bytes"
                    else Expect.isTrue (bytes = expected) "bytes"
        ]

        testCase "RFC 7692 §7.2.3.1: a compressed \"Hello\" is framed as c1 07 (FIN, RSV1, text, 7 bytes)" <| fun () ->
            let deflated = [| 0xf2uy; 0x48uy; 0xcduy; 0xc9uy; 0xc9uy; 0x07uy; 0x00uy |]
            let bytes = encode (Frame.compressedHeader Opcode.Text 7L) deflated
            Expect.equal (toHex bytes) (toHex (Array.append [| 0xc1uy; 0x07uy |] deflated)) "bytes"

        testList "minimal length encoding (§5.2)" [
            for length, headerHex in
                [ 0, "82 00"; 1, "82 01"; 125, "82 7d"; 126, "82 7e 00 7e"; 127, "82 7e 00 7f"
                  65535, "82 7e ff ff"; 65536, "82 7f 00 00 00 00 00 01 00 00"; 65537, "82 7f 00 00 00 00 00 01 00 01" ] do
                testCase (sprintf "a %d-byte payload has header %s" length headerHex) <| fun () ->
                    let header = Frame.header Opcode.Binary (int64 length)
                    Expect.equal (toHex (Frame.encodeHeader header)) headerHex "header"
                    Expect.equal (Frame.headerSize header) (hex headerHex).Length "headerSize"
        ]

        testCase "a 2^40-byte length uses the 64-bit form" <| fun () ->
            Expect.equal (toHex (Frame.encodeHeader (Frame.header Opcode.Binary (1L <<< 40)))) "82 7f 00 00 01 00 00 00 00 00" "header"

        testCase "Int64.MaxValue is written with the top bit clear" <| fun () ->
            Expect.equal (toHex (Frame.encodeHeader (Frame.header Opcode.Binary Int64.MaxValue))) "82 7f 7f ff ff ff ff ff ff ff" "header"

        testList "masked header sizes" [
            for length, size in [ 0, 6; 125, 6; 126, 8; 65535, 8; 65536, 14 ] do
                testCase (sprintf "a masked %d-byte payload has a %d-byte header" length size) <| fun () ->
                    let header = { maskedWith rfcKey Opcode.Binary with PayloadLength = int64 length }
                    Expect.equal (Frame.headerSize header) size "headerSize"
                    let bytes = Frame.encodeHeader header
                    Expect.equal bytes.Length size "encoded"
                    Expect.equal bytes[size - 4 ..] (hex "37 fa 21 3d") "the key ends the header"
                    Expect.equal (bytes[1] &&& 0x80uy) 0x80uy "mask bit"
        ]

        testCase "the longest header is MaxHeaderSize bytes" <| fun () ->
            Expect.equal (Frame.headerSize { maskedWith 1u Opcode.Binary with PayloadLength = Int64.MaxValue }) Frame.MaxHeaderSize "14"

        testCase "writeHeader returns the bytes written and leaves the rest alone" <| fun () ->
            let destination = Array.create 20 0xEEuy
            let written = Frame.writeHeader ({ maskedWith rfcKey Opcode.Text with PayloadLength = 300L }, destination.AsSpan())
            Expect.equal written 8 "written"
            Expect.equal (toHex destination[.. 7]) "81 fe 01 2c 37 fa 21 3d" "header"
            Expect.isTrue (destination[8..] |> Array.forall ((=) 0xEEuy)) "untouched"

        testCase "reserved bits and FIN are written where §5.2 puts them" <| fun () ->
            let header = { Frame.header Opcode.Binary 0L with Fin = false; Rsv1 = true; Rsv2 = true; Rsv3 = true }
            Expect.equal (toHex (Frame.encodeHeader header)) "72 00" "first byte"
            Expect.equal (toHex (Frame.encodeHeader { header with Fin = true; Rsv2 = false; Rsv3 = false })) "c2 00" "RSV1 only"

        testCase "a negative length is written as 0" <| fun () ->
            let header = Frame.header Opcode.Binary -5L
            Expect.equal (toHex (Frame.encodeHeader header)) "82 00" "header"
            Expect.equal (Frame.headerSize header) 2 "size"

        testCase "encode takes the length from the payload, not the header" <| fun () ->
            Expect.equal (encode (Frame.header Opcode.Text 999L) (utf8 "Hi")) (hex "81 02 48 69") "bytes"

        testCase "encode without a mask references the caller's payload" <| fun () ->
            let payload = utf8 "Hello"
            let frame = Frame.encode (unmasked Opcode.Text) (ReadOnlyMemory payload)
            Expect.isTrue (frame.Payload.Span.Overlaps(ReadOnlySpan payload)) "same memory"

        testCase "encode with a mask leaves the caller's payload unmasked" <| fun () ->
            let payload = utf8 "Hello"
            encode (maskedWith rfcKey Opcode.Text) payload |> ignore
            Expect.equal payload (utf8 "Hello") "unchanged"

        testCase "control frames: ping, pong, close" <| fun () ->
            Expect.equal (toHex (Frame.control Opcode.Ping ReadOnlySpan.Empty)) "89 00" "empty ping"
            Expect.equal (toHex (Frame.control Opcode.Pong (ReadOnlySpan(utf8 "Hello")))) "8a 05 48 65 6c 6c 6f" "pong"
            Expect.equal (toHex (Frame.closeWithoutCode ())) "88 00" "close without a code"

        testCase "a close frame is the code then the UTF-8 reason" <| fun () ->
            Expect.equal (toHex (Frame.close 1000us "bye")) "88 05 03 e8 62 79 65" "close 1000 bye"
            Expect.equal (toHex (Frame.close 1001us "")) "88 02 03 e9" "close 1001"
            Expect.equal (toHex (Frame.close 4999us null)) "88 02 13 87" "null reason"

        testList "RFC 6455 §5.5.1 close reasons are cut at 123 bytes on a character boundary" [
            for name, unit, count, expectedBytes in
                [ "ASCII", "a", 200, 123
                  "2-byte characters", "é", 100, 122
                  "3-byte characters", "€", 50, 123
                  "4-byte characters", "😀", 40, 120
                  "exactly 123 ASCII bytes", "a", 123, 123
                  "a short reason", "é", 3, 6 ] do
                testCase (sprintf "%s (%d × %s)" name count unit) <| fun () ->
                    let reason = String.replicate count unit
                    let payload = Frame.closePayload 1000us reason
                    Expect.equal (payload.Length - 2) expectedBytes "reason bytes"
                    let kept = payload[2..]
                    Expect.isTrue (Utf8Validator.isValid (ReadOnlySpan kept)) "valid UTF-8"
                    Expect.isTrue (reason.StartsWith(Text.Encoding.UTF8.GetString kept, StringComparison.Ordinal)) "a prefix of the reason"
                    Expect.isLessThanOrEqual (Frame.close 1000us reason).Length (2 + Frame.MaxControlPayload) "fits a control frame"
        ]

        testCase "a mixed reason is cut before the character that would cross 123 bytes" <| fun () ->
            let reason = String.replicate 122 "a" + "é"
            Expect.equal ((Frame.closePayload 1000us reason).Length - 2) 122 "122 bytes"

        testCase "isControl is true exactly for opcodes 8-15" <| fun () ->
            for value in 0uy .. 15uy do
                Expect.equal (Frame.isControl (LanguagePrimitives.EnumOfValue<byte, Opcode> value)) (value >= 8uy) (sprintf "opcode %d" value)

        testCase "isKnownOpcode is true exactly for 0, 1, 2, 8, 9, 10" <| fun () ->
            for value in 0uy .. 15uy do
                let known = List.contains value [ 0uy; 1uy; 2uy; 8uy; 9uy; 10uy ]
                Expect.equal (Frame.isKnownOpcode (LanguagePrimitives.EnumOfValue<byte, Opcode> value)) known (sprintf "opcode %d" value)

        testCase "Frame.header sets FIN and nothing else" <| fun () ->
            let header = Frame.header Opcode.Text 5L
            Expect.equal header { Fin = true; Rsv1 = false; Rsv2 = false; Rsv3 = false; Opcode = Opcode.Text; Masked = false; MaskKey = 0u; PayloadLength = 5L } "header"

        property "Frame.encode equals the reference encoder for any client frame"
        <| Prop.forAll (Arb.fromGen (frameGen Role.Server false)) (fun (header, payload) ->
            let b0 = firstByte header.Fin (if header.Rsv1 then 4uy else 0uy) (byte header.Opcode)
            encode header payload = rawFrame b0 (ValueSome header.MaskKey) payload)

        property "Frame.encode equals the reference encoder for any server frame"
        <| Prop.forAll (Arb.fromGen (frameGen Role.Client true)) (fun (header, payload) ->
            let b0 = firstByte header.Fin (if header.Rsv1 then 4uy else 0uy) (byte header.Opcode)
            encode header payload = rawFrame b0 ValueNone payload)

        property "headerSize equals the bytes writeHeader writes"
        <| Prop.forAll
            (Arb.fromGen (Gen.zip3 (Gen.elements [ true; false ]) (Gen.choose (0, 3)) (Gen.choose (0, Int32.MaxValue))))
            (fun (masked, scale, length) ->
                let length = int64 length <<< (scale * 10)
                let header = { Frame.header Opcode.Binary length with Masked = masked; MaskKey = 7u }
                let destination = Array.zeroCreate Frame.MaxHeaderSize
                Frame.writeHeader (header, destination.AsSpan()) = Frame.headerSize header)
    ]

module Realtime.Protocol.Tests.MaskingTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Tests.Properties
open Realtime.Protocol.Tests.ClientFrames

/// `Masking.apply` into a new array.
let private masked (key: uint32) (offset: int64) (data: byte[]) : byte[] =
    let destination = Array.zeroCreate data.Length
    Masking.apply (key, offset, ReadOnlySpan data, destination.AsSpan())
    destination

/// `Masking.applyInPlace` on a copy.
let private maskedInPlace (key: uint32) (offset: int64) (data: byte[]) : byte[] =
    let copy = Array.copy data
    Masking.applyInPlace (key, offset, copy.AsSpan())
    copy

/// Masks `data` piece by piece, each piece with its own offset into the payload.
let private maskedInPieces (key: uint32) (start: int64) (cuts: int list) (data: byte[]) : byte[] =
    let destination = Array.zeroCreate data.Length
    let mutable position = 0
    for piece in splitAt cuts data do
        Masking.apply (key, start + int64 position, ReadOnlySpan piece, destination.AsSpan(position, piece.Length))
        position <- position + piece.Length
    destination

let private bytesGen = Gen.arrayOf (Gen.choose (0, 255) |> Gen.map byte)

let private keyGen =
    Gen.oneof [ Gen.choose (Int32.MinValue, Int32.MaxValue) |> Gen.map uint32; Gen.elements [ 0u; UInt32.MaxValue; rfcKey ] ]

/// Lengths around the 8-, 16- and 32-byte paths, and some large ones.
let private lengthGen = Gen.frequency [ 3, Gen.choose (0, 80); 1, Gen.choose (80, 2000) ]

let private sizedBytesGen = lengthGen |> Gen.bind (fun n -> Gen.arrayOfLength n (Gen.choose (0, 255) |> Gen.map byte))

let private deterministicBytes (length: int) (seed: int) : byte[] =
    let random = Random(seed)
    let bytes = Array.zeroCreate length
    random.NextBytes bytes
    bytes

[<Tests>]
let tests =
    testList "RFC 6455 §5.3 masking" [
        testCase "§5.7 example: \"Hello\" masked with 37 fa 21 3d is 7f 9f 4d 51 58" <| fun () ->
            Expect.equal (masked rfcKey 0L (utf8 "Hello")) (hex "7f 9f 4d 51 58") "masked Hello"

        testCase "§5.7 example unmasks back to \"Hello\"" <| fun () ->
            Expect.equal (masked rfcKey 0L (hex "7f 9f 4d 51 58")) (utf8 "Hello") "unmasked Hello"

        testCase "readKey takes the four bytes in wire order" <| fun () ->
            Expect.equal (Masking.readKey (ReadOnlySpan(hex "37 fa 21 3d"))) rfcKey "key"

        testCase "writeKey writes the four bytes in wire order" <| fun () ->
            let bytes = Array.zeroCreate 4
            Masking.writeKey (rfcKey, bytes.AsSpan())
            Expect.equal bytes (hex "37 fa 21 3d") "wire bytes"

        testCase "rotate by a multiple of 4 is the key itself" <| fun () ->
            for offset in [ 0L; 4L; 8L; 1L <<< 40 ] do
                Expect.equal (Masking.rotate rfcKey offset) rfcKey (sprintf "offset %d" offset)

        testCase "rotate by 1 starts the key at its second byte" <| fun () ->
            Expect.equal (Masking.rotate rfcKey 1L) (keyOf 0xfauy 0x21uy 0x3duy 0x37uy) "rotated key"

        testCase "a zero key copies the bytes unchanged" <| fun () ->
            let data = deterministicBytes 100 1
            Expect.equal (masked 0u 3L data) data "copy"

        testCase "an empty buffer is left alone" <| fun () ->
            Expect.equal (masked rfcKey 0L [||]) [||] "empty"

        testCase "the vectorised path equals the per-byte reference for lengths 0..300 and offsets 0..3" <| fun () ->
            for key in [ rfcKey; 0xFFFFFFFFu; 0x01020304u; 0u ] do
                for length in 0..300 do
                    let data = deterministicBytes length length
                    for offset in 0L .. 3L do
                        let expected = naiveMask key offset data
                        Expect.equal (masked key offset data) expected (sprintf "key %x length %d offset %d (copy)" key length offset)
                        Expect.equal (maskedInPlace key offset data) expected (sprintf "key %x length %d offset %d (in place)" key length offset)

        testCase "a large offset (past 2^32) masks as offset MOD 4" <| fun () ->
            let data = deterministicBytes 77 7
            Expect.equal (masked rfcKey ((1L <<< 33) + 3L) data) (naiveMask rfcKey 3L data) "offset 2^33 + 3"

        property "applying twice is the identity"
        <| Prop.forAll (Arb.fromGen (Gen.zip3 keyGen (Gen.choose (0, 1000)) sizedBytesGen)) (fun (key, offset, data) ->
            masked key (int64 offset) (masked key (int64 offset) data) = data)

        property "masking any split with the right offsets equals masking the whole"
        <| Prop.forAll
            (Arb.fromGen (gen {
                let! key = keyGen
                let! start = Gen.choose (0, 7)
                let! data = sizedBytesGen
                let! cuts = Gen.listOf (Gen.choose (0, data.Length))
                return key, start, data, cuts }))
            (fun (key, start, data, cuts) -> maskedInPieces key (int64 start) cuts data = masked key (int64 start) data)

        property "the vectorised path equals the per-byte reference"
        <| Prop.forAll (Arb.fromGen (Gen.zip3 keyGen (Gen.choose (0, 1 <<< 20)) sizedBytesGen)) (fun (key, offset, data) ->
            masked key (int64 offset) data = naiveMask key (int64 offset) data)

        property "in place equals copy"
        <| Prop.forAll (Arb.fromGen (Gen.zip3 keyGen (Gen.choose (0, 1000)) bytesGen)) (fun (key, offset, data) ->
            maskedInPlace key (int64 offset) data = masked key (int64 offset) data)

        property "the source is never written when masking into another buffer"
        <| Prop.forAll (Arb.fromGen (Gen.zip keyGen sizedBytesGen)) (fun (key, data) ->
            let copy = Array.copy data
            masked key 1L data |> ignore
            copy = data)

        property "readKey and writeKey round-trip"
        <| Prop.forAll (Arb.fromGen keyGen) (fun key ->
            let bytes = Array.zeroCreate 4
            Masking.writeKey (key, bytes.AsSpan())
            Masking.readKey (ReadOnlySpan bytes) = key && bytes = keyBytes key)
    ]

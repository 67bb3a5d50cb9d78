module Realtime.Protocol.Tests.Utf8ValidatorTests

open System
open System.Buffers
open System.Text
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Tests.Properties
open Realtime.Protocol.Tests.ClientFrames

let private isValid (bytes: byte[]) = Utf8Validator.isValid (ReadOnlySpan bytes)

let private advance (state: Utf8Validator.Utf8State) (bytes: byte[]) = Utf8Validator.advance (state, ReadOnlySpan bytes)

/// Validates chunk by chunk; the verdict is "complete and valid".
let private validInChunks (chunks: byte[] list) : bool =
    let rec go (state: Utf8Validator.Utf8State) chunks =
        match chunks with
        | [] -> state.IsComplete
        | chunk :: rest ->
            match advance state chunk with
            | Utf8Validator.Valid next -> go next rest
            | Utf8Validator.InvalidAt _ -> false
    go Utf8Validator.initial chunks

/// Reference for the fail-fast index, from .NET's decoder: at each position decode one scalar;
/// on invalid data the first byte that cannot continue is the lead itself when it cannot start
/// a sequence, else the byte after the maximal valid subpart.
let private referenceFirstInvalid (bytes: byte[]) : int option =
    let rec go position =
        if position >= bytes.Length then None
        else
            let mutable rune = Rune()
            let mutable consumed = 0
            match Rune.DecodeFromUtf8(ReadOnlySpan(bytes, position, bytes.Length - position), &rune, &consumed) with
            | OperationStatus.Done -> go (position + consumed)
            | OperationStatus.NeedMoreData -> None
            | _ ->
                let lead = bytes[position]
                if (lead >= 0x80uy && lead <= 0xC1uy) || lead >= 0xF5uy then Some position else Some(position + consumed)
    go 0

/// The index `advance` reports, if any.
let private firstInvalid (bytes: byte[]) : int option =
    match advance Utf8Validator.initial bytes with
    | Utf8Validator.InvalidAt index -> Some index
    | Utf8Validator.Valid _ -> None

let private byteGen = Gen.choose (0, 255) |> Gen.map byte

/// Code points from every UTF-8 length, ASCII most often, no surrogates.
let codePointGen =
    Gen.frequency [
        4, Gen.choose (0x20, 0x7E)
        1, Gen.choose (0, 0x7F)
        2, Gen.choose (0x80, 0x7FF)
        2, Gen.choose (0x800, 0xD7FF)
        1, Gen.choose (0xE000, 0xFFFF)
        2, Gen.choose (0x10000, 0x10FFFF)
    ]

/// Strings of arbitrary Unicode scalars (every UTF-8 length).
let unicodeStringGen =
    Gen.listOf codePointGen |> Gen.map (fun points -> points |> List.map Char.ConvertFromUtf32 |> String.concat "")

/// Byte arrays that are valid UTF-8 about half the time: valid text, valid text with a random
/// byte changed, inserted or cut off, or random bytes.
let mixedBytesGen =
    Gen.oneof [
        unicodeStringGen |> Gen.map utf8
        gen {
            let! bytes = unicodeStringGen |> Gen.map utf8
            if bytes.Length = 0 then return bytes
            else
                let! i = Gen.choose (0, bytes.Length - 1)
                let! b = byteGen
                let copy = Array.copy bytes
                copy[i] <- b
                return copy
        }
        gen {
            let! bytes = unicodeStringGen |> Gen.map utf8
            let! i = Gen.choose (0, bytes.Length)
            let! b = byteGen
            return Array.concat [ bytes[.. i - 1]; [| b |]; bytes[i ..] ]
        }
        gen {
            let! bytes = unicodeStringGen |> Gen.map utf8
            let! cut = Gen.choose (0, bytes.Length)
            return bytes[.. cut - 1]
        }
        Gen.arrayOf byteGen
        Gen.arrayOf (Gen.frequency [ 3, Gen.choose (0x80, 0xBF); 1, Gen.choose (0xC0, 0xFF); 1, Gen.choose (0, 0x7F) ] |> Gen.map byte)
    ]

let private validSequences =
    [ "U+0000", "00"
      "ASCII 'A'", "41"
      "U+007F, the last 1-byte", "7f"
      "U+0080, the first 2-byte", "c2 80"
      "U+00E9 é", "c3 a9"
      "U+07FF, the last 2-byte", "df bf"
      "U+0800, the first 3-byte", "e0 a0 80"
      "U+20AC €", "e2 82 ac"
      "U+D7FF, just below the surrogates", "ed 9f bf"
      "U+E000, just above the surrogates", "ee 80 80"
      "U+FFFD", "ef bf bd"
      "U+FFFF, the last 3-byte", "ef bf bf"
      "U+10000, the first 4-byte", "f0 90 80 80"
      "U+1F600 😀", "f0 9f 98 80"
      "U+10FFFF, the last code point", "f4 8f bf bf"
      "κόσμε (Autobahn 6.2.1)", "ce ba e1 bd b9 cf 83 ce bc ce b5"
      "the empty string", "" ]

/// Invalid inputs and the index of the first byte that cannot appear where it does.
let private invalidSequences =
    [ "overlong NUL C0 80", "c0 80", 0
      "overlong C1 BF", "c1 bf", 0
      "overlong 3-byte E0 80 80", "e0 80 80", 1
      "overlong 3-byte E0 9F BF", "e0 9f bf", 1
      "overlong 4-byte F0 80 80 80", "f0 80 80 80", 1
      "overlong 4-byte F0 8F BF BF", "f0 8f bf bf", 1
      "surrogate U+D800 ED A0 80", "ed a0 80", 1
      "surrogate U+DFFF ED BF BF", "ed bf bf", 1
      "surrogate pair as CESU-8", "ed a0 bd ed b8 80", 1
      "U+110000 F4 90 80 80", "f4 90 80 80", 1
      "F5 (past U+10FFFF)", "f5 80 80 80", 0
      "F8 (5-byte form)", "f8 88 80 80 80", 0
      "FC (6-byte form)", "fc 84 80 80 80 80", 0
      "FE", "fe", 0
      "FF", "ff", 0
      "lone continuation 80", "80", 0
      "lone continuation BF after ASCII", "41 42 bf", 2
      "2-byte lead then ASCII", "c3 41", 1
      "3-byte lead cut by ASCII", "e2 82 41", 2
      "4-byte lead cut by a new lead", "f0 9f c3 a9", 2
      "invalid after 40 ASCII bytes (vector path)", String.replicate 40 "41 " + "ff", 40
      "κόσμε then an invalid byte", "ce ba e1 bd b9 cf 83 ce bc ce b5 ed a0 80", 12 ]

let private truncatedSequences =
    [ "C3 (2-byte lead alone)", "c3"
      "E2 82 (3-byte cut after 2)", "e2 82"
      "E2 (3-byte lead alone)", "e2"
      "F0 9F 98 (4-byte cut after 3)", "f0 9f 98"
      "F4 8F (4-byte cut after 2)", "f4 8f"
      "ASCII then a cut 4-byte", "41 42 43 f0" ]

[<Tests>]
let tests =
    testList "RFC 6455 §8.1 UTF-8" [
        testList "valid sequences" [
            for name, bytes in validSequences do
                testCase name <| fun () ->
                    Expect.isTrue (isValid (hex bytes)) (sprintf "%s is valid" bytes)
                    match advance Utf8Validator.initial (hex bytes) with
                    | Utf8Validator.Valid state -> Expect.isTrue state.IsComplete "complete"
                    | other -> failwithf "unexpected %A" other
        ]

        testList "invalid sequences fail at the first invalid byte" [
            for name, bytes, index in invalidSequences do
                testCase name <| fun () ->
                    Expect.isFalse (isValid (hex bytes)) "invalid"
                    Expect.equal (advance Utf8Validator.initial (hex bytes)) (Utf8Validator.InvalidAt index) "fail-fast index"
        ]

        testList "bytes that can never appear in UTF-8" [
            for b in [ 0xC0; 0xC1 ] @ [ 0xF5 .. 0xFF ] do
                testCase (sprintf "%02X fails at once, even after ASCII" b) <| fun () ->
                    Expect.equal (advance Utf8Validator.initial [| byte b |]) (Utf8Validator.InvalidAt 0) "alone"
                    Expect.equal (advance Utf8Validator.initial [| 0x41uy; byte b; 0x80uy; 0x80uy |]) (Utf8Validator.InvalidAt 1) "after ASCII"
        ]

        testCase "every lone continuation byte 80..BF fails" <| fun () ->
            for b in 0x80 .. 0xBF do
                Expect.equal (advance Utf8Validator.initial [| byte b |]) (Utf8Validator.InvalidAt 0) (sprintf "%02X" b)

        testList "truncated sequences are valid so far but not complete" [
            for name, bytes in truncatedSequences do
                testCase name <| fun () ->
                    Expect.isFalse (isValid (hex bytes)) "not complete on its own"
                    match advance Utf8Validator.initial (hex bytes) with
                    | Utf8Validator.Valid state -> Expect.isFalse state.IsComplete "inside a sequence"
                    | other -> failwithf "unexpected %A" other
        ]

        testCase "the initial state is complete" <| fun () ->
            Expect.isTrue Utf8Validator.initial.IsComplete "initial"

        testCase "a sequence split across chunks resumes in the next chunk" <| fun () ->
            match advance Utf8Validator.initial (hex "f0 9f") with
            | Utf8Validator.Valid state ->
                Expect.equal (advance state (hex "98 80")) (Utf8Validator.Valid Utf8Validator.initial) "completed"
            | other -> failwithf "unexpected %A" other

        testCase "the first-byte constraint of E0 is kept across a chunk boundary" <| fun () ->
            match advance Utf8Validator.initial (hex "e0") with
            | Utf8Validator.Valid state -> Expect.equal (advance state (hex "80 80")) (Utf8Validator.InvalidAt 0) "overlong"
            | other -> failwithf "unexpected %A" other

        testCase "the surrogate constraint of ED is kept across a chunk boundary" <| fun () ->
            match advance Utf8Validator.initial (hex "41 ed") with
            | Utf8Validator.Valid state -> Expect.equal (advance state (hex "a0 80")) (Utf8Validator.InvalidAt 0) "surrogate"
            | other -> failwithf "unexpected %A" other

        testCase "masked validation of the §5.7 masked \"Hello\"" <| fun () ->
            let step = Utf8Validator.advanceMasked (Utf8Validator.initial, rfcKey, 0L, ReadOnlySpan(hex "7f 9f 4d 51 58"))
            Expect.equal step (Utf8Validator.Valid Utf8Validator.initial) "valid"

        testCase "masked validation reports the index of the invalid unmasked byte" <| fun () ->
            let plain = Array.append (Array.create 70 0x41uy) (hex "ff 41")
            let wire = naiveMask rfcKey 1L plain
            Expect.equal (Utf8Validator.advanceMasked (Utf8Validator.initial, rfcKey, 1L, ReadOnlySpan wire)) (Utf8Validator.InvalidAt 70) "index 70"

        testCase "equal states are equal and print their need" <| fun () ->
            match advance Utf8Validator.initial (hex "e2"), advance Utf8Validator.initial (hex "e2") with
            | Utf8Validator.Valid a, Utf8Validator.Valid b ->
                Expect.equal a b "same state"
                Expect.notEqual a Utf8Validator.initial "not the initial state"
                Expect.stringContains (string a) "Needs(2)" "printed"
            | other -> failwithf "unexpected %A" other

        property "agrees with System.Text.Unicode.Utf8.IsValid"
        <| Prop.forAll (Arb.fromGen mixedBytesGen) (fun bytes ->
            isValid bytes = Unicode.Utf8.IsValid(ReadOnlySpan bytes))

        property "both verdicts are common in the generated inputs"
        <| Prop.forAll (Arb.fromGen (Gen.listOfLength 200 mixedBytesGen |> Gen.resize 50)) (fun samples ->
            let valid = samples |> List.filter isValid |> List.length
            valid > 30 && valid < 170)

        property "the fail-fast index is the first byte that cannot appear where it does"
        <| Prop.forAll (Arb.fromGen mixedBytesGen) (fun bytes -> firstInvalid bytes = referenceFirstInvalid bytes)

        property "the bytes before the fail-fast index are a valid prefix"
        <| Prop.forAll (Arb.fromGen mixedBytesGen) (fun bytes ->
            match advance Utf8Validator.initial bytes with
            | Utf8Validator.InvalidAt index ->
                index >= 0 && index < bytes.Length
                && (match advance Utf8Validator.initial bytes[.. index - 1] with
                    | Utf8Validator.Valid _ -> true
                    | _ -> false)
            | Utf8Validator.Valid _ -> true)

        property "any split into chunks gives the same verdict"
        <| Prop.forAll
            (Arb.fromGen (gen {
                let! bytes = mixedBytesGen
                let! cuts = Gen.listOf (Gen.choose (0, bytes.Length))
                return bytes, cuts }))
            (fun (bytes, cuts) -> validInChunks (splitAt cuts bytes) = isValid bytes)

        property "masked validation equals plain validation of the unmasked bytes"
        <| Prop.forAll
            (Arb.fromGen (gen {
                let! bytes = mixedBytesGen
                let! key = Gen.choose (Int32.MinValue, Int32.MaxValue) |> Gen.map uint32
                let! offset = Gen.choose (0, 1000)
                return bytes, key, int64 offset }))
            (fun (bytes, key, offset) ->
                let wire = naiveMask key offset bytes
                Utf8Validator.advanceMasked (Utf8Validator.initial, key, offset, ReadOnlySpan wire) = advance Utf8Validator.initial bytes)

        property "masked validation split into chunks with offsets equals plain validation"
        <| Prop.forAll
            (Arb.fromGen (gen {
                let! bytes = mixedBytesGen
                let! key = Gen.choose (Int32.MinValue, Int32.MaxValue) |> Gen.map uint32
                let! cuts = Gen.listOf (Gen.choose (0, bytes.Length))
                return bytes, key, cuts }))
            (fun (bytes, key, cuts) ->
                let wire = naiveMask key 0L bytes
                let rec go (state: Utf8Validator.Utf8State) offset chunks =
                    match chunks with
                    | [] -> state.IsComplete
                    | (chunk: byte[]) :: rest ->
                        match Utf8Validator.advanceMasked (state, key, offset, ReadOnlySpan chunk) with
                        | Utf8Validator.Valid next -> go next (offset + int64 chunk.Length) rest
                        | Utf8Validator.InvalidAt _ -> false
                go Utf8Validator.initial 0L (splitAt cuts wire) = isValid bytes)

        property "every encoded Unicode string is valid"
        <| Prop.forAll (Arb.fromGen unicodeStringGen) (fun text -> isValid (utf8 text))
    ]

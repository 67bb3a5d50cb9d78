/// Incremental UTF-8 validation (RFC 3629 §4), resumable across fragments and chunks.
///
/// RFC 6455 §8.1: a text message that is not valid UTF-8 fails the connection with 1007, and a
/// receiver should fail as soon as an invalid byte arrives rather than at the message's end. The
/// validator works on masked bytes too (given the key), so the core can check a payload without
/// copying or unmasking it.
module Realtime.Protocol.Utf8Validator

open System
open System.Buffers.Binary
open System.Runtime.Intrinsics

/// Where validation stands between two chunks: at a character boundary, or inside a multi-byte
/// sequence that still needs continuation bytes within a given range.
[<Struct; CustomEquality; NoComparison>]
type Utf8State =
    private
        { Packed: int }

    /// True at a character boundary: the bytes so far form complete, valid UTF-8.
    member state.IsComplete = state.Packed = 0

    /// True when `other` is a Utf8State at the same point: both complete, or both needing the same continuation bytes.
    override state.Equals(other: obj) =
        match other with
        | :? Utf8State as o -> o.Packed = state.Packed
        | _ -> false

    /// A hash consistent with Equals.
    override state.GetHashCode() = state.Packed

    /// A short text for debugging: "Utf8State.Complete" at a character boundary, else "Utf8State.Needs(...)".
    override state.ToString() =
        if state.Packed = 0 then "Utf8State.Complete"
        else sprintf "Utf8State.Needs(%d)" (state.Packed >>> 16)

/// The result of validating one chunk.
[<Struct>]
type Utf8Step =
    /// Every byte of the chunk was valid; validation continues from this state.
    | Valid of state: Utf8State
    /// The byte at this index of the chunk cannot appear where it does.
    | InvalidAt of index: int

/// The state before any byte: a character boundary.
let initial = { Packed = 0 }

// Packed = needed <<< 16 ||| lowest allowed next byte <<< 8 ||| highest allowed next byte.
let inline private pack needed low high = { Packed = (needed <<< 16) ||| (low <<< 8) ||| high }

/// RFC 3629 §4: the lead byte decides how many continuation bytes follow and, for E0, ED, F0
/// and F4, narrows the first one to exclude overlongs, surrogates and code points past U+10FFFF.
let private afterLead (b: int) : Utf8State voption =
    if b < 0x80 then ValueSome initial
    elif b < 0xC2 then ValueNone
    elif b <= 0xDF then ValueSome(pack 1 0x80 0xBF)
    elif b = 0xE0 then ValueSome(pack 2 0xA0 0xBF)
    elif b = 0xED then ValueSome(pack 2 0x80 0x9F)
    elif b <= 0xEF then ValueSome(pack 2 0x80 0xBF)
    elif b = 0xF0 then ValueSome(pack 3 0x90 0xBF)
    elif b <= 0xF3 then ValueSome(pack 3 0x80 0xBF)
    elif b = 0xF4 then ValueSome(pack 3 0x80 0x8F)
    else ValueNone

let private afterByte (state: Utf8State) (b: int) : Utf8State voption =
    if state.Packed = 0 then
        afterLead b
    else
        let needed = state.Packed >>> 16
        let low = (state.Packed >>> 8) &&& 0xFF
        let high = state.Packed &&& 0xFF
        if b < low || b > high then ValueNone
        elif needed = 1 then ValueSome initial
        else ValueSome(pack (needed - 1) 0x80 0xBF)

/// Validates `chunk`, whose bytes are masked with `key` as a slice starting `offset` bytes into
/// the payload (key 0 means plain bytes), continuing from `state`. Runs of ASCII are skipped
/// a vector at a time.
let advanceMasked (state: Utf8State, key: uint32, offset: int64, chunk: ReadOnlySpan<byte>) : Utf8Step =
    let k = Masking.rotate key offset
    let key64 = uint64 k ||| (uint64 k <<< 32)
    let keyVector = Vector256.Create(k).AsByte()
    let length = chunk.Length
    let mutable current = state
    let mutable i = 0
    let mutable invalid = -1
    while invalid < 0 && i < length do
        if current.Packed = 0 && (i &&& 3) = 0 then
            // At a boundary and aligned with the key: skip whole ASCII words.
            if Vector256.IsHardwareAccelerated then
                while i + 32 <= length
                      && Vector256.Xor(Vector256.Create<byte>(chunk.Slice(i, 32)), keyVector)
                          .ExtractMostSignificantBits() = 0u do
                    i <- i + 32
            while i + 8 <= length
                  && ((BinaryPrimitives.ReadUInt64LittleEndian(chunk.Slice i) ^^^ key64) &&& 0x8080808080808080UL) = 0UL do
                i <- i + 8
        if i < length then
            let b = int (chunk[i] ^^^ byte (k >>> ((i &&& 3) * 8)))
            match afterByte current b with
            | ValueSome next ->
                current <- next
                i <- i + 1
            | ValueNone -> invalid <- i
    if invalid >= 0 then InvalidAt invalid else Valid current

/// Validates plain (unmasked) bytes, continuing from `state`.
let advance (state: Utf8State, chunk: ReadOnlySpan<byte>) : Utf8Step = advanceMasked (state, 0u, 0L, chunk)

/// True when `bytes` are complete, valid UTF-8 on their own.
let isValid (bytes: ReadOnlySpan<byte>) : bool =
    match advance (initial, bytes) with
    | Valid state -> state.IsComplete
    | InvalidAt _ -> false

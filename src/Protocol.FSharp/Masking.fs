/// Payload masking (RFC 6455 §5.3).
///
/// A mask key is held as a `uint32` whose little-endian bytes are the four key bytes in wire
/// order, so that an 8-, 16- or 32-byte load XORed with the key repeated covers whole words at
/// once. This module is the one place in the core that writes into a buffer: the caller's own.
module Realtime.Protocol.Masking

open System
open System.Buffers.Binary
open System.Runtime.Intrinsics

/// Reads a mask key from its four bytes in wire order.
let readKey (wireBytes: ReadOnlySpan<byte>) : uint32 = BinaryPrimitives.ReadUInt32LittleEndian wireBytes

/// Writes a mask key as its four bytes in wire order.
let writeKey (key: uint32, destination: Span<byte>) : unit =
    BinaryPrimitives.WriteUInt32LittleEndian(destination, key)

/// The key as it applies to a slice that starts `offset` bytes into the payload:
/// RFC 6455 §5.3 masks octet i with key octet (i MOD 4).
let rotate (key: uint32) (offset: int64) : uint32 =
    let shift = int (offset &&& 3L) * 8
    if shift = 0 then key else (key >>> shift) ||| (key <<< (32 - shift))

/// XORs `source` with the key, as a slice starting `offset` bytes into the payload, into
/// `destination` (which may be the same memory as `source` for in-place unmasking).
/// Masking and unmasking are the same operation. `destination` must be at least as long as `source`.
let apply (key: uint32, offset: int64, source: ReadOnlySpan<byte>, destination: Span<byte>) : unit =
    let k = rotate key offset
    let length = source.Length
    let mutable i = 0
    if k <> 0u then
        if Vector256.IsHardwareAccelerated && length >= 32 then
            let keyVector = Vector256.Create(k).AsByte()
            while i + 32 <= length do
                let v = Vector256.Create<byte>(source.Slice(i, 32))
                Vector256.Xor(v, keyVector).CopyTo(destination.Slice(i, 32))
                i <- i + 32
        elif Vector128.IsHardwareAccelerated && length >= 16 then
            let keyVector = Vector128.Create(k).AsByte()
            while i + 16 <= length do
                let v = Vector128.Create<byte>(source.Slice(i, 16))
                Vector128.Xor(v, keyVector).CopyTo(destination.Slice(i, 16))
                i <- i + 16
        let key64 = uint64 k ||| (uint64 k <<< 32)
        while i + 8 <= length do
            let word = BinaryPrimitives.ReadUInt64LittleEndian(source.Slice i)
            BinaryPrimitives.WriteUInt64LittleEndian(destination.Slice i, word ^^^ key64)
            i <- i + 8
        // i is a multiple of 4 here, so the tail starts at key byte 0 of k.
        while i < length do
            destination[i] <- source[i] ^^^ byte (k >>> ((i &&& 3) * 8))
            i <- i + 1
    elif not (source.Overlaps(destination)) then
        source.CopyTo destination

/// Masks or unmasks `data` in place, as a slice starting `offset` bytes into the payload.
let applyInPlace (key: uint32, offset: int64, data: Span<byte>) : unit =
    apply (key, offset, Span<byte>.op_Implicit data, data)

/// Unsigned LEB128 varints (7 bits a byte, low bits first, the high bit set on every byte but the
/// last), as the backplane envelope and the channels binary form write integers and lengths.
module internal Realtime.Protocol.Varint

open System

/// How reading a varint ended.
[<Struct>]
type VarintRead =
    /// A value, and the offset just after its last byte.
    | Read of value: uint64 * next: int
    /// The bytes end inside the varint.
    | Truncated
    /// The varint runs past 64 bits.
    | TooLong

/// The bytes `write` takes for `value` (1 to 10).
let size (value: uint64) : int =
    let mutable size = 1
    let mutable rest = value >>> 7
    while rest <> 0UL do
        size <- size + 1
        rest <- rest >>> 7
    size

/// Writes `value` at the start of `destination` (which has room for `size value` bytes); returns the bytes written.
let write (value: uint64, destination: Span<byte>) : int =
    let mutable rest = value
    let mutable i = 0
    while rest >= 0x80UL do
        destination[i] <- byte (rest &&& 0x7FUL) ||| 0x80uy
        rest <- rest >>> 7
        i <- i + 1
    destination[i] <- byte rest
    i + 1

/// Reads a varint starting at `at`.
let read (bytes: ReadOnlySpan<byte>, at: int) : VarintRead =
    let mutable value = 0UL
    let mutable shift = 0
    let mutable i = at
    let mutable result = ValueNone
    while result.IsNone do
        if i >= bytes.Length then
            result <- ValueSome Truncated
        else
            let b = bytes[i]
            let bits = uint64 (b &&& 0x7Fuy)
            // The tenth byte may carry only the 64th bit.
            if shift = 63 && bits > 1UL then
                result <- ValueSome TooLong
            else
                value <- value ||| (bits <<< shift)
                i <- i + 1
                if b &&& 0x80uy = 0uy then result <- ValueSome(Read(value, i))
                elif shift = 63 then result <- ValueSome TooLong
                else shift <- shift + 7
    result.Value

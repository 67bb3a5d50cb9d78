namespace Realtime.Protocol

open System
open System.Buffers.Binary

/// Which side of the connection decodes: RFC 6455 §5.1 requires client frames to be masked and
/// server frames not to be.
type Role =
    /// Decodes frames a client sent (they must be masked).
    | Server = 0
    /// Decodes frames a server sent (they must not be masked).
    | Client = 1

/// What one decoding step found at the front of the input.
[<Struct>]
type DecodeEvent =
    /// Nothing more can be decoded until more bytes arrive (a partial header was kept).
    | NeedMore
    /// A complete header that obeys the frame-level rules; its payload follows.
    | Header of header: FrameHeader
    /// The first `length` bytes of the input are payload of the current frame, starting
    /// `payloadOffset` bytes into it; `frameEnd` when they are its last. A frame with an empty
    /// payload yields one event of length 0.
    | Payload of length: int * payloadOffset: int64 * frameEnd: bool
    /// The frame breaks the protocol; the decoder stays failed.
    | Failed of error: ProtocolError

/// The incremental frame decoder (RFC 6455 §5.2).
///
/// Theory of operation: the caller passes the bytes it has; each step reports how many it
/// consumed and at most one event. Headers may arrive split anywhere: up to 13 bytes of a
/// partial header are kept in the state (two words, no allocation). Payload bytes are never
/// copied: a `Payload` event says how many of the input's first bytes belong to the frame, and
/// the caller takes them from its own buffer. The events are the same however the input is split.
[<Struct>]
type FrameDecoder =
    private
        {
            Low: uint64
            High: uint64
            PendingCount: int
            InPayload: bool
            Current: FrameHeader
            Remaining: int64
            Offset: int64
            Error: ProtocolError voption
        }

    /// The header of the frame whose payload is being read (meaningful after a `Header` event).
    member decoder.CurrentHeader = decoder.Current

    /// True when the decoder sits between frames with no partial header kept.
    member decoder.AtFrameBoundary = not decoder.InPayload && decoder.PendingCount = 0

/// Functions over `FrameDecoder`.
module FrameDecoder =

    /// A decoder before the first byte.
    let initial: FrameDecoder =
        { Low = 0UL; High = 0UL; PendingCount = 0; InPayload = false; Current = Frame.header Opcode.Continuation 0L; Remaining = 0L; Offset = 0L; Error = ValueNone }

    let private pendingByte (decoder: FrameDecoder) (i: int) : byte =
        if i < 8 then byte (decoder.Low >>> (i * 8)) else byte (decoder.High >>> ((i - 8) * 8))

    /// Byte `i` of the header seen as the kept bytes followed by the input.
    let private headerByte (decoder: FrameDecoder, input: ReadOnlySpan<byte>, i: int) : byte =
        if i < decoder.PendingCount then pendingByte decoder i else input[i - decoder.PendingCount]

    let private keep (decoder: FrameDecoder, input: ReadOnlySpan<byte>) : FrameDecoder =
        let mutable low = decoder.Low
        let mutable high = decoder.High
        for j in 0 .. input.Length - 1 do
            let i = decoder.PendingCount + j
            if i < 8 then low <- low ||| (uint64 input[j] <<< (i * 8))
            else high <- high ||| (uint64 input[j] <<< ((i - 8) * 8))
        { decoder with Low = low; High = high; PendingCount = decoder.PendingCount + input.Length }

    let private fail (decoder: FrameDecoder) (error: ProtocolError) consumed =
        struct ({ decoder with Error = ValueSome error }, consumed, Failed error)

    /// The rules the first two header bytes settle on their own, checked before the rest of the
    /// header arrives so that a bad frame fails fast.
    let private checkStart (role: Role, allowRsv1: bool, b0: byte, b1: byte) : ProtocolError voption =
        let opcode = LanguagePrimitives.EnumOfValue<byte, Opcode>(b0 &&& 0x0Fuy)
        let fin = (b0 &&& 0x80uy) <> 0uy
        let rsv1 = (b0 &&& 0x40uy) <> 0uy
        let masked = (b1 &&& 0x80uy) <> 0uy
        let lengthCode = int (b1 &&& 0x7Fuy)
        // RFC 6455 §5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail the
        // WebSocket Connection_."
        if not (Frame.isKnownOpcode opcode) then ValueSome(ReservedOpcode(byte opcode))
        // RFC 6455 §5.2: RSV bits "MUST be 0 unless an extension is negotiated that defines
        // meanings for non-zero values". Only permessage-deflate's RSV1 can be negotiated here.
        elif (b0 &&& 0x30uy) <> 0uy then ValueSome ReservedBitsSet
        elif rsv1 && not allowRsv1 then ValueSome ReservedBitsSet
        // RFC 7692 §6.1: RSV1 marks the first frame of a compressed data message only.
        elif rsv1 && (Frame.isControl opcode || opcode = Opcode.Continuation) then ValueSome CompressedBitMisplaced
        // RFC 6455 §5.1: clients mask, servers do not.
        elif role = Role.Server && not masked then ValueSome UnmaskedFrame
        elif role = Role.Client && masked then ValueSome MaskedFrame
        // RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes or less and
        // MUST NOT be fragmented."
        elif Frame.isControl opcode && lengthCode > Frame.MaxControlPayload then ValueSome ControlFrameTooLong
        elif Frame.isControl opcode && not fin then ValueSome FragmentedControlFrame
        else ValueNone

    let private readHeader (role: Role, allowRsv1: bool, decoder: FrameDecoder, input: ReadOnlySpan<byte>) =
        let available = decoder.PendingCount + input.Length
        if available < 2 then
            struct (keep (decoder, input), input.Length, NeedMore)
        else
            let b0 = headerByte (decoder, input, 0)
            let b1 = headerByte (decoder, input, 1)
            match checkStart (role, allowRsv1, b0, b1) with
            | ValueSome error -> fail decoder error 0
            | ValueNone ->
                let masked = (b1 &&& 0x80uy) <> 0uy
                let lengthCode = int (b1 &&& 0x7Fuy)
                let lengthBytes = if lengthCode = 126 then 2 elif lengthCode = 127 then 8 else 0
                let size = 2 + lengthBytes + (if masked then 4 else 0)
                if available < size then
                    struct (keep (decoder, input), input.Length, NeedMore)
                else
                    let mutable length = int64 lengthCode
                    if lengthBytes > 0 then
                        length <- 0L
                        for i in 2 .. 1 + lengthBytes do
                            length <- (length <<< 8) ||| int64 (headerByte (decoder, input, i))
                    let mutable key = 0u
                    if masked then
                        for i in 0..3 do
                            key <- key ||| (uint32 (headerByte (decoder, input, 2 + lengthBytes + i)) <<< (i * 8))
                    let header =
                        { Fin = (b0 &&& 0x80uy) <> 0uy
                          Rsv1 = (b0 &&& 0x40uy) <> 0uy
                          Rsv2 = false
                          Rsv3 = false
                          Opcode = LanguagePrimitives.EnumOfValue<byte, Opcode>(b0 &&& 0x0Fuy)
                          Masked = masked
                          MaskKey = key
                          // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
                          // Such a length is read as the largest value, which any size limit refuses.
                          PayloadLength = if length < 0L then Int64.MaxValue else length }
                    let consumed = size - decoder.PendingCount
                    let next =
                        { decoder with Low = 0UL; High = 0UL; PendingCount = 0; InPayload = true; Current = header; Remaining = header.PayloadLength; Offset = 0L }
                    struct (next, consumed, Header header)

    /// Decodes from the front of `input`: returns the next decoder, how many input bytes were
    /// consumed, and what was found. `allowRsv1` is true when permessage-deflate was negotiated.
    /// Call again with the unconsumed bytes until the event is `NeedMore` (or `Failed`).
    let step (role: Role, allowRsv1: bool, decoder: FrameDecoder, input: ReadOnlySpan<byte>) : struct (FrameDecoder * int * DecodeEvent) =
        match decoder.Error with
        | ValueSome error -> struct (decoder, 0, Failed error)
        | ValueNone ->
            if not decoder.InPayload then
                readHeader (role, allowRsv1, decoder, input)
            elif decoder.Remaining = 0L then
                struct ({ decoder with InPayload = false }, 0, Payload(0, decoder.Offset, true))
            elif input.IsEmpty then
                struct (decoder, 0, NeedMore)
            else
                let length = int (min decoder.Remaining (int64 input.Length))
                let remaining = decoder.Remaining - int64 length
                let next = { decoder with Remaining = remaining; Offset = decoder.Offset + int64 length; InPayload = remaining > 0L }
                struct (next, length, Payload(length, decoder.Offset, remaining = 0L))

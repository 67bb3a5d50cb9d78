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
            // The kept bytes of a partial header, little-endian: bytes 0-7, then 8-15. Once the
            // decoder failed, `Low` holds what the error is derived from again (see `failure`).
            Low: uint64
            High: uint64
            // The current frame's header, packed: its payload length, its mask key and its first
            // two bytes (FIN, RSV1, opcode, MASK); and how much of its payload is still to come.
            // (Fields from the largest down, for a compact layout: 40 bytes.)
            Length: int64
            Remaining: int64
            MaskKey: uint32
            B0: byte
            B1: byte
            PendingCount: byte
            // Reading a header, reading a payload, or failed.
            Phase: byte
        }

    /// The header of the frame whose payload is being read (meaningful after a `Header` event).
    member decoder.CurrentHeader: FrameHeader =
        let b0 = decoder.B0
        { Fin = (b0 &&& 0x80uy) <> 0uy
          Rsv1 = (b0 &&& 0x40uy) <> 0uy
          Rsv2 = false
          Rsv3 = false
          Opcode = LanguagePrimitives.EnumOfValue<byte, Opcode>(b0 &&& 0x0Fuy)
          Masked = (decoder.B1 &&& 0x80uy) <> 0uy
          MaskKey = decoder.MaskKey
          PayloadLength = decoder.Length }

    /// After a step that found payload and consumed `consumed` bytes: how far into the frame's
    /// payload those bytes start.
    member internal decoder.ChunkOffset(consumed: int) : int64 = decoder.Length - decoder.Remaining - int64 consumed

    /// After a step that found payload: true when it was the last of the frame's payload.
    member internal decoder.FrameComplete : bool = decoder.Remaining = 0L

    /// True when the decoder sits between frames with no partial header kept (false once it
    /// failed: it reads no more frames).
    member decoder.AtFrameBoundary = decoder.Phase = 0uy && decoder.PendingCount = 0uy

/// Functions over `FrameDecoder`.
module FrameDecoder =

    open System.Runtime.CompilerServices

    [<Literal>]
    let private ReadingHeader = 0uy

    [<Literal>]
    let private ReadingPayload = 1uy

    [<Literal>]
    let private Stopped = 2uy

    // What a step found, as `advance` reports it; the details are in the decoder it updated (see
    // `step` for how they make a `DecodeEvent`).

    /// `NeedMore`.
    [<Literal>]
    let internal FoundNothing = 0

    /// `Header`: the header is the decoder's `CurrentHeader`.
    [<Literal>]
    let internal FoundHeader = 1

    /// `Payload`: the consumed bytes, ending `Length - Remaining` bytes into the frame's payload;
    /// the frame ends when nothing remains.
    [<Literal>]
    let internal FoundPayload = 2

    /// `Failed`: the error is `failure decoder`.
    [<Literal>]
    let internal FoundFailure = 3

    /// A decoder before the first byte.
    let initial: FrameDecoder =
        { Low = 0UL
          High = 0UL
          B0 = 0x80uy
          B1 = 0uy
          MaskKey = 0u
          Length = 0L
          Remaining = 0L
          PendingCount = 0uy
          Phase = ReadingHeader }

    let private pendingByte (decoder: FrameDecoder) (i: int) : byte =
        if i < 8 then byte (decoder.Low >>> (i * 8)) else byte (decoder.High >>> ((i - 8) * 8))

    /// Byte `i` of the header seen as the kept bytes followed by the input.
    let private headerByte (decoder: FrameDecoder, input: ReadOnlySpan<byte>, i: int) : byte =
        let pending = int decoder.PendingCount
        if i < pending then pendingByte decoder i else input[i - pending]

    let private keep (decoder: FrameDecoder, input: ReadOnlySpan<byte>) : FrameDecoder =
        let mutable low = decoder.Low
        let mutable high = decoder.High
        let pending = int decoder.PendingCount
        for j in 0 .. input.Length - 1 do
            let i = pending + j
            if i < 8 then low <- low ||| (uint64 input[j] <<< (i * 8))
            else high <- high ||| (uint64 input[j] <<< ((i - 8) * 8))
        { decoder with Low = low; High = high; PendingCount = byte (pending + input.Length) }

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

    /// The decoder fails: it stays failed, and every later step reports the same error. Rather
    /// than the error itself, it keeps the two header bytes that broke the rules and the role and
    /// setting they were checked under (the kept header bytes are of no more use), and `failure`
    /// derives the error from them again: it keeps the decoder small.
    let private stopWith (decoder: byref<FrameDecoder>, role: Role, allowRsv1: bool, b0: byte, b1: byte, consumed: byref<int>) : int =
        let evidence = uint64 b0 ||| (uint64 b1 <<< 8) ||| (uint64 (byte role) <<< 16) ||| (if allowRsv1 then 1UL <<< 24 else 0UL)
        decoder <- { decoder with Phase = Stopped; Low = evidence; High = 0UL; PendingCount = 0uy }
        consumed <- 0
        FoundFailure

    /// The error a failed decoder failed with (see `stopWith`).
    let internal failure (decoder: FrameDecoder) : ProtocolError =
        let evidence = decoder.Low
        let role = LanguagePrimitives.EnumOfValue<int, Role>(int (byte (evidence >>> 16)))
        match checkStart (role, (evidence >>> 24) &&& 1UL = 1UL, byte evidence, byte (evidence >>> 8)) with
        | ValueSome error -> error
        | ValueNone -> ReservedBitsSet // unreachable: the bytes kept failed this very check

    /// The size of the header that starts with `b1`: 2 bytes, the extended length, the mask key.
    let inline private headerSize (b1: byte) : int =
        let lengthCode = b1 &&& 0x7Fuy
        2 + (if lengthCode = 126uy then 2 elif lengthCode = 127uy then 8 else 0) + (if (b1 &&& 0x80uy) <> 0uy then 4 else 0)

    /// A complete header was read: the decoder moves into its payload.
    let inline private enterPayload (decoder: byref<FrameDecoder>) (b0: byte) (b1: byte) (length: int64) (key: uint32) : int =
        // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0. Such a length is
        // read as the largest value, which any size limit refuses.
        let length = if length < 0L then Int64.MaxValue else length
        decoder <-
            { Low = 0UL
              High = 0UL
              B0 = b0
              B1 = b1
              MaskKey = key
              Length = length
              Remaining = length
              PendingCount = 0uy
              Phase = ReadingPayload }
        FoundHeader

    /// The header at the front of `input`, with nothing kept from earlier input: read straight
    /// from the span (the usual case).
    let private readWholeHeader (role: Role, allowRsv1: bool, decoder: byref<FrameDecoder>, input: ReadOnlySpan<byte>, consumed: byref<int>) : int =
        let b0 = input[0]
        let b1 = input[1]
        match checkStart (role, allowRsv1, b0, b1) with
        | ValueSome _ -> stopWith (&decoder, role, allowRsv1, b0, b1, &consumed)
        | ValueNone ->
            let size = headerSize b1
            if input.Length < size then
                decoder <- keep (decoder, input)
                consumed <- input.Length
                FoundNothing
            else
                let lengthCode = b1 &&& 0x7Fuy
                let length =
                    if lengthCode = 126uy then int64 (BinaryPrimitives.ReadUInt16BigEndian(input.Slice 2))
                    elif lengthCode = 127uy then BinaryPrimitives.ReadInt64BigEndian(input.Slice 2)
                    else int64 lengthCode
                let key = if (b1 &&& 0x80uy) <> 0uy then Masking.readKey (input.Slice(size - 4)) else 0u
                consumed <- size
                enterPayload &decoder b0 b1 length key

    /// The header when part of it was kept from earlier input, or too little input is left to
    /// tell its size: kept bytes and input are read as one.
    let private readSplitHeader (role: Role, allowRsv1: bool, decoder: byref<FrameDecoder>, input: ReadOnlySpan<byte>, consumed: byref<int>) : int =
        let pending = int decoder.PendingCount
        let available = pending + input.Length
        if available < 2 then
            decoder <- keep (decoder, input)
            consumed <- input.Length
            FoundNothing
        else
            let b0 = headerByte (decoder, input, 0)
            let b1 = headerByte (decoder, input, 1)
            match checkStart (role, allowRsv1, b0, b1) with
            | ValueSome _ -> stopWith (&decoder, role, allowRsv1, b0, b1, &consumed)
            | ValueNone ->
                let size = headerSize b1
                if available < size then
                    decoder <- keep (decoder, input)
                    consumed <- input.Length
                    FoundNothing
                else
                    // Keep just the rest of the header: the kept words then hold all of it.
                    let whole = keep (decoder, input.Slice(0, size - pending))
                    let lengthCode = b1 &&& 0x7Fuy
                    let lengthBytes = if lengthCode = 126uy then 2 elif lengthCode = 127uy then 8 else 0
                    let mutable length = int64 lengthCode
                    if lengthBytes > 0 then
                        length <- 0L
                        for i in 2 .. 1 + lengthBytes do
                            length <- (length <<< 8) ||| int64 (pendingByte whole i)
                    let mutable key = 0u
                    if (b1 &&& 0x80uy) <> 0uy then
                        for i in 0..3 do
                            key <- key ||| (uint32 (pendingByte whole (2 + lengthBytes + i)) <<< (i * 8))
                    consumed <- size - pending
                    enterPayload &decoder b0 b1 length key

    /// `step` on a decoder held by the caller: updates it in place and returns what it found as
    /// one of the `Found...` codes, with the number of input bytes consumed in `consumed`. The
    /// connection's receive loop uses this to avoid copying the decoder and an event through a
    /// returned tuple at every step.
    let internal advance (role: Role, allowRsv1: bool, decoder: byref<FrameDecoder>, input: ReadOnlySpan<byte>, consumed: byref<int>) : int =
        let phase = decoder.Phase
        if phase = ReadingHeader then
            if decoder.PendingCount = 0uy && input.Length >= 2 then
                readWholeHeader (role, allowRsv1, &decoder, input, &consumed)
            else
                readSplitHeader (role, allowRsv1, &decoder, input, &consumed)
        elif phase = ReadingPayload then
            let remaining = decoder.Remaining
            if remaining = 0L then
                decoder <- { decoder with Phase = ReadingHeader }
                consumed <- 0
                FoundPayload
            elif input.IsEmpty then
                consumed <- 0
                FoundNothing
            else
                let length = if remaining < int64 input.Length then int remaining else input.Length
                let left = remaining - int64 length
                decoder <- { decoder with Remaining = left; Phase = (if left > 0L then ReadingPayload else ReadingHeader) }
                consumed <- length
                FoundPayload
        else
            consumed <- 0
            FoundFailure

    /// `advance` with its finding made a `DecodeEvent`. Out of line (no inlining) so that `step`
    /// stays small enough to be inlined into its caller's loop.
    [<MethodImpl(MethodImplOptions.NoInlining)>]
    let private advanceToEvent (role: Role, allowRsv1: bool, decoder: byref<FrameDecoder>, input: ReadOnlySpan<byte>, consumed: byref<int>) : DecodeEvent =
        match advance (role, allowRsv1, &decoder, input, &consumed) with
        | FoundPayload -> Payload(consumed, decoder.ChunkOffset consumed, decoder.FrameComplete)
        | FoundHeader -> Header decoder.CurrentHeader
        | FoundFailure -> Failed(failure decoder)
        | _ -> NeedMore

    /// Decodes from the front of `input`: returns the next decoder, how many input bytes were
    /// consumed, and what was found. `allowRsv1` is true when permessage-deflate was negotiated.
    /// Call again with the unconsumed bytes until the event is `NeedMore` (or `Failed`).
    let step (role: Role, allowRsv1: bool, decoder: FrameDecoder, input: ReadOnlySpan<byte>) : struct (FrameDecoder * int * DecodeEvent) =
        let mutable next = decoder
        let mutable consumed = 0
        let event = advanceToEvent (role, allowRsv1, &next, input, &consumed)
        struct (next, consumed, event)

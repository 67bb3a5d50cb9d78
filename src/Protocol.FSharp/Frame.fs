namespace Realtime.Protocol

open System
open System.Buffers.Binary
open System.Text

/// Frame opcodes (RFC 6455 §5.2 and §11.8).
type Opcode =
    /// Continues a fragmented message.
    | Continuation = 0uy
    /// Starts a text message (UTF-8).
    | Text = 1uy
    /// Starts a binary message.
    | Binary = 2uy
    /// Starts or answers the closing handshake.
    | Close = 8uy
    /// Asks the peer for a pong.
    | Ping = 9uy
    /// Answers a ping, or a unidirectional heartbeat.
    | Pong = 10uy

/// The fields of a frame header (RFC 6455 §5.2). The payload is carried separately.
[<Struct>]
type FrameHeader =
    {
        /// The final fragment of a message.
        Fin: bool
        /// Reserved bit 1; permessage-deflate uses it to mark a compressed message (RFC 7692 §6).
        Rsv1: bool
        /// Reserved bit 2; no extension here defines it.
        Rsv2: bool
        /// Reserved bit 3; no extension here defines it.
        Rsv3: bool
        /// The opcode (any 4-bit value when decoding, so reserved ones can be reported).
        Opcode: Opcode
        /// Whether a mask key follows the length.
        Masked: bool
        /// The mask key, as read by `Masking.readKey` (0 when not masked).
        MaskKey: uint32
        /// The payload length in bytes.
        PayloadLength: int64
    }

/// A frame ready to be written: a small header and the payload it frames, never copied to be framed.
[<Struct>]
type EncodedFrame =
    {
        /// The header bytes (2 to 14).
        Header: byte[]
        /// The payload bytes (masked already when the header says masked).
        Payload: ReadOnlyMemory<byte>
    }

    /// The frame as one contiguous array (for tests and small control frames).
    member frame.ToArray() : byte[] =
        let bytes = Array.zeroCreate (frame.Header.Length + frame.Payload.Length)
        frame.Header.CopyTo(bytes, 0)
        frame.Payload.Span.CopyTo(bytes.AsSpan frame.Header.Length)
        bytes

/// Frame header encoding and the control frames the core itself produces.
module Frame =

    /// The longest header: 2 bytes, an 8-byte extended length, a 4-byte mask key.
    [<Literal>]
    let MaxHeaderSize = 14

    /// RFC 6455 §5.5: control frames carry at most 125 payload bytes.
    [<Literal>]
    let MaxControlPayload = 125

    /// RFC 6455 §5.5.1: a close reason fits in a control frame after the 2-byte code.
    [<Literal>]
    let MaxCloseReasonBytes = 123

    /// True for Close, Ping and Pong (opcodes with the high bit set, RFC 6455 §5.5).
    let isControl (opcode: Opcode) : bool = (byte opcode &&& 0x8uy) <> 0uy

    /// True for opcodes RFC 6455 defines; the others are reserved.
    let isKnownOpcode (opcode: Opcode) : bool =
        // One bit per known opcode (0, 1, 2, 8, 9, 10): a test the JIT inlines, where a match
        // over the cases is a call in the decoder's header path.
        let value = int (byte opcode)
        value < 16 && ((0x0707 >>> value) &&& 1) <> 0

    /// A header with FIN set, no reserved bits and no mask.
    let header (opcode: Opcode) (payloadLength: int64) : FrameHeader =
        { Fin = true; Rsv1 = false; Rsv2 = false; Rsv3 = false; Opcode = opcode; Masked = false; MaskKey = 0u; PayloadLength = payloadLength }

    /// A header with FIN and RSV1 set and no mask: a whole message compressed with
    /// permessage-deflate (RFC 7692 §6: RSV1 marks the first frame of a compressed message).
    let compressedHeader (opcode: Opcode) (payloadLength: int64) : FrameHeader =
        { header opcode payloadLength with Rsv1 = true }

    /// The encoded size of a header: RFC 6455 §5.2 requires the minimal length encoding.
    let headerSize (header: FrameHeader) : int =
        let lengthBytes =
            if header.PayloadLength <= 125L then 0
            elif header.PayloadLength <= 0xFFFFL then 2
            else 8
        2 + lengthBytes + (if header.Masked then 4 else 0)

    /// Writes the header into `destination` (at least `headerSize header` bytes) and returns how
    /// many bytes it wrote. Lengths use the minimal encoding; a negative length is written as 0.
    let writeHeader (header: FrameHeader, destination: Span<byte>) : int =
        let length = max 0L header.PayloadLength
        let first =
            (if header.Fin then 0x80uy else 0uy)
            ||| (if header.Rsv1 then 0x40uy else 0uy)
            ||| (if header.Rsv2 then 0x20uy else 0uy)
            ||| (if header.Rsv3 then 0x10uy else 0uy)
            ||| (byte header.Opcode &&& 0x0Fuy)
        let maskBit = if header.Masked then 0x80uy else 0uy
        destination[0] <- first
        let mutable position = 2
        if length <= 125L then
            destination[1] <- maskBit ||| byte length
        elif length <= 0xFFFFL then
            destination[1] <- maskBit ||| 126uy
            BinaryPrimitives.WriteUInt16BigEndian(destination.Slice 2, uint16 length)
            position <- 4
        else
            destination[1] <- maskBit ||| 127uy
            BinaryPrimitives.WriteUInt64BigEndian(destination.Slice 2, uint64 length)
            position <- 10
        if header.Masked then
            Masking.writeKey (header.MaskKey, destination.Slice position)
            position <- position + 4
        position

    /// The header as a new array.
    let encodeHeader (header: FrameHeader) : byte[] =
        let bytes = Array.zeroCreate (headerSize header)
        writeHeader (header, bytes.AsSpan()) |> ignore
        bytes

    /// Frames a payload: unmasked, the payload is referenced as it is; masked (a client's frame),
    /// it is masked into a new array, since the caller's bytes must stay as they are.
    let encode (header: FrameHeader) (payload: ReadOnlyMemory<byte>) : EncodedFrame =
        let header = { header with PayloadLength = int64 payload.Length }
        if header.Masked then
            let masked = Array.zeroCreate payload.Length
            Masking.apply (header.MaskKey, 0L, payload.Span, masked.AsSpan())
            { Header = encodeHeader header; Payload = ReadOnlyMemory masked }
        else
            { Header = encodeHeader header; Payload = payload }

    /// A whole unmasked control frame as one array (server to client).
    let control (opcode: Opcode) (payload: ReadOnlySpan<byte>) : byte[] =
        let header = header opcode (int64 payload.Length)
        let size = headerSize header
        let bytes = Array.zeroCreate (size + payload.Length)
        writeHeader (header, bytes.AsSpan()) |> ignore
        payload.CopyTo(bytes.AsSpan size)
        bytes

    /// RFC 6455 §5.5.1: the close payload is the 2-byte code then the UTF-8 reason. The reason is
    /// cut at a character boundary to fit the 123 bytes a control frame leaves for it.
    let closePayload (code: uint16) (reason: string) : byte[] =
        let reasonBytes = Encoding.UTF8.GetBytes(if isNull reason then "" else reason)
        let mutable reasonLength = min reasonBytes.Length MaxCloseReasonBytes
        // Never cut inside a multi-byte sequence: back off over continuation bytes.
        while reasonLength < reasonBytes.Length && reasonLength > 0 && (reasonBytes[reasonLength] &&& 0xC0uy) = 0x80uy do
            reasonLength <- reasonLength - 1
        let payload = Array.zeroCreate (2 + reasonLength)
        BinaryPrimitives.WriteUInt16BigEndian(payload.AsSpan(), code)
        Array.blit reasonBytes 0 payload 2 reasonLength
        payload

    /// A whole unmasked close frame with a code and reason.
    let close (code: uint16) (reason: string) : byte[] = control Opcode.Close (ReadOnlySpan(closePayload code reason))

    /// A whole unmasked close frame with no code (reported to the peer as 1005).
    let closeWithoutCode () : byte[] = control Opcode.Close ReadOnlySpan.Empty

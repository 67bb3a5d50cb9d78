namespace Realtime.Protocol

/// Why the peer's bytes broke RFC 6455 (or a configured limit). Each case knows the close code
/// the connection is failed with (RFC 6455 §7.4.1) and a stable code string for logs and metrics.
[<Struct>]
type ProtocolError =
    /// RFC 6455 §5.1: a client must mask every frame it sends to the server.
    | UnmaskedFrame
    /// RFC 6455 §5.1: a server must not mask frames it sends to the client.
    | MaskedFrame
    /// RFC 6455 §5.2: RSV2 or RSV3 set, or RSV1 set with no extension that defines it.
    | ReservedBitsSet
    /// RFC 7692 §6.1: RSV1 (compressed) set on a control frame or a continuation frame.
    | CompressedBitMisplaced
    /// RFC 6455 §5.2: opcodes 3-7 and 11-15 are reserved.
    | ReservedOpcode of opcode: byte
    /// RFC 6455 §5.5: a control frame's payload is at most 125 bytes.
    | ControlFrameTooLong
    /// RFC 6455 §5.5: control frames must not be fragmented.
    | FragmentedControlFrame
    /// RFC 6455 §5.4: a continuation frame arrived with no fragmented message in progress.
    | UnexpectedContinuation
    /// RFC 6455 §5.4: a new text or binary frame arrived inside a fragmented message.
    | ExpectedContinuation
    /// RFC 6455 §5.5.1: a close payload is empty or at least two bytes long.
    | InvalidClosePayload
    /// RFC 6455 §7.4: the close frame carried a code that must not be sent.
    | InvalidCloseCode of closeCode: uint16
    /// RFC 6455 §8.1: a text message or a close reason is not valid UTF-8.
    | InvalidUtf8
    /// RFC 6455 §10.4: the message is larger than the configured maximum (for a compressed
    /// message, once inflated: RFC 7692 §8.1 warns of messages that expand enormously).
    | MessageTooBig of limit: int64
    /// RFC 7692 §7.2.2: a compressed message is not valid DEFLATE data.
    | InvalidCompressedData

    /// The close code the connection is failed with.
    member error.CloseCode: uint16 =
        match error with
        | InvalidUtf8
        | InvalidCompressedData -> CloseCode.InvalidPayload
        | MessageTooBig _ -> CloseCode.MessageTooBig
        | _ -> CloseCode.ProtocolError

    /// A stable, machine-readable name for logs, metrics and tests.
    member error.Code: string =
        match error with
        | UnmaskedFrame -> "unmasked-frame"
        | MaskedFrame -> "masked-frame"
        | ReservedBitsSet -> "reserved-bits"
        | CompressedBitMisplaced -> "compressed-bit-misplaced"
        | ReservedOpcode _ -> "reserved-opcode"
        | ControlFrameTooLong -> "control-frame-too-long"
        | FragmentedControlFrame -> "fragmented-control-frame"
        | UnexpectedContinuation -> "unexpected-continuation"
        | ExpectedContinuation -> "expected-continuation"
        | InvalidClosePayload -> "invalid-close-payload"
        | InvalidCloseCode _ -> "invalid-close-code"
        | InvalidUtf8 -> "invalid-utf8"
        | MessageTooBig _ -> "message-too-big"
        | InvalidCompressedData -> "invalid-compressed-data"

    /// A short human-readable explanation, also used as the close frame's reason.
    member error.Message: string =
        match error with
        | UnmaskedFrame -> "client frames must be masked"
        | MaskedFrame -> "server frames must not be masked"
        | ReservedBitsSet -> "reserved bits set without a negotiated extension"
        | CompressedBitMisplaced -> "compressed bit on a control or continuation frame"
        | ReservedOpcode opcode -> sprintf "reserved opcode %d" opcode
        | ControlFrameTooLong -> "control frame payload over 125 bytes"
        | FragmentedControlFrame -> "fragmented control frame"
        | UnexpectedContinuation -> "continuation frame without a message in progress"
        | ExpectedContinuation -> "new message inside a fragmented message"
        | InvalidClosePayload -> "close payload of one byte"
        | InvalidCloseCode code -> sprintf "invalid close code %d" code
        | InvalidUtf8 -> "invalid UTF-8"
        | MessageTooBig limit -> sprintf "message over %d bytes" limit
        | InvalidCompressedData -> "invalid compressed data"

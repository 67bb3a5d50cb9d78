/// The envelope a topic publish travels in between the servers of one cluster (scale-out through
/// a backplane such as Redis pub/sub): the topic, the message (kind, payload, compress flag) and
/// who sent it (the origin server's node id and the publishing connection's id), as compact bytes.
///
/// Layout, version 1 (integers marked varint are unsigned LEB128: 7 bits a byte, low bits first):
///
///     offset 0   version            1 byte, 1
///     offset 1   kind               1 byte, 1 = text, 2 = binary (the opcodes)
///     offset 2   flags              1 byte, bit 0 = compress; the other bits are 0
///     offset 3   sender connection  varint (0 for a server-wide publish)
///                node id length     varint, then the node id's UTF-8 bytes
///                topic length       varint, then the topic's UTF-8 bytes
///                payload length     varint, then the payload (a text payload is valid UTF-8)
///
/// Nothing follows the payload, so every truncation is detected. `decode` never throws: anything it cannot read comes back as an EnvelopeError with a stable code.
module Realtime.Protocol.BackplaneEnvelope

open System
open System.Text

/// The format version `encode` writes and the only one `decode` reads.
[<Literal>]
let CurrentVersion = 1uy

/// A publish crossing from one server to the others.
type Envelope =
    {
        /// The topic published to.
        Topic: string
        /// Text or binary.
        Kind: MessageKind
        /// The message's bytes (uncompressed); after `decode`, a slice of the decoded bytes.
        Payload: ReadOnlyMemory<byte>
        /// The publisher asked for permessage-deflate where the recipients negotiated it.
        Compress: bool
        /// The origin server's node id: a server ignores the envelopes it sent itself.
        NodeId: string
        /// The publishing connection's id on the origin server (0 for a server-wide publish).
        SenderConnectionId: int64
    }

/// Why bytes are not a readable envelope.
type EnvelopeError =
    /// The bytes end before the envelope does (or there are none).
    | Truncated
    /// The first byte names a version this code does not read.
    | UnknownVersion of version: byte
    /// The kind byte is neither text (1) nor binary (2).
    | BadKind of kind: byte
    /// A reserved flag bit is set.
    | BadFlags of flags: byte
    /// A varint runs past 64 bits.
    | BadLength
    /// The node id, the topic or a text payload is not valid UTF-8; carries which.
    | BadUtf8 of field: string
    /// Bytes follow the payload.
    | TrailingBytes

    /// A stable code: "truncated", "unknown-version", "bad-kind", "bad-flags", "bad-length", "bad-utf8",
    /// "trailing-bytes".
    member e.Code: string =
        match e with
        | Truncated -> "truncated"
        | UnknownVersion _ -> "unknown-version"
        | BadKind _ -> "bad-kind"
        | BadFlags _ -> "bad-flags"
        | BadLength -> "bad-length"
        | BadUtf8 _ -> "bad-utf8"
        | TrailingBytes -> "trailing-bytes"

let private compressFlag = 1uy

let private utf8 (text: string) : byte[] =
    if isNull text then Array.empty else Encoding.UTF8.GetBytes text

/// Encodes an envelope from its parts into a new array (the payload is copied once, into it).
/// Never fails: a null node id or topic is written as empty, a lone surrogate as U+FFFD.
let encodeParts (topic: string, kind: MessageKind, payload: ReadOnlySpan<byte>, compress: bool, nodeId: string, senderConnectionId: int64) : byte[] =
    let node = utf8 nodeId
    let topicBytes = utf8 topic
    let sender = uint64 senderConnectionId
    let size =
        3
        + Varint.size sender
        + Varint.size (uint64 node.Length) + node.Length
        + Varint.size (uint64 topicBytes.Length) + topicBytes.Length
        + Varint.size (uint64 payload.Length) + payload.Length
    let bytes = Array.zeroCreate<byte> size
    let span = Span bytes
    span[0] <- CurrentVersion
    span[1] <- byte kind
    span[2] <- if compress then compressFlag else 0uy
    let mutable at = 3
    at <- at + Varint.write (sender, span.Slice at)
    at <- at + Varint.write (uint64 node.Length, span.Slice at)
    node.CopyTo(span.Slice at)
    at <- at + node.Length
    at <- at + Varint.write (uint64 topicBytes.Length, span.Slice at)
    topicBytes.CopyTo(span.Slice at)
    at <- at + topicBytes.Length
    at <- at + Varint.write (uint64 payload.Length, span.Slice at)
    payload.CopyTo(span.Slice at)
    bytes

/// Encodes an envelope into a new array.
let encode (envelope: Envelope) : byte[] =
    encodeParts (envelope.Topic, envelope.Kind, envelope.Payload.Span, envelope.Compress, envelope.NodeId, envelope.SenderConnectionId)

/// Reads a varint at `at`: the value and the offset after it, or an error.
let private readVarint (bytes: ReadOnlySpan<byte>, at: int) : Result<struct (uint64 * int), EnvelopeError> =
    match Varint.read (bytes, at) with
    | Varint.Read(value, next) -> Ok(struct (value, next))
    | Varint.Truncated -> Error Truncated
    | Varint.TooLong -> Error BadLength

/// Reads a varint length at `at` and checks that many bytes follow: the start and the length, or an error.
let private readLength (bytes: ReadOnlySpan<byte>, at: int) : Result<struct (int * int), EnvelopeError> =
    match readVarint (bytes, at) with
    | Error e -> Error e
    | Ok(struct (length, start)) ->
        if length > uint64 (bytes.Length - start) then Error Truncated
        else Ok(struct (start, int length))

/// Reads a length-prefixed UTF-8 string at `at`: the text and the offset after it, or an error.
let private readText (bytes: ReadOnlySpan<byte>, at: int, field: string) : Result<struct (string * int), EnvelopeError> =
    match readLength (bytes, at) with
    | Error e -> Error e
    | Ok(struct (start, length)) ->
        let text = bytes.Slice(start, length)
        if not (Utf8Validator.isValid text) then Error(BadUtf8 field)
        else Ok(struct (Encoding.UTF8.GetString text, start + length))

/// Reads an envelope; the payload is a slice of `bytes`, not a copy. Never throws.
let decode (bytes: ReadOnlyMemory<byte>) : Result<Envelope, EnvelopeError> =
    let span = bytes.Span
    if span.Length < 1 then Error Truncated
    elif span[0] <> CurrentVersion then Error(UnknownVersion span[0])
    elif span.Length < 3 then Error Truncated
    elif span[1] <> byte MessageKind.Text && span[1] <> byte MessageKind.Binary then Error(BadKind span[1])
    elif span[2] &&& ~~~compressFlag <> 0uy then Error(BadFlags span[2])
    else
        let kind: MessageKind = LanguagePrimitives.EnumOfValue(int span[1])
        match readVarint (span, 3) with
        | Error e -> Error e
        | Ok(struct (sender, afterSender)) ->
            match readText (span, afterSender, "node id") with
            | Error e -> Error e
            | Ok(struct (nodeId, afterNode)) ->
                match readText (span, afterNode, "topic") with
                | Error e -> Error e
                | Ok(struct (topic, afterTopic)) ->
                    match readLength (span, afterTopic) with
                    | Error e -> Error e
                    | Ok(struct (start, length)) ->
                        let payload = bytes.Slice(start, length)
                        if start + length <> span.Length then Error TrailingBytes
                        elif kind = MessageKind.Text && not (Utf8Validator.isValid payload.Span) then Error(BadUtf8 "payload")
                        else
                            Ok
                                { Topic = topic
                                  Kind = kind
                                  Payload = payload
                                  Compress = span[2] &&& compressFlag <> 0uy
                                  NodeId = nodeId
                                  SenderConnectionId = int64 sender }

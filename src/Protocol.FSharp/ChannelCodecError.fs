namespace Realtime.Protocol

/// Why bytes are not a channels protocol message (docs/channels-protocol.md), in either form. The
/// decoders never throw: anything they cannot read comes back as one of these, with a stable code.
[<RequireQualifiedAccess>]
type ChannelCodecError =
    /// The JSON form is not one well-formed JSON value (or nests deeper than the decoder reads); in
    /// the binary form, `data` or `info` is not one JSON value. Carries the field ("message" for the whole).
    | InvalidJson of field: string
    /// Bytes that must be UTF-8 are not; carries the field ("message" for the whole JSON form).
    | InvalidUtf8 of field: string
    /// The message's `type` (JSON) or kind byte (binary) names no message kind of this direction.
    | UnknownType
    /// A required field is absent.
    | MissingField of field: string
    /// A known field appears twice in one object.
    | DuplicateField of field: string
    /// A field has the wrong JSON type (a string where a number belongs, ...); "message" when the
    /// JSON form is not an object.
    | WrongType of field: string
    /// A field's value is outside its range: an id outside 1 .. 2^32-1 (0 allowed where the contract
    /// says so), a channel outside 1..256 UTF-8 bytes, a key outside 1..64 bytes, a negative or
    /// fractional number, an unknown recovery or error code.
    | OutOfRange of field: string
    /// The binary form ends before the message does (or there are no bytes).
    | Truncated
    /// A varint of the binary form runs past 64 bits.
    | BadVarint
    /// A reserved flag bit of a binary subscribe is set.
    | BadFlags of flags: byte
    /// Bytes follow the message (anything but JSON whitespace after the JSON form's object).
    | TrailingBytes

    /// A stable code: "invalid-json", "invalid-utf8", "unknown-type", "missing-field",
    /// "duplicate-field", "wrong-type", "out-of-range", "truncated", "bad-varint", "bad-flags",
    /// "trailing-bytes".
    member e.Code: string =
        match e with
        | InvalidJson _ -> "invalid-json"
        | InvalidUtf8 _ -> "invalid-utf8"
        | UnknownType -> "unknown-type"
        | MissingField _ -> "missing-field"
        | DuplicateField _ -> "duplicate-field"
        | WrongType _ -> "wrong-type"
        | OutOfRange _ -> "out-of-range"
        | Truncated -> "truncated"
        | BadVarint -> "bad-varint"
        | BadFlags _ -> "bad-flags"
        | TrailingBytes -> "trailing-bytes"

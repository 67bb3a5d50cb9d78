/// The channels protocol's JSON form (docs/channels-protocol.md, subprotocol
/// `realtime.channels.v1.json`): one JSON object per text frame. Encoding writes the exact size
/// once, into a new array or an `IBufferWriter<byte>`; `data` and `info` are written as they are,
/// byte for byte. Decoding reads with `Utf8JsonReader` and keeps `data` and `info` as slices of the
/// input. Neither throws: a decoder answers a `ChannelCodecError` for anything it cannot read.
///
/// The encoders write what they are given: a message outside the contract's ranges (an id of 0
/// where a request id belongs, a 300-byte channel name) is written, and refused by the decoder.
/// Empty data is written as `null`; a lone surrogate in a string as U+FFFD.
module Realtime.Protocol.ChannelJson

open System
open System.Buffers
open System.Buffers.Text
open System.Text
open System.Text.Json
open Microsoft.FSharp.Core.CompilerServices

/// The deepest nesting of arrays and objects a `data` or `info` value may have.
[<Literal>]
let MaxDataDepth = 64

/// The most UTF-8 bytes a channel name has (and at least one).
[<Literal>]
let MaxChannelBytes = 256

/// The most UTF-8 bytes a publish key has (and at least one).
[<Literal>]
let MaxKeyBytes = 64

// ---------------------------------------------------------------------------------------------
// Writing. Each writer takes a destination and an offset and returns the offset after what it
// wrote; given an empty destination it only counts, so one function gives both a message's size
// and its bytes.

// What empty data is written as (shared with the binary form, as are the error codes and recoveries by number).
let internal nullJson = "null"B

let private put (literal: byte[], destination: Span<byte>, at: int) : int =
    if not destination.IsEmpty then literal.AsSpan().CopyTo(destination.Slice at)
    at + literal.Length

let private putRaw (bytes: ReadOnlySpan<byte>, destination: Span<byte>, at: int) : int =
    if not destination.IsEmpty then bytes.CopyTo(destination.Slice at)
    at + bytes.Length

let private putData (data: ReadOnlySpan<byte>, destination: Span<byte>, at: int) : int =
    if data.IsEmpty then put (nullJson, destination, at) else putRaw (data, destination, at)

let private digits (value: uint64) : int =
    let mutable count = 1
    let mutable rest = value / 10UL
    while rest <> 0UL do
        count <- count + 1
        rest <- rest / 10UL
    count

let private putUInt (value: uint64, destination: Span<byte>, at: int) : int =
    if destination.IsEmpty then
        at + digits value
    else
        let mutable written = 0
        Utf8Formatter.TryFormat(value, destination.Slice at, &written) |> ignore
        at + written

let private putInt (value: int, destination: Span<byte>, at: int) : int =
    if value >= 0 then
        putUInt (uint64 value, destination, at)
    else
        if not destination.IsEmpty then destination[at] <- byte '-'
        putUInt (uint64 (-(int64 value)), destination, at + 1)

/// The escape a character needs inside a JSON string (RFC 8259 §7: the quotation mark, the reverse
/// solidus and the control characters U+0000 to U+001F): its length, 0 for none.
let inline private escapeLength (c: char) : int =
    if c = '"' || c = '\\' then 2
    elif c < ' ' then
        match c with
        | '\b'
        | '\f'
        | '\n'
        | '\r'
        | '\t' -> 2
        | _ -> 6
    else 0

let private hex = "0123456789abcdef"B

let private putEscape (c: char, destination: Span<byte>, at: int) : int =
    let length = escapeLength c
    if not destination.IsEmpty then
        destination[at] <- byte '\\'
        match c with
        | '"' -> destination[at + 1] <- byte '"'
        | '\\' -> destination[at + 1] <- byte '\\'
        | '\b' -> destination[at + 1] <- byte 'b'
        | '\f' -> destination[at + 1] <- byte 'f'
        | '\n' -> destination[at + 1] <- byte 'n'
        | '\r' -> destination[at + 1] <- byte 'r'
        | '\t' -> destination[at + 1] <- byte 't'
        | _ ->
            destination[at + 1] <- byte 'u'
            destination[at + 2] <- byte '0'
            destination[at + 3] <- byte '0'
            destination[at + 4] <- hex[int c >>> 4]
            destination[at + 5] <- hex[int c &&& 0xF]
    at + length

let private putText (text: ReadOnlySpan<char>, destination: Span<byte>, at: int) : int =
    if destination.IsEmpty then at + Encoding.UTF8.GetByteCount text
    else at + Encoding.UTF8.GetBytes(text, destination.Slice at)

// The characters a JSON string escapes: the quotation mark, the reverse solidus, U+0000 to U+001F.
let private mustEscape = SearchValues.Create(("\"\\" + String(Array.init 0x20 char)).AsSpan())

/// A JSON string, quotes included: runs without escapes (found vectorized) go through the UTF-8
/// encoder in one piece (escapes are ASCII, so a run never splits a surrogate pair).
let private putString (text: string, destination: Span<byte>, at: int) : int =
    let text = if isNull text then "" else text
    let mutable at = at
    if not destination.IsEmpty then destination[at] <- byte '"'
    at <- at + 1
    let mutable rest = text.AsSpan()
    let mutable next = rest.IndexOfAny mustEscape
    while next >= 0 do
        at <- putText (rest.Slice(0, next), destination, at)
        at <- putEscape (rest[next], destination, at)
        rest <- rest.Slice(next + 1)
        next <- rest.IndexOfAny mustEscape
    at <- putText (rest, destination, at)
    if not destination.IsEmpty then destination[at] <- byte '"'
    at + 1

/// At least the size of a JSON string of `text` (each UTF-16 unit takes at most six bytes: \u001f).
let private stringBound (text: string) : int = if isNull text then 2 else 2 + 6 * text.Length

let private ofType = "{\"type\":\""B
let private idField = "\",\"id\":"B
let private idFieldAfterNumber = ",\"id\":"B
let private channelField = ",\"channel\":"B
let private channelFirstField = "\",\"channel\":"B
let private sinceField = ",\"since\":{\"epoch\":"B
let private presenceTrue = ",\"presence\":true"B
let private keyField = ",\"key\":"B
let private dataField = ",\"data\":"B
let private methodField = ",\"method\":"B
let private versionField = "\",\"version\":"B
let private clientField = ",\"client\":"B
let private epochField = ",\"epoch\":"B
let private offsetField = ",\"offset\":"B
let private recoveryField = ",\"recovery\":\""B
let private membersField = ",\"members\":["B
let private memberField = ",\"member\":"B
let private memberClient = "{\"client\":"B
let private infoField = ",\"info\":"B
let private codeField = ",\"code\":"B
let private messageField = ",\"message\":"B
let private comma = ","B
let private closeObject = "}"B
let private closeQuote = "\""B
let private closeArrayAndObject = "]}"B

let private subscribeType = "subscribe"B
let private unsubscribeType = "unsubscribe"B
let private publishType = "publish"B
let private presenceType = "presence"B
let private requestType = "request"B
let private welcomeType = "welcome"B
let private subscribedType = "subscribed"B
let private unsubscribedType = "unsubscribed"B
let private pubType = "pub"B
let private ackType = "ack"B
let private joinType = "join"B
let private leaveType = "leave"B
let private responseType = "response"B
let private errorType = "error"B

let private freshName = "fresh"B
let private recoveredName = "recovered"B
let private notRecoveredName = "not-recovered"B

let private recoveryName (recovery: Recovery) =
    match recovery with
    | Recovery.Fresh -> freshName
    | Recovery.Recovered -> recoveredName
    | Recovery.NotRecovered -> notRecoveredName

/// `{"type":"<kind>","id":<id>` (the start every reply and request shares).
let private putStartWithId (kind: byte[], id: uint32, destination: Span<byte>, at: int) : int =
    let at = put (ofType, destination, at)
    let at = put (kind, destination, at)
    let at = put (idField, destination, at)
    putUInt (uint64 id, destination, at)

let private putPosition (position: ChannelPosition, destination: Span<byte>, at: int) : int =
    let at = put (epochField, destination, at)
    let at = putString (position.Epoch, destination, at)
    let at = put (offsetField, destination, at)
    putUInt (position.Offset, destination, at)

let private putMember (memberInfo: PresenceMember, destination: Span<byte>, at: int) : int =
    let at = put (memberClient, destination, at)
    let at = putString (memberInfo.Client, destination, at)
    let at = put (infoField, destination, at)
    let at = putData (memberInfo.Info.Json.Span, destination, at)
    put (closeObject, destination, at)

let private putPublication (channel: string, position: ChannelPosition, data: ReadOnlySpan<byte>, destination: Span<byte>) : int =
    let at = put (ofType, destination, 0)
    let at = put (pubType, destination, at)
    let at = put (channelFirstField, destination, at)
    let at = putString (channel, destination, at)
    let at = putPosition (position, destination, at)
    let at = put (dataField, destination, at)
    let at = putData (data, destination, at)
    put (closeObject, destination, at)

let private putServer (message: ServerMessage, destination: Span<byte>) : int =
    match message with
    | ServerMessage.Publication(channel, position, data) -> putPublication (channel, position, data.Json.Span, destination)
    | ServerMessage.Welcome(version, client) ->
        let at = put (ofType, destination, 0)
        let at = put (welcomeType, destination, at)
        let at = put (versionField, destination, at)
        let at = putInt (version, destination, at)
        let at = put (clientField, destination, at)
        let at = putString (client, destination, at)
        put (closeObject, destination, at)
    | ServerMessage.Subscribed(id, channel, position, recovery) ->
        let at = putStartWithId (subscribedType, id, destination, 0)
        let at = put (channelField, destination, at)
        let at = putString (channel, destination, at)
        let at = putPosition (position, destination, at)
        let at = put (recoveryField, destination, at)
        let at = put (recoveryName recovery, destination, at)
        let at = put (closeQuote, destination, at)
        put (closeObject, destination, at)
    | ServerMessage.Unsubscribed(id, channel) ->
        let at = putStartWithId (unsubscribedType, id, destination, 0)
        let at = put (channelField, destination, at)
        let at = putString (channel, destination, at)
        put (closeObject, destination, at)
    | ServerMessage.Ack(id, channel, position) ->
        let at = putStartWithId (ackType, id, destination, 0)
        let at = put (channelField, destination, at)
        let at = putString (channel, destination, at)
        let at = putPosition (position, destination, at)
        put (closeObject, destination, at)
    | ServerMessage.Presence(id, channel, members) ->
        let mutable at = putStartWithId (presenceType, id, destination, 0)
        at <- put (channelField, destination, at)
        at <- putString (channel, destination, at)
        at <- put (membersField, destination, at)
        let mutable first = true
        for memberInfo in members do
            if not first then at <- put (comma, destination, at)
            first <- false
            at <- putMember (memberInfo, destination, at)
        put (closeArrayAndObject, destination, at)
    | ServerMessage.Join(channel, memberInfo)
    | ServerMessage.Leave(channel, memberInfo) ->
        let kind = if message.IsJoin then joinType else leaveType
        let at = put (ofType, destination, 0)
        let at = put (kind, destination, at)
        let at = put (channelFirstField, destination, at)
        let at = putString (channel, destination, at)
        let at = put (memberField, destination, at)
        let at = putMember (memberInfo, destination, at)
        put (closeObject, destination, at)
    | ServerMessage.Response(id, data) ->
        let at = putStartWithId (responseType, id, destination, 0)
        let at = put (dataField, destination, at)
        let at = putData (data.Json.Span, destination, at)
        put (closeObject, destination, at)
    | ServerMessage.Error(id, code, text) ->
        let at = putStartWithId (errorType, id, destination, 0)
        let at = put (codeField, destination, at)
        let at = putString (code.Code, destination, at)
        let at = put (messageField, destination, at)
        let at = putString (text, destination, at)
        put (closeObject, destination, at)

let private putClient (message: ClientMessage, destination: Span<byte>) : int =
    match message with
    | ClientMessage.Subscribe(id, channel, since, presence) ->
        let mutable at = putStartWithId (subscribeType, id, destination, 0)
        at <- put (channelField, destination, at)
        at <- putString (channel, destination, at)
        match since with
        | ValueSome position ->
            at <- put (sinceField, destination, at)
            at <- putString (position.Epoch, destination, at)
            at <- put (offsetField, destination, at)
            at <- putUInt (position.Offset, destination, at)
            at <- put (closeObject, destination, at)
        | ValueNone -> ()
        if presence then at <- put (presenceTrue, destination, at)
        put (closeObject, destination, at)
    | ClientMessage.Unsubscribe(id, channel)
    | ClientMessage.PresenceQuery(id, channel) ->
        let kind = if message.IsUnsubscribe then unsubscribeType else presenceType
        let at = putStartWithId (kind, id, destination, 0)
        let at = put (channelField, destination, at)
        let at = putString (channel, destination, at)
        put (closeObject, destination, at)
    | ClientMessage.Publish(id, channel, key, data) ->
        let at = putStartWithId (publishType, id, destination, 0)
        let at = put (channelField, destination, at)
        let at = putString (channel, destination, at)
        let at = put (keyField, destination, at)
        let at = putString (key, destination, at)
        let at = put (dataField, destination, at)
        let at = putData (data.Json.Span, destination, at)
        put (closeObject, destination, at)
    | ClientMessage.Request(id, method, data) ->
        let at = putStartWithId (requestType, id, destination, 0)
        let at = put (methodField, destination, at)
        let at = putString (method, destination, at)
        let at = put (dataField, destination, at)
        let at = putData (data.Json.Span, destination, at)
        put (closeObject, destination, at)

/// The size of a `pub` message from its parts, in bytes.
let publicationSize (channel: string, position: ChannelPosition, data: ReadOnlySpan<byte>) : int =
    putPublication (channel, position, data, Span.Empty)

/// Writes a `pub` message from its parts at the start of `destination` (at least `publicationSize`
/// bytes long) without building a `ServerMessage`; returns the bytes written.
let writePublication (channel: string, position: ChannelPosition, data: ReadOnlySpan<byte>, destination: Span<byte>) : int =
    // Room for the largest encoding of these parts skips counting the exact size first.
    let bound = 64 + stringBound channel + stringBound position.Epoch + 20 + max data.Length 4
    if destination.Length < bound && destination.Length < publicationSize (channel, position, data) then 0
    else putPublication (channel, position, data, destination)

/// A `pub` message from its parts, in a new array.
let encodePublication (channel: string, position: ChannelPosition, data: ReadOnlySpan<byte>) : byte[] =
    let bytes = Array.zeroCreate (publicationSize (channel, position, data))
    putPublication (channel, position, data, Span bytes) |> ignore
    bytes

/// The size of a server message's JSON form, in bytes.
let serverSize (message: ServerMessage) : int = putServer (message, Span.Empty)

/// A server message's JSON form, in a new array.
let encodeServer (message: ServerMessage) : byte[] =
    let bytes = Array.zeroCreate (serverSize message)
    putServer (message, Span bytes) |> ignore
    bytes

/// Appends a server message's JSON form to `writer`.
let writeServer (message: ServerMessage, writer: IBufferWriter<byte>) : unit =
    let size = serverSize message
    putServer (message, writer.GetSpan size) |> ignore
    writer.Advance size

/// The size of a client message's JSON form, in bytes.
let clientSize (message: ClientMessage) : int = putClient (message, Span.Empty)

/// A client message's JSON form, in a new array.
let encodeClient (message: ClientMessage) : byte[] =
    let bytes = Array.zeroCreate (clientSize message)
    putClient (message, Span bytes) |> ignore
    bytes

/// Appends a client message's JSON form to `writer`.
let writeClient (message: ClientMessage, writer: IBufferWriter<byte>) : unit =
    let size = clientSize message
    putClient (message, writer.GetSpan size) |> ignore
    writer.Advance size

// ---------------------------------------------------------------------------------------------
// Reading. One pass over the object: every known field is read (and checked) where it stands,
// whatever its order; then the message kind named by `type` takes the fields it needs.

// Deep enough for a data value of MaxDataDepth inside the deepest place data goes (info inside a
// member inside `members` inside the message); deeper values are refused as invalid JSON.
let private readerOptions = JsonReaderOptions(MaxDepth = MaxDataDepth + 4)

// Field numbers (bits of Fields.Seen).
[<Literal>]
let private TypeField = 0
[<Literal>]
let private IdField = 1
[<Literal>]
let private ChannelField = 2
[<Literal>]
let private SinceField = 3
[<Literal>]
let private PresenceField = 4
[<Literal>]
let private KeyField = 5
[<Literal>]
let private DataField = 6
[<Literal>]
let private MethodField = 7
[<Literal>]
let private VersionField = 8
[<Literal>]
let private ClientField = 9
[<Literal>]
let private EpochField = 10
[<Literal>]
let private OffsetField = 11
[<Literal>]
let private RecoveryField = 12
[<Literal>]
let private MembersField = 13
[<Literal>]
let private MemberField = 14
[<Literal>]
let private CodeField = 15
[<Literal>]
let private MessageField = 16

let private fieldNames =
    [| "type"; "id"; "channel"; "since"; "presence"; "key"; "data"; "method"; "version"; "client"; "epoch"; "offset"
       "recovery"; "members"; "member"; "code"; "message" |]

let private fieldBytes = fieldNames |> Array.map Encoding.UTF8.GetBytes

let private bits (fields: int list) = fields |> List.fold (fun mask field -> mask ||| (1 <<< field)) 0

// The fields each direction knows, as a mask of field numbers.
let private clientFields = bits [ TypeField; IdField; ChannelField; SinceField; PresenceField; KeyField; DataField; MethodField ]

let private serverFields =
    bits
        [ TypeField; IdField; ChannelField; DataField; VersionField; ClientField; EpochField; OffsetField; RecoveryField
          MembersField; MemberField; CodeField; MessageField ]

/// The one field a name could be, from its length and a letter or two (the names differ there).
let private candidate (name: ReadOnlySpan<byte>) : int =
    match name.Length with
    | 2 -> IdField
    | 3 -> KeyField
    | 4 ->
        match name[0] with
        | 't'B -> TypeField
        | 'd'B -> DataField
        | _ -> CodeField
    | 5 -> if name[0] = 's'B then SinceField else EpochField
    | 6 ->
        match name[0] with
        | 'c'B -> ClientField
        | 'o'B -> OffsetField
        | _ -> if name[2] = 't'B then MethodField else MemberField
    | 7 ->
        match name[0] with
        | 'c'B -> ChannelField
        | 'v'B -> VersionField
        | _ -> if name[2] = 'm'B then MembersField else MessageField
    | 8 -> if name[0] = 'p'B then PresenceField else RecoveryField
    | _ -> -1

/// The number of the field whose name the reader is on, if it is among `known`; else -1.
let private fieldOf (reader: byref<Utf8JsonReader>, known: int) : int =
    let field =
        if reader.ValueIsEscaped then
            let mutable i = 0
            while i < fieldBytes.Length && not (reader.ValueTextEquals(fieldBytes[i])) do
                i <- i + 1
            if i < fieldBytes.Length then i else -1
        else
            let name = reader.ValueSpan
            let field = candidate name
            if field >= 0 && name.SequenceEqual(ReadOnlySpan fieldBytes[field]) then field else -1
    if field >= 0 && known &&& (1 <<< field) <> 0 then field else -1

let private clientTypes = [| subscribeType; unsubscribeType; publishType; presenceType; requestType |]
let private clientKinds =
    [| ChannelKind.Subscribe; ChannelKind.Unsubscribe; ChannelKind.Publish; ChannelKind.PresenceQuery; ChannelKind.Request |]

let private serverTypes =
    [| welcomeType; subscribedType; unsubscribedType; pubType; ackType; presenceType; joinType; leaveType; responseType; errorType |]

let private serverKinds =
    [| ChannelKind.Welcome; ChannelKind.Subscribed; ChannelKind.Unsubscribed; ChannelKind.Publication; ChannelKind.Ack
       ChannelKind.Presence; ChannelKind.Join; ChannelKind.Leave; ChannelKind.Response; ChannelKind.Error |]

let internal errorCodes =
    [| ChannelErrorCode.BadMessage; ChannelErrorCode.Forbidden; ChannelErrorCode.UnknownChannel
       ChannelErrorCode.NotSubscribed; ChannelErrorCode.TooLarge; ChannelErrorCode.RateLimited
       ChannelErrorCode.UnknownMethod; ChannelErrorCode.Internal; ChannelErrorCode.TooManyChannels |]

let internal errorCodeBytes = errorCodes |> Array.map (fun c -> Encoding.UTF8.GetBytes c.Code)

/// What one pass found: the fields read so far, by number (see Seen).
[<Struct; NoEquality; NoComparison>]
type private Fields =
    val mutable Seen: int
    val mutable Kind: byte
    val mutable Id: uint64
    val mutable Channel: string
    val mutable Since: ChannelPosition voption
    val mutable Presence: bool
    val mutable Key: string
    val mutable DataStart: int
    val mutable DataLength: int
    val mutable Method: string
    val mutable Version: uint64
    val mutable Client: string
    val mutable Epoch: string
    val mutable Offset: uint64
    val mutable Recovery: Recovery
    val mutable Members: PresenceMember list
    val mutable Member: PresenceMember
    val mutable Code: ChannelErrorCode
    val mutable Message: string

// A function of the mask, not a member: a member called on an inref struct copies the whole struct.
let inline private has (seen: int, field: int) = seen &&& (1 <<< field) <> 0

type private Found = ChannelCodecError voption

let private hasLoneSurrogate (text: string) : bool =
    let mutable lone = false
    let mutable i = 0
    while not lone && i < text.Length do
        let c = text[i]
        if Char.IsHighSurrogate c then
            if i + 1 < text.Length && Char.IsLowSurrogate text[i + 1] then i <- i + 2
            else lone <- true
        elif Char.IsLowSurrogate c then lone <- true
        else i <- i + 1
    lone

/// A string value of `minBytes` to `maxBytes` UTF-8 bytes (after unescaping).
let private readString (reader: byref<Utf8JsonReader>, field: string, minBytes: int, maxBytes: int, value: byref<string>) : Found =
    if reader.TokenType <> JsonTokenType.String then
        ValueSome(ChannelCodecError.WrongType field)
    else
        // An escaped lone surrogate (\ud800) is not a character: GetString refuses it or keeps it.
        let text =
            try
                reader.GetString()
            with :? InvalidOperationException ->
                null
        if isNull text || (reader.ValueIsEscaped && hasLoneSurrogate text) then
            ValueSome(ChannelCodecError.InvalidUtf8 field)
        else
            let size = if reader.ValueIsEscaped then Encoding.UTF8.GetByteCount text else reader.ValueSpan.Length
            if size < minBytes || size > maxBytes then
                ValueSome(ChannelCodecError.OutOfRange field)
            else
                value <- text
                ValueNone

/// A number value that is a whole number from 0 to 2^64-1.
let private readUInt (reader: byref<Utf8JsonReader>, field: string, value: byref<uint64>) : Found =
    if reader.TokenType <> JsonTokenType.Number then ValueSome(ChannelCodecError.WrongType field)
    elif reader.TryGetUInt64(&value) then ValueNone
    else ValueSome(ChannelCodecError.OutOfRange field)

/// Any JSON value, nesting at most MaxDataDepth deep: where its text starts and how long it is.
let private readValue (reader: byref<Utf8JsonReader>, field: string, start: byref<int>, length: byref<int>) : Found =
    start <- int reader.TokenStartIndex
    let mutable tooDeep = false
    match reader.TokenType with
    | JsonTokenType.StartObject
    | JsonTokenType.StartArray ->
        let outer = reader.CurrentDepth
        let mutable inside = true
        while inside && reader.Read() do
            match reader.TokenType with
            | JsonTokenType.StartObject
            | JsonTokenType.StartArray -> if reader.CurrentDepth - outer + 1 > MaxDataDepth then tooDeep <- true
            | JsonTokenType.EndObject
            | JsonTokenType.EndArray -> if reader.CurrentDepth = outer then inside <- false
            | _ -> ()
    | _ -> ()
    length <- int reader.BytesConsumed - start
    if tooDeep then ValueSome(ChannelCodecError.InvalidJson field) else ValueNone

let private dataOf (bytes: ReadOnlyMemory<byte>, start: int, length: int) : ChannelData =
    ChannelData.OfBytes(bytes.Slice(start, length))

let private nullData: ChannelData = ChannelData.OfBytes(ReadOnlyMemory nullJson)

/// Reads a `{"epoch":...,"offset":...}` object (unknown fields skipped).
let private readSince (reader: byref<Utf8JsonReader>, value: byref<ChannelPosition voption>) : Found =
    match reader.TokenType with
    | JsonTokenType.Null ->
        value <- ValueNone
        ValueNone
    | JsonTokenType.StartObject ->
        let mutable found = ValueNone
        let mutable epoch: string = null
        let mutable offset = 0UL
        let mutable hasOffset = false
        while found.IsNone && reader.Read() && reader.TokenType = JsonTokenType.PropertyName do
            if reader.ValueTextEquals(fieldBytes[EpochField]) then
                reader.Read() |> ignore
                if not (isNull epoch) then found <- ValueSome(ChannelCodecError.DuplicateField "since.epoch")
                else found <- readString (&reader, "since.epoch", 0, Int32.MaxValue, &epoch)
            elif reader.ValueTextEquals(fieldBytes[OffsetField]) then
                reader.Read() |> ignore
                if hasOffset then found <- ValueSome(ChannelCodecError.DuplicateField "since.offset")
                else
                    hasOffset <- true
                    found <- readUInt (&reader, "since.offset", &offset)
            else
                reader.Read() |> ignore
                reader.Skip()
        if found.IsSome then found
        elif isNull epoch then ValueSome(ChannelCodecError.MissingField "since.epoch")
        elif not hasOffset then ValueSome(ChannelCodecError.MissingField "since.offset")
        else
            value <- ValueSome { Epoch = epoch; Offset = offset }
            ValueNone
    | _ -> ValueSome(ChannelCodecError.WrongType "since")

/// Reads a `{"client":...,"info":...}` object (unknown fields skipped; info defaults to null).
let private readMember (bytes: ReadOnlyMemory<byte>, reader: byref<Utf8JsonReader>, value: byref<PresenceMember>) : Found =
    if reader.TokenType <> JsonTokenType.StartObject then
        ValueSome(ChannelCodecError.WrongType "member")
    else
        let mutable found = ValueNone
        let mutable client: string = null
        let mutable infoStart = -1
        let mutable infoLength = 0
        while found.IsNone && reader.Read() && reader.TokenType = JsonTokenType.PropertyName do
            if reader.ValueTextEquals(fieldBytes[ClientField]) then
                reader.Read() |> ignore
                if not (isNull client) then found <- ValueSome(ChannelCodecError.DuplicateField "member.client")
                else found <- readString (&reader, "member.client", 0, Int32.MaxValue, &client)
            elif reader.ValueTextEquals("info"B) then
                reader.Read() |> ignore
                if infoStart >= 0 then found <- ValueSome(ChannelCodecError.DuplicateField "member.info")
                else found <- readValue (&reader, "member.info", &infoStart, &infoLength)
            else
                reader.Read() |> ignore
                reader.Skip()
        if found.IsSome then found
        elif isNull client then ValueSome(ChannelCodecError.MissingField "member.client")
        else
            value <- { Client = client; Info = (if infoStart >= 0 then dataOf (bytes, infoStart, infoLength) else nullData) }
            ValueNone

let private readMembers (bytes: ReadOnlyMemory<byte>, reader: byref<Utf8JsonReader>, value: byref<PresenceMember list>) : Found =
    if reader.TokenType <> JsonTokenType.StartArray then
        ValueSome(ChannelCodecError.WrongType "members")
    else
        let mutable found = ValueNone
        let mutable members = ListCollector<PresenceMember>()
        let mutable memberInfo = Unchecked.defaultof<PresenceMember>
        while found.IsNone && reader.Read() && reader.TokenType <> JsonTokenType.EndArray do
            found <- readMember (bytes, &reader, &memberInfo)
            if found.IsNone then members.Add memberInfo
        if found.IsNone then value <- members.Close()
        found

let private readKind (reader: byref<Utf8JsonReader>, types: byte[][], kinds: byte[], value: byref<byte>) : Found =
    if reader.TokenType <> JsonTokenType.String then
        ValueSome(ChannelCodecError.WrongType "type")
    else
        let mutable i = 0
        while i < types.Length && not (reader.ValueTextEquals(types[i])) do
            i <- i + 1
        if i = types.Length then ValueSome ChannelCodecError.UnknownType
        else
            value <- kinds[i]
            ValueNone

let private readNamed (reader: byref<Utf8JsonReader>, field: string, names: byte[][], index: byref<int>) : Found =
    if reader.TokenType <> JsonTokenType.String then
        ValueSome(ChannelCodecError.WrongType field)
    else
        let mutable i = 0
        while i < names.Length && not (reader.ValueTextEquals(names[i])) do
            i <- i + 1
        if i = names.Length then ValueSome(ChannelCodecError.OutOfRange field)
        else
            index <- i
            ValueNone

let private recoveryNames = [| freshName; recoveredName; notRecoveredName |]
let internal recoveries = [| Recovery.Fresh; Recovery.Recovered; Recovery.NotRecovered |]

/// Reads the value of field number `field` (the reader is on its first token).
let private readField (bytes: ReadOnlyMemory<byte>, reader: byref<Utf8JsonReader>, server: bool, field: int, fields: byref<Fields>) : Found =
    match field with
    | TypeField ->
        if server then readKind (&reader, serverTypes, serverKinds, &fields.Kind)
        else readKind (&reader, clientTypes, clientKinds, &fields.Kind)
    | IdField -> readUInt (&reader, "id", &fields.Id)
    | ChannelField -> readString (&reader, "channel", 1, MaxChannelBytes, &fields.Channel)
    | SinceField -> readSince (&reader, &fields.Since)
    | PresenceField ->
        match reader.TokenType with
        | JsonTokenType.True ->
            fields.Presence <- true
            ValueNone
        | JsonTokenType.False ->
            fields.Presence <- false
            ValueNone
        | _ -> ValueSome(ChannelCodecError.WrongType "presence")
    | KeyField -> readString (&reader, "key", 1, MaxKeyBytes, &fields.Key)
    | DataField -> readValue (&reader, "data", &fields.DataStart, &fields.DataLength)
    | MethodField -> readString (&reader, "method", 0, Int32.MaxValue, &fields.Method)
    | VersionField -> readUInt (&reader, "version", &fields.Version)
    | ClientField -> readString (&reader, "client", 0, Int32.MaxValue, &fields.Client)
    | EpochField -> readString (&reader, "epoch", 0, Int32.MaxValue, &fields.Epoch)
    | OffsetField -> readUInt (&reader, "offset", &fields.Offset)
    | RecoveryField ->
        let mutable index = 0
        let found = readNamed (&reader, "recovery", recoveryNames, &index)
        if found.IsNone then fields.Recovery <- recoveries[index]
        found
    | MembersField -> readMembers (bytes, &reader, &fields.Members)
    | MemberField -> readMember (bytes, &reader, &fields.Member)
    | CodeField ->
        let mutable index = 0
        let found = readNamed (&reader, "code", errorCodeBytes, &index)
        if found.IsNone then fields.Code <- errorCodes[index]
        found
    | _ -> readString (&reader, "message", 0, Int32.MaxValue, &fields.Message)

let private isJsonWhitespace (b: byte) = b = 0x20uy || b = 0x09uy || b = 0x0Auy || b = 0x0Duy

/// One pass over the object: fills `fields`, or says why the bytes are not a message.
let private readObject (bytes: ReadOnlyMemory<byte>, server: bool, fields: byref<Fields>) : Found =
    let span = bytes.Span
    let known = if server then serverFields else clientFields
    let mutable reader = Utf8JsonReader(span, readerOptions)
    if not (reader.Read()) then
        ValueSome(ChannelCodecError.InvalidJson "message")
    elif reader.TokenType <> JsonTokenType.StartObject then
        ValueSome(ChannelCodecError.WrongType "message")
    else
        let mutable found = ValueNone
        while found.IsNone && reader.Read() && reader.TokenType = JsonTokenType.PropertyName do
            let field = fieldOf (&reader, known)
            reader.Read() |> ignore
            if field < 0 then
                reader.Skip()
            elif has (fields.Seen, field) then
                found <- ValueSome(ChannelCodecError.DuplicateField fieldNames[field])
            else
                fields.Seen <- fields.Seen ||| (1 <<< field)
                found <- readField (bytes, &reader, server, field, &fields)
        if found.IsSome then
            found
        else
            let mutable rest = int reader.BytesConsumed
            while rest < span.Length && isJsonWhitespace span[rest] do
                rest <- rest + 1
            if rest < span.Length then ValueSome ChannelCodecError.TrailingBytes else ValueNone

/// Reads the object into `fields`; never throws (the reader's exceptions become invalid-json).
let private read (bytes: ReadOnlyMemory<byte>, server: bool, fields: byref<Fields>) : Found =
    if not (Utf8Validator.isValid bytes.Span) then
        ValueSome(ChannelCodecError.InvalidUtf8 "message")
    else
        try
            readObject (bytes, server, &fields)
        with :? JsonException ->
            ValueSome(ChannelCodecError.InvalidJson "message")

/// The first of the `required` fields (a mask) that is not among the `seen` ones.
let private missing (seen: int, required: int) : Found =
    let absent = required &&& ~~~seen
    if absent = 0 then ValueNone
    else ValueSome(ChannelCodecError.MissingField fieldNames[Numerics.BitOperations.TrailingZeroCount absent])

// The fields each message kind requires, as masks.
let private needIdChannel = bits [ IdField; ChannelField ]
let private needPublish = bits [ IdField; ChannelField; KeyField; DataField ]
let private needRequest = bits [ IdField; MethodField ]
let private needWelcome = bits [ VersionField; ClientField ]
let private needSubscribed = bits [ IdField; ChannelField; EpochField; OffsetField; RecoveryField ]
let private needChannel = bits [ ChannelField ]
let private needPub = bits [ ChannelField; EpochField; OffsetField; DataField ]
let private needAck = bits [ IdField; ChannelField; EpochField; OffsetField ]
let private needPresence = bits [ IdField; ChannelField; MembersField ]
let private needMember = bits [ ChannelField; MemberField ]
let private needId = bits [ IdField ]
let private needError = bits [ CodeField; MessageField ]
let private needType = bits [ TypeField ]

/// A request id: 1 to 2^32-1; or 0 to 2^32-1 where `zeroAllowed` (a message not answering a request).
let private idIn (id: uint64, zeroAllowed: bool) : bool =
    id <= uint64 UInt32.MaxValue && (zeroAllowed || id >= 1UL)

let private clientMessage (bytes: ReadOnlyMemory<byte>, fields: inref<Fields>) : Result<ClientMessage, ChannelCodecError> =
    let id = uint32 fields.Id
    let required =
        match fields.Kind with
        | ChannelKind.Subscribe
        | ChannelKind.Unsubscribe
        | ChannelKind.PresenceQuery -> needIdChannel
        | ChannelKind.Publish -> needPublish
        | _ -> needRequest
    match missing (fields.Seen, required) with
    | ValueSome error -> Error error
    | ValueNone when not (idIn (fields.Id, false)) -> Error(ChannelCodecError.OutOfRange "id")
    | ValueNone ->
        match fields.Kind with
        | ChannelKind.Subscribe -> Ok(ClientMessage.Subscribe(id, fields.Channel, fields.Since, fields.Presence))
        | ChannelKind.Unsubscribe -> Ok(ClientMessage.Unsubscribe(id, fields.Channel))
        | ChannelKind.Publish -> Ok(ClientMessage.Publish(id, fields.Channel, fields.Key, dataOf (bytes, fields.DataStart, fields.DataLength)))
        | ChannelKind.PresenceQuery -> Ok(ClientMessage.PresenceQuery(id, fields.Channel))
        | _ ->
            let data = if has (fields.Seen, DataField) then dataOf (bytes, fields.DataStart, fields.DataLength) else nullData
            Ok(ClientMessage.Request(id, fields.Method, data))

let private serverMessage (bytes: ReadOnlyMemory<byte>, fields: inref<Fields>) : Result<ServerMessage, ChannelCodecError> =
    let kind = fields.Kind
    let required =
        match kind with
        | ChannelKind.Welcome -> needWelcome
        | ChannelKind.Subscribed -> needSubscribed
        | ChannelKind.Unsubscribed -> needChannel
        | ChannelKind.Publication -> needPub
        | ChannelKind.Ack -> needAck
        | ChannelKind.Presence -> needPresence
        | ChannelKind.Join
        | ChannelKind.Leave -> needMember
        | ChannelKind.Response -> needId
        | _ -> needError
    // Only replies carry an id; unsubscribed and error may have id 0 (or none: 0).
    let hasId = kind <> ChannelKind.Welcome && kind <> ChannelKind.Publication && kind <> ChannelKind.Join && kind <> ChannelKind.Leave
    match missing (fields.Seen, required) with
    | ValueSome error -> Error error
    | ValueNone when hasId && not (idIn (fields.Id, kind = ChannelKind.Unsubscribed || kind = ChannelKind.Error)) -> Error(ChannelCodecError.OutOfRange "id")
    | ValueNone when kind = ChannelKind.Welcome && (fields.Version < 1UL || fields.Version > uint64 Int32.MaxValue) ->
        Error(ChannelCodecError.OutOfRange "version")
    | ValueNone ->
        let id = uint32 fields.Id
        let position = { Epoch = fields.Epoch; Offset = fields.Offset }
        match kind with
        | ChannelKind.Welcome -> Ok(ServerMessage.Welcome(int fields.Version, fields.Client))
        | ChannelKind.Subscribed -> Ok(ServerMessage.Subscribed(id, fields.Channel, position, fields.Recovery))
        | ChannelKind.Unsubscribed -> Ok(ServerMessage.Unsubscribed(id, fields.Channel))
        | ChannelKind.Publication -> Ok(ServerMessage.Publication(fields.Channel, position, dataOf (bytes, fields.DataStart, fields.DataLength)))
        | ChannelKind.Ack -> Ok(ServerMessage.Ack(id, fields.Channel, position))
        | ChannelKind.Presence -> Ok(ServerMessage.Presence(id, fields.Channel, fields.Members))
        | ChannelKind.Join -> Ok(ServerMessage.Join(fields.Channel, fields.Member))
        | ChannelKind.Leave -> Ok(ServerMessage.Leave(fields.Channel, fields.Member))
        | ChannelKind.Response ->
            let data = if has (fields.Seen, DataField) then dataOf (bytes, fields.DataStart, fields.DataLength) else nullData
            Ok(ServerMessage.Response(id, data))
        | _ -> Ok(ServerMessage.Error(id, fields.Code, fields.Message))

/// Reads a client message (what a server receives). `data` is a slice of `bytes`, not a copy.
/// Unknown fields are ignored; never throws.
let decodeClient (bytes: ReadOnlyMemory<byte>) : Result<ClientMessage, ChannelCodecError> =
    let mutable fields = Unchecked.defaultof<Fields>
    match read (bytes, false, &fields) with
    | ValueSome error -> Error error
    | ValueNone ->
        match missing (fields.Seen, needType) with
        | ValueSome error -> Error error
        | ValueNone -> clientMessage (bytes, &fields)

/// Reads a server message (what a client receives). `data` and `info` are slices of `bytes`, not
/// copies. Unknown fields are ignored; never throws.
let decodeServer (bytes: ReadOnlyMemory<byte>) : Result<ServerMessage, ChannelCodecError> =
    let mutable fields = Unchecked.defaultof<Fields>
    match read (bytes, true, &fields) with
    | ValueSome error -> Error error
    | ValueNone ->
        match missing (fields.Seen, needType) with
        | ValueSome error -> Error error
        | ValueNone -> serverMessage (bytes, &fields)

/// True when `bytes` are exactly one JSON value (no whitespace around it) in valid UTF-8, nesting at
/// most MaxDataDepth deep: what `data` and `info` may be. Never throws.
let isValue (bytes: ReadOnlySpan<byte>) : bool =
    if bytes.IsEmpty || isJsonWhitespace bytes[0] || isJsonWhitespace bytes[bytes.Length - 1] then false
    elif not (Utf8Validator.isValid bytes) then false
    else
        try
            let mutable reader = Utf8JsonReader(bytes, JsonReaderOptions(MaxDepth = MaxDataDepth))
            reader.Read() && reader.TrySkip() && int reader.BytesConsumed = bytes.Length
        with :? JsonException ->
            false

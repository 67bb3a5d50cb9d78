/// The channels protocol's binary form (docs/channels-protocol.md, subprotocol
/// `realtime.channels.v1.binary`): one binary frame per message, a kind byte then the message's
/// fields in the contract's table order. Integers are unsigned LEB128 varints; strings, `data` and
/// `info` are a varint length then the bytes (UTF-8; data and info the JSON value's text, as in the
/// JSON form); `flags` and `recovery` are one byte; an error's code is its name, a string. Nothing
/// follows the last field, so every truncation is detected.
///
/// Encoding writes the exact size once; decoding keeps `data` and `info` as slices of the input and
/// checks that each is one JSON value (a binary client cannot hand JSON clients broken JSON). Neither
/// throws; the encoders write what they are given (as ChannelJson's do: out-of-range values are
/// written and refused by the decoder, empty data is written as `null`).
module Realtime.Protocol.ChannelBinary

open System
open System.Buffers
open System.Text
open Microsoft.FSharp.Core.CompilerServices

/// Bit 0 of a subscribe's flags: `since` (epoch, offset) follows.
[<Literal>]
let SinceFlag = 1uy

/// Bit 1 of a subscribe's flags: the client wants presence events.
[<Literal>]
let PresenceFlag = 2uy

// ---------------------------------------------------------------------------------------------
// Writing: as in ChannelJson, each writer returns the offset after what it wrote, and only counts
// when the destination is empty.

let private putByte (value: byte, destination: Span<byte>, at: int) : int =
    if not destination.IsEmpty then destination[at] <- value
    at + 1

let private putVarint (value: uint64, destination: Span<byte>, at: int) : int =
    if destination.IsEmpty then at + Varint.size value
    else at + Varint.write (value, destination.Slice at)

let private putBytes (bytes: ReadOnlySpan<byte>, destination: Span<byte>, at: int) : int =
    let at = putVarint (uint64 bytes.Length, destination, at)
    if not destination.IsEmpty then bytes.CopyTo(destination.Slice at)
    at + bytes.Length

let private putString (text: string, destination: Span<byte>, at: int) : int =
    let text = if isNull text then "" else text
    let size = Encoding.UTF8.GetByteCount text
    let at = putVarint (uint64 size, destination, at)
    if not destination.IsEmpty then Encoding.UTF8.GetBytes(text.AsSpan(), destination.Slice at) |> ignore
    at + size

let private putData (data: ReadOnlySpan<byte>, destination: Span<byte>, at: int) : int =
    if data.IsEmpty then putBytes (ReadOnlySpan ChannelJson.nullJson, destination, at) else putBytes (data, destination, at)

let private putPosition (position: ChannelPosition, destination: Span<byte>, at: int) : int =
    let at = putString (position.Epoch, destination, at)
    putVarint (position.Offset, destination, at)

let private putIdChannel (kind: byte, id: uint32, channel: string, destination: Span<byte>) : int =
    let at = putByte (kind, destination, 0)
    let at = putVarint (uint64 id, destination, at)
    putString (channel, destination, at)

let private putMember (memberInfo: PresenceMember, destination: Span<byte>, at: int) : int =
    let at = putString (memberInfo.Client, destination, at)
    putData (memberInfo.Info.Json.Span, destination, at)

let private putPublication (channel: string, position: ChannelPosition, data: ReadOnlySpan<byte>, destination: Span<byte>) : int =
    let at = putByte (ChannelKind.Publication, destination, 0)
    let at = putString (channel, destination, at)
    let at = putPosition (position, destination, at)
    putData (data, destination, at)

let private recoveryByte (recovery: Recovery) : byte =
    match recovery with
    | Recovery.Fresh -> 0uy
    | Recovery.Recovered -> 1uy
    | Recovery.NotRecovered -> 2uy

let private putServer (message: ServerMessage, destination: Span<byte>) : int =
    match message with
    | ServerMessage.Publication(channel, position, data) -> putPublication (channel, position, data.Json.Span, destination)
    | ServerMessage.Welcome(version, client) ->
        let at = putByte (ChannelKind.Welcome, destination, 0)
        let at = putVarint (uint64 (int64 version), destination, at)
        putString (client, destination, at)
    | ServerMessage.Subscribed(id, channel, position, recovery) ->
        let at = putIdChannel (ChannelKind.Subscribed, id, channel, destination)
        let at = putPosition (position, destination, at)
        putByte (recoveryByte recovery, destination, at)
    | ServerMessage.Unsubscribed(id, channel) -> putIdChannel (ChannelKind.Unsubscribed, id, channel, destination)
    | ServerMessage.Ack(id, channel, position) ->
        let at = putIdChannel (ChannelKind.Ack, id, channel, destination)
        putPosition (position, destination, at)
    | ServerMessage.Presence(id, channel, members) ->
        let mutable at = putIdChannel (ChannelKind.Presence, id, channel, destination)
        at <- putVarint (uint64 members.Length, destination, at)
        for memberInfo in members do
            at <- putMember (memberInfo, destination, at)
        at
    | ServerMessage.Join(channel, memberInfo)
    | ServerMessage.Leave(channel, memberInfo) ->
        let at = putByte ((if message.IsJoin then ChannelKind.Join else ChannelKind.Leave), destination, 0)
        let at = putString (channel, destination, at)
        putMember (memberInfo, destination, at)
    | ServerMessage.Response(id, data) ->
        let at = putByte (ChannelKind.Response, destination, 0)
        let at = putVarint (uint64 id, destination, at)
        putData (data.Json.Span, destination, at)
    | ServerMessage.Error(id, code, text) ->
        let at = putByte (ChannelKind.Error, destination, 0)
        let at = putVarint (uint64 id, destination, at)
        let at = putString (code.Code, destination, at)
        putString (text, destination, at)

let private putClient (message: ClientMessage, destination: Span<byte>) : int =
    match message with
    | ClientMessage.Subscribe(id, channel, since, presence) ->
        let flags = (if since.IsSome then SinceFlag else 0uy) ||| (if presence then PresenceFlag else 0uy)
        let at = putIdChannel (ChannelKind.Subscribe, id, channel, destination)
        let at = putByte (flags, destination, at)
        match since with
        | ValueSome position -> putPosition (position, destination, at)
        | ValueNone -> at
    | ClientMessage.Unsubscribe(id, channel) -> putIdChannel (ChannelKind.Unsubscribe, id, channel, destination)
    | ClientMessage.Publish(id, channel, key, data) ->
        let at = putIdChannel (ChannelKind.Publish, id, channel, destination)
        let at = putString (key, destination, at)
        putData (data.Json.Span, destination, at)
    | ClientMessage.PresenceQuery(id, channel) -> putIdChannel (ChannelKind.PresenceQuery, id, channel, destination)
    | ClientMessage.Request(id, method, data) ->
        let at = putByte (ChannelKind.Request, destination, 0)
        let at = putVarint (uint64 id, destination, at)
        let at = putString (method, destination, at)
        putData (data.Json.Span, destination, at)

/// The size of a `pub` message from its parts, in bytes.
let publicationSize (channel: string, position: ChannelPosition, data: ReadOnlySpan<byte>) : int =
    putPublication (channel, position, data, Span.Empty)

/// Writes a `pub` message from its parts at the start of `destination` (at least `publicationSize`
/// bytes long) without building a `ServerMessage`; returns the bytes written (0 when it is too short).
let writePublication (channel: string, position: ChannelPosition, data: ReadOnlySpan<byte>, destination: Span<byte>) : int =
    // Room for the largest encoding of these parts (three UTF-8 bytes per UTF-16 unit, five-byte
    // lengths, a ten-byte offset) skips counting the exact size first.
    let textBound (text: string) = if isNull text then 5 else 5 + 3 * text.Length
    let bound = 1 + textBound channel + textBound position.Epoch + 10 + 5 + max data.Length 4
    if destination.Length < bound && destination.Length < publicationSize (channel, position, data) then 0
    else putPublication (channel, position, data, destination)

/// A `pub` message from its parts, in a new array.
let encodePublication (channel: string, position: ChannelPosition, data: ReadOnlySpan<byte>) : byte[] =
    let bytes = Array.zeroCreate (publicationSize (channel, position, data))
    putPublication (channel, position, data, Span bytes) |> ignore
    bytes

/// The size of a server message's binary form, in bytes.
let serverSize (message: ServerMessage) : int = putServer (message, Span.Empty)

/// A server message's binary form, in a new array.
let encodeServer (message: ServerMessage) : byte[] =
    let bytes = Array.zeroCreate (serverSize message)
    putServer (message, Span bytes) |> ignore
    bytes

/// Appends a server message's binary form to `writer`.
let writeServer (message: ServerMessage, writer: IBufferWriter<byte>) : unit =
    let size = serverSize message
    putServer (message, writer.GetSpan size) |> ignore
    writer.Advance size

/// The size of a client message's binary form, in bytes.
let clientSize (message: ClientMessage) : int = putClient (message, Span.Empty)

/// A client message's binary form, in a new array.
let encodeClient (message: ClientMessage) : byte[] =
    let bytes = Array.zeroCreate (clientSize message)
    putClient (message, Span bytes) |> ignore
    bytes

/// Appends a client message's binary form to `writer`.
let writeClient (message: ClientMessage, writer: IBufferWriter<byte>) : unit =
    let size = clientSize message
    putClient (message, writer.GetSpan size) |> ignore
    writer.Advance size

// ---------------------------------------------------------------------------------------------
// Reading: a cursor (`at`) moves over the fields in order; each reader answers ValueNone and moves
// on, or the error that stops decoding.

type private Found = ChannelCodecError voption

let private readByte (span: ReadOnlySpan<byte>, at: byref<int>, value: byref<byte>) : Found =
    if at >= span.Length then
        ValueSome ChannelCodecError.Truncated
    else
        value <- span[at]
        at <- at + 1
        ValueNone

let private readVarint (span: ReadOnlySpan<byte>, at: byref<int>, value: byref<uint64>) : Found =
    match Varint.read (span, at) with
    | Varint.Read(read, next) ->
        value <- read
        at <- next
        ValueNone
    | Varint.Truncated -> ValueSome ChannelCodecError.Truncated
    | Varint.TooLong -> ValueSome ChannelCodecError.BadVarint

/// An id: 1 to 2^32-1, or also 0 where `zeroAllowed`.
let private readId (span: ReadOnlySpan<byte>, at: byref<int>, zeroAllowed: bool, id: byref<uint32>) : Found =
    let mutable value = 0UL
    match readVarint (span, &at, &value) with
    | ValueSome error -> ValueSome error
    | ValueNone when value > uint64 UInt32.MaxValue || (value = 0UL && not zeroAllowed) -> ValueSome(ChannelCodecError.OutOfRange "id")
    | ValueNone ->
        id <- uint32 value
        ValueNone

/// A length and that many bytes: where they start and how many.
let private readLength (span: ReadOnlySpan<byte>, at: byref<int>, start: byref<int>, length: byref<int>) : Found =
    let mutable value = 0UL
    match readVarint (span, &at, &value) with
    | ValueSome error -> ValueSome error
    | ValueNone when value > uint64 (span.Length - at) -> ValueSome ChannelCodecError.Truncated
    | ValueNone ->
        start <- at
        length <- int value
        at <- at + length
        ValueNone

/// A UTF-8 string of `minBytes` to `maxBytes` bytes.
let private readString (span: ReadOnlySpan<byte>, at: byref<int>, field: string, minBytes: int, maxBytes: int, text: byref<string>) : Found =
    let mutable start = 0
    let mutable length = 0
    match readLength (span, &at, &start, &length) with
    | ValueSome error -> ValueSome error
    | ValueNone when length < minBytes || length > maxBytes -> ValueSome(ChannelCodecError.OutOfRange field)
    | ValueNone when not (Utf8Validator.isValid (span.Slice(start, length))) -> ValueSome(ChannelCodecError.InvalidUtf8 field)
    | ValueNone ->
        text <- Encoding.UTF8.GetString(span.Slice(start, length))
        ValueNone

let private readFree (span: ReadOnlySpan<byte>, at: byref<int>, field: string, text: byref<string>) : Found =
    readString (span, &at, field, 0, Int32.MaxValue, &text)

/// A JSON value's text, as a slice of `bytes`.
let private readData (bytes: ReadOnlyMemory<byte>, at: byref<int>, field: string, data: byref<ChannelData>) : Found =
    let span = bytes.Span
    let mutable start = 0
    let mutable length = 0
    match readLength (span, &at, &start, &length) with
    | ValueSome error -> ValueSome error
    | ValueNone when not (ChannelJson.isValue (span.Slice(start, length))) ->
        if Utf8Validator.isValid (span.Slice(start, length)) then ValueSome(ChannelCodecError.InvalidJson field)
        else ValueSome(ChannelCodecError.InvalidUtf8 field)
    | ValueNone ->
        data <- ChannelData.OfBytes(bytes.Slice(start, length))
        ValueNone

let private readPosition (span: ReadOnlySpan<byte>, at: byref<int>, position: byref<ChannelPosition>) : Found =
    let mutable epoch: string = null
    let mutable offset = 0UL
    match readFree (span, &at, "epoch", &epoch) with
    | ValueSome error -> ValueSome error
    | ValueNone ->
        match readVarint (span, &at, &offset) with
        | ValueSome error -> ValueSome error
        | ValueNone ->
            position <- { Epoch = epoch; Offset = offset }
            ValueNone

let private readMember (bytes: ReadOnlyMemory<byte>, at: byref<int>, memberInfo: byref<PresenceMember>) : Found =
    let mutable client: string = null
    let mutable info = Unchecked.defaultof<ChannelData>
    match readFree (bytes.Span, &at, "member.client", &client) with
    | ValueSome error -> ValueSome error
    | ValueNone ->
        match readData (bytes, &at, "member.info", &info) with
        | ValueSome error -> ValueSome error
        | ValueNone ->
            memberInfo <- { Client = client; Info = info }
            ValueNone

let private readChannel (span: ReadOnlySpan<byte>, at: byref<int>, channel: byref<string>) : Found =
    readString (span, &at, "channel", 1, ChannelJson.MaxChannelBytes, &channel)

/// The decoded message, unless bytes follow it.
let private complete (span: ReadOnlySpan<byte>, at: int, found: Found, message: 'm) : Result<'m, ChannelCodecError> =
    match found with
    | ValueSome error -> Error error
    | ValueNone when at <> span.Length -> Error ChannelCodecError.TrailingBytes
    | ValueNone -> Ok message

let private clientBody (bytes: ReadOnlyMemory<byte>, kind: byte) : Result<ClientMessage, ChannelCodecError> =
    let span = bytes.Span
    let mutable at = 1
    let mutable id = 0u
    let mutable channel: string = null
    let mutable found = readId (span, &at, false, &id)
    match kind with
    | ChannelKind.Subscribe ->
        let mutable flags = 0uy
        let mutable since = Unchecked.defaultof<ChannelPosition>
        if found.IsNone then found <- readChannel (span, &at, &channel)
        if found.IsNone then found <- readByte (span, &at, &flags)
        if found.IsNone && flags &&& ~~~(SinceFlag ||| PresenceFlag) <> 0uy then found <- ValueSome(ChannelCodecError.BadFlags flags)
        if found.IsNone && flags &&& SinceFlag <> 0uy then found <- readPosition (span, &at, &since)
        let since = if flags &&& SinceFlag <> 0uy then ValueSome since else ValueNone
        complete (span, at, found, ClientMessage.Subscribe(id, channel, since, flags &&& PresenceFlag <> 0uy))
    | ChannelKind.Unsubscribe
    | ChannelKind.PresenceQuery ->
        if found.IsNone then found <- readChannel (span, &at, &channel)
        let message = if kind = ChannelKind.Unsubscribe then ClientMessage.Unsubscribe(id, channel) else ClientMessage.PresenceQuery(id, channel)
        complete (span, at, found, message)
    | ChannelKind.Publish ->
        let mutable key: string = null
        let mutable data = Unchecked.defaultof<ChannelData>
        if found.IsNone then found <- readChannel (span, &at, &channel)
        if found.IsNone then found <- readString (span, &at, "key", 1, ChannelJson.MaxKeyBytes, &key)
        if found.IsNone then found <- readData (bytes, &at, "data", &data)
        complete (span, at, found, ClientMessage.Publish(id, channel, key, data))
    | _ ->
        let mutable method: string = null
        let mutable data = Unchecked.defaultof<ChannelData>
        if found.IsNone then found <- readFree (span, &at, "method", &method)
        if found.IsNone then found <- readData (bytes, &at, "data", &data)
        complete (span, at, found, ClientMessage.Request(id, method, data))

let private readCode (span: ReadOnlySpan<byte>, at: byref<int>, code: byref<ChannelErrorCode>) : Found =
    let mutable start = 0
    let mutable length = 0
    match readLength (span, &at, &start, &length) with
    | ValueSome error -> ValueSome error
    | ValueNone ->
        let name = span.Slice(start, length)
        let mutable i = 0
        while i < ChannelJson.errorCodeBytes.Length && not (name.SequenceEqual(ReadOnlySpan ChannelJson.errorCodeBytes[i])) do
            i <- i + 1
        if i = ChannelJson.errorCodeBytes.Length then
            ValueSome(ChannelCodecError.OutOfRange "code")
        else
            code <- ChannelJson.errorCodes[i]
            ValueNone

let private readMembers (bytes: ReadOnlyMemory<byte>, at: byref<int>, members: byref<PresenceMember list>) : Found =
    let mutable count = 0UL
    let mutable found = readVarint (bytes.Span, &at, &count)
    let mutable collected = ListCollector<PresenceMember>()
    let mutable memberInfo = Unchecked.defaultof<PresenceMember>
    // Each member takes at least two bytes: a count past what is left ends as truncated, soon.
    let mutable index = 0UL
    while found.IsNone && index < count do
        found <- readMember (bytes, &at, &memberInfo)
        if found.IsNone then collected.Add memberInfo
        index <- index + 1UL
    if found.IsNone then members <- collected.Close()
    found

let private serverBody (bytes: ReadOnlyMemory<byte>, kind: byte) : Result<ServerMessage, ChannelCodecError> =
    let span = bytes.Span
    let mutable at = 1
    let mutable id = 0u
    let mutable channel: string = null
    let mutable position = Unchecked.defaultof<ChannelPosition>
    let mutable memberInfo = Unchecked.defaultof<PresenceMember>
    let mutable data = Unchecked.defaultof<ChannelData>
    match kind with
    | ChannelKind.Welcome ->
        let mutable version = 0UL
        let mutable client: string = null
        let mutable found = readVarint (span, &at, &version)
        if found.IsNone && (version < 1UL || version > uint64 Int32.MaxValue) then found <- ValueSome(ChannelCodecError.OutOfRange "version")
        if found.IsNone then found <- readFree (span, &at, "client", &client)
        complete (span, at, found, ServerMessage.Welcome(int version, client))
    | ChannelKind.Subscribed ->
        let mutable recovery = 0uy
        let mutable found = readId (span, &at, false, &id)
        if found.IsNone then found <- readChannel (span, &at, &channel)
        if found.IsNone then found <- readPosition (span, &at, &position)
        if found.IsNone then found <- readByte (span, &at, &recovery)
        if found.IsNone && recovery > 2uy then found <- ValueSome(ChannelCodecError.OutOfRange "recovery")
        let recovery = if found.IsNone then ChannelJson.recoveries[int recovery] else Recovery.Fresh
        complete (span, at, found, ServerMessage.Subscribed(id, channel, position, recovery))
    | ChannelKind.Unsubscribed ->
        let mutable found = readId (span, &at, true, &id)
        if found.IsNone then found <- readChannel (span, &at, &channel)
        complete (span, at, found, ServerMessage.Unsubscribed(id, channel))
    | ChannelKind.Publication ->
        let mutable found = readChannel (span, &at, &channel)
        if found.IsNone then found <- readPosition (span, &at, &position)
        if found.IsNone then found <- readData (bytes, &at, "data", &data)
        complete (span, at, found, ServerMessage.Publication(channel, position, data))
    | ChannelKind.Ack ->
        let mutable found = readId (span, &at, false, &id)
        if found.IsNone then found <- readChannel (span, &at, &channel)
        if found.IsNone then found <- readPosition (span, &at, &position)
        complete (span, at, found, ServerMessage.Ack(id, channel, position))
    | ChannelKind.Presence ->
        let mutable members: PresenceMember list = []
        let mutable found = readId (span, &at, false, &id)
        if found.IsNone then found <- readChannel (span, &at, &channel)
        if found.IsNone then found <- readMembers (bytes, &at, &members)
        complete (span, at, found, ServerMessage.Presence(id, channel, members))
    | ChannelKind.Join
    | ChannelKind.Leave ->
        let mutable found = readChannel (span, &at, &channel)
        if found.IsNone then found <- readMember (bytes, &at, &memberInfo)
        let message = if kind = ChannelKind.Join then ServerMessage.Join(channel, memberInfo) else ServerMessage.Leave(channel, memberInfo)
        complete (span, at, found, message)
    | ChannelKind.Response ->
        let mutable found = readId (span, &at, false, &id)
        if found.IsNone then found <- readData (bytes, &at, "data", &data)
        complete (span, at, found, ServerMessage.Response(id, data))
    | _ ->
        let mutable code = ChannelErrorCode.Internal
        let mutable text: string = null
        let mutable found = readId (span, &at, true, &id)
        if found.IsNone then found <- readCode (span, &at, &code)
        if found.IsNone then found <- readFree (span, &at, "message", &text)
        complete (span, at, found, ServerMessage.Error(id, code, text))

/// Reads a client message (what a server receives). `data` is a slice of `bytes`, not a copy.
/// Never throws.
let decodeClient (bytes: ReadOnlyMemory<byte>) : Result<ClientMessage, ChannelCodecError> =
    if bytes.IsEmpty then Error ChannelCodecError.Truncated
    else
        let kind = bytes.Span[0]
        if kind >= ChannelKind.Subscribe && kind <= ChannelKind.Request then clientBody (bytes, kind)
        else Error ChannelCodecError.UnknownType

/// Reads a server message (what a client receives). `data` and `info` are slices of `bytes`, not
/// copies. Never throws.
let decodeServer (bytes: ReadOnlyMemory<byte>) : Result<ServerMessage, ChannelCodecError> =
    if bytes.IsEmpty then Error ChannelCodecError.Truncated
    else
        let kind = bytes.Span[0]
        if kind >= ChannelKind.Welcome && kind <= ChannelKind.Error then serverBody (bytes, kind)
        else Error ChannelCodecError.UnknownType

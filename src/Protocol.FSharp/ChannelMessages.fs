/// The message kinds of the channels subprotocol, version 1 (docs/channels-protocol.md): what a client
/// asks (subscribe with a position to recover from, publish with a key for deduplication, presence,
/// request) and what the server says (publications carrying each channel's position, replies,
/// presence events, errors). Plain values: the codecs turn them into JSON text or the binary form.
namespace Realtime.Protocol

open System

/// The subprotocol names a client offers in `Sec-WebSocket-Protocol`.
module ChannelSubprotocol =
    /// JSON text frames.
    [<Literal>]
    let Json = "realtime.channels.v1.json"

    /// Binary frames in the compact form.
    [<Literal>]
    let Binary = "realtime.channels.v1.binary"

    /// The protocol version both forms speak.
    [<Literal>]
    let Version = 1

/// A message's application data: a JSON value's UTF-8 text, kept and forwarded byte for byte.
/// Two values are equal when their bytes are.
[<Struct; CustomEquality; NoComparison>]
type ChannelData =
    {
        /// The JSON value's UTF-8 text (after decoding, a slice of the decoded message).
        Json: ReadOnlyMemory<byte>
    }

    /// The JSON `null`, for messages without data.
    static member Null: ChannelData = { Json = ReadOnlyMemory("null"B) }

    /// Data over these bytes (not copied).
    static member OfBytes(bytes: ReadOnlyMemory<byte>) : ChannelData = { Json = bytes }

    /// True when `other` is ChannelData with the same bytes.
    override d.Equals(other: obj) =
        match other with
        | :? ChannelData as o -> d.Json.Span.SequenceEqual(o.Json.Span)
        | _ -> false

    /// A hash of the bytes, consistent with Equals.
    override d.GetHashCode() =
        let mutable hash = HashCode()
        hash.AddBytes(d.Json.Span)
        hash.ToHashCode()

    /// The JSON text (the bytes as UTF-8).
    override d.ToString() = Text.Encoding.UTF8.GetString(d.Json.Span)

/// Where a channel's history is: which sequence (epoch) and how far into it (offset of the last
/// publication; 0 before the first). Offsets of different epochs are not comparable.
[<Struct>]
type ChannelPosition =
    {
        /// Names one history of the channel; a lost history starts a new epoch.
        Epoch: string
        /// The offset of the last publication, 1-based, with no gaps within an epoch.
        Offset: uint64
    }

/// How a subscribe with a position turned out.
[<RequireQualifiedAccess>]
type Recovery =
    /// No position was given: the subscription starts now.
    | Fresh
    /// Every publication after the position followed, in order.
    | Recovered
    /// The history no longer holds everything after the position (trimmed, or another epoch):
    /// what it holds followed, and the rest is lost.
    | NotRecovered

/// A member of a channel's presence: a connection's id and what the app chose to show of it.
[<Struct>]
type PresenceMember =
    {
        /// The connection's client id (as in `Welcome`).
        Client: string
        /// The app's information about the member (a JSON value).
        Info: ChannelData
    }

/// What a client sends.
[<RequireQualifiedAccess>]
type ClientMessage =
    /// Subscribe to a channel, recovering what came after `since` when given; with `presence`, also
    /// receive join and leave events.
    | Subscribe of id: uint32 * channel: string * since: ChannelPosition voption * presence: bool
    /// End a subscription.
    | Unsubscribe of id: uint32 * channel: string
    /// Publish data to a channel; `key` (chosen by the client, unique per publish) makes a retry
    /// take effect once.
    | Publish of id: uint32 * channel: string * key: string * data: ChannelData
    /// Ask who is in a channel.
    | PresenceQuery of id: uint32 * channel: string
    /// Call an app-defined method.
    | Request of id: uint32 * method: string * data: ChannelData

/// Why the server refused or could not do what a client asked.
[<RequireQualifiedAccess>]
type ChannelErrorCode =
    /// The message could not be read.
    | BadMessage
    /// The app's authorization said no.
    | Forbidden
    /// No such channel (the app's rules do not allow the name).
    | UnknownChannel
    /// The client is not subscribed to the channel.
    | NotSubscribed
    /// The message or its data is over a limit.
    | TooLarge
    /// The client is over a rate limit.
    | RateLimited
    /// No handler for the request's method.
    | UnknownMethod
    /// The server failed.
    | Internal
    /// The server holds as many channels as it may: a channel it does not hold yet is refused until
    /// others are forgotten.
    | TooManyChannels

    /// The code's wire name: "bad-message", "forbidden", "unknown-channel", "not-subscribed",
    /// "too-large", "rate-limited", "unknown-method", "internal", "too-many-channels".
    member c.Code: string =
        match c with
        | BadMessage -> "bad-message"
        | Forbidden -> "forbidden"
        | UnknownChannel -> "unknown-channel"
        | NotSubscribed -> "not-subscribed"
        | TooLarge -> "too-large"
        | RateLimited -> "rate-limited"
        | UnknownMethod -> "unknown-method"
        | Internal -> "internal"
        | TooManyChannels -> "too-many-channels"

/// What the server sends.
[<RequireQualifiedAccess>]
type ServerMessage =
    /// The first message on every connection: the protocol version and this connection's client id.
    | Welcome of version: int * client: string
    /// A subscription is in place at the channel's current position; recovered publications (if
    /// any) were sent before it.
    | Subscribed of id: uint32 * channel: string * position: ChannelPosition * recovery: Recovery
    /// A subscription ended (id 0: ended by the server).
    | Unsubscribed of id: uint32 * channel: string
    /// A publication at its position.
    | Publication of channel: string * position: ChannelPosition * data: ChannelData
    /// A publish took effect at this position (or had, for a repeated key).
    | Ack of id: uint32 * channel: string * position: ChannelPosition
    /// The members of a channel, answering a presence query.
    | Presence of id: uint32 * channel: string * members: PresenceMember list
    /// A member joined a channel.
    | Join of channel: string * memberInfo: PresenceMember
    /// A member left a channel.
    | Leave of channel: string * memberInfo: PresenceMember
    /// The answer to a request.
    | Response of id: uint32 * data: ChannelData
    /// A request failed (id 0: a message the server could not read).
    | Error of id: uint32 * code: ChannelErrorCode * message: string

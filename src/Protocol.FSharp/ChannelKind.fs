/// The number of each message kind of the channels protocol: the binary form's first byte (the
/// table in docs/channels-protocol.md); the JSON form names the same kinds by their `type`.
/// Client messages are 1 to 5, server messages 64 to 73.
module Realtime.Protocol.ChannelKind

/// subscribe
[<Literal>]
let Subscribe = 1uy

/// unsubscribe
[<Literal>]
let Unsubscribe = 2uy

/// publish
[<Literal>]
let Publish = 3uy

/// presence (the query)
[<Literal>]
let PresenceQuery = 4uy

/// request
[<Literal>]
let Request = 5uy

/// welcome
[<Literal>]
let Welcome = 64uy

/// subscribed
[<Literal>]
let Subscribed = 65uy

/// unsubscribed
[<Literal>]
let Unsubscribed = 66uy

/// pub
[<Literal>]
let Publication = 67uy

/// ack
[<Literal>]
let Ack = 68uy

/// presence (the members)
[<Literal>]
let Presence = 69uy

/// join
[<Literal>]
let Join = 70uy

/// leave
[<Literal>]
let Leave = 71uy

/// response
[<Literal>]
let Response = 72uy

/// error
[<Literal>]
let Error = 73uy

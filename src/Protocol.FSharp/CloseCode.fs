/// Close status codes (RFC 6455 §7.4) and which of them may be sent or received.
module Realtime.Protocol.CloseCode

/// 1000: the purpose of the connection was fulfilled.
[<Literal>]
let NormalClosure = 1000us

/// 1001: the endpoint is going away (server shutdown, page navigation, idle timeout).
[<Literal>]
let GoingAway = 1001us

/// 1002: the peer broke the protocol.
[<Literal>]
let ProtocolError = 1002us

/// 1003: the endpoint received a kind of data it cannot accept.
[<Literal>]
let UnsupportedData = 1003us

/// 1005: reported to the application when a close frame carried no code; never sent.
[<Literal>]
let NoStatusReceived = 1005us

/// 1006: reported to the application when the transport closed without a close frame; never sent.
[<Literal>]
let AbnormalClosure = 1006us

/// 1007: a message's payload was inconsistent with its type (invalid UTF-8 in text).
[<Literal>]
let InvalidPayload = 1007us

/// 1008: a message violated the endpoint's policy (also used for backpressure-limit closes).
[<Literal>]
let PolicyViolation = 1008us

/// 1009: a message was too big to process.
[<Literal>]
let MessageTooBig = 1009us

/// 1010: the client expected an extension the server did not negotiate.
[<Literal>]
let MandatoryExtension = 1010us

/// 1011: the server met an unexpected condition (a handler threw).
[<Literal>]
let InternalError = 1011us

/// RFC 6455 §7.4.1 and §7.4.2: a received close frame may carry 1000-1003, 1007-1011 or a code
/// from the registered (3000-3999) or private (4000-4999) ranges. 1004-1006 and 1015 are
/// reserved, 0-999 unused, 1012-2999 unassigned for this purpose.
let isValidReceived (code: uint16) : bool =
    (code >= 1000us && code <= 1003us)
    || (code >= 1007us && code <= 1011us)
    || (code >= 3000us && code <= 4999us)

/// Codes an endpoint may put on the wire: the same set as may be received. 1005 and 1006 exist
/// only to be reported locally (RFC 6455 §7.4.1).
let isSendable (code: uint16) : bool = isValidReceived code

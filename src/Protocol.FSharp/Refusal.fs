namespace Realtime.Protocol

open System.Text
open Realtime.Protocol.Handshake

/// Why the server answers an upgrade request with an HTTP response instead of opening a WebSocket: the
/// handshake's own rules (`Handshake.accept`), or the server's limits and policies checked around it.
type Refusal =
    /// The request breaks the opening handshake's rules (RFC 6455 §4.2.1; RFC 8441 §4-§5 for an extended
    /// CONNECT): the rejection `Handshake.accept` or `Handshake.acceptExtendedConnect` gave.
    | Invalid of rejection: Rejection
    /// The server is shutting down: 503.
    | ShuttingDown
    /// The request's header lines are over the endpoint's limit: 431 (RFC 6585 §5).
    | HeadersTooLarge
    /// A valid handshake the transport cannot upgrade (neither an HTTP/1.1 upgrade nor an extended CONNECT): 400.
    | NotUpgradable
    /// The request's Origin is not one the endpoint serves (RFC 6455 §10.2): 403.
    | OriginNotAllowed
    /// The server, or the client's address, has no connection left under its limit: 503.
    | TooManyConnections
    /// The application refused the connection with this status and reason (null: "rejected").
    | ByApplication of status: int * reason: string
    /// The application failed before the connection opened: 500 with no body, as an HTTP server answers an
    /// unhandled error.
    | ApplicationFailed

    /// A stable code for logs and metrics: the rejection's own code for Invalid, otherwise "shutting-down",
    /// "headers-too-large", "not-upgradable", "origin-not-allowed", "too-many-connections", "attach-rejected"
    /// or "attach-failed".
    member refusal.Code: string =
        match refusal with
        | Invalid rejection -> if isNull (box rejection) then "" else rejection.Code
        | ShuttingDown -> "shutting-down"
        | HeadersTooLarge -> "headers-too-large"
        | NotUpgradable -> "not-upgradable"
        | OriginNotAllowed -> "origin-not-allowed"
        | TooManyConnections -> "too-many-connections"
        | ByApplication _ -> "attach-rejected"
        | ApplicationFailed -> "attach-failed"

/// An HTTP response as a value: what a host copies into its HTTP server's response, or renders with
/// `ResponseHead.render` and writes itself.
type Response =
    {
        /// The status code.
        Status: int
        /// The header lines, in order.
        Headers: HttpHeader array
        /// The body, whose type and length the headers and the host give; empty for none.
        Body: byte[]
    }

/// The responses that refuse an upgrade.
module Refusal =
    let private textType = { Name = "Content-Type"; Value = "text/plain; charset=utf-8" }

    let private text status (headers: HttpHeader array) (body: string) =
        { Status = status
          Headers = Array.append (if isNull headers then [||] else headers) [| textType |]
          Body = Encoding.UTF8.GetBytes(if isNull body then "" else body) }

    /// The response for a refusal: its status, the headers the rules ask for (Allow for 405,
    /// Sec-WebSocket-Version for 426, RFC 6455 §4.2.2), and a short text/plain body that says why; for
    /// ApplicationFailed a bare 500. A null refusal or rejection counts as a plain 400 "bad request". Never throws.
    let response (refusal: Refusal) : Response =
        match refusal with
        | _ when isNull (box refusal) -> text 400 [||] "bad request"
        | Invalid rejection when isNull (box rejection) -> text 400 [||] "bad request"
        | Invalid rejection -> text rejection.Status rejection.Headers rejection.Reason
        | ShuttingDown -> text 503 [||] "server shutting down"
        | HeadersTooLarge -> text 431 [||] "request headers too large"
        | NotUpgradable ->
            text 400 [||] "this request cannot be upgraded (an HTTP/1.1 upgrade or an HTTP/2 extended CONNECT is required)"
        | OriginNotAllowed -> text 403 [||] "origin not allowed"
        | TooManyConnections -> text 503 [||] "too many connections"
        | ByApplication(status, reason) -> text status [||] (if isNull reason then "rejected" else reason)
        | ApplicationFailed -> { Status = 500; Headers = [||]; Body = [||] }

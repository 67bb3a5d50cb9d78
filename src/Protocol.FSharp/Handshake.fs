/// RFC 6455 §4.2 server side of the opening handshake: validates an upgrade request and produces either
/// the 101 response or the error response to send, as plain values. RFC 8441 (HTTP/2) and RFC 9220
/// (HTTP/3) carry the same handshake as an extended CONNECT, answered with 200: `acceptExtendedConnect`.
module Realtime.Protocol.Handshake

open System
open System.Security.Cryptography
open System.Text

/// One HTTP header line.
type HttpHeader =
    {
        /// The header name; compared case-insensitively.
        Name: string
        /// The header value.
        Value: string
    }

/// The parts of an HTTP request the handshake looks at.
type HandshakeRequest =
    {
        /// The request method, e.g. "GET" (case-sensitive, RFC 7230 §3.1.1).
        Method: string
        /// The request target, e.g. "/chat".
        Path: string
        /// The protocol version, "HTTP/1.1" or "1.1" style.
        HttpVersion: string
        /// Every header line in order. Several lines with one name count as one comma-joined list
        /// (RFC 7230 §3.2.2).
        Headers: HttpHeader array
    }

/// What the server supports.
type Policy =
    {
        /// Subprotocols the server speaks. The server selects the first protocol in the CLIENT's order
        /// (its Sec-WebSocket-Protocol list) that appears here, compared exactly (case-sensitive), since the
        /// response must repeat one of the client's values (RFC 6455 §4.1).
        Subprotocols: string array
        /// permessage-deflate settings.
        Deflate: PerMessageDeflate.Config
    }

/// No subprotocols, permessage-deflate with its defaults.
let defaultPolicy =
    { Subprotocols = [||]
      Deflate = PerMessageDeflate.defaults }

/// A handshake the server accepts.
type Acceptance =
    {
        /// The status of the response that opens the WebSocket: 101 for an HTTP/1.1 upgrade (RFC 6455
        /// §4.2.2), 200 for an extended CONNECT (RFC 8441 §5).
        Status: int
        /// The Sec-WebSocket-Accept value; empty for an extended CONNECT, which has no key (RFC 8441 §5).
        AcceptKey: string
        /// The selected subprotocol, if any.
        Subprotocol: string option
        /// The negotiated permessage-deflate parameters, if compression was agreed.
        Deflate: PerMessageDeflate.Parameters option
        /// The headers of the response that opens the WebSocket, in order: for a 101 the Upgrade,
        /// Connection and Sec-WebSocket-Accept lines first; for an extended CONNECT's 200 only the
        /// negotiated Sec-WebSocket-Protocol and Sec-WebSocket-Extensions.
        ResponseHeaders: HttpHeader array
    }

/// A handshake the server refuses, with the HTTP error response to send.
type Rejection =
    {
        /// The HTTP status code (405, 400 or 426).
        Status: int
        /// A stable code: "method-not-allowed", "http-version", "missing-host", "duplicate-host",
        /// "missing-upgrade", "missing-connection-upgrade", "missing-version", "unsupported-version",
        /// "missing-key", "duplicate-key" or "invalid-key"; for an extended CONNECT also
        /// "wrong-protocol".
        Code: string
        /// A human readable explanation.
        Reason: string
        /// Headers the error response must carry (Allow for 405, Sec-WebSocket-Version for 426).
        Headers: HttpHeader array
    }

/// The outcome of `accept`.
type HandshakeResult =
    /// Send the 101 response and switch to WebSocket framing.
    | Accepted of acceptance: Acceptance
    /// Send the error response and do not upgrade.
    | Rejected of rejection: Rejection

// RFC 6455 §1.3: the GUID appended to the key before hashing.
[<Literal>]
let private KeyGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/// The Sec-WebSocket-Accept value for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)) (RFC 6455 §1.3, §4.2.2).
let acceptKey (key: string) : string =
    let key = if isNull key then "" else key
    Convert.ToBase64String(SHA1.HashData(Encoding.UTF8.GetBytes(key + KeyGuid)))

let private orEmpty (text: string) = if isNull text then "" else text

// RFC 7230 §3.2.4: optional whitespace around a field value is not part of it.
let private trimOws (text: string) = text.Trim(' ', '\t')

let private valuesOf (name: string) (headers: HttpHeader array) =
    headers
    |> Array.filter (fun h -> String.Equals(h.Name, name, StringComparison.OrdinalIgnoreCase))
    |> Array.map (fun h -> trimOws h.Value)

// RFC 7230 §7: a #list with empty elements skipped.
let private listElements (values: string array) =
    values |> Array.collect (fun v -> v.Split ',') |> Array.map trimOws |> Array.filter (fun e -> e <> "")

// RFC 9110 §5.6.1: one line's #list, elements trimmed of optional whitespace, empty ones skipped.
let private listHasElement (token: string) (value: string) =
    let mutable found = false
    let mutable start = 0
    while not found && start <= value.Length do
        let comma = value.IndexOf(',', start)
        let stop = if comma < 0 then value.Length else comma
        let element = MemoryExtensions.Trim(value.AsSpan(start, stop - start), " \t".AsSpan())
        found <- element.Length > 0 && MemoryExtensions.Equals(element, token.AsSpan(), StringComparison.OrdinalIgnoreCase)
        start <- stop + 1
    found

/// True when the header `name` has `token` among the elements of its comma-separated list
/// (RFC 9110 §5.6.1), every line with that name read as part of one list (RFC 9110 §5.3). Names
/// and tokens are compared case-insensitively (RFC 9110 §5.1, §7.6.1, §7.8); whitespace around an
/// element and empty elements do not count, so "h2c , WebSocket" has "websocket" and "websocket/13"
/// has not. This is the check behind `accept`'s "missing-upgrade" (`Upgrade` has `websocket`) and
/// "missing-connection-upgrade" (`Connection` has `upgrade`), RFC 6455 §4.2.1. Allocates nothing;
/// never throws: null arrays, headers and strings count as empty.
let hasToken (name: string) (token: string) (headers: HttpHeader array) : bool =
    let token = orEmpty token
    let mutable found = false
    if not (isNull headers) then
        let mutable index = 0
        while not found && index < headers.Length do
            let line = headers[index]
            found <-
                not (isNull (box line))
                && String.Equals(line.Name, name, StringComparison.OrdinalIgnoreCase)
                && not (isNull line.Value)
                && listHasElement token line.Value
            index <- index + 1
    found

// "HTTP/1.1", "1.1", "HTTP/2", "2.0" and the like as (major, minor); None when malformed.
let private versionNumber (version: string) =
    let number = if version.StartsWith("HTTP/", StringComparison.Ordinal) then version.Substring 5 else version
    let digits (text: string) = text.Length > 0 && text.Length <= 3 && Seq.forall Char.IsAsciiDigit text
    match number.Split '.' with
    | [| major |] when digits major -> Some(int major, 0)
    | [| major; minor |] when digits major && digits minor -> Some(int major, int minor)
    | _ -> None

// RFC 6455 §4.1/§4.2.1: HTTP/1.1 or higher.
let private isHttp11OrLater (version: string) =
    match versionNumber version with
    | Some number -> number >= (1, 1)
    | None -> false

// RFC 8441 §3 (HTTP/2) and RFC 9220 §3 (HTTP/3): extended CONNECT exists from HTTP/2 on.
let private isHttp2OrLater (version: string) =
    match versionNumber version with
    | Some(major, _) -> major >= 2
    | None -> false

// RFC 6455 §4.2.1: the key is the base64 encoding of 16 bytes, i.e. 22 base64 characters and "==".
let private isValidKey (key: string) =
    let isBase64Char c = Char.IsAsciiLetterOrDigit c || c = '+' || c = '/' || c = '='
    let bytes = Array.zeroCreate<byte> 18
    let mutable written = 0
    key.Length = 24
    && Seq.forall isBase64Char key
    && Convert.TryFromBase64String(key, Span<byte>(bytes), &written)
    && written = 16

// RFC 6455 §4.1: subprotocol names are tokens; a malformed list selects nothing.
let private selectSubprotocol (supported: string array) (offered: string array) =
    let requested = listElements offered
    if requested |> Array.forall PerMessageDeflate.isToken then
        requested |> Array.tryFind (fun p -> Array.contains p supported)
    else
        None

// A malformed Sec-WebSocket-Extensions header declines compression instead of failing the handshake:
// RFC 6455 §9.1 lets the server accept without any extension, which the client can always handle.
let private negotiateDeflate (config: PerMessageDeflate.Config) (values: string array) =
    match PerMessageDeflate.parseHeaderValues values with
    | Ok offers -> (PerMessageDeflate.negotiate config offers).Accepted
    | Error _ -> None

let private header name value = { Name = name; Value = value }

let private reject status code reason headers =
    Rejected
        { Status = status
          Code = code
          Reason = reason
          Headers = headers }

let private badRequest code reason = reject 400 code reason [||]

// RFC 6455 §4.2.2: an unsupported version is answered with the versions the server understands.
let private upgradeRequired code reason =
    reject 426 code reason [| header "Sec-WebSocket-Version" "13" |]

// RFC 6455 §4.2.2 and RFC 8441 §5: subprotocol and extensions are negotiated the same way in both forms.
let private negotiated (policy: Policy) (headers: HttpHeader array) =
    let subprotocol = selectSubprotocol policy.Subprotocols (valuesOf "Sec-WebSocket-Protocol" headers)
    let deflate = negotiateDeflate policy.Deflate (valuesOf "Sec-WebSocket-Extensions" headers)
    let negotiatedHeaders =
        [| match subprotocol with
           | Some protocol -> header "Sec-WebSocket-Protocol" protocol
           | None -> ()
           match deflate with
           | Some parameters -> header "Sec-WebSocket-Extensions" (PerMessageDeflate.responseHeaderValue parameters)
           | None -> () |]
    subprotocol, deflate, negotiatedHeaders

let private acceptedUpgrade (policy: Policy) (key: string) (headers: HttpHeader array) =
    let subprotocol, deflate, negotiatedHeaders = negotiated policy headers
    let acceptValue = acceptKey key
    Accepted
        { Status = 101
          AcceptKey = acceptValue
          Subprotocol = subprotocol
          Deflate = deflate
          ResponseHeaders =
            Array.append
                [| header "Upgrade" "websocket"
                   header "Connection" "Upgrade"
                   header "Sec-WebSocket-Accept" acceptValue |]
                negotiatedHeaders }

// RFC 8441 §5: no key and no accept value; the 200 carries the negotiated headers only.
let private acceptedConnect (policy: Policy) (headers: HttpHeader array) =
    let subprotocol, deflate, negotiatedHeaders = negotiated policy headers
    Accepted
        { Status = 200
          AcceptKey = ""
          Subprotocol = subprotocol
          Deflate = deflate
          ResponseHeaders = negotiatedHeaders }

// Null policies, requests, arrays, headers and strings count as empty.
let private normalized (policy: Policy) (request: HandshakeRequest) =
    let policy =
        if isNull (box policy) then defaultPolicy
        else { policy with Subprotocols = (if isNull policy.Subprotocols then [||] else policy.Subprotocols) }
    let request =
        if isNull (box request) then { Method = ""; Path = ""; HttpVersion = ""; Headers = [||] } else request
    let headers =
        (if isNull request.Headers then [||] else request.Headers)
        |> Array.filter (fun h -> not (isNull (box h)))
        |> Array.map (fun h -> header (orEmpty h.Name) (orEmpty h.Value))
    policy, { request with Method = orEmpty request.Method; HttpVersion = orEmpty request.HttpVersion; Headers = headers }

// RFC 6455 §4.2.1 / RFC 9113 §8.3.1 (:authority stands for Host): exactly one non-empty Host.
let private hostProblem (hosts: string array) =
    if hosts.Length = 0 || (hosts.Length = 1 && hosts[0] = "") then
        Some(badRequest "missing-host" "the Host header is missing (RFC 6455 §4.2.1)")
    elif hosts.Length > 1 then
        // RFC 7230 §5.4: more than one Host header is answered with 400.
        Some(badRequest "duplicate-host" "the Host header appears more than once (RFC 7230 §5.4)")
    else
        None

// RFC 6455 §4.2.1 and, unchanged, RFC 8441 §5: version 13, answered with 426 and the supported version.
let private versionProblem (versions: string array) =
    if versions.Length = 0 then
        Some(upgradeRequired "missing-version" "the Sec-WebSocket-Version header is missing (RFC 6455 §4.2.1)")
    elif versions <> [| "13" |] then
        Some(upgradeRequired "unsupported-version" "only Sec-WebSocket-Version 13 is supported (RFC 6455 §4.2.2)")
    else
        None

/// Validates a client's opening handshake (RFC 6455 §4.2.1) and builds the server's answer (§4.2.2).
/// A request without `Upgrade: websocket` gets 400, not 426: it names a WebSocket endpoint but is not a
/// valid handshake, which §4.2.1 answers with 400; a host that wants 426 for plain HTTP clients can map
/// the "missing-upgrade" code. Never throws: null strings or arrays count as empty.
let accept (policy: Policy) (request: HandshakeRequest) : HandshakeResult =
    let policy, request = normalized policy request
    let headers = request.Headers
    let find name = valuesOf name headers
    let keys = find "Sec-WebSocket-Key"
    if request.Method <> "GET" then
        reject 405 "method-not-allowed" "the opening handshake must be a GET request (RFC 6455 §4.1)" [| header "Allow" "GET" |]
    elif not (isHttp11OrLater request.HttpVersion) then
        badRequest "http-version" "the opening handshake needs HTTP/1.1 or higher (RFC 6455 §4.1)"
    else
    match hostProblem (find "Host") with
    | Some rejection -> rejection
    | None ->
    if not (hasToken "Upgrade" "websocket" headers) then
        badRequest "missing-upgrade" "the Upgrade header does not contain websocket (RFC 6455 §4.2.1)"
    elif not (hasToken "Connection" "upgrade" headers) then
        badRequest "missing-connection-upgrade" "the Connection header does not contain Upgrade (RFC 6455 §4.2.1)"
    else
    match versionProblem (find "Sec-WebSocket-Version") with
    | Some rejection -> rejection
    | None ->
    if keys.Length = 0 then
        badRequest "missing-key" "the Sec-WebSocket-Key header is missing (RFC 6455 §4.2.1)"
    elif keys.Length > 1 then
        badRequest "duplicate-key" "the Sec-WebSocket-Key header appears more than once (RFC 6455 §11.3.1)"
    elif not (isValidKey keys[0]) then
        badRequest "invalid-key" "Sec-WebSocket-Key is not the base64 encoding of 16 bytes (RFC 6455 §4.2.1)"
    else
        acceptedUpgrade policy keys[0] headers

/// Validates a WebSocket opened by an extended CONNECT (RFC 8441 §4-§5 on HTTP/2, RFC 9220 on HTTP/3)
/// and builds the server's answer. `protocol` is the request's `:protocol` pseudo-header. The rules are
/// those of `accept` less what the CONNECT replaces: the method is CONNECT, `:protocol` is `websocket`
/// (compared case-insensitively, RFC 9110 §7.8), the version is HTTP/2 or later; Host (`:authority`)
/// and Sec-WebSocket-Version are checked as in `accept`; Upgrade, Connection and Sec-WebSocket-Key are
/// not used. Subprotocol and permessage-deflate are negotiated exactly as in `accept`. The acceptance
/// has status 200, an empty `AcceptKey` and only the negotiated headers. Never throws: null strings
/// or arrays count as empty.
let acceptExtendedConnect (policy: Policy) (protocol: string) (request: HandshakeRequest) : HandshakeResult =
    let policy, request = normalized policy request
    let headers = request.Headers
    let find name = valuesOf name headers
    if request.Method <> "CONNECT" then
        reject 405 "method-not-allowed" "a WebSocket over HTTP/2 is opened with an extended CONNECT (RFC 8441 §4)" [| header "Allow" "CONNECT" |]
    elif not (String.Equals(orEmpty protocol, "websocket", StringComparison.OrdinalIgnoreCase)) then
        badRequest "wrong-protocol" "the :protocol pseudo-header of the CONNECT is not websocket (RFC 8441 §4)"
    elif not (isHttp2OrLater request.HttpVersion) then
        badRequest "http-version" "an extended CONNECT needs HTTP/2 or later (RFC 8441 §3, RFC 9220 §3)"
    else
    match hostProblem (find "Host") with
    | Some rejection -> rejection
    | None ->
    match versionProblem (find "Sec-WebSocket-Version") with
    | Some rejection -> rejection
    | None -> acceptedConnect policy headers

/// An HTTP/1.1 request head (RFC 9112) read straight off a connection, for a host that accepts WebSocket
/// upgrades below an HTTP server's own parsing. (Its responses are written with `ResponseHead.render`.)
///
/// `parseWithin` is strict: the request line is `method SP request-target SP HTTP-version CRLF` (§3), each field
/// line `name ":" OWS value OWS CRLF` (§5), the head ends with an empty line. It checks every byte as it
/// goes, so garbage (a TLS ClientHello, a stray LF) is refused as soon as it is seen, not when the size
/// limit runs out. Choices where RFC 9112 leaves room:
///
/// - bare LF is not a line end (§2.2 allows either): 400 "bare-lf"; a CR not followed by LF is 400 "bare-cr";
/// - empty lines before the request line are skipped (§2.2) and count in `consumed` and in the limit;
/// - only origin-form targets ("/path?query") are accepted; absolute-form, authority-form and "*" are
///   400 "invalid-request-target" (WebSocket clients send origin-form, RFC 6455 §4.1);
/// - any well-formed HTTP/1.x version is accepted here and judged by `Handshake.accept` (HTTP/1.0 gets its
///   "http-version" rejection); another major version is 505, a malformed one 400;
/// - obs-fold and whitespace before the first field line are 400 "obs-fold" (§5.2, §2.2);
/// - the whole head, blank line included, must fit in `MaxHeadBytes`: a request line that does not end within
///   it is 414 "uri-too-long", field lines that do not end within it 431 "header-too-large".
module Realtime.Protocol.RequestHead

open System
open System.Text
open Realtime.Protocol.Handshake

/// What parsing the front of a byte stream as an HTTP/1.1 request head found.
type RequestHeadResult =
    /// The head is not complete yet (no CRLF CRLF so far) and is within the size limit: read more.
    | Incomplete
    /// A complete request head; `consumed` bytes (through the blank line) belong to it. The request's Path
    /// is the request-target as sent (path and query), its HttpVersion the version as sent ("HTTP/1.1"),
    /// its Headers every field line in order, values without the surrounding whitespace.
    | Complete of request: HandshakeRequest * consumed: int
    /// Not a valid request head, or too large: answer with this status (400, 414, 431 or 505) and close.
    /// `code` is one of "invalid-request-line", "invalid-request-target", "http-version-not-supported",
    /// "uri-too-long", "header-too-large", "invalid-header", "obs-fold", "bare-lf" or "bare-cr".
    | Invalid of status: int * code: string * reason: string

/// Limits on a request head, as an HTTP server sets them (RFC 9112 §3 and §5 leave them to the server;
/// Kestrel's defaults are 8 KiB for the request line, 32 KiB and 100 for the field lines).
type Limits =
    {
        /// The whole head, leading empty lines and the blank line included: past it, 414 or 431.
        MaxHeadBytes: int
        /// The request line with its CRLF: past it, 414 "uri-too-long".
        MaxRequestLineBytes: int
        /// The field lines with their CRLFs, the blank line not included: past it, 431 "header-too-large".
        MaxFieldBytes: int
        /// The number of field lines: past it, 431 "too-many-headers".
        MaxFieldCount: int
    }

// Where the scanner is. The *Cr states have just seen a CR and want the LF.
type private State =
    | LeadingStart = 0
    | LeadingCr = 1
    | Method = 2
    | TargetStart = 3
    | Target = 4
    | Version = 5
    | RequestLineCr = 6
    | LineStart = 7
    | Name = 8
    | Value = 9
    | ValueCr = 10
    | EndCr = 11

[<Literal>]
let private Cr = 13uy

[<Literal>]
let private Lf = 10uy

[<Literal>]
let private Sp = 32uy

[<Literal>]
let private Htab = 9uy

// RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
// / DIGIT / ALPHA.
let private tchars =
    Array.init 256 (fun i ->
        let c = char i
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || "!#$%&'*+-.^_`|~".IndexOf c >= 0)

let private isTChar (b: byte) = tchars[int b]

// VCHAR (RFC 5234 B.1): visible US-ASCII.
let private isVChar (b: byte) = b >= 0x21uy && b <= 0x7Euy

// RFC 9112 §5, RFC 9110 §5.5: field-vchar = VCHAR / obs-text, with SP and HTAB between them.
let private isValueByte (b: byte) = b = Sp || b = Htab || isVChar b || b >= 0x80uy

// RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT, HTTP-name = %s"HTTP" (case-sensitive).
let private versionByteFits (index: int) (b: byte) =
    match index with
    | 0 -> b = 'H'B
    | 1 | 2 -> b = 'T'B
    | 3 -> b = 'P'B
    | 4 -> b = '/'B
    | 5 | 7 -> b >= '0'B && b <= '9'B
    | 6 -> b = '.'B
    | _ -> false

let private invalid status code reason = Invalid(status, code, reason)

let private badRequestLine reason = invalid 400 "invalid-request-line" reason

let private badHeader reason = invalid 400 "invalid-header" reason

let private bareLf =
    invalid 400 "bare-lf" "a line ends in LF without CR (RFC 9112 §2.2: this parser does not accept bare LF)"

let private bareCr = invalid 400 "bare-cr" "a CR is not followed by LF (RFC 9112 §2.2)"

// Text that nearly every WebSocket handshake carries, spelled as browsers and common clients send it.
// A host keeps the parsed request as long as the connection (its HttpContext), so each of these is one
// shared string rather than a copy per connection. Matching is exact (byte for byte), so the text handed
// out is the same either way.
let private commonText =
    [| "GET"; "HTTP/1.1"; "/"
       "Host"; "Upgrade"; "websocket"; "Connection"; "Origin"; "User-Agent"; "Cache-Control"; "Pragma"; "no-cache"
       "Accept-Encoding"; "gzip, deflate, br, zstd"; "gzip, deflate, br"; "Accept-Language"; "Cookie"
       "keep-alive, Upgrade"
       "Sec-WebSocket-Key"; "Sec-WebSocket-Version"; "13"; "Sec-WebSocket-Extensions"; "Sec-WebSocket-Protocol"
       "permessage-deflate"; "permessage-deflate; client_max_window_bits"
       "host"; "upgrade"; "connection"; "origin"; "user-agent"
       "sec-websocket-key"; "sec-websocket-version"; "sec-websocket-extensions"; "sec-websocket-protocol" |]
    |> Array.map (fun text -> struct (Encoding.Latin1.GetBytes text, text))

let private latin1 (bytes: ReadOnlySpan<byte>) =
    let mutable found = null
    let mutable k = 0
    while isNull found && k < commonText.Length do
        let struct (known, text) = commonText[k]
        if bytes.SequenceEqual(ReadOnlySpan known) then found <- text
        k <- k + 1
    if isNull found then Encoding.Latin1.GetString bytes else found

// The request and its headers from a head the scanner found complete and valid.
let private build
    (input: ReadOnlySpan<byte>, requestStart: int, methodEnd: int, targetStart: int, targetEnd: int,
     versionStart: int, versionEnd: int, headersStart: int, headerCount: int)
    : HandshakeRequest =
    let headers = Array.zeroCreate<HttpHeader> headerCount
    let mutable position = headersStart
    for k in 0 .. headerCount - 1 do
        let line = input.Slice(position, input.Slice(position).IndexOf Cr)
        let colon = line.IndexOf ':'B
        // RFC 9112 §5: OWS around the value is not part of it.
        let mutable first = colon + 1
        let mutable last = line.Length
        while first < last && (line[first] = Sp || line[first] = Htab) do
            first <- first + 1
        while last > first && (line[last - 1] = Sp || line[last - 1] = Htab) do
            last <- last - 1
        headers[k] <-
            { Name = latin1 (line.Slice(0, colon))
              Value = latin1 (line.Slice(first, last - first)) }
        position <- position + line.Length + 2
    { Method = latin1 (input.Slice(requestStart, methodEnd - requestStart))
      Path = latin1 (input.Slice(targetStart, targetEnd - targetStart))
      HttpVersion = latin1 (input.Slice(versionStart, versionEnd - versionStart))
      Headers = headers }

/// Parses the front of `input` as an HTTP/1.1 request head (RFC 9112 §2.1: request line, field lines, empty
/// line) within `limits`: a head past one of them is Invalid as soon as the byte that passes it is seen
/// (414 for the request line, 431 for the field lines, their count or the whole head). Incomplete means
/// "read more and call again with all the bytes so far"; it allocates nothing. Bytes after the head (a
/// WebSocket frame sent early) are not part of it. A limit of zero or less admits nothing. Never throws.
let parseWithin (input: ReadOnlySpan<byte>, limits: Limits) : RequestHeadResult =
    let maxBytes = limits.MaxHeadBytes
    let limit = Math.Min(input.Length, Math.Max(maxBytes, 0))
    let mutable state = State.LeadingStart
    let mutable result = ValueNone
    let mutable requestStart = 0
    let mutable methodEnd = 0
    let mutable targetStart = 0
    let mutable targetEnd = 0
    let mutable versionStart = 0
    let mutable versionEnd = 0
    let mutable headersStart = 0
    let mutable headerCount = 0
    let mutable i = 0
    while result.IsNone && i < limit do
        let b = input[i]
        let inRequestLine =
            state = State.Method || state = State.TargetStart || state = State.Target || state = State.Version
            || state = State.RequestLineCr
        // The blank line's CR ends the field lines rather than adding to them.
        let inFieldLines =
            (state = State.LineStart && b <> Cr) || state = State.Name || state = State.Value || state = State.ValueCr
        if inRequestLine && i - requestStart >= limits.MaxRequestLineBytes then
            result <- ValueSome(invalid 414 "uri-too-long" $"the request line is longer than {limits.MaxRequestLineBytes} bytes (RFC 9112 §3)")
        elif inFieldLines && i - headersStart >= limits.MaxFieldBytes then
            result <- ValueSome(invalid 431 "header-too-large" $"the field lines are longer than {limits.MaxFieldBytes} bytes (RFC 6585 §5)")
        elif state = State.ValueCr && b = Lf && headerCount >= limits.MaxFieldCount then
            result <- ValueSome(invalid 431 "too-many-headers" $"more than {limits.MaxFieldCount} field lines (RFC 6585 §5)")
        else
            match state with
            | State.LeadingCr
            | State.RequestLineCr
            | State.ValueCr
            | State.EndCr when b <> Lf -> result <- ValueSome(bareCr)
            | State.LeadingCr -> state <- State.LeadingStart
            | State.RequestLineCr ->
                // RFC 9112 §2.3, §3: the version is checked before the target, so an HTTP/2 preface gets 505.
                if versionEnd - versionStart <> 8 then
                    result <- ValueSome(badRequestLine "the HTTP-version is not HTTP/DIGIT.DIGIT (RFC 9112 §2.3)")
                elif input[versionStart + 5] <> '1'B then
                    result <-
                        ValueSome(invalid 505 "http-version-not-supported" "only HTTP/1.x requests are read here (RFC 9112 §2.3)")
                elif input[targetStart] <> '/'B then
                    result <-
                        ValueSome(invalid 400 "invalid-request-target" "the request-target is not in origin-form, \"/path?query\" (RFC 9112 §3.2.1)")
                else
                    headersStart <- i + 1
                    state <- State.LineStart
            | State.ValueCr ->
                headerCount <- headerCount + 1
                state <- State.LineStart
            | State.EndCr ->
                let request =
                    build (input, requestStart, methodEnd, targetStart, targetEnd, versionStart, versionEnd, headersStart, headerCount)
                result <- ValueSome(Complete(request, i + 1))
            | _ when b = Lf -> result <- ValueSome(bareLf)
            | State.LeadingStart ->
                if b = Cr then state <- State.LeadingCr
                elif isTChar b then
                    requestStart <- i
                    state <- State.Method
                else
                    result <- ValueSome(badRequestLine "the request line does not start with a method token (RFC 9112 §3)")
            | State.Method ->
                if b = Sp then
                    methodEnd <- i
                    state <- State.TargetStart
                elif not (isTChar b) then
                    result <- ValueSome(badRequestLine "the method is not a token followed by one SP (RFC 9112 §3.1)")
            | State.TargetStart ->
                if isVChar b then
                    targetStart <- i
                    state <- State.Target
                else
                    result <- ValueSome(badRequestLine "the request-target is missing or not preceded by exactly one SP (RFC 9112 §3)")
            | State.Target ->
                if b = Sp then
                    targetEnd <- i
                    versionStart <- i + 1
                    state <- State.Version
                elif not (isVChar b) then
                    result <- ValueSome(badRequestLine "the request-target contains a byte that is not visible ASCII (RFC 9112 §3.2)")
            | State.Version ->
                if b = Cr then
                    versionEnd <- i
                    state <- State.RequestLineCr
                elif not (versionByteFits (i - versionStart) b) then
                    result <- ValueSome(badRequestLine "the HTTP-version is not HTTP/DIGIT.DIGIT followed by CRLF (RFC 9112 §2.3, §3)")
            | State.LineStart ->
                if b = Cr then state <- State.EndCr
                elif b = Sp || b = Htab then
                    result <-
                        ValueSome(invalid 400 "obs-fold" "a line starts with whitespace: obs-fold or space after the request line (RFC 9112 §5.2, §2.2)")
                elif isTChar b then state <- State.Name
                else result <- ValueSome(badHeader "a field name is empty or not a token (RFC 9112 §5)")
            | State.Name ->
                if b = ':'B then state <- State.Value
                elif b = Sp || b = Htab then
                    result <- ValueSome(badHeader "whitespace between a field name and the colon (RFC 9112 §5.1)")
                elif b = Cr then result <- ValueSome(badHeader "a field line has no colon (RFC 9112 §5)")
                elif not (isTChar b) then result <- ValueSome(badHeader "a field name is not a token (RFC 9112 §5)")
            | State.Value ->
                if b = Cr then state <- State.ValueCr
                elif not (isValueByte b) then
                    result <- ValueSome(badHeader "a field value contains a control character (RFC 9110 §5.5)")
            | _ -> ()
        i <- i + 1
    match result with
    | ValueSome found -> found
    | ValueNone when input.Length < maxBytes -> Incomplete
    | ValueNone ->
        match state with
        | State.Method
        | State.TargetStart
        | State.Target
        | State.Version
        | State.RequestLineCr ->
            invalid 414 "uri-too-long" $"the request line does not end within {maxBytes} bytes (RFC 9112 §3)"
        | _ ->
            invalid 431 "header-too-large" $"the request head does not end within {maxBytes} bytes (RFC 6585 §5)"

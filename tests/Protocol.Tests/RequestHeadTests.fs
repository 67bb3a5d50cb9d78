module Realtime.Protocol.Tests.RequestHeadTests

open System
open System.Text
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Handshake
open Realtime.Protocol.RequestHead
open Realtime.Protocol.Tests.Properties

let private header name value : HttpHeader = { Name = name; Value = value }

let private bytesOf (text: string) = Encoding.Latin1.GetBytes text

let private textOf (bytes: byte[]) = Encoding.Latin1.GetString bytes

// A head limit only: the other limits are examined in limitExamples.
let private onlyHeadBytes (maxBytes: int) =
    { MaxHeadBytes = maxBytes; MaxRequestLineBytes = Int32.MaxValue; MaxFieldBytes = Int32.MaxValue; MaxFieldCount = Int32.MaxValue }

let private parseBytes (bytes: byte[]) (maxBytes: int) = parseWithin (ReadOnlySpan<byte>(bytes), onlyHeadBytes maxBytes)

let private parsePrefix (bytes: byte[]) (length: int) (maxBytes: int) =
    parseWithin (ReadOnlySpan<byte>(bytes, 0, length), onlyHeadBytes maxBytes)

let private parseText (text: string) = parseBytes (bytesOf text) 8192

let private completed (result: RequestHeadResult) =
    match result with
    | Complete(request, consumed) -> request, consumed
    | other -> failtestf "expected a complete head, got %A" other

let private expectInvalid status code (text: string) =
    match parseText text with
    | Invalid(s, c, reason) ->
        Expect.equal (s, c) (status, code) $"status and code for %A{text}"
        Expect.isNotEmpty reason "a reason"
    | other -> failtestf "expected Invalid(%d, %s) for %A, got %A" status code text other

// RFC 6455 §1.3: the client's opening handshake.
let private rfc6455Sample =
    "GET /chat HTTP/1.1\r\n"
    + "Host: server.example.com\r\n"
    + "Upgrade: websocket\r\n"
    + "Connection: Upgrade\r\n"
    + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    + "Origin: http://example.com\r\n"
    + "Sec-WebSocket-Protocol: chat, superchat\r\n"
    + "Sec-WebSocket-Version: 13\r\n"
    + "\r\n"

let private rfc6455Request =
    { Method = "GET"
      Path = "/chat"
      HttpVersion = "HTTP/1.1"
      Headers =
        [| header "Host" "server.example.com"
           header "Upgrade" "websocket"
           header "Connection" "Upgrade"
           header "Sec-WebSocket-Key" "dGhlIHNhbXBsZSBub25jZQ=="
           header "Origin" "http://example.com"
           header "Sec-WebSocket-Protocol" "chat, superchat"
           header "Sec-WebSocket-Version" "13" |] }

let private examples =
    [
        test "RFC 6455 §1.3: the sample opening handshake parses to its request, all bytes consumed" {
            let request, consumed = completed (parseText rfc6455Sample)
            Expect.equal request rfc6455Request "request"
            Expect.equal consumed rfc6455Sample.Length "consumed"
            match accept { defaultPolicy with Subprotocols = [| "chat" |] } request with
            | Accepted acceptance -> Expect.equal acceptance.AcceptKey "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" "accept key"
            | Rejected rejection -> failtestf "the handshake should accept it, got %A" rejection
        }

        test "bytes after the blank line are not consumed" {
            let frame = [| 0x81uy; 0x85uy; 0x37uy; 0xFAuy; 0x21uy; 0x3Duy; 0x7Fuy; 0x9Fuy; 0x4Duy; 0x51uy; 0x58uy |]
            let bytes = Array.append (bytesOf rfc6455Sample) frame
            let request, consumed = completed (parseBytes bytes 8192)
            Expect.equal (request, consumed) (rfc6455Request, rfc6455Sample.Length) "head only"
            let twice = bytesOf (rfc6455Sample + rfc6455Sample)
            Expect.equal (completed (parseBytes twice 8192)) (rfc6455Request, rfc6455Sample.Length) "a pipelined second head"
        }

        test "common names and values come back as shared strings; anything else as its own text" {
            let parseHeaders (text: string) = (fst (completed (parseText text))).Headers
            let first = parseHeaders rfc6455Sample
            let second = parseHeaders rfc6455Sample
            for k in [ 0; 1; 2 ] do
                Expect.isTrue (Object.ReferenceEquals(first[k].Name, second[k].Name)) $"name {first[k].Name} shared"
            Expect.isTrue (Object.ReferenceEquals(first[1].Value, second[1].Value)) "\"websocket\" shared"
            Expect.isFalse (Object.ReferenceEquals(first[0].Value, second[0].Value)) "the host name is the request's own"
            // Matching is exact: another spelling is kept as sent.
            let other = parseHeaders "GET / HTTP/1.1\r\nHOST: h\r\nUpgrade: WebSocket\r\nHost: h\r\n\r\n"
            Expect.equal other [| header "HOST" "h"; header "Upgrade" "WebSocket"; header "Host" "h" |] "as sent"
            Expect.isFalse (Object.ReferenceEquals(other[0].Name, first[0].Name)) "HOST is not Host"
        }

        test "a head without field lines, query strings and odd but valid targets" {
            let text = "GET /?a=b&c=%20 HTTP/1.1\r\n\r\n"
            let request, consumed = completed (parseText text)
            Expect.equal request { Method = "GET"; Path = "/?a=b&c=%20"; HttpVersion = "HTTP/1.1"; Headers = [||] } "request"
            Expect.equal consumed text.Length "consumed"
            Expect.equal (fst (completed (parseText "M-S.E~A|RCH //x:y@z HTTP/1.1\r\n\r\n"))).Path "//x:y@z" "target"
        }

        test "§2.2: empty lines before the request line are skipped and consumed" {
            let text = "\r\n\r\n" + rfc6455Sample
            Expect.equal (completed (parseText text)) (rfc6455Request, text.Length) "skipped"
        }

        test "§5: OWS around values is dropped; empty values, obs-text and inner whitespace are kept" {
            let text = "GET / HTTP/1.1\r\nA:x\r\nB: \t y z \t\r\nC:\r\nD:   \r\nE: caf\xe9\r\nA: again\r\n\r\n"
            let request, _ = completed (parseText text)
            Expect.equal
                request.Headers
                [| header "A" "x"; header "B" "y z"; header "C" ""; header "D" ""; header "E" "caf\u00e9"; header "A" "again" |]
                "headers in order"
        }

        test "HTTP/1.x versions are read; HTTP/1.0 is left for the handshake to refuse" {
            for version in [ "HTTP/1.0"; "HTTP/1.1"; "HTTP/1.9" ] do
                let request, _ = completed (parseText $"GET / {version}\r\nHost: h\r\n\r\n")
                Expect.equal request.HttpVersion version version
            let request, _ = completed (parseText (rfc6455Sample.Replace("HTTP/1.1", "HTTP/1.0")))
            match accept defaultPolicy request with
            | Rejected rejection -> Expect.equal rejection.Code "http-version" "handshake code"
            | Accepted _ -> failtest "HTTP/1.0 should be refused by the handshake"
        }

        test "an unfinished head is Incomplete" {
            for text in [ ""; "G"; "GET"; "GET /chat HTTP/1.1"; "GET /chat HTTP/1.1\r"; "GET /chat HTTP/1.1\r\n"
                          "GET / HTTP/1.1\r\nHost: a\r\n"; "GET / HTTP/1.1\r\nHost: a\r\n\r"; "\r\n"; "\r" ] do
                Expect.equal (parseText text) Incomplete $"%A{text}"
        }

        test "§3: malformed request lines are 400 invalid-request-line" {
            for text in
                [ "GET  /chat HTTP/1.1\r\n\r\n"; "GET /chat  HTTP/1.1\r\n\r\n"; "GET /chat\r\n\r\n"; "GET\r\n\r\n"
                  "G(T /chat HTTP/1.1\r\n\r\n"; " GET / HTTP/1.1\r\n\r\n"; "GET /ch\000at HTTP/1.1\r\n\r\n"
                  "GET /caf\xe9 HTTP/1.1\r\n\r\n"; "GET /chat http/1.1\r\n\r\n"; "GET /chat HTTP/1.1 \r\n\r\n"
                  "GET /chat HTTP/11\r\n\r\n"; "GET /chat HTTP/1.\r\n\r\n"; "GET /chat HTTP/1.1x\r\n\r\n"
                  "GET\t/chat HTTP/1.1\r\n\r\n"; ":\r\n\r\n" ] do
                expectInvalid 400 "invalid-request-line" text
        }

        test "§2.3: another major version is 505" {
            expectInvalid 505 "http-version-not-supported" "GET /chat HTTP/2.0\r\n\r\n"
            expectInvalid 505 "http-version-not-supported" "GET /chat HTTP/0.9\r\n\r\n"
            // The HTTP/2 connection preface (RFC 9113 §3.4).
            expectInvalid 505 "http-version-not-supported" "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        }

        test "§3.2: only origin-form targets; absolute-form, authority-form and asterisk-form are 400" {
            for text in
                [ "GET http://example.com/chat HTTP/1.1\r\n\r\n"; "GET ws://example.com/chat HTTP/1.1\r\n\r\n"
                  "CONNECT example.com:443 HTTP/1.1\r\n\r\n"; "OPTIONS * HTTP/1.1\r\n\r\n" ] do
                expectInvalid 400 "invalid-request-target" text
        }

        test "§5, §5.1: malformed field lines are 400 invalid-header" {
            for line in
                [ "Host : x"; "Host\t: x"; "Host x"; ": x"; "Ho(st: x"; "Hóst: x"; "X: a\000b"; "X: a\127b"; "X: \001"
                  "X: a\x1bb"; "Host" ] do
                expectInvalid 400 "invalid-header" $"GET / HTTP/1.1\r\n{line}\r\n\r\n"
        }

        test "§5.2, §2.2: obs-fold and whitespace after the request line are 400 obs-fold" {
            expectInvalid 400 "obs-fold" "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"
            expectInvalid 400 "obs-fold" "GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n"
            expectInvalid 400 "obs-fold" "GET / HTTP/1.1\r\n Host: x\r\n\r\n"
        }

        test "§2.2: bare LF and bare CR are 400" {
            for text in
                [ "GET /chat HTTP/1.1\nHost: x\r\n\r\n"; "GET / HTTP/1.1\r\nHost: x\n\r\n"; "GET / HTTP/1.1\r\nHost: x\r\n\n"
                  "\nGET / HTTP/1.1\r\n\r\n"; "GET /\n"; "GET / HTTP/1.1\r\nHost\n" ] do
                expectInvalid 400 "bare-lf" text
            for text in
                [ "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"; "GET / HTTP/1.1\r\r\n\r\n"; "GET / HTTP/1.1\r\n\rx"; "\rGET" ] do
                expectInvalid 400 "bare-cr" text
        }

        test "garbage is refused as soon as it is seen, before the head could end" {
            // A TLS ClientHello's first bytes.
            match parseBytes [| 0x16uy; 0x03uy; 0x01uy |] 8192 with
            | Invalid(400, "invalid-request-line", _) -> ()
            | other -> failtestf "TLS: %A" other
            expectInvalid 505 "http-version-not-supported" "GET / HTTP/2.0\r\n"
            expectInvalid 400 "invalid-header" "GET / HTTP/1.1\r\nHost : "
            expectInvalid 400 "bare-lf" "GET /\n"
        }

        test "the whole head must fit in maxBytes: 431 for field lines, 414 for the request line" {
            let bytes = bytesOf rfc6455Sample
            Expect.equal (parseBytes bytes bytes.Length) (Complete(rfc6455Request, bytes.Length)) "exactly maxBytes"
            match parseBytes bytes (bytes.Length - 1) with
            | Invalid(431, "header-too-large", _) -> ()
            | other -> failtestf "one byte over: %A" other
            let longLine = bytesOf ("GET /" + String('a', 100))
            match parseBytes longLine 50 with
            | Invalid(414, "uri-too-long", _) -> ()
            | other -> failtestf "long request line: %A" other
            Expect.equal (parseBytes longLine 200) Incomplete "within the limit"
            Expect.equal (parseBytes longLine 106) Incomplete "one byte below the limit"
            match parseBytes longLine 105 with
            | Invalid(414, _, _) -> ()
            | other -> failtestf "at the limit: %A" other
            match parseBytes (bytesOf (String.replicate 10 "\r\n")) 20 with
            | Invalid(431, "header-too-large", _) -> ()
            | other -> failtestf "only empty lines: %A" other
            for limit in [ 0; -1; Int32.MinValue ] do
                match parseBytes [||] limit with
                | Invalid(431, "header-too-large", _) -> ()
                | other -> failtestf "limit %d: %A" limit other
            Expect.equal (parseBytes bytes Int32.MaxValue) (Complete(rfc6455Request, bytes.Length)) "no practical limit"
        }
    ]

// Generators

let private tchars = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

let private stringOf (lengths: int * int) (chars: Gen<char>) =
    gen {
        let! length = Gen.choose lengths
        let! cs = Gen.arrayOfLength length chars
        return String cs
    }

let private genToken = stringOf (1, 12) (Gen.elements tchars)

let private vchar = Gen.choose (0x21, 0x7E) |> Gen.map char

let private genTarget = stringOf (0, 30) vchar |> Gen.map (fun path -> "/" + path)

// field-vchar and inner SP / HTAB, no surrounding whitespace (parse drops it).
let private genValue =
    Gen.frequency
        [ 4,
          stringOf (0, 30) (Gen.frequency [ 8, vchar; 1, Gen.elements [ ' '; '\t' ]; 1, Gen.choose (0x80, 0xFF) |> Gen.map char ])
          |> Gen.map (fun v -> v.Trim(' ', '\t'))
          // Values the parser shares, and near misses.
          1, Gen.elements [ "websocket"; "WebSocket"; "13"; "1"; "Upgrade"; "keep-alive, Upgrade"; "GET" ] ]

let private genOws = Gen.elements [ ""; " "; "\t"; "  \t " ]

/// A valid request head: the request it stands for and its bytes.
type private Head = { Request: HandshakeRequest; Bytes: byte[] }

let private genHead =
    gen {
        let! methodName = Gen.oneof [ Gen.constant "GET"; genToken ]
        let! target = genTarget
        let! version = Gen.elements [ "HTTP/1.1"; "HTTP/1.0"; "HTTP/1.9" ]
        let! count = Gen.choose (0, 12)
        let! headers = Gen.listOfLength count (Gen.map2 header (Gen.oneof [ Gen.elements [ "Host"; "Upgrade"; "Sec-WebSocket-Key"; "sec-websocket-key"; "Sec-WebSocket-Ke" ]; genToken ]) genValue)
        let! lines =
            headers
            |> List.map (fun h -> Gen.map2 (fun before after -> $"{h.Name}:{before}{h.Value}{after}\r\n") genOws genOws)
            |> Gen.sequenceToList
        let! leading = Gen.elements [ ""; ""; ""; "\r\n" ]
        let text = leading + $"{methodName} {target} {version}\r\n" + String.concat "" lines + "\r\n"
        return
            { Request = { Method = methodName; Path = target; HttpVersion = version; Headers = List.toArray headers }
              Bytes = bytesOf text }
    }

let private anyBytes = ArbMap.defaults |> ArbMap.generate<byte[]> |> Gen.map (fun b -> if isNull b then [||] else b)

// Bytes that reach the deeper states: valid heads with one byte changed, inserted or cut, HTTP-ish noise,
// and random bytes.
let private genInput =
    Gen.oneof
        [ anyBytes
          gen {
              let! head = genHead
              let bytes = head.Bytes
              let! index = Gen.choose (0, bytes.Length - 1)
              let! value = Gen.elements [ 0uy; 9uy; 10uy; 13uy; 32uy; 58uy; 127uy; 0xE9uy; byte 'x' ]
              let! action = Gen.choose (0, 2)
              return
                  match action with
                  | 0 -> Array.updateAt index value bytes
                  | 1 -> Array.insertAt index value bytes
                  | _ -> bytes[.. index]
          }
          gen {
              let! pieces = Gen.listOf (Gen.elements [ "GET"; " "; "/"; "HTTP/1.1"; "\r\n"; "\r"; "\n"; ":"; "\t"; "a"; "\000" ])
              return bytesOf (String.concat "" pieces)
          } ]

let private genHeadAndLimit =
    gen {
        let! head = genHead
        let! limit = Gen.choose (0, head.Bytes.Length + 10)
        return head, limit
    }

let private genLimit = Gen.oneof [ Gen.choose (-2, 400); Gen.constant 8192; Gen.constant Int32.MaxValue ]

let private properties =
    [
        property "parse never throws; Complete consumes at most the input and maxBytes; Invalid is 400, 414, 431 or 505"
        <| Prop.forAll (Arb.fromGen (Gen.zip genInput genLimit)) (fun (bytes, limit) ->
            match parseBytes bytes limit with
            | Incomplete -> Expect.isLessThan bytes.Length limit "Incomplete only below the limit"
            | Complete(request, consumed) ->
                Expect.isLessThanOrEqual consumed bytes.Length "within the input"
                Expect.isLessThanOrEqual consumed limit "within the limit"
                Expect.isNotEmpty request.Method "a method"
                Expect.stringStarts request.Path "/" "origin-form"
            | Invalid(status, code, reason) ->
                Expect.contains [ 400; 414; 431; 505 ] status "status"
                Expect.isNotEmpty code "code"
                Expect.isNotEmpty reason "reason")

        property "a rendered valid request parses back to itself, every byte consumed"
        <| Prop.forAll (Arb.fromGen genHead) (fun head ->
            Expect.equal (parseBytes head.Bytes 8192) (Complete(head.Request, head.Bytes.Length)) "round trip")

        property "every strict prefix of a head is Incomplete; the head followed by anything is the same Complete"
        <| Prop.forAll (Arb.fromGen (Gen.zip genHead anyBytes)) (fun (head, rest) ->
            let bytes = head.Bytes
            for cut in 0 .. bytes.Length - 1 do
                Expect.equal (parsePrefix bytes cut 8192) Incomplete $"prefix of {cut}"
            Expect.equal (parseBytes (Array.append bytes rest) 8192) (Complete(head.Request, bytes.Length)) "with a tail")

        property "read in pieces, the first non-Incomplete result is the one for all the bytes at once"
        <| Prop.forAll (Arb.fromGen (Gen.zip genInput (Gen.choose (0, 400)))) (fun (bytes, limit) ->
            let whole = parseBytes bytes limit
            let mutable first = None
            for cut in 0 .. bytes.Length do
                if first.IsNone then
                    match parsePrefix bytes cut limit with
                    | Incomplete -> ()
                    | result -> first <- Some result
            match first with
            | Some result -> Expect.equal result whole "first definite answer"
            | None -> Expect.equal whole Incomplete "never definite")

        property "size limit: a head is Complete exactly when it fits in maxBytes, else 414 or 431"
        <| Prop.forAll (Arb.fromGen genHeadAndLimit) (fun (head, limit) ->
            match parseBytes head.Bytes limit with
            | Complete(request, consumed) ->
                Expect.isLessThanOrEqual consumed limit "fits"
                Expect.equal (request, consumed) (head.Request, head.Bytes.Length) "the head"
            | Invalid(status, code, _) as tooLarge ->
                Expect.isGreaterThan head.Bytes.Length limit "too large"
                Expect.contains [ 414; 431 ] status "size status"
                // Already the first `limit` bytes are too many without the end of the head.
                Expect.equal (parsePrefix head.Bytes limit limit) tooLarge $"the {limit}-byte prefix ({code})"
            | Incomplete -> failtest "a whole head is never Incomplete")
    ]

// Kestrel's defaults (KestrelServerLimits): what a host that defers to Kestrel passes in.
let private kestrelLimits =
    { MaxHeadBytes = 48 * 1024; MaxRequestLineBytes = 8192; MaxFieldBytes = 32768; MaxFieldCount = 100 }

let private parseWithinText (limits: Limits) (text: string) = parseWithin (ReadOnlySpan<byte>(bytesOf text), limits)

let private limitExamples =
    [
        test "100 field lines are within Kestrel's limits; the 101st is 431 too-many-headers, seen before the head ends" {
            let lines count = String.concat "" [ for k in 1..count -> $"X-{k}: v\r\n" ]
            let head count = "GET /chat HTTP/1.1\r\nHost: h\r\n" + lines (count - 1) + "\r\n"
            let request, _ = completed (parseWithinText kestrelLimits (head 100))
            Expect.equal request.Headers.Length 100 "all kept"
            match parseWithinText kestrelLimits (head 101) with
            | Invalid(431, "too-many-headers", _) -> ()
            | other -> failtestf "101 lines: %A" other
            // 9,900 more lines are not read first: the verdict comes at the 101st, with no blank line yet.
            match parseWithinText kestrelLimits ("GET / HTTP/1.1\r\n" + lines 9900) with
            | Invalid(431, "too-many-headers", _) -> ()
            | other -> failtestf "a flood of field lines: %A" other
        }

        test "the request line with its CRLF may be MaxRequestLineBytes long, not one byte more (414)" {
            let limits = { kestrelLimits with MaxRequestLineBytes = 40 }
            let line (length: int) = "GET /" + String('a', length - 16) + " HTTP/1.1\r\n"
            Expect.equal (line 40).Length 40 "the line's length"
            completed (parseWithinText limits (line 40 + "Host: h\r\n\r\n")) |> ignore
            match parseWithinText limits (line 41 + "Host: h\r\n\r\n") with
            | Invalid(414, "uri-too-long", _) -> ()
            | other -> failtestf "41 bytes: %A" other
            match parseWithinText limits ("GET /" + String('a', 100)) with
            | Invalid(414, "uri-too-long", _) -> ()
            | other -> failtestf "an unfinished long line: %A" other
        }

        test "field lines (names, values and CRLFs) may be MaxFieldBytes long, the blank line not counted; one more byte is 431" {
            let limits = { kestrelLimits with MaxFieldBytes = 20 }
            // "Host: h\r\n" is 9 bytes, "X-Name: v\r\n" 11.
            let fields (extra: int) = "Host: h\r\nX-Name: v" + String('v', extra) + "\r\n"
            Expect.equal (fields 0).Length 20 "the field lines' length"
            completed (parseWithinText limits ("GET / HTTP/1.1\r\n" + fields 0 + "\r\n")) |> ignore
            match parseWithinText limits ("GET / HTTP/1.1\r\n" + fields 1 + "\r\n") with
            | Invalid(431, "header-too-large", _) -> ()
            | other -> failtestf "21 bytes: %A" other
        }
    ]

let private limitProperties =
    [
        property "with limits no smaller than a head's parts, parseWithin agrees with parse"
        <| Prop.forAll (Arb.fromGen genHead) (fun head ->
            let generous =
                { MaxHeadBytes = 8192; MaxRequestLineBytes = 8192; MaxFieldBytes = 8192; MaxFieldCount = head.Request.Headers.Length }
            Expect.equal (parseWithin (ReadOnlySpan<byte>(head.Bytes), generous)) (parseBytes head.Bytes 8192) "same result")

        property "one field line fewer allowed than a head has is 431 too-many-headers"
        <| Prop.forAll (Arb.fromGen genHead) (fun head ->
            let count = head.Request.Headers.Length
            if count > 0 then
                match parseWithin (ReadOnlySpan<byte>(head.Bytes), { kestrelLimits with MaxFieldCount = count - 1 }) with
                | Invalid(431, "too-many-headers", _) -> ()
                | other -> failtestf "%d lines with a limit of %d: %A" count (count - 1) other)
    ]

[<Tests>]
let tests = testList "HTTP/1.1 request head (RFC 9112)" (examples @ properties)

[<Tests>]
let limitTests = testList "HTTP/1.1 request head: a server's limits (Kestrel's)" (limitExamples @ limitProperties)

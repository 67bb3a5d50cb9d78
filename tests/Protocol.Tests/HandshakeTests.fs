module Realtime.Protocol.Tests.HandshakeTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Handshake
open Realtime.Protocol.Tests.Properties

let private header name value : HttpHeader = { Name = name; Value = value }

// RFC 6455 §1.3's example key and its accept value.
let private sampleKey = "dGhlIHNhbXBsZSBub25jZQ=="
let private sampleAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

let private requiredHeaders =
    [| header "Host" "server.example.com"
       header "Upgrade" "websocket"
       header "Connection" "Upgrade"
       header "Sec-WebSocket-Key" sampleKey
       header "Sec-WebSocket-Version" "13" |]

let private request headers =
    { Method = "GET"
      Path = "/chat"
      HttpVersion = "HTTP/1.1"
      Headers = headers }

let private sample = request requiredHeaders

let private withHeader name value (r: HandshakeRequest) =
    { r with Headers = Array.append r.Headers [| header name value |] }

let private without name (r: HandshakeRequest) =
    { r with Headers = r.Headers |> Array.filter (fun h -> not (String.Equals(h.Name, name, StringComparison.OrdinalIgnoreCase))) }

let private replacing name value r = r |> without name |> withHeader name value

let private acceptedBy policy r =
    match accept policy r with
    | Accepted acceptance -> acceptance
    | Rejected rejection -> failtestf "should be accepted, got %A" rejection

let private rejectedBy policy r =
    match accept policy r with
    | Rejected rejection -> rejection
    | Accepted acceptance -> failtestf "should be rejected, got %A" acceptance

let private expectRejection r status code headers =
    let rejection = rejectedBy defaultPolicy r
    Expect.equal (rejection.Status, rejection.Code) (status, code) "status and code"
    Expect.equal rejection.Headers headers "headers"
    Expect.isNotEmpty rejection.Reason "a reason"

let private chat = { defaultPolicy with Subprotocols = [| "chat"; "superchat" |] }

// The 101 as a host that writes it itself sends it: the acceptance's status and headers through the core's renderer.
let private responseText (acceptance: Acceptance) =
    match ResponseHead.render (acceptance.Status, "", acceptance.ResponseHeaders) with
    | ResponseHead.Rendered head -> Text.Encoding.Latin1.GetString head
    | ResponseHead.SplitsResponse name -> failtestf "the header %s would split the response" name

[<Tests>]
let examples =
    testList "RFC 6455 §1.3 / §4.2 opening handshake" [
        test "§1.3: the sample key's accept value" {
            Expect.equal (acceptKey sampleKey) sampleAccept "RFC 6455 §1.3"
        }

        test "§1.3: the full 101 response for the sample request" {
            let acceptance = acceptedBy defaultPolicy sample
            Expect.equal acceptance.AcceptKey sampleAccept "accept key"
            Expect.equal
                (responseText acceptance)
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                "exact text"
            Expect.equal (acceptance.Subprotocol, acceptance.Deflate) (None, None) "nothing else chosen"
        }

        test "§4.2.2: subprotocol and extensions appear in the response" {
            let acceptance =
                sample
                |> withHeader "Sec-WebSocket-Protocol" "chat"
                |> withHeader "Sec-WebSocket-Extensions" "permessage-deflate; client_max_window_bits"
                |> acceptedBy chat
            Expect.equal
                (responseText acceptance)
                ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n"
                 + "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
                "exact text"
        }

        test "a method other than GET is 405 with Allow: GET" {
            expectRejection { sample with Method = "POST" } 405 "method-not-allowed" [| header "Allow" "GET" |]
            expectRejection { sample with Method = "get" } 405 "method-not-allowed" [| header "Allow" "GET" |]
        }

        test "HTTP/1.0 and unreadable versions are 400; 1.1 and later are fine" {
            for version in [ "HTTP/1.0"; "HTTP/0.9"; ""; "HTTP/1"; "HTTP/x.y"; "http/1.1" ] do
                expectRejection { sample with HttpVersion = version } 400 "http-version" [||]
            for version in [ "HTTP/1.1"; "1.1"; "HTTP/1.2"; "HTTP/2"; "HTTP/2.0" ] do
                acceptedBy defaultPolicy { sample with HttpVersion = version } |> ignore
        }

        test "a missing, empty or repeated Host is 400" {
            expectRejection (sample |> without "Host") 400 "missing-host" [||]
            expectRejection (sample |> replacing "Host" " ") 400 "missing-host" [||]
            expectRejection (sample |> withHeader "host" "other.example") 400 "duplicate-host" [||]
        }

        test "an Upgrade header without websocket is 400" {
            expectRejection (sample |> without "Upgrade") 400 "missing-upgrade" [||]
            expectRejection (sample |> replacing "Upgrade" "h2c") 400 "missing-upgrade" [||]
            expectRejection (sample |> replacing "Upgrade" "websocket/13") 400 "missing-upgrade" [||]
        }

        test "a Connection header without the upgrade token is 400" {
            expectRejection (sample |> without "Connection") 400 "missing-connection-upgrade" [||]
            expectRejection (sample |> replacing "Connection" "keep-alive") 400 "missing-connection-upgrade" [||]
            expectRejection (sample |> replacing "Connection" "upgrades") 400 "missing-connection-upgrade" [||]
        }

        test "a missing or other Sec-WebSocket-Version is 426 with Sec-WebSocket-Version: 13 (§4.2.2)" {
            let advertised = [| header "Sec-WebSocket-Version" "13" |]
            expectRejection (sample |> without "Sec-WebSocket-Version") 426 "missing-version" advertised
            for version in [ "8"; "12"; "14"; "13, 8"; "013"; "" ] do
                expectRejection (sample |> replacing "Sec-WebSocket-Version" version) 426 "unsupported-version" advertised
            expectRejection (sample |> withHeader "Sec-WebSocket-Version" "8") 426 "unsupported-version" advertised
        }

        test "Sec-WebSocket-Key must be there once and decode to 16 bytes" {
            expectRejection (sample |> without "Sec-WebSocket-Key") 400 "missing-key" [||]
            expectRejection (sample |> withHeader "Sec-WebSocket-Key" sampleKey) 400 "duplicate-key" [||]
            for key in
                [ ""; "abc"; "dGhlIHNhbXBsZSBub25jZQ"; "dGhlIHNhbXBsZSBub25jZQ=x"; "dGhlIHNhbXBsZSBub25jZSE="
                  "dGhlIHNhbXBsZSBub25j ZQ="; "*GhlIHNhbXBsZSBub25jZQ=="; "dGhlIHNhbXBsZSBub25jZQ==dGhl" ] do
                expectRejection (sample |> replacing "Sec-WebSocket-Key" key) 400 "invalid-key" [||]
        }

        test "header names and tokens are case-insensitive" {
            let headers =
                [| header "HOST" "server.example.com"
                   header "upgrade" "WebSocket"
                   header "CONNECTION" "UPGRADE"
                   header "sec-websocket-key" sampleKey
                   header "SEC-WEBSOCKET-VERSION" "13" |]
            Expect.equal (acceptedBy defaultPolicy (request headers)).AcceptKey sampleAccept "accepted"
        }

        test "comma lists and several header lines are read as lists (RFC 7230 §3.2.2, §7)" {
            let r = sample |> replacing "Connection" "keep-alive, Upgrade" |> replacing "Upgrade" "h2c , websocket"
            acceptedBy defaultPolicy r |> ignore
            let split = sample |> replacing "Connection" "keep-alive" |> withHeader "Connection" " ,upgrade"
            acceptedBy defaultPolicy split |> ignore
        }

        test "optional whitespace around values is ignored" {
            let r = sample |> replacing "Sec-WebSocket-Key" $"\t{sampleKey} " |> replacing "Sec-WebSocket-Version" " 13 "
            Expect.equal (acceptedBy defaultPolicy r).AcceptKey sampleAccept "trimmed key"
        }

        test "the subprotocol is the first in the client's order that the server supports" {
            let chosen offered =
                (sample |> withHeader "Sec-WebSocket-Protocol" offered |> acceptedBy chat).Subprotocol
            Expect.equal (chosen "superchat, chat") (Some "superchat") "client's order wins"
            Expect.equal (chosen "other, chat") (Some "chat") "first supported"
            Expect.equal (chosen "other") None "nothing supported"
            Expect.equal (chosen "Chat") None "compared exactly"
            Expect.equal (chosen "") None "empty list"
            Expect.equal (chosen " , ") None "only separators"
            Expect.equal (chosen "chat, a b") None "malformed list selects nothing"
            let twoLines = sample |> withHeader "Sec-WebSocket-Protocol" "other" |> withHeader "Sec-WebSocket-Protocol" "superchat"
            Expect.equal (acceptedBy chat twoLines).Subprotocol (Some "superchat") "lines joined"
            Expect.equal (acceptedBy defaultPolicy (sample |> withHeader "Sec-WebSocket-Protocol" "chat")).Subprotocol None "server speaks none"
        }

        test "permessage-deflate is negotiated through the handshake" {
            let acceptance =
                sample
                |> withHeader "Sec-WebSocket-Extensions" "foo, permessage-deflate; server_max_window_bits=8"
                |> withHeader "Sec-WebSocket-Extensions" "permessage-deflate; server_no_context_takeover"
                |> acceptedBy defaultPolicy
            Expect.equal
                acceptance.Deflate
                (Some { ServerNoContextTakeover = true; ClientNoContextTakeover = false; ServerMaxWindowBits = 15; ClientMaxWindowBits = 15 })
                "second offer"
            Expect.contains
                acceptance.ResponseHeaders
                (header "Sec-WebSocket-Extensions" "permessage-deflate; server_no_context_takeover")
                "response header"
        }

        test "a malformed or unacceptable extensions header declines compression, not the connection" {
            for value in [ "permessage-deflate; =1"; "permessage-deflate; foo"; "\"" ] do
                let acceptance = sample |> withHeader "Sec-WebSocket-Extensions" value |> acceptedBy defaultPolicy
                Expect.isNone acceptance.Deflate value
                Expect.isFalse (acceptance.ResponseHeaders |> Array.exists (fun h -> h.Name = "Sec-WebSocket-Extensions")) "no header"
            let disabled = { defaultPolicy with Deflate = { PerMessageDeflate.defaults with Enabled = false } }
            Expect.isNone (sample |> withHeader "Sec-WebSocket-Extensions" "permessage-deflate" |> acceptedBy disabled).Deflate "disabled"
        }

        test "nulls from C# callers never throw" {
            expectRejection (Unchecked.defaultof<HandshakeRequest>) 405 "method-not-allowed" [| header "Allow" "GET" |]
            expectRejection { sample with HttpVersion = null } 400 "http-version" [||]
            expectRejection { sample with Headers = null } 400 "missing-host" [||]
            let odd = Array.append sample.Headers [| Unchecked.defaultof<HttpHeader>; header null null; header "X" null |]
            acceptedBy { Subprotocols = null; Deflate = PerMessageDeflate.defaults } (request odd) |> ignore
            acceptedBy (Unchecked.defaultof<Policy>) sample |> ignore
            Expect.equal (acceptKey null) (acceptKey "") "null key"
        }
    ]

// Generators

let private relevantNames =
    [ "Host"; "Upgrade"; "Connection"; "Sec-WebSocket-Key"; "Sec-WebSocket-Version"; "Sec-WebSocket-Protocol"
      "Sec-WebSocket-Extensions"; "Origin" ]

let private randomCase (text: string) =
    gen {
        let! upper = Gen.arrayOfLength text.Length (Gen.elements [ true; false ])
        return String(text.ToCharArray() |> Array.mapi (fun i c -> if upper[i] then Char.ToUpperInvariant c else Char.ToLowerInvariant c))
    }

let private anyString = ArbMap.defaults |> ArbMap.generate<string>

let private arbitraryHeader =
    gen {
        let! name = Gen.oneof [ Gen.elements relevantNames |> Gen.bind randomCase; anyString ]
        let! value =
            Gen.oneof
                [ anyString
                  Gen.elements [ "websocket"; "Upgrade"; "13"; sampleKey; "chat, superchat"; "permessage-deflate; x"; " , " ] ]
        return header name value
    }

let private arbitraryRequest =
    gen {
        let! methodName = Gen.elements [ "GET"; "POST"; "get"; ""; null ]
        let! version = Gen.elements [ "HTTP/1.1"; "HTTP/1.0"; "HTTP/2"; "1.1"; "junk"; null ]
        let! headers = Gen.arrayOf arbitraryHeader
        return { Method = methodName; Path = "/"; HttpVersion = version; Headers = headers }
    }

let private key = Gen.arrayOfLength 16 (Gen.choose (0, 255) |> Gen.map byte) |> Gen.map Convert.ToBase64String

let private spaced (value: string) =
    gen {
        let! before = Gen.elements [ ""; " "; "\t" ]
        let! after = Gen.elements [ ""; " "; "\t " ]
        return before + value + after
    }

/// A valid handshake request: the required headers (names and tokens in random case, optional whitespace,
/// extra list elements), optional extras, in random order.
type private Template = { Required: HttpHeader array; Extras: HttpHeader array; Request: HandshakeRequest }

let private template =
    gen {
        let! hostName = Gen.elements [ "Host"; "host"; "HOST" ]
        let! host = Gen.elements [ "example.com"; "localhost:8080"; "[::1]" ]
        let! upgradeToken = randomCase "websocket"
        let! upgrade = Gen.elements [ upgradeToken; $"h2c, {upgradeToken}"; $"{upgradeToken}, foo/2" ]
        let! upgradeName = randomCase "Upgrade"
        let! connectionToken = randomCase "Upgrade"
        let! connection = Gen.elements [ connectionToken; $"keep-alive, {connectionToken}"; $"{connectionToken},close" ]
        let! connectionName = randomCase "Connection"
        let! keyName = randomCase "Sec-WebSocket-Key"
        let! keyValue = key
        let! versionName = randomCase "Sec-WebSocket-Version"
        let! values = [ upgrade; connection; keyValue; "13" ] |> List.map spaced |> Gen.sequenceToList
        let required =
            [| header hostName host
               header upgradeName values[0]
               header connectionName values[1]
               header keyName values[2]
               header versionName values[3] |]
        let! extras =
            Gen.subListOf
                [ header "Origin" "http://example.com"
                  header "User-Agent" "test"
                  header "Sec-WebSocket-Protocol" "chat, superchat"
                  header "Sec-WebSocket-Extensions" "permessage-deflate; client_max_window_bits"
                  header "Cookie" "a=b" ]
        let! headers = Gen.shuffle (Array.append required (List.toArray extras))
        let! httpVersion = Gen.elements [ "HTTP/1.1"; "1.1"; "HTTP/2" ]
        return
            { Required = required
              Extras = List.toArray extras
              Request = { Method = "GET"; Path = "/ws"; HttpVersion = httpVersion; Headers = headers } }
    }

[<Tests>]
let properties =
    testList "RFC 6455 §4.2 opening handshake properties" [
        property "accept never throws on arbitrary requests and gives a 4xx or a 101"
        <| Prop.forAll (Arb.fromGen arbitraryRequest) (fun r ->
            match accept chat r with
            | Accepted acceptance -> Expect.isTrue (acceptance.AcceptKey.Length = 28) "accept key"
            | Rejected rejection ->
                Expect.isTrue (rejection.Status >= 400 && rejection.Status < 500) "4xx"
                Expect.isNotEmpty rejection.Code "code")

        property "acceptKey always yields 28 characters of base64 for 20 bytes"
        <| Prop.forAll (Arb.fromGen (Gen.oneof [ anyString; key ])) (fun k ->
            let value = acceptKey k
            Expect.equal value.Length 28 "length"
            Expect.equal (Convert.FromBase64String value).Length 20 "SHA-1 size")

        property "a request built from a valid template is accepted"
        <| Prop.forAll (Arb.fromGen template) (fun t ->
            let acceptance = acceptedBy chat t.Request
            let key = t.Required |> Array.find (fun h -> h.Name.Equals("Sec-WebSocket-Key", StringComparison.OrdinalIgnoreCase))
            Expect.equal acceptance.AcceptKey (acceptKey (key.Value.Trim())) "accept key of the trimmed key"
            let offeredProtocol = t.Extras |> Array.exists (fun h -> h.Name = "Sec-WebSocket-Protocol")
            Expect.equal acceptance.Subprotocol (if offeredProtocol then Some "chat" else None) "subprotocol"
            let offeredDeflate = t.Extras |> Array.exists (fun h -> h.Name = "Sec-WebSocket-Extensions")
            Expect.equal acceptance.Deflate.IsSome offeredDeflate "deflate")

        property "removing any one required header makes the request rejected with a 4xx"
        <| Prop.forAll (Arb.fromGen (Gen.zip template (Gen.choose (0, 4)))) (fun (t, index) ->
            let removed = t.Required[index]
            let r = { t.Request with Headers = t.Request.Headers |> Array.filter (fun h -> not (obj.ReferenceEquals(h, removed))) }
            let rejection = rejectedBy chat r
            Expect.isTrue (rejection.Status >= 400 && rejection.Status < 500) "4xx")
    ]

// RFC 9110 §5.6.1: a header's tokens, as `accept` reads Upgrade and Connection.

// The rule spelled out naively: every line of the name, split at commas, trimmed, compared case-insensitively.
let private tokenModel (name: string) (token: string) (headers: HttpHeader array) =
    let orEmpty (text: string) = if isNull text then "" else text
    headers
    |> Array.filter (fun h -> not (isNull (box h)) && String.Equals(h.Name, name, StringComparison.OrdinalIgnoreCase))
    |> Array.collect (fun h -> (orEmpty h.Value).Split ',')
    |> Array.map (fun element -> element.Trim(' ', '\t'))
    |> Array.exists (fun element -> element <> "" && String.Equals(element, orEmpty token, StringComparison.OrdinalIgnoreCase))

let private tokenHeaders =
    gen {
        let! name = Gen.elements [ "Upgrade"; "upgrade"; "Connection"; "CONNECTION"; "Other"; ""; null ]
        let! value =
            Gen.oneof
                [ anyString
                  Gen.elements [ "websocket"; "WebSocket"; "h2c , websocket"; "websocket/13"; "keep-alive, Upgrade"; " ,upgrade"
                                 "upgrades"; ",,"; "\twebsocket\t"; ""; null ] ]
        let! isNull = Gen.frequency [ 9, Gen.constant false; 1, Gen.constant true ]
        return if isNull then Unchecked.defaultof<HttpHeader> else header name value
    }
    |> Gen.arrayOf

[<Tests>]
let tokenExamples =
    testList "RFC 9110 §5.6.1 header tokens (hasToken: Upgrade and Connection)" [
        test "a token alone, in a list, with whitespace around it, in any letter case" {
            for value in [ "websocket"; "WebSocket"; "h2c, websocket"; "h2c , websocket"; "websocket,h2c"; "\twebsocket "; ", ,websocket," ] do
                Expect.isTrue (hasToken "Upgrade" "websocket" [| header "Upgrade" value |]) $"Upgrade: {value}"
            Expect.isTrue (hasToken "Connection" "upgrade" [| header "connection" "keep-alive, Upgrade" |]) "name in other letter case"
            Expect.isTrue (hasToken "connection" "UPGRADE" [| header "Connection" "upgrade" |]) "token in other letter case"
        }

        test "every line of the name is part of the list (RFC 9110 §5.3)" {
            let lines = [| header "Connection" "keep-alive"; header "Host" "example.com"; header "Connection" " ,upgrade" |]
            Expect.isTrue (hasToken "Connection" "upgrade" lines) "the second Connection line"
        }

        test "a longer or shorter token, another header, an empty value or element is not the token" {
            for value in [ "websocket/13"; "websockets"; "web socket"; "h2c"; ""; " , "; "\"websocket\"" ] do
                Expect.isFalse (hasToken "Upgrade" "websocket" [| header "Upgrade" value |]) $"Upgrade: {value}"
            Expect.isFalse (hasToken "Connection" "upgrade" [| header "Connection" "upgrades" |]) "upgrades"
            Expect.isFalse (hasToken "Connection" "upgrade" [| header "Upgrade" "upgrade" |]) "another header's token"
            Expect.isFalse (hasToken "Upgrade" "" [| header "Upgrade" "" |]) "an empty token is never in the list"
        }

        test "null arrays, headers, names, values and tokens count as empty" {
            Expect.isFalse (hasToken "Upgrade" "websocket" null) "null array"
            Expect.isFalse (hasToken "Upgrade" "websocket" [| Unchecked.defaultof<HttpHeader> |]) "null header"
            Expect.isFalse (hasToken "Upgrade" "websocket" [| header null "websocket" |]) "null name"
            Expect.isFalse (hasToken "Upgrade" "websocket" [| header "Upgrade" null |]) "null value"
            Expect.isFalse (hasToken "Upgrade" null [| header "Upgrade" "websocket" |]) "null token"
            Expect.isFalse (hasToken null "websocket" [| header "Upgrade" "websocket" |]) "null name asked for"
        }

        property "hasToken is the naive split-trim-compare of every line, and never throws"
        <| Prop.forAll (Arb.fromGen (Gen.zip tokenHeaders (Gen.elements [ "websocket"; "upgrade"; "Upgrade"; ""; null ]))) (fun (headers, token) ->
            for name in [ "Upgrade"; "Connection"; "Other"; "" ] do
                Expect.equal (hasToken name token headers) (tokenModel name token headers) $"{name} has {token}")
    ]

// RFC 8441: the same handshake as an extended CONNECT on HTTP/2.

let private connectRequest headers =
    { Method = "CONNECT"
      Path = "/chat"
      HttpVersion = "HTTP/2"
      Headers = headers }

// RFC 8441 §5's example, less the pseudo-headers the host reads itself (:authority becomes Host).
let private connectSample =
    connectRequest [| header "Host" "server.example.com"; header "Sec-WebSocket-Version" "13"; header "Origin" "http://www.example.com" |]

let private connectAcceptedBy policy protocol r =
    match acceptExtendedConnect policy protocol r with
    | Accepted acceptance -> acceptance
    | Rejected rejection -> failtestf "should be accepted, got %A" rejection

let private expectConnectRejection protocol r status code headers =
    match acceptExtendedConnect defaultPolicy protocol r with
    | Rejected rejection ->
        Expect.equal (rejection.Status, rejection.Code) (status, code) "status and code"
        Expect.equal rejection.Headers headers "headers"
        Expect.isNotEmpty rejection.Reason "a reason"
    | Accepted acceptance -> failtestf "should be rejected, got %A" acceptance

[<Tests>]
let extendedConnectExamples =
    testList "RFC 8441 §4-§5 extended CONNECT handshake" [
        test "§5: the example request is accepted with 200, no accept key and no headers" {
            let acceptance = connectAcceptedBy defaultPolicy "websocket" connectSample
            Expect.equal acceptance.Status 200 "200, not 101"
            Expect.equal acceptance.AcceptKey "" "no Sec-WebSocket-Accept value"
            Expect.equal acceptance.ResponseHeaders [||] "nothing to negotiate, nothing to answer"
            Expect.equal (acceptance.Subprotocol, acceptance.Deflate) (None, None) "nothing chosen"
        }

        test "an HTTP/1.1 upgrade is accepted with 101 (the two forms differ in status)" {
            Expect.equal (acceptedBy defaultPolicy sample).Status 101 "101"
        }

        test "§5: subprotocol and permessage-deflate give the same headers as over HTTP/1.1, and only those" {
            let negotiation r =
                r
                |> withHeader "Sec-WebSocket-Protocol" "superchat, chat"
                |> withHeader "Sec-WebSocket-Extensions" "permessage-deflate; client_max_window_bits"
            let overHttp2 = connectAcceptedBy chat "websocket" (negotiation connectSample)
            let overHttp11 = acceptedBy chat (negotiation sample)
            Expect.equal overHttp2.Subprotocol (Some "superchat") "the client's first supported protocol"
            Expect.equal
                overHttp2.ResponseHeaders
                [| header "Sec-WebSocket-Protocol" "superchat"
                   header "Sec-WebSocket-Extensions" "permessage-deflate" |]
                "exact headers"
            Expect.equal (overHttp2.Subprotocol, overHttp2.Deflate) (overHttp11.Subprotocol, overHttp11.Deflate) "same choices"
            Expect.equal overHttp2.ResponseHeaders overHttp11.ResponseHeaders[3..] "the 101's headers after Upgrade, Connection and Accept"
        }

        test "§5: Sec-WebSocket-Key, Upgrade and Connection are not used: present or absent, nothing changes" {
            let withHttp11Headers =
                connectSample
                |> withHeader "Sec-WebSocket-Key" "not even base64"
                |> withHeader "Upgrade" "h2c"
                |> withHeader "Connection" "close"
            Expect.equal
                (acceptExtendedConnect defaultPolicy "websocket" withHttp11Headers)
                (acceptExtendedConnect defaultPolicy "websocket" connectSample)
                "the same acceptance"
        }

        test "§5: a missing Sec-WebSocket-Version gets 426 with the supported version" {
            expectConnectRejection "websocket" (connectSample |> without "Sec-WebSocket-Version") 426 "missing-version" [| header "Sec-WebSocket-Version" "13" |]
        }

        test "§5: a version other than 13 gets 426 with the supported version" {
            for version in [ "8"; "13, 8"; "" ] do
                expectConnectRejection "websocket" (connectSample |> replacing "Sec-WebSocket-Version" version) 426 "unsupported-version" [| header "Sec-WebSocket-Version" "13" |]
        }

        test "§4: a :protocol other than websocket gets 400; the token is case-insensitive (RFC 9110 §7.8)" {
            for protocol in [ "webtransport"; "websocket2"; ""; null ] do
                expectConnectRejection protocol connectSample 400 "wrong-protocol" [||]
            Expect.equal (connectAcceptedBy defaultPolicy "WebSocket" connectSample).Status 200 "WebSocket"
        }

        test "§4: the method must be CONNECT" {
            for methodName in [ "GET"; "connect"; "POST"; ""; null ] do
                expectConnectRejection "websocket" { connectSample with Method = methodName } 405 "method-not-allowed" [| header "Allow" "CONNECT" |]
        }

        test "§3: extended CONNECT needs HTTP/2 or later (HTTP/3 too, RFC 9220)" {
            for version in [ "HTTP/1.1"; "HTTP/1.0"; "1.1"; "junk"; ""; null ] do
                expectConnectRejection "websocket" { connectSample with HttpVersion = version } 400 "http-version" [||]
            for version in [ "HTTP/2"; "HTTP/2.0"; "2"; "HTTP/3" ] do
                Expect.equal (connectAcceptedBy defaultPolicy "websocket" { connectSample with HttpVersion = version }).Status 200 version
        }

        test ":authority (Host) must be there once, as over HTTP/1.1" {
            expectConnectRejection "websocket" (connectSample |> without "Host") 400 "missing-host" [||]
            expectConnectRejection "websocket" (connectSample |> replacing "Host" "") 400 "missing-host" [||]
            expectConnectRejection "websocket" (connectSample |> withHeader "Host" "other.example") 400 "duplicate-host" [||]
        }

        test "null policy, request, protocol and headers count as empty" {
            expectConnectRejection "websocket" (Unchecked.defaultof<HandshakeRequest>) 405 "method-not-allowed" [| header "Allow" "CONNECT" |]
            expectConnectRejection "websocket" { connectSample with Headers = null } 400 "missing-host" [||]
            let withNullHeader = { connectSample with Headers = Array.append connectSample.Headers [| Unchecked.defaultof<HttpHeader> |] }
            Expect.equal (connectAcceptedBy (Unchecked.defaultof<Policy>) "websocket" withNullHeader).Status 200 "a null header is skipped"
        }
    ]

/// Negotiation headers as clients send them, well-formed or not.
let private negotiationHeaders =
    let protocols = Gen.elements [ "chat"; "superchat, chat"; "other"; "chat superchat"; " , chat"; ""; "v2.chat, chat" ]
    let extensions =
        Gen.elements
            [ "permessage-deflate"
              "permessage-deflate; client_max_window_bits"
              "permessage-deflate; server_max_window_bits=10, permessage-deflate"
              "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
              "permessage-deflate; server_max_window_bits=7"
              "permessage-deflate; unknown"
              "x-webkit-deflate-frame"
              "permessage-deflate; client_max_window_bits=\"12\""
              ";;" ]
    gen {
        let! protocolLines = Gen.listOfLength 2 protocols |> Gen.bind Gen.subListOf
        let! extensionLines = Gen.listOfLength 2 extensions |> Gen.bind Gen.subListOf
        return
            [| for p in protocolLines -> header "Sec-WebSocket-Protocol" p
               for e in extensionLines -> header "Sec-WebSocket-Extensions" e |]
    }

let private policies =
    gen {
        let! subprotocols = Gen.elements [ [||]; [| "chat" |]; [| "superchat"; "chat" |] ]
        let! enabled = Gen.elements [ true; false ]
        return { Subprotocols = subprotocols; Deflate = { PerMessageDeflate.defaults with Enabled = enabled } }
    }

let private anyProtocol = Gen.oneof [ anyString; Gen.elements [ "websocket"; "WEBSOCKET"; "webtransport" ] ]

[<Tests>]
let extendedConnectProperties =
    testList "RFC 8441 §5 extended CONNECT handshake properties" [
        property "subprotocol and permessage-deflate negotiation is identical to HTTP/1.1's"
        <| Prop.forAll (Arb.fromGen (Gen.zip policies negotiationHeaders)) (fun (policy, negotiation) ->
            let overHttp11 = acceptedBy policy (request (Array.append requiredHeaders negotiation))
            let overHttp2 = connectAcceptedBy policy "websocket" (connectRequest (Array.append connectSample.Headers negotiation))
            Expect.equal (overHttp2.Subprotocol, overHttp2.Deflate) (overHttp11.Subprotocol, overHttp11.Deflate) "same choices"
            Expect.equal overHttp2.ResponseHeaders overHttp11.ResponseHeaders[3..] "same negotiated headers")

        property "an HTTP/1.1 template turned into a CONNECT (Upgrade, Connection and Key dropped) is accepted with 200"
        <| Prop.forAll (Arb.fromGen template) (fun t ->
            let unused = set [ "upgrade"; "connection"; "sec-websocket-key" ]
            let connect =
                { t.Request with
                    Method = "CONNECT"
                    HttpVersion = "HTTP/2"
                    Headers = t.Request.Headers |> Array.filter (fun h -> not (unused.Contains(h.Name.ToLowerInvariant()))) }
            let overHttp2 = connectAcceptedBy chat "websocket" connect
            let overHttp11 = acceptedBy chat t.Request
            Expect.equal overHttp2.Status 200 "200"
            Expect.equal (overHttp2.Subprotocol, overHttp2.Deflate) (overHttp11.Subprotocol, overHttp11.Deflate) "same choices")

        property "acceptExtendedConnect never throws and gives a 4xx, or a 200 without Sec-WebSocket-Accept"
        <| Prop.forAll (Arb.fromGen (Gen.zip anyProtocol arbitraryRequest)) (fun (protocol, r) ->
            let r = { r with Method = (if isNull r.Method then null else "CONNECT"); HttpVersion = (if r.HttpVersion = "HTTP/1.1" then "HTTP/2" else r.HttpVersion) }
            match acceptExtendedConnect chat protocol r with
            | Accepted acceptance ->
                Expect.equal acceptance.Status 200 "200"
                Expect.equal acceptance.AcceptKey "" "no key"
                Expect.isFalse (acceptance.ResponseHeaders |> Array.exists (fun h -> h.Name = "Sec-WebSocket-Accept")) "no accept header"
            | Rejected rejection ->
                Expect.isTrue (rejection.Status >= 400 && rejection.Status < 500) "4xx"
                Expect.isNotEmpty rejection.Code "code")
    ]

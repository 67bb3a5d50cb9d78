module Realtime.Protocol.Tests.ResponseHeadTests

open System
open System.Text
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Handshake
open Realtime.Protocol.ResponseHead
open Realtime.Protocol.Tests.Properties

let private header name value : HttpHeader = { Name = name; Value = value }

let private textOf (rendering: Rendering) =
    match rendering with
    | Rendered head -> Encoding.Latin1.GetString head
    | SplitsResponse name -> failtestf "expected a head, got SplitsResponse %s" name

let private splits (text: string) = not (isNull text) && text.AsSpan().IndexOfAny('\r', '\n') >= 0

let private examples =
    [
        test "a status line with the status's reason phrase, the header lines in order, then the empty line" {
            Expect.equal
                (textOf (render (405, "", [| header "Allow" "GET"; header "Content-Type" "text/plain; charset=utf-8" |])))
                "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                "405"
            Expect.equal (textOf (render (101, null, [||]))) "HTTP/1.1 101 Switching Protocols\r\n\r\n" "no headers"
        }

        test "RFC 9110 §15's reason phrases; none for a status without one (RFC 9112 §4)" {
            for status, phrase in
                [ 400, "Bad Request"; 403, "Forbidden"; 414, "URI Too Long"; 426, "Upgrade Required"
                  429, "Too Many Requests"; 431, "Request Header Fields Too Large"; 500, "Internal Server Error"
                  503, "Service Unavailable"; 505, "HTTP Version Not Supported" ] do
                Expect.equal (reasonPhrase status) phrase $"{status}"
                Expect.stringStarts (textOf (render (status, "", [||]))) $"HTTP/1.1 {status} {phrase}\r\n" phrase
            Expect.stringStarts (textOf (render (599, "", [||]))) "HTTP/1.1 599 \r\n" "no phrase"
        }

        test "a reason phrase given is written instead of the status's own" {
            Expect.stringStarts (textOf (render (200, "Fine", [||]))) "HTTP/1.1 200 Fine\r\n" "given"
        }

        test "several lines with one name stay several lines; names and values as given" {
            Expect.equal
                (textOf (render (200, "", [| header "set-cookie" "a=1"; header "Set-Cookie" "b=2"; header "X-Empty" "" |])))
                "HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty: \r\n\r\n"
                "as given"
        }

        test "RFC 9110 §5.5: a CR or LF in a value, a name or the reason phrase renders nothing" {
            Expect.equal (render (200, "", [| header "X-Ok" "ok"; header "X-Split" "a\r\nSet-Cookie: b" |])) (SplitsResponse "X-Split") "CRLF"
            Expect.equal (render (200, "", [| header "X-Lf" "a\nb" |])) (SplitsResponse "X-Lf") "bare LF"
            Expect.equal (render (200, "", [| header "X-Cr" "a\rb" |])) (SplitsResponse "X-Cr") "bare CR"
            Expect.equal (render (200, "", [| header "X\r\nY" "v" |])) (SplitsResponse "X\r\nY") "in a name"
            Expect.equal (render (200, "OK\r\nX: y", [||])) (SplitsResponse ":status") "in the reason phrase"
        }

        test "nulls from C# callers never throw" {
            Expect.equal (render (200, null, null)) (render (200, "", [||])) "null headers"
            Expect.equal
                (textOf (render (200, "", [| Unchecked.defaultof<HttpHeader>; header null null; header "X" null |])))
                "HTTP/1.1 200 OK\r\n: \r\nX: \r\n\r\n"
                "null entries left out, null text empty"
        }
    ]

let private anyText = ArbMap.defaults |> ArbMap.generate<string>

let private properties =
    [
        property "any status and headers: a head that ends once, at its end, unless a line break would split it"
        <| Prop.forAll
            (Arb.fromGen (Gen.zip3 (ArbMap.defaults |> ArbMap.generate<int>) anyText (Gen.listOf (Gen.zip anyText anyText))))
            (fun (status, phrase, pairs) ->
                let headers = pairs |> List.map (fun (n, v) -> header n v) |> List.toArray
                let breaks = splits phrase || pairs |> List.exists (fun (n, v) -> splits n || splits v)
                match render (status, phrase, headers) with
                | SplitsResponse _ -> Expect.isTrue breaks "only for a line break"
                | Rendered head ->
                    Expect.isFalse breaks "a line break is never written"
                    let text = Encoding.Latin1.GetString head
                    Expect.stringStarts text $"HTTP/1.1 {status} " "status line"
                    Expect.equal (text.IndexOf("\r\n\r\n", StringComparison.Ordinal)) (text.Length - 4) "one blank line, at the end"
                    Expect.equal (text.Split("\r\n").Length) (headers.Length + 3) "one line per header")
    ]

[<Tests>]
let tests = testList "HTTP/1.1 response head (RFC 9112 §4-§5)" (examples @ properties)

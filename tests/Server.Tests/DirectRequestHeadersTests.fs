/// A directly accepted request hands on its header lines as the core parsed them: the application reads
/// them as ordinary request headers, and the handshake takes the parsed lines themselves unless the
/// application changed them (then it reads what the application left, as on Kestrel's path).
module Realtime.Server.Tests.DirectRequestHeadersTests

open System
open Expecto
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.Primitives
open Realtime.Direct
open Realtime.Protocol

let private line name value : Handshake.HttpHeader = { Name = name; Value = value }

let private lines () =
    [| line "Host" "127.0.0.1:5080"
       line "Upgrade" "websocket"
       line "Connection" "Upgrade"
       line "Sec-WebSocket-Protocol" "chat"
       line "sec-websocket-protocol" "superchat"
       line "Origin" "https://good.example"
       line "Content-Length" " 0 "
       line "X-Empty" "" |]

/// The same lines through ASP.NET's own dictionary, as the direct path built it before.
let private appended (parsed: Handshake.HttpHeader[]) =
    let headers = HeaderDictionary()
    for header in parsed do headers.Append(header.Name, StringValues header.Value)
    headers

let private pairs (headers: IHeaderDictionary) = [ for pair in headers -> pair.Key.ToLowerInvariant(), List.ofSeq pair.Value ]

[<Tests>]
let tests =
    testList "Direct: request headers as parsed, until the application changes them" [
        test "reads are those of a HeaderDictionary with the same lines, empty values kept" {
            let parsed = lines ()
            let headers = DirectRequestHeaders(parsed) :> IHeaderDictionary
            let expected = appended parsed
            for name in [ "host"; "UPGRADE"; "Sec-WebSocket-Protocol"; "Origin"; "Missing" ] do
                Expect.equal (List.ofSeq headers[name]) (List.ofSeq expected[name]) name
                Expect.equal (headers.ContainsKey name) (expected.ContainsKey name) $"ContainsKey {name}"
            Expect.equal (List.ofSeq headers["Sec-WebSocket-Protocol"]) [ "chat"; "superchat" ] "lines of one name joined in order"
            Expect.equal headers.Origin (StringValues "https://good.example") "typed header"
            Expect.equal headers.ContentLength (Nullable 0L) "Content-Length"
            Expect.equal (List.ofSeq headers["X-Empty"]) [ "" ] "an empty value is kept"
            Expect.equal headers.Count (expected.Count + 1) "one key per name (and the empty one)"
            Expect.equal (pairs headers |> List.filter (fun (name, _) -> name <> "x-empty")) (pairs expected) "enumeration, in order"
        }

        test "unchanged, the handshake gets the parsed lines themselves" {
            let parsed = lines ()
            let headers = DirectRequestHeaders(parsed)
            headers["Origin"] |> ignore
            headers.TryGetValue("Host") |> ignore
            Expect.isTrue (obj.ReferenceEquals(headers.AsParsed, parsed)) "the same array after reads"
        }

        test "any change copies them: later reads see it and the handshake no longer takes the parsed lines" {
            let changes: (string * (IHeaderDictionary -> unit) * (IHeaderDictionary -> bool)) list =
                [ "set", (fun h -> h["Sec-WebSocket-Protocol"] <- StringValues "other"), (fun h -> h["Sec-WebSocket-Protocol"] = StringValues "other")
                  "add", (fun h -> h.Add("X-Added", StringValues "1")), (fun h -> h["X-Added"] = StringValues "1")
                  "remove", (fun h -> h.Remove "Origin" |> ignore), (fun h -> not (h.ContainsKey "Origin"))
                  "clear", (fun h -> h.Clear()), (fun h -> h.Count = 0)
                  "Content-Length", (fun h -> h.ContentLength <- Nullable 5L), (fun h -> h["Content-Length"] = StringValues "5") ]
            for name, change, visible in changes do
                let headers = DirectRequestHeaders(lines ())
                change headers
                Expect.isNull headers.AsParsed $"{name}: no longer as parsed"
                Expect.isTrue (visible headers) $"{name}: the change is read back"
                if name <> "clear" then
                    Expect.equal (List.ofSeq headers["Host"]) [ "127.0.0.1:5080" ] $"{name}: the other headers stay"
                    Expect.equal (List.ofSeq headers["X-Empty"]) [ "" ] $"{name}: an empty value stays"
        }
    ]

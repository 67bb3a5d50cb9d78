module Realtime.Protocol.Tests.RefusalTests

open System.Text
open Expecto
open Realtime.Protocol
open Realtime.Protocol.Handshake

let private header name value : HttpHeader = { Name = name; Value = value }

let private textType = header "Content-Type" "text/plain; charset=utf-8"

let private text (response: Response) = Encoding.UTF8.GetString response.Body

// RFC 6455 §1.3's sample request.
let private sample =
    { Method = "GET"
      Path = "/chat"
      HttpVersion = "HTTP/1.1"
      Headers =
        [| header "Host" "server.example.com"
           header "Upgrade" "websocket"
           header "Connection" "Upgrade"
           header "Sec-WebSocket-Key" "dGhlIHNhbXBsZSBub25jZQ=="
           header "Sec-WebSocket-Version" "13" |] }

let private rejectionOf request =
    match accept defaultPolicy request with
    | Rejected rejection -> rejection
    | Accepted _ -> failtest "should be refused"

[<Tests>]
let tests =
    testList "Refusals: the responses that refuse an upgrade" [
        test "a refused handshake answers with its status, its headers (RFC 6455 §4.2.2) and its reason as text" {
            let missingVersion = rejectionOf { sample with Headers = sample.Headers |> Array.filter (fun h -> h.Name <> "Sec-WebSocket-Version") }
            let response = Refusal.response (Invalid missingVersion)
            Expect.equal (response.Status, response.Headers) (426, [| header "Sec-WebSocket-Version" "13"; textType |]) "426"
            Expect.equal (text response) missingVersion.Reason "the reason"
            Expect.equal (Invalid missingVersion).Code "missing-version" "its code"
            let post = Refusal.response (Invalid(rejectionOf { sample with Method = "POST" }))
            Expect.equal (post.Status, post.Headers) (405, [| header "Allow" "GET"; textType |]) "405"
        }

        test "the server's own refusals: status, code and text" {
            for refusal, status, code, body in
                [ ShuttingDown, 503, "shutting-down", "server shutting down"
                  HeadersTooLarge, 431, "headers-too-large", "request headers too large"
                  NotUpgradable, 400, "not-upgradable", "this request cannot be upgraded (an HTTP/1.1 upgrade or an HTTP/2 extended CONNECT is required)"
                  OriginNotAllowed, 403, "origin-not-allowed", "origin not allowed"
                  TooManyConnections, 503, "too-many-connections", "too many connections"
                  ByApplication(401, "who are you?"), 401, "attach-rejected", "who are you?"
                  ByApplication(403, null), 403, "attach-rejected", "rejected" ] do
                let response = Refusal.response refusal
                Expect.equal (response.Status, refusal.Code, response.Headers, text response) (status, code, [| textType |], body) code
        }

        test "the text is UTF-8" {
            Expect.equal (Refusal.response (ByApplication(409, "déjà vu ✓"))).Body (Encoding.UTF8.GetBytes "déjà vu ✓") "UTF-8"
        }

        test "an application that failed gets a bare 500" {
            Expect.equal (Refusal.response ApplicationFailed) { Status = 500; Headers = [||]; Body = [||] } "500"
            Expect.equal ApplicationFailed.Code "attach-failed" "code"
        }

        test "the response renders as the head a host writes itself" {
            let response = Refusal.response OriginNotAllowed
            match ResponseHead.render (response.Status, "", response.Headers) with
            | ResponseHead.Rendered head ->
                Expect.equal
                    (Encoding.Latin1.GetString head)
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                    "head"
            | other -> failtestf "%A" other
        }

        test "nulls from C# callers never throw" {
            let badRequest = Refusal.response (Invalid(Unchecked.defaultof<Rejection>))
            Expect.equal (badRequest.Status, text badRequest) (400, "bad request") "null rejection"
            Expect.equal (Refusal.response (Unchecked.defaultof<Refusal>)) badRequest "null refusal"
            Expect.equal (Refusal.response (ByApplication(400, null))).Body (Encoding.UTF8.GetBytes "rejected") "null reason"
        }
    ]

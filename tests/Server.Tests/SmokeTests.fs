/// The first end-to-end checks: a real upgrade answered with the core's handshake, and an echo.
module Realtime.Server.Tests.SmokeTests

open System.Net.WebSockets
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost

let private echoRoutes (app: WebApplication) =
    app.MapRealtime("/echo", RealtimeHandlers<obj>(Message = fun ws message -> ws.Send(message.Data.Span, message.Kind) |> ignore))
    |> ignore

[<Tests>]
let tests =
    testList "Host: opening handshake and echo" [
        testCaseTask "the 101 answer carries the core's Sec-WebSocket-Accept for the RFC 6455 §1.3 key" (fun () -> task {
            let! server = start ignore echoRoutes
            use _ = server
            let! tcp, stream, head = RawClient.handshakeRaw server.Port (RawClient.upgradeRequest "/echo" "")
            use _ = tcp
            use _ = stream
            Expect.stringStarts head "HTTP/1.1 101" "switching protocols"
            let expected = Handshake.acceptKey "dGhlIHNhbXBsZSBub25jZQ=="
            Expect.stringContains head $"Sec-WebSocket-Accept: {expected}" "accept key from the core"
            Expect.stringContains head "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" "the RFC's own value"
        })
        testCaseTask "a ClientWebSocket gets its text and binary messages back unchanged" (fun () -> task {
            let! server = start ignore echoRoutes
            use _ = server
            let! client = connect (server.WsUrl + "/echo")
            use _ = client
            do! sendText client "hello"
            let! text = receiveText client
            Expect.equal text "hello" "text echoed"
            do! client.SendAsync(System.ArraySegment [| 0uy; 1uy; 255uy |], WebSocketMessageType.Binary, true, System.Threading.CancellationToken.None)
            let! kind, bytes = receive client
            Expect.equal kind WebSocketMessageType.Binary "binary stays binary"
            Expect.equal bytes [| 0uy; 1uy; 255uy |] "same bytes"
        })
    ]

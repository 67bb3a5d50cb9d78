/// Bad input and failing handlers close the connection with the RFC 6455 close code.
module Realtime.Server.Tests.CloseCodeTests

open System
open System.Collections.Concurrent
open System.Net.WebSockets
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.Logging
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.TestLogs
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.ClientWebSockets

let private strictRoutes (closes: ConcurrentQueue<int>) (app: WebApplication) =
    app.MapRealtime(
        "/strict",
        RealtimeHandlers<obj>(
            Message =
                (fun ws message ->
                    if message.IsText && message.Text = "boom" then raise (InvalidOperationException "boom")
                    ws.Send(message.Data.Span, message.Kind) |> ignore),
            Close = (fun _ code _ -> closes.Enqueue code)
        ),
        fun options ->
            options.MaxPayloadLength <- 1024
            options.CloseTimeout <- seconds 2.0
    )
    |> ignore
    app.MapRealtime(
        "/fails-open",
        RealtimeHandlers<obj>(
            Open = (fun _ -> raise (InvalidOperationException "open failed")),
            Close = (fun _ code _ -> closes.Enqueue code)
        )
    )
    |> ignore

/// A raw client does something wrong on /strict: it gets a close frame with the code, the TCP
/// connection ends, the Close handler sees the code, and the server still serves.
let private refusedWith (expected: uint16) (misbehave: RawClient.RawConnection -> Task) () : Task<unit> =
    task {
        let closes = ConcurrentQueue<int>()
        let mutable logs = Unchecked.defaultof<CapturedLogs>
        let! server = start ignore (fun app -> logs <- captureLogs LogLevel.Trace app; strictRoutes closes app)
        use _ = server
        use! raw = RawClient.connect server.Port "/strict"
        do! misbehave raw
        let! code = raw.ReceiveClose(seconds 10.0)
        Expect.equal code (Some expected) $"closed with {expected}"
        let! ended = raw.WaitForTransportClose(seconds 10.0)
        Expect.isTrue ended "the server ended the TCP connection"
        do! expectEventually (seconds 10.0) "Close ran" (fun () -> closes.Count = 1)
        Expect.equal (closes.ToArray()) [| int expected |] "the Close handler saw the code"
        let! client = connect (server.WsUrl + "/strict")
        use _ = client
        do! sendText client "next"
        let! echo = receiveText client
        Expect.equal echo "next" "the server keeps serving"
        let escaped = logs.Entries |> Array.filter (fun e -> e.Category.StartsWith "Microsoft.AspNetCore" && e.Level >= LogLevel.Error)
        Expect.isEmpty escaped "no exception reached Kestrel"
    }

[<Tests>]
let closeCodeTests =
    testList "Host: bad input and failing handlers close with the RFC 6455 code" [
        testCaseTask "a message announced larger than MaxPayloadLength gets 1009 before its payload is sent"
            (refusedWith 1009us (fun raw ->
                let header = Frame.encodeHeader { Frame.header Opcode.Binary 2048L with Masked = true; MaskKey = 0x01020304u }
                raw.SendRaw header))

        testCaseTask "fragments adding up past MaxPayloadLength get 1009"
            (refusedWith 1009us (fun raw ->
                task {
                    do! raw.SendFrame(Opcode.Binary, Array.zeroCreate 600, fin = false)
                    do! raw.SendFrame(Opcode.Continuation, Array.zeroCreate 600)
                }))

        testCaseTask "a text message that is not UTF-8 gets 1007"
            (refusedWith 1007us (fun raw -> raw.SendFrame(Opcode.Text, [| 0xC3uy; 0x28uy |])))

        testCaseTask "an unmasked frame from the client gets 1002"
            (refusedWith 1002us (fun raw -> raw.SendRaw [| 0x81uy; 0x02uy; byte 'h'; byte 'i' |]))

        testCaseTask "a reserved opcode gets 1002"
            (refusedWith 1002us (fun raw -> raw.SendRaw [| 0x83uy; 0x80uy; 0uy; 0uy; 0uy; 0uy |]))

        testCaseTask "RSV2 set without an extension gets 1002"
            (refusedWith 1002us (fun raw -> raw.SendFrame(Opcode.Text, "x"B, rsv2 = true)))

        testCaseTask "RSV1 set when no compression was negotiated gets 1002"
            (refusedWith 1002us (fun raw -> raw.SendFrame(Opcode.Text, "x"B, rsv1 = true)))

        testCaseTask "a Message handler that throws closes with 1011, the error is logged, and the server keeps serving" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let mutable logs = Unchecked.defaultof<CapturedLogs>
            let! server = start ignore (fun app -> logs <- captureLogs LogLevel.Trace app; strictRoutes closes app)
            use _ = server
            let! client = connect (server.WsUrl + "/strict")
            use _ = client
            do! sendText client "fine"
            let! echo = receiveText client
            Expect.equal echo "fine" "works before"
            do! sendText client "boom"
            do! sendText client "never handled"
            let! code, _ = receiveClose client
            Expect.equal code 1011 "1011 internal error"
            do! client.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            do! expectEventually (seconds 10.0) "Close ran" (fun () -> closes.Count = 1)
            Expect.equal (closes.ToArray()) [| 1011 |] "the Close handler saw 1011"
            let failures = logs.Entries |> Array.filter (fun e -> e.EventId = 5 && e.Level = LogLevel.Error)
            Expect.equal failures.Length 1 "the handler failure was logged once"
            Expect.equal failures[0].Error.Message "boom" "with the exception"
            Expect.stringContains failures[0].Message "Message" "naming the handler"
            let! other = connect (server.WsUrl + "/strict")
            use _ = other
            do! sendText other "still here"
            let! echo = receiveText other
            Expect.equal echo "still here" "the server keeps serving"
            let escaped = logs.Entries |> Array.filter (fun e -> e.Category.StartsWith "Microsoft.AspNetCore" && e.Level >= LogLevel.Error)
            Expect.isEmpty escaped "no exception reached Kestrel"
        })

        testCaseTask "an Open handler that throws closes with 1011" (fun () -> task {
            let closes = ConcurrentQueue<int>()
            let mutable logs = Unchecked.defaultof<CapturedLogs>
            let! server = start ignore (fun app -> logs <- captureLogs LogLevel.Trace app; strictRoutes closes app)
            use _ = server
            let! client = connect (server.WsUrl + "/fails-open")
            use _ = client
            let! code, _ = receiveClose client
            Expect.equal code 1011 "1011 internal error"
            do! client.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            do! expectEventually (seconds 10.0) "Close ran" (fun () -> closes.Count = 1)
            Expect.equal (closes.ToArray()) [| 1011 |] "the Close handler saw 1011"
            Expect.exists logs.Entries (fun e -> e.EventId = 5 && e.Error.Message = "open failed") "the failure was logged"
        })
    ]

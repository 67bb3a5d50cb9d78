/// The suite's transport switch (REALTIME_TEST_TRANSPORT): the in-process hosts of this suite really
/// run on the transport the run asked for, so the native run cannot pass on Kestrel's socket transport
/// unnoticed.
module Realtime.Browser.Tests.SuiteTransportTests

open System
open System.Collections.Concurrent
open System.Net.WebSockets
open System.Threading
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Http
open Realtime
open Realtime.Browser.Tests.Infrastructure
open Realtime.TestSupport.SuiteTransport

[<Tests>]
let tests =
    testList "Test hosts: the suite's transport (REALTIME_TEST_TRANSPORT)" [
        testCaseTask $"a dev-server host runs on the run's transport (native: {nativeTransport})" (fun () -> task {
            let ids = ConcurrentQueue<string>()
            let probe (app: WebApplication) =
                app.MapRealtime(
                    "/probe",
                    RealtimeHandlers<obj>(
                        Attach = (fun (http: HttpContext) ->
                            ids.Enqueue http.Connection.Id
                            Attachment<obj>.Accept null),
                        Message = fun ws message -> ws.Send(message.Data.Span, message.Kind) |> ignore))
                |> ignore
            use! host = startDevOn 0 (site [ "index.html", page "probe" "<p>probe</p>" ]) [] false probe
            use client = new ClientWebSocket()
            use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 15.0)
            do! client.ConnectAsync(Uri(host.Url.Replace("http://", "ws://") + "/probe"), cancel.Token)
            do! client.SendAsync(ArraySegment("hi"B), WebSocketMessageType.Text, true, cancel.Token)
            let buffer = Array.zeroCreate<byte> 16
            let! received = client.ReceiveAsync(ArraySegment buffer, cancel.Token)
            Expect.equal (Text.Encoding.UTF8.GetString(buffer, 0, received.Count)) "hi" "echoed"
            do! client.CloseAsync(WebSocketCloseStatus.NormalClosure, "", cancel.Token)
            let seen = ids.ToArray()
            Expect.equal seen.Length 1 "one upgrade"
            Expect.equal (isNativeConnectionId seen[0]) nativeTransport $"the connection ({seen[0]}) is on the run's transport"
        })
    ]

/// The suite's transport switch (REALTIME_TEST_TRANSPORT): a host that follows it really runs on the
/// transport the run asked for, and one that keeps its own transport does not, so that the native run
/// of the suite cannot pass on Kestrel's socket transport unnoticed.
module Realtime.Server.Tests.SuiteTransportTests

open System
open System.Collections.Concurrent
open System.Threading
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Http
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.TestSupport.SuiteTransport

/// Starts a host on `transport` whose /echo records the connection id of every upgrade; opens one
/// WebSocket, checks the echo, and returns the ids recorded.
let private connectionIdsOn (transport: HostTransport) =
    task {
        let ids = ConcurrentQueue<string>()
        let! server =
            startOn transport ignore ignore (fun app ->
                app.MapRealtime(
                    "/echo",
                    RealtimeHandlers<obj>(
                        Attach = (fun (http: HttpContext) ->
                            ids.Enqueue http.Connection.Id
                            Attachment<obj>.Accept null),
                        Message = fun ws message -> ws.Send(message.Data.Span, message.Kind) |> ignore))
                |> ignore)
        use _ = server
        use! client = connect (server.WsUrl + "/echo")
        do! sendText client "which transport?"
        let! echoed = receiveText client
        Expect.equal echoed "which transport?" "echoed"
        do! client.CloseAsync(Net.WebSockets.WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
        return ids.ToArray()
    }

[<Tests>]
let suiteTransportTests =
    testList "Test hosts: the suite's transport (REALTIME_TEST_TRANSPORT)" [
        testCaseTask $"a host that follows the switch runs on the run's transport ({suiteTransport})" (fun () -> task {
            let! ids = connectionIdsOn FollowSuite
            Expect.equal ids.Length 1 "one upgrade"
            match suiteTransport with
            | Native -> Expect.isTrue (isNativeConnectionId ids[0]) $"the native transport took the upgrade (connection {ids[0]})"
            | KestrelSockets -> Expect.isFalse (isNativeConnectionId ids[0]) $"Kestrel's socket transport took the upgrade (connection {ids[0]})"
        })

        testCaseTask "a host that keeps its own transport stays on Kestrel's socket transport whatever the run asks for" (fun () -> task {
            let! ids = connectionIdsOn OwnTransport
            Expect.equal ids.Length 1 "one upgrade"
            Expect.isFalse (isNativeConnectionId ids[0]) $"Kestrel's socket transport took the upgrade (connection {ids[0]})"
        })
    ]

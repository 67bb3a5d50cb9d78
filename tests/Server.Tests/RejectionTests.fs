/// Requests the host refuses before the upgrade get an HTTP status, not a WebSocket: failing or
/// refusing Attach, and requests that are not upgrades.
module Realtime.Server.Tests.RejectionTests

open System
open System.Net
open System.Net.Http
open System.Net.WebSockets
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.Logging
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.TestLogs
open Realtime.Server.Tests.Timing

let private http = new HttpClient(Timeout = seconds 10.0)

let private guardedRoutes (attached: int ref) (opened: int ref) (app: WebApplication) =
    let handlers =
        RealtimeHandlers<string>(
            Attach =
                (fun http ->
                    Interlocked.Increment attached |> ignore
                    match http.Request.Query["token"].ToString() with
                    | "" -> Attachment<string>.Reject(401, "token required")
                    | "secret" -> Attachment<string>.Accept "user"
                    | "explode" -> raise (InvalidOperationException "attach exploded")
                    | _ -> Attachment<string>.Reject(403, "forbidden")),
            Open = (fun ws -> Interlocked.Increment opened |> ignore),
            Message = (fun ws message -> ws.Send(message.Data.Span, message.Kind) |> ignore)
        )
    app.MapRealtime("/guarded", handlers) |> ignore
    app.MapRealtime(
        "/guarded-async",
        RealtimeHandlers<string>(
            AttachAsync =
                (fun http ->
                    task {
                        do! Task.Delay 10
                        return Attachment<string>.Reject(403, "not today")
                    }
                    |> ValueTask<Attachment<string>>),
            Open = (fun _ -> Interlocked.Increment opened |> ignore)
        )
    )
    |> ignore

let private rawHead (port: int) (request: string) : Task<string> =
    task {
        let! tcp, stream, head = RawClient.handshakeRaw port request
        stream.Dispose()
        tcp.Dispose()
        return head
    }

[<Tests>]
let rejectionTests =
    testList "Host: requests refused before the upgrade get an HTTP status, not a WebSocket" [
        testCaseTask "Attach rejecting with 401 answers 401 with its reason and never upgrades" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            let! head = rawHead server.Port (RawClient.upgradeRequest "/guarded" "")
            Expect.stringStarts head "HTTP/1.1 401" "401 Unauthorized"
            Expect.isFalse (head.Contains "Sec-WebSocket-Accept") "no accept key"
            Expect.equal attached.Value 1 "Attach ran"
            Expect.equal opened.Value 0 "Open never ran"
            Expect.equal server.Realtime.ConnectionCount 0 "no connection"
        })

        testCaseTask "Attach rejecting with 403 makes ClientWebSocket fail with status 403" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            use client = new ClientWebSocket()
            client.Options.CollectHttpResponseDetails <- true
            use cancel = new CancellationTokenSource(seconds 10.0)
            let! failure =
                task {
                    try
                        do! client.ConnectAsync(Uri(server.WsUrl + "/guarded?token=wrong"), cancel.Token)
                        return None
                    with :? WebSocketException as e -> return Some e
                }
            Expect.isSome failure "the connect failed"
            Expect.equal client.HttpStatusCode HttpStatusCode.Forbidden "403 Forbidden"
            Expect.equal opened.Value 0 "Open never ran"
            let! allowed = connect (server.WsUrl + "/guarded?token=secret")
            use _ = allowed
            do! sendText allowed "let in"
            let! echo = receiveText allowed
            Expect.equal echo "let in" "the right token is let in"
        })

        testCaseTask "AttachAsync rejecting with 403 answers 403" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            let! head = rawHead server.Port (RawClient.upgradeRequest "/guarded-async" "")
            Expect.stringStarts head "HTTP/1.1 403" "403 from the asynchronous Attach"
            Expect.equal opened.Value 0 "Open never ran"
        })

        testCaseTask "an Attach that throws answers 500 and the server keeps serving" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let mutable logs = Unchecked.defaultof<CapturedLogs>
            let! server = start ignore (fun app -> logs <- captureLogs LogLevel.Trace app; guardedRoutes attached opened app)
            use _ = server
            let! head = rawHead server.Port (RawClient.upgradeRequest "/guarded?token=explode" "")
            Expect.stringStarts head "HTTP/1.1 500" "500 Internal Server Error"
            Expect.exists logs.Entries (fun e -> e.EventId = 6 && e.Level = LogLevel.Error && e.Error :? InvalidOperationException) "the failure is logged"
            let! client = connect (server.WsUrl + "/guarded?token=secret")
            use _ = client
            do! sendText client "still serving"
            let! echo = receiveText client
            Expect.equal echo "still serving" "the next connection works"
        })

        testCaseTask "a plain GET without Upgrade gets 400 or 426 and Attach does not run" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            let! response = http.GetAsync(server.HttpUrl + "/guarded?token=secret")
            Expect.contains [ HttpStatusCode.BadRequest; HttpStatusCode.UpgradeRequired ] response.StatusCode "400 or 426"
            Expect.equal attached.Value 0 "Attach is not asked about a request that is no handshake"
        })

        testCaseTask "another method than GET gets 405 with Allow: GET" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            let! response = http.PostAsync(server.HttpUrl + "/guarded?token=secret", new StringContent("x"))
            Expect.equal response.StatusCode HttpStatusCode.MethodNotAllowed "405"
            Expect.sequenceEqual (response.Content.Headers.Allow |> List.ofSeq) [ "GET" ] "Allow: GET"
            let upgradeByPost = (RawClient.upgradeRequest "/guarded?token=secret" "").Replace("GET ", "POST ")
            let! head = rawHead server.Port upgradeByPost
            Expect.stringStarts head "HTTP/1.1 405" "an upgrade attempt by POST is refused too"
            Expect.equal attached.Value 0 "Attach did not run"
        })

        testCaseTask "an unsupported Sec-WebSocket-Version gets 426 with Sec-WebSocket-Version: 13" (fun () -> task {
            let attached, opened = ref 0, ref 0
            let! server = start ignore (guardedRoutes attached opened)
            use _ = server
            let request = (RawClient.upgradeRequest "/guarded?token=secret" "").Replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
            let! head = rawHead server.Port request
            Expect.stringStarts head "HTTP/1.1 426" "426 Upgrade Required"
            Expect.stringContains head "Sec-WebSocket-Version: 13" "names the version the server speaks"
            Expect.equal attached.Value 0 "Attach did not run"
            Expect.equal opened.Value 0 "nothing opened"
        })
    ]

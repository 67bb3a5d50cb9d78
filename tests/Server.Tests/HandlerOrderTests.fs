/// The handlers' order on a real connection: Attach, Open, Message..., Close, with Attach's data,
/// connection ids, and lookup of connections from ordinary routes.
module Realtime.Server.Tests.HandlerOrderTests

open System
open System.Collections.Concurrent
open System.Net
open System.Net.Http
open System.Net.WebSockets
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.ClientWebSockets

let private http = new HttpClient(Timeout = seconds 10.0)

/// What Attach returns for the tests: a name from the query string.
type Visitor = { Name: string }

let private orderedRoutes (events: ConcurrentQueue<string>) (app: WebApplication) =
    app.MapRealtime(
        "/room",
        RealtimeHandlers<Visitor>(
            Attach =
                (fun http ->
                    let name = http.Request.Query["name"].ToString()
                    events.Enqueue $"attach:{name}"
                    Attachment<Visitor>.Accept { Name = name }),
            Open =
                (fun ws ->
                    events.Enqueue $"open:{ws.Data.Name}"
                    ws.Send($"id:{ws.Id}") |> ignore),
            Message =
                (fun ws message ->
                    events.Enqueue $"message:{ws.Data.Name}:{message.Text}"
                    if message.Text = "kick me" then ws.Close(4001, "kicked")),
            Close = (fun ws code reason -> events.Enqueue $"close:{ws.Data.Name}:{code}:{reason}")
        )
    )
    |> ignore

[<Tests>]
let handlerOrderTests =
    testList "Host: handlers run Attach, Open, Message..., Close in order with Attach's data" [
        testCaseTask "a connection sees Attach, Open, each message in order, then Close once with the client's code and reason" (fun () -> task {
            let events = ConcurrentQueue<string>()
            let! server = start ignore (orderedRoutes events)
            use _ = server
            let! client, _ = connectWithId (server.WsUrl + "/room?name=alice")
            use _ = client
            for text in [ "one"; "two"; "three" ] do
                do! sendText client text
            do! closeClient client 4000 "bye"
            do! expectEventually (seconds 10.0) "the Close handler ran" (fun () -> events |> Seq.exists (fun e -> e.StartsWith "close:"))
            do! Task.Delay 200
            Expect.sequenceEqual
                (events.ToArray())
                [ "attach:alice"; "open:alice"; "message:alice:one"; "message:alice:two"; "message:alice:three"; "close:alice:4000:bye" ]
                "Attach, Open, messages in order, one Close with the client's code and reason, all with the name from Attach"
            Expect.equal client.CloseStatus (Nullable(enum<WebSocketCloseStatus> 4000)) "the server echoed the client's close code"
        })

        testCaseTask "a close started by the server with ws.Close reaches the client and the Close handler" (fun () -> task {
            let events = ConcurrentQueue<string>()
            let! server = start ignore (orderedRoutes events)
            use _ = server
            let! client, _ = connectWithId (server.WsUrl + "/room?name=bob")
            use _ = client
            do! sendText client "kick me"
            let! code, reason = receiveClose client
            Expect.equal (code, reason) (4001, "kicked") "the client receives the server's code and reason"
            do! client.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            do! expectEventually (seconds 10.0) "the Close handler ran" (fun () -> events |> Seq.exists (fun e -> e.StartsWith "close:"))
            do! Task.Delay 200
            Expect.equal (events |> Seq.filter (fun e -> e.StartsWith "close:") |> List.ofSeq) [ "close:bob:4001:kicked" ] "Close ran once with the server's code"
        })

        testCaseTask "a client that drops the TCP connection without a close frame gives Close 1006 once" (fun () -> task {
            let events = ConcurrentQueue<string>()
            let! server = start ignore (orderedRoutes events)
            use _ = server
            let! client, _ = connectWithId (server.WsUrl + "/room?name=carol")
            client.Abort()
            client.Dispose()
            do! expectEventually (seconds 10.0) "the Close handler ran" (fun () -> events |> Seq.exists (fun e -> e.StartsWith "close:"))
            do! Task.Delay 200
            Expect.equal (events |> Seq.filter (fun e -> e.StartsWith "close:") |> List.ofSeq) [ "close:carol:1006:" ] "abnormal closure, reported once"
        })

        testCaseTask "an async Message handler finishes before the next message and before Close, even when the client closes meanwhile" (fun () -> task {
            let events = ConcurrentQueue<string>()
            let routes (app: WebApplication) =
                app.MapRealtime(
                    "/slow",
                    RealtimeHandlers<obj>(
                        MessageAsync =
                            (fun _ message ->
                                task {
                                    let text = message.Text
                                    events.Enqueue $"start:{text}"
                                    do! Task.Delay 150
                                    events.Enqueue $"end:{text}"
                                }
                                :> Task),
                        Close = (fun _ code _ -> events.Enqueue $"close:{code}")
                    )
                )
                |> ignore
            let! server = start ignore routes
            use _ = server
            use! raw = RawClient.connect server.Port "/slow"
            do! raw.SendText "a"
            do! raw.SendText "b"
            do! raw.SendClose(1000us, "")
            let! code = raw.ReceiveClose(seconds 10.0)
            Expect.equal code (Some 1000us) "the close is answered"
            do! expectEventually (seconds 10.0) "Close ran" (fun () -> events |> Seq.exists (fun e -> e.StartsWith "close:"))
            Expect.sequenceEqual (events.ToArray()) [ "start:a"; "end:a"; "start:b"; "end:b"; "close:1000" ] "never overlapping, in order"
        })

        testCaseTask "every connection has its own id, TryGetConnection finds it while open and not after" (fun () -> task {
            let events = ConcurrentQueue<string>()
            let! server = start ignore (orderedRoutes events)
            use _ = server
            let! clients = Task.WhenAll [ for i in 1..5 -> connectWithId (server.WsUrl + $"/room?name=n{i}") ]
            try
                let ids = clients |> Array.map snd
                Expect.equal (Array.distinct ids).Length 5 "five different ids"
                for id in ids do
                    let socket = socketOf server id
                    Expect.equal socket.Id id "the found connection has the id asked for"
                    Expect.equal socket.Endpoint "/room" "and belongs to the endpoint"
                    Expect.isTrue socket.IsOpen "and is open"
                    Expect.equal (socket :?> RealtimeSocket<Visitor>).Data.Name $"n{Array.IndexOf(ids, id) + 1}" "with its own data"
                let first, firstId = clients[0]
                do! closeClient first 1000 ""
                do! expectEventually (seconds 10.0) "a closed connection is no longer found" (fun () -> not (fst (server.Realtime.TryGetConnection firstId)))
                Expect.equal server.Realtime.ConnectionCount 4 "the others remain"
            finally
                for client, _ in clients do client.Dispose()
        })

        testCaseTask "an ordinary POST route sends to one client by id, and answers 404 for an unknown id" (fun () -> task {
            let routes (app: WebApplication) =
                app.MapRealtime("/notify", announcing ()) |> ignore
                app.MapPost(
                    "/send/{id}",
                    RequestDelegate(fun context ->
                        task {
                            let realtime = context.RequestServices.GetRequiredService<IRealtimeServer>()
                            use reader = new IO.StreamReader(context.Request.Body)
                            let! body = reader.ReadToEndAsync()
                            match Int64.TryParse(string context.Request.RouteValues["id"]) with
                            | true, id ->
                                match realtime.TryGetConnection id with
                                | true, socket ->
                                    let result = socket.Send body
                                    do! context.Response.WriteAsync(string result.Status)
                                | _ -> context.Response.StatusCode <- 404
                            | _ -> context.Response.StatusCode <- 400
                        }
                        :> Task)
                )
                |> ignore
                app.MapGet("/count", Func<IRealtimeServer, int>(fun realtime -> realtime.ConnectionCount)) |> ignore
            let! server = start ignore routes
            use _ = server
            let! alice, aliceId = connectWithId (server.WsUrl + "/notify")
            use _ = alice
            let! bob, bobId = connectWithId (server.WsUrl + "/notify")
            use _ = bob
            let! response = http.PostAsync($"{server.HttpUrl}/send/{bobId}", new StringContent("for bob"))
            Expect.equal response.StatusCode HttpStatusCode.OK "the route found bob"
            let! status = response.Content.ReadAsStringAsync()
            Expect.equal status "Sent" "the route saw the send result"
            let! text = receiveText bob
            Expect.equal text "for bob" "bob got the route's message"
            let! response = http.PostAsync($"{server.HttpUrl}/send/{aliceId}", new StringContent("for alice"))
            Expect.equal response.StatusCode HttpStatusCode.OK "the route found alice"
            let! text = receiveText alice
            Expect.equal text "for alice" "alice got only her message"
            let! missing = http.PostAsync($"{server.HttpUrl}/send/999999", new StringContent("nobody"))
            Expect.equal missing.StatusCode HttpStatusCode.NotFound "unknown id"
            let! count = http.GetStringAsync($"{server.HttpUrl}/count")
            Expect.equal count "2" "an ordinary GET route sees the connection count"
        })
    ]

/// The native transport starts an upgrade request's pipeline on the event loop that read it, as it
/// runs handlers there (and as Bun answers an upgrade on its loop): no hop to the thread pool per
/// handshake. The pipeline leaves the loop at its first await that does not complete at once, so a
/// middleware that waits holds neither the loop nor the other connections' handshakes; and the loop
/// thread carries no async-local state of its own into the requests it starts.
module Realtime.Server.Tests.NativeUpgradePipelineTests

open System
open System.Collections.Concurrent
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Http
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing

let private startNative (mapRoutes: WebApplication -> unit) =
    startOn OwnTransport
        (fun builder -> builder.WebHost.UseRealtimeNativeTransport(fun native -> native.EventLoops <- 2) |> ignore)
        ignore
        mapRoutes

let private isLoopThread () =
    let name = Thread.CurrentThread.Name
    not (isNull name) && name.StartsWith "Realtime epoll"

let private echo () =
    RealtimeHandlers<obj>(Message = fun ws message -> ws.Send(message) |> ignore)

let private echoesOnce (client: Net.WebSockets.ClientWebSocket) (text: string) =
    task {
        do! sendText client text
        let! answer = receiveText client
        Expect.equal answer text "the connection echoes"
    }

/// Set on the test's thread before the server (and its loops) start: a loop thread must not carry it.
let private ambient = AsyncLocal<string>()

[<Tests>]
let nativeUpgradePipelineTests =
    testList "Native transport: the upgrade request starts on the loop thread" [
        testCaseTask "the app's middleware sees the upgrade request on a loop thread, with no async-local state of the loop's own" (fun () -> task {
            let seen = ConcurrentQueue<bool * string>()
            ambient.Value <- "the test's"
            use! server = startNative (fun app ->
                app.Use(fun (context: HttpContext) (next: RequestDelegate) ->
                    if context.Request.Path = PathString "/echo" then seen.Enqueue((isLoopThread (), ambient.Value))
                    next.Invoke context)
                |> ignore
                app.MapRealtime("/echo", echo ()) |> ignore)
            ambient.Value <- null
            for i in 1..4 do
                use! client = connect (server.WsUrl + "/echo")
                do! echoesOnce client $"message {i}"
            let observed = List.ofSeq seen
            Expect.equal observed.Length 4 "the middleware saw each upgrade request"
            Expect.all observed (fun (onLoop, _) -> onLoop) $"each pipeline started on a loop thread, without a hop: {observed}"
            Expect.all observed (fun (_, value) -> isNull value) $"no request saw the async-local value of the thread that started the server: {observed}"
        })

        testCaseTask "a middleware that awaits leaves the loop: other connections open and echo meanwhile, and the held upgrade completes after" (fun () -> task {
            let reached = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            let release = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            let threads = ConcurrentQueue<string * bool>()
            use! server = startNative (fun app ->
                app.Use(Func<HttpContext, RequestDelegate, Task>(fun context next -> task {
                    if context.Request.Query.ContainsKey "hold" then
                        threads.Enqueue(("before the await", isLoopThread ()))
                        reached.TrySetResult()
                        do! release.Task
                        threads.Enqueue(("after the await", isLoopThread ()))
                    do! next.Invoke context
                }))
                |> ignore
                app.MapRealtime("/echo", echo ()) |> ignore)
            let held = connect (server.WsUrl + "/echo?hold=1")
            let! arrived = Task.WhenAny(reached.Task, Task.Delay(seconds 10.0))
            Expect.isTrue (Object.ReferenceEquals(arrived, reached.Task)) "the held request reached the middleware"
            // Two loops: among eight connections some share the held request's loop.
            let others = ResizeArray()
            try
                for i in 1..8 do
                    let! client = connect (server.WsUrl + "/echo")
                    others.Add client
                    do! echoesOnce client $"while held {i}"
                Expect.isFalse held.IsCompleted "the held upgrade is still waiting in its middleware"
                release.TrySetResult() |> ignore
                let! finished = Task.WhenAny(held, Task.Delay(seconds 10.0))
                Expect.isTrue (Object.ReferenceEquals(finished, held)) "the held upgrade completed once released"
                use! client = held
                do! echoesOnce client "after the wait"
                Expect.equal (List.ofSeq threads) [ ("before the await", true); ("after the await", false) ] "the pipeline started on the loop and went on elsewhere after its await"
            finally
                for client in others do client.Dispose()
        })

        testCaseTask "a pipeline that ends without an upgrade on the loop (a 401) closes its connection, and the loop goes on serving" (fun () -> task {
            use! server = startNative (fun app ->
                app.Use(fun (context: HttpContext) (next: RequestDelegate) ->
                    if context.Request.Query.ContainsKey "deny" then
                        context.Response.StatusCode <- 401
                        Task.CompletedTask
                    else next.Invoke context)
                |> ignore
                app.MapRealtime("/echo", echo ()) |> ignore)
            for i in 1..6 do
                let! tcp, stream, head = RawClient.handshakeRaw server.Port (RawClient.upgradeRequest "/echo?deny=1" "")
                use _ = tcp
                use _ = stream
                Expect.stringStarts head "HTTP/1.1 401" $"refusal {i} is a 401"
                let buffer = Array.zeroCreate<byte> 16
                use cancel = new CancellationTokenSource(seconds 10.0)
                let! read = stream.ReadAsync(buffer.AsMemory(), cancel.Token)
                Expect.equal read 0 $"the server closed connection {i} after its response"
            use! client = connect (server.WsUrl + "/echo")
            do! echoesOnce client "still serving"
        })
    ]

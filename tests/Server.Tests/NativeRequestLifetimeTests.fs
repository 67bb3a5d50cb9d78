/// The native transport ends a WebSocket's upgrade request after Open: the request's HttpContext,
/// its services scope and the middleware awaiting it are released while the connection stays open,
/// and what the public API still offers after Open (Attach's data, the user, the path and query,
/// the addresses, the application's services) works from what the connection kept.
module Realtime.Server.Tests.NativeRequestLifetimeTests

open System
open System.Security.Claims
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing

/// A scoped service that says when its scope (the request's) has ended.
type ScopedProbe() =
    member val Disposed = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

    interface IDisposable with
        member probe.Dispose() = probe.Disposed.TrySetResult() |> ignore

/// A singleton the application's root services hand out.
type RootGreeting() =
    member _.Text = "from the root services"

/// Weak references to what one upgrade request made, and the task its scope's end completes.
type private RequestWitness() =
    member val Context = WeakReference(null) with get, set
    member val Probe = WeakReference(null) with get, set
    member val ScopeEnded : Task = Task.CompletedTask with get, set

let private startNative (mapRoutes: WebApplication -> unit) =
    startWith
        (fun builder ->
            builder.WebHost.UseRealtimeNativeTransport(fun native -> native.EventLoops <- 1) |> ignore
            builder.Services.AddScoped<ScopedProbe>().AddSingleton<RootGreeting>() |> ignore)
        ignore
        mapRoutes

/// Collects until neither reference is alive, for at most `timeout` (bounded in count and time).
let private collectedWithin (timeout: TimeSpan) (references: WeakReference list) : Task<bool> =
    task {
        let deadline = DateTime.UtcNow + timeout
        let mutable attempts = 0
        let alive () = references |> List.exists (fun r -> r.IsAlive)
        while alive () && attempts < 200 && DateTime.UtcNow < deadline do
            GC.Collect()
            GC.WaitForPendingFinalizers()
            GC.Collect()
            attempts <- attempts + 1
            do! Task.Delay 50
        return not (alive ())
    }

/// Records the request in the witness without letting the handler's closure hold it.
let private witness (recorded: RequestWitness) (context: HttpContext) =
    let probe = context.RequestServices.GetRequiredService<ScopedProbe>()
    recorded.Context <- WeakReference(context)
    recorded.Probe <- WeakReference(probe)
    recorded.ScopeEnded <- probe.Disposed.Task

[<Tests>]
let nativeRequestLifetimeTests =
    testList "Native transport: the upgrade request ends after Open" [
        testCaseTask "the request's HttpContext and scoped services become collectable while the connection stays open and echoes" (fun () -> task {
            let recorded = RequestWitness()
            let handlers =
                RealtimeHandlers<string>(
                    Attach = (fun context ->
                        witness recorded context
                        Attachment<string>.Accept(context.Connection.Id)),
                    Message = fun ws message -> ws.Send(message) |> ignore)
            use! server = startNative (fun app -> app.MapRealtime("/echo", handlers) |> ignore)
            use! client = connect (server.WsUrl + "/echo")
            do! sendText client "before"
            let! first = receiveText client
            Expect.equal first "before" "the connection echoes once open"
            let! ended = Task.WhenAny(recorded.ScopeEnded, Task.Delay(seconds 20.0))
            Expect.isTrue (obj.ReferenceEquals(ended, recorded.ScopeEnded)) "the request's services scope was disposed while the connection is open"
            let! released = collectedWithin (seconds 20.0) [ recorded.Context; recorded.Probe ]
            Expect.isTrue released "the request's HttpContext and its scoped service were collected"
            Expect.equal client.State Net.WebSockets.WebSocketState.Open "the connection is still open"
            do! sendText client "after"
            let! second = receiveText client
            Expect.equal second "after" "the connection still echoes after its request was released"
        })

        testCaseTask "after Open: Attach's data, the user, path, query, addresses and root services still answer" (fun () -> task {
            let recorded = RequestWitness()
            let handlers =
                RealtimeHandlers<string>(
                    Attach = (fun context ->
                        witness recorded context
                        Attachment<string>.Accept("data of " + context.Request.Query["name"].ToString())),
                    Message = fun ws _ ->
                        let context = ws.HttpContext
                        let answer =
                            String.Join(
                                "|",
                                [ ws.Data
                                  context.User.Identity.Name
                                  context.Request.Path.Value
                                  context.Request.QueryString.Value
                                  string context.Connection.RemoteIpAddress
                                  string (context.Connection.LocalPort > 0)
                                  string (ws.RemoteAddress = context.Connection.RemoteIpAddress)
                                  context.RequestServices.GetRequiredService<RootGreeting>().Text ])
                        ws.Send(answer) |> ignore)
            let signIn (app: WebApplication) =
                app.Use(fun (context: HttpContext) (next: RequestDelegate) ->
                    context.User <- ClaimsPrincipal(ClaimsIdentity([ Claim(ClaimTypes.Name, "ada") ], "test"))
                    next.Invoke context)
                |> ignore
                app.MapRealtime("/echo", handlers) |> ignore
            use! server = startNative signIn
            use! client = connect (server.WsUrl + "/echo?name=ada")
            let! ended = Task.WhenAny(recorded.ScopeEnded, Task.Delay(seconds 20.0))
            Expect.isTrue (obj.ReferenceEquals(ended, recorded.ScopeEnded)) "the request ended before the message"
            do! sendText client "who"
            let! answer = receiveText client
            Expect.equal
                answer
                "data of ada|ada|/echo|?name=ada|127.0.0.1|True|True|from the root services"
                "what the public API offers after Open comes from what the connection kept of its request"
        })
    ]

/// After a burst of accepted connections the native transport gives back the memory the burst's
/// handshakes left committed: once, when the transport has gone quiet, never while connections
/// are read, and not again for a while.
module Realtime.Server.Tests.NativeMemoryReclaimTests

open System
open System.Diagnostics
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Connections
open Microsoft.AspNetCore.Hosting
open Microsoft.Extensions.DependencyInjection
open Realtime
open Realtime.Native
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing

let private echo = RealtimeHandlers<obj>(Message = fun ws message -> ws.Send(message) |> ignore)

let private startNative (configure: RealtimeNativeTransportOptions -> unit) =
    startOn
        OwnTransport
        (fun builder -> builder.WebHost.UseRealtimeNativeTransport(fun native -> native.EventLoops <- 1; configure native) |> ignore)
        ignore
        (fun app -> app.MapRealtime("/echo", echo) |> ignore)

let private nativeFactory (server: RunningServer) =
    server.App.Services.GetServices<IConnectionListenerFactory>()
    |> Seq.pick (function
        | :? NativeTransportFactory as factory -> Some factory
        | _ -> None)

let private burst = 20

[<Tests>]
let nativeMemoryReclaimTests =
    testList "Native transport: memory reclaimed after an accept burst" [
        testCaseTask "reclaims once after the burst, not while a connection is sending, and the connections stay open" (fun () -> task {
            // A quiet period of 2 s: only a stall of the test itself longer than that could look quiet.
            use! server =
                startNative (fun native ->
                    native.ReclaimAfterAccepting <- burst
                    native.ReclaimQuietPeriod <- seconds 2.0)
            let! clients = Task.WhenAll [ for _ in 1 .. burst -> connect (server.WsUrl + "/echo") ]
            let reclaimer = (nativeFactory server).Reclaimer
            Expect.isNotNull reclaimer "the reclaimer runs once the loops have started"
            // Traffic for 6 s (three quiet periods): one connection echoes without pause.
            let traffic = Stopwatch.StartNew()
            let mutable round = 0
            while traffic.Elapsed < seconds 6.0 && round < 200_000 do
                do! sendText clients[0] $"m{round}"
                let! answer = receiveText clients[0]
                Expect.equal answer $"m{round}" "the echo answers in order"
                Expect.equal reclaimer.Reclaims 0 "no reclaim while a connection is being read"
                round <- round + 1
            let! reclaimed = eventually (seconds 15.0) (fun () -> reclaimer.Reclaims >= 1)
            Expect.isTrue reclaimed "memory is reclaimed once the transport has been quiet for a whole quiet period"
            Expect.isGreaterThan reclaimer.LastPause TimeSpan.Zero "the reclaim's pause was measured"
            // More quiet periods: no second reclaim without a new burst (and not within a minute).
            do! Task.Delay(seconds 5.0)
            Expect.equal reclaimer.Reclaims 1 "one reclaim per burst"
            for client in clients do
                do! sendText client "still here"
                let! answer = receiveText client
                Expect.equal answer "still here" "every connection still echoes after the reclaim"
            for client in clients do client.Dispose()
        })

        testCaseTask "no reclaim before a whole burst was accepted" (fun () -> task {
            use! server = startNative (fun native -> native.ReclaimAfterAccepting <- burst)
            let! clients = Task.WhenAll [ for _ in 1 .. burst - 1 -> connect (server.WsUrl + "/echo") ]
            let reclaimer = (nativeFactory server).Reclaimer
            // Quiet for three check periods: the burst is one connection short.
            do! Task.Delay(seconds 3.5)
            Expect.equal reclaimer.Reclaims 0 "fewer accepts than a burst reclaim nothing"
            use! last = connect (server.WsUrl + "/echo")
            let! reclaimed = eventually (seconds 15.0) (fun () -> reclaimer.Reclaims = 1)
            Expect.isTrue reclaimed "the connection that completes the burst leads to a reclaim once quiet"
            for client in clients do client.Dispose()
        })

        testCaseTask "ReclaimAfterAccepting = 0 turns it off" (fun () -> task {
            use! server = startNative (fun native -> native.ReclaimAfterAccepting <- 0)
            use! client = connect (server.WsUrl + "/echo")
            do! sendText client "hello"
            let! answer = receiveText client
            Expect.equal answer "hello" "the connection echoes"
            Expect.isNull (nativeFactory server).Reclaimer "no reclaimer when turned off"
        })
    ]

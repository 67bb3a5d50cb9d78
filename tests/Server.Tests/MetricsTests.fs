/// The host's System.Diagnostics.Metrics instruments, read with a MeterListener while real clients talk.
module Realtime.Server.Tests.MetricsTests

open System
open System.Collections.Concurrent
open System.Diagnostics.Metrics
open System.Net.Http
open System.Net.WebSockets
open System.Threading
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.DependencyInjection
open Realtime
open Realtime.Server.Tests.TestHost

/// Sums of every measurement of one meter, by instrument and by instrument plus one tag value.
type Recorder(meter: Meter) =
    let totals = ConcurrentDictionary<string, int64>()
    let listener = new MeterListener()
    do
        // Only this server's meter: other tests run their own servers in the same process.
        listener.InstrumentPublished <- fun instrument l -> if Object.ReferenceEquals(instrument.Meter, meter) then l.EnableMeasurementEvents instrument
        listener.SetMeasurementEventCallback<int64>(fun instrument value tags _ ->
            totals.AddOrUpdate(instrument.Name, value, fun _ old -> old + value) |> ignore
            for tag in tags do
                if tag.Key <> "realtime.endpoint" then
                    let key = $"{instrument.Name}[{tag.Key}={tag.Value}]"
                    totals.AddOrUpdate(key, value, fun _ old -> old + value) |> ignore
                else
                    let key = $"{instrument.Name}@{tag.Value}"
                    totals.AddOrUpdate(key, value, fun _ old -> old + value) |> ignore)
        listener.Start()

    member _.Value(name: string) = match totals.TryGetValue name with | true, v -> v | _ -> 0L
    member _.Names = totals.Keys |> Seq.sort |> List.ofSeq
    interface IDisposable with
        member _.Dispose() = listener.Dispose()

/// `/metrics`: each message is published to "room" and acknowledged; Close sends one more (dropped);
/// every frame reports Backpressure, then Drain. The HTTP/2 tests map it too, to compare totals.
let meteredRoutes (app: WebApplication) =
    app.MapRealtime(
        "/metrics",
        RealtimeHandlers<obj>(
            Open = (fun ws -> ws.Subscribe "room" |> ignore),
            Message = (fun ws message -> ws.Publish("room", message.Text) |> ignore; ws.Send "ack" |> ignore),
            // The connection has ended: this send is dropped.
            Close = (fun ws _ _ -> ws.Send "bye" |> ignore)),
        // Every frame of this test (5+ bytes) reports Backpressure, then Drain once it is written.
        fun o -> o.BackpressureLimit <- 4L)
    |> ignore

let private waitFor (recorder: Recorder) (name: string) (expected: int64) =
    task {
        let! ok = eventually (TimeSpan.FromSeconds 10.0) (fun () -> recorder.Value name = expected)
        if not ok then failtestf "%s: expected %d, got %d (recorded: %A)" name expected (recorder.Value name) recorder.Names
    }

[<Tests>]
let tests =
    testList "Metrics" [
        testCaseTask "the Realtime meter of the host counts connections, messages, bytes, publishes, backpressure, drops and rejections" (fun () -> task {
            let! server = start ignore meteredRoutes
            use _ = server
            let factory = server.App.Services.GetRequiredService<IMeterFactory>()
            let meter = (server.Realtime :?> RealtimeServer).Metrics.Meter
            Expect.equal meter.Name "Realtime" "one meter named Realtime"
            Expect.isTrue (Object.ReferenceEquals(meter.Scope, factory)) "made by the host's IMeterFactory, so each host has its own"
            use recorder = new Recorder(meter)

            let! a = connect (server.WsUrl + "/metrics")
            let! b = connect (server.WsUrl + "/metrics")
            do! waitFor recorder "realtime.connections.opened" 2L
            do! waitFor recorder "realtime.connections.active" 2L
            do! waitFor recorder "realtime.connections.active@/metrics" 2L
            // Both have subscribed once Open ran; the server's own count says so.
            let! subscribed = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.SubscriberCount "room" = 2)
            Expect.isTrue subscribed "both subscribed"

            do! sendText a "hello"
            let! atB = receiveText b
            let! atA = receiveText a
            Expect.equal (atB, atA) ("hello", "ack") "published to the other, acknowledged to the sender"
            do! waitFor recorder "realtime.messages.received" 1L
            do! waitFor recorder "realtime.publishes" 1L
            do! waitFor recorder "realtime.publish.deliveries" 1L
            do! waitFor recorder "realtime.messages.sent" 2L
            do! waitFor recorder "realtime.backpressure" 2L
            do! waitFor recorder "realtime.drains" 2L
            // "hello" from a client: 2 header bytes + 4 mask bytes + 5.
            let! read = eventually (TimeSpan.FromSeconds 10.0) (fun () -> recorder.Value "realtime.bytes.received" >= 11L)
            Expect.isTrue read (sprintf "bytes received counted (got %d)" (recorder.Value "realtime.bytes.received"))
            // "hello" (2 + 5) to b and "ack" (2 + 3) to a.
            let! written = eventually (TimeSpan.FromSeconds 10.0) (fun () -> recorder.Value "realtime.bytes.sent" >= 12L)
            Expect.isTrue written (sprintf "bytes sent counted (got %d)" (recorder.Value "realtime.bytes.sent"))

            // A publish from the server side reaches both.
            Expect.equal (server.Realtime.Publish("room", "x")) 2 "queued to both"
            let! _ = receiveText a
            let! _ = receiveText b
            do! waitFor recorder "realtime.publishes" 2L
            do! waitFor recorder "realtime.publish.deliveries" 3L
            do! waitFor recorder "realtime.messages.sent" 4L

            // A plain GET on the endpoint is refused before any upgrade.
            use http = new HttpClient(Timeout = TimeSpan.FromSeconds 10.0)
            let! response = http.GetAsync(server.HttpUrl + "/metrics")
            Expect.equal (int response.StatusCode) 400 "not an upgrade request"
            do! waitFor recorder "realtime.handshake.rejections" 1L
            do! waitFor recorder "realtime.handshake.rejections[http.response.status_code=400]" 1L
            do! waitFor recorder "realtime.handshake.rejections[realtime.rejection=missing-upgrade]" 1L

            use closing = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
            do! a.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", closing.Token)
            do! b.CloseAsync(enum<WebSocketCloseStatus> 4000, "custom", closing.Token)
            do! waitFor recorder "realtime.connections.closed" 2L
            do! waitFor recorder "realtime.connections.closed[realtime.close_code=1000]" 1L
            do! waitFor recorder "realtime.connections.closed[realtime.close_code=4000]" 1L
            do! waitFor recorder "realtime.connections.active" 0L
            do! waitFor recorder "realtime.drops" 2L
            Expect.equal (recorder.Value "realtime.messages.received") 1L "nothing else arrived"
        })
    ]

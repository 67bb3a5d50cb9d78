/// Channels on Redis while redis-server is stopped and after it is back: a node with a redis-server of
/// this test's own (stopped and started again by the test, so other tests' Redis is untouched).
module Realtime.Server.Tests.ChannelsRedisOutageTests

open System
open System.Diagnostics
open System.Text
open System.Text.Json
open System.Threading.Tasks
open Expecto
open Microsoft.Extensions.DependencyInjection
open Realtime.Channels
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.RedisTests
open Realtime.Server.Tests.ChannelsRedisTests
open Realtime.Server.Tests.ChannelsRedisClient

let private errorCodes (client: RecoveringClient) =
    [ for e in client.Errors -> JsonDocument.Parse(e).RootElement.GetProperty("code").GetString() ]

/// True once the node's Redis connection answers again.
let private storeAnswers (store: IChannelStore) =
    try
        store.GetPositionAsync("probe").AsTask().Wait(TimeSpan.FromSeconds 2.0)
    with _ -> false

[<Tests>]
let outageTests =
    testSequenced
    <| testList "Channels on Redis: Redis away" [
        testCaseTask "with redis-server stopped a publish is answered with an internal error at once and the connection stays; once it is back the same connection publishes, the retried publish takes effect once, and a subscriber is told its history was lost" (fun () -> task {
            let redis = RedisInstance(freePort ())
            redis.Start()
            let! server =
                startWith
                    (fun builder -> ChannelsRedisNode.configure redis.Endpoint (newPrefix ()) "a" ignore builder.Services)
                    ignore
                    ChannelsRedisNode.mapRoutes
            let store = server.App.Services.GetRequiredService<IChannelStore>()
            let publisher = new RecoveringClient("p")
            let subscriber = new RecoveringClient("s")
            try
                do! publisher.ConnectAsync server.WsUrl
                do! subscriber.ConnectAsync server.WsUrl
                do! subscriber.SubscribeAsync("room", false)
                let! _ = publisher.Publish("room", "\"before\"").WaitAsync(seconds 15.0)
                do! expectEventually (seconds 15.0) "the subscriber delivers the first publication" (fun () -> subscriber.DeliveredCount "room" = 1)

                redis.Stop()
                let stopped = Stopwatch.StartNew()
                let during = publisher.Publish("room", "\"during\"")
                do! expectEventually (seconds 10.0) "the publish is answered with an error while Redis is away" (fun () -> not publisher.Errors.IsEmpty)
                let answered = stopped.Elapsed
                printfn "Channels on Redis, redis-server stopped: the publish was answered with an error after %.0f ms" answered.TotalMilliseconds
                Expect.equal (errorCodes publisher) [ "internal" ] "one error, internal"
                Expect.isFalse during.IsCompleted "the publish was not acknowledged"
                // A new connection is still accepted and welcomed while Redis is away.
                use newcomer = new RecoveringClient("n")
                do! newcomer.ConnectAsync server.WsUrl
                do! expectEventually (seconds 10.0) "a new connection is welcomed while Redis is away" (fun () -> newcomer.ClientId <> "")

                redis.Start()
                do! expectEventually (seconds 30.0) "the node's Redis connection answers again" (fun () -> storeAnswers store)
                // The same connection publishes again: it was never closed.
                let! afterOffset = publisher.Publish("room", "\"after\"").WaitAsync(seconds 15.0)
                // The unacknowledged publish is sent again with its key on reconnecting, and takes effect once.
                publisher.Drop()
                do! publisher.ConnectAsync server.WsUrl
                let! duringOffset = during.WaitAsync(seconds 15.0)
                Expect.isGreaterThan duringOffset afterOffset "the retried publish comes after the one sent once Redis was back"
                let! position = store.GetPositionAsync "room"
                let! read = store.ReadAsync("room", { position with Offset = 0UL }, 100)
                let data = [ for p in read.Publications -> Encoding.UTF8.GetString p.Data.Span ]
                // redis-server started empty (the tests run it without persistence): the channel has a new epoch.
                Expect.equal data [ "\"after\""; "\"during\"" ] "each publish since Redis came back once, in order"
                Expect.equal (errorCodes publisher) [ "internal" ] "no further errors"

                // The subscriber's position is in the lost epoch: on resubscribing it is told so, not left waiting.
                subscriber.Drop()
                do! subscriber.ConnectAsync server.WsUrl
                do! expectEventually (seconds 15.0) "the subscriber is told its history was not recovered" (fun () -> subscriber.Read("room", fun v -> v.NotRecovered) = 1)
                Expect.equal (subscriber.DeliveredData "room") [ "\"before\"" ] "the subscriber delivered only what it had before Redis lost it"
                Expect.isEmpty subscriber.Errors "the subscriber got no errors"
            finally
                (publisher :> IDisposable).Dispose()
                (subscriber :> IDisposable).Dispose()
                (server :> IDisposable).Dispose()
                redis.Remove()
        })
    ]

/// How the channels server handles a connection's publishes when the store is slow (as Redis is a round
/// trip away): they are not awaited one by one but queued behind each other, appended in batches, fanned
/// out and acknowledged in the order sent, with a bound on how many one connection has in flight.
module Realtime.Server.Tests.ChannelsPipelineTests

open System
open System.Collections.Concurrent
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.Extensions.DependencyInjection
open Realtime.Channels
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.ChannelsClient
open Realtime.Server.Tests.ChannelsTests

/// The in-memory store behind a gate: every append (one or a batch) is recorded with its size, then
/// waits until the gate is open (and `delay` more), as a remote store's round trip would.
type GatedStore(inner: IChannelStore, delay: TimeSpan) =
    let gate = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    let batches = ConcurrentQueue<int>()

    member _.Open() = gate.TrySetResult() |> ignore

    /// The number of publications of each append, in the order the store got them.
    member _.Batches = List.ofSeq batches

    member private _.Wait() =
        task {
            do! gate.Task
            do! Task.Delay delay
        }

    interface IChannelStore with
        member store.AppendAsync(channel, data, key, cancel) =
            ValueTask<ChannelAppendResult>(
                task {
                    batches.Enqueue 1
                    do! store.Wait()
                    return! inner.AppendAsync(channel, data, key, cancel)
                })

        member store.AppendManyAsync(channel, publications, cancel) =
            ValueTask<Collections.Generic.IReadOnlyList<ChannelAppendResult>>(
                task {
                    batches.Enqueue publications.Count
                    do! store.Wait()
                    return! inner.AppendManyAsync(channel, publications, cancel)
                })

        member _.GetPositionAsync(channel, cancel) = inner.GetPositionAsync(channel, cancel)
        member _.ReadAsync(channel, since, limit, cancel) = inner.ReadAsync(channel, since, limit, cancel)

let private url (server: Realtime.Server.Tests.TestHost.RunningServer) (name: string) = $"{server.WsUrl}/channels?name={name}"

let private publishMessage (id: int) (channel: string) (n: int) =
    $"""{{"type":"publish","id":{id},"channel":"{channel}","key":"k-{n}","data":"p-{n}"}}"""

/// Messages of the given types until `count` of them have arrived, in arrival order.
let private collect (client: ChannelClient) (types: string list) (count: int) =
    task {
        let got = Collections.Generic.List<JsonElement>()
        while got.Count < count do
            let! m = client.Next()
            if List.contains (m.GetProperty("type").GetString()) types then got.Add m
        return List.ofSeq got
    }

let private gatedServer (options: RealtimeChannelsOptions -> unit) =
    task {
        let store = GatedStore(InMemoryChannelStore(ChannelRetention()), TimeSpan.FromMilliseconds 20.0)
        let! server = startChannels options (Some(store :> IChannelStore)) ignore
        return store, server
    }

[<Tests>]
let tests =
    testList "Channels: pipelined publishes" [
        testCaseTask "publishes sent without waiting are appended in batches, acknowledged in the order sent, with increasing offsets; subscribers get them in that order" (fun () -> task {
            let! store, server = gatedServer ignore
            use _ = server
            let! reader, _ = connectJson (url server "reader")
            use reader = reader
            let! _ = subscribe reader 1 "room" ""
            let! writer, _ = connectJson (url server "writer")
            use writer = writer
            let count = 40
            for n in 1 .. count do
                do! writer.Send(publishMessage (100 + n) "room" n)
            // Every publish is read and queued while the first append waits.
            do! expectEventually (seconds 15.0) "the first append reaches the store" (fun () -> not store.Batches.IsEmpty)
            do! Task.Delay 300
            store.Open()
            let! acks = collect writer [ "ack"; "error" ] count
            Expect.equal [ for a in acks -> a.GetProperty("type").GetString() ] (List.replicate count "ack") "every publish acknowledged"
            Expect.equal [ for a in acks -> a.GetProperty("id").GetInt32() ] [ for n in 1 .. count -> 100 + n ] "acks in the order the publishes were sent"
            Expect.equal [ for a in acks -> offsetOf a ] [ for n in 1 .. count -> uint64 n ] "offsets follow the order sent"
            let! pubs = collect reader [ "pub" ] count
            Expect.equal [ for p in pubs -> p.GetProperty("data").GetString() ] [ for n in 1 .. count -> $"p-{n}" ] "the subscriber gets them in that order"
            Expect.equal [ for p in pubs -> offsetOf p ] [ for n in 1 .. count -> uint64 n ] "at offsets 1..N"
            let batches = store.Batches
            Expect.equal (List.sum batches) count "each publication appended once"
            Expect.isLessThan batches.Length count $"fewer appends than publishes (batches: {batches})"
            Expect.isGreaterThan (List.max batches) 1 "at least one append carried several publications"
            // The channel's entry (lock and sequencer) goes once nothing is queued and its subscriber has left.
            do! reader.CloseAsync()
            let hub = server.App.Services.GetRequiredService<ChannelHub>()
            do! expectEventually (seconds 15.0) "the channel's entry goes once its queue is empty and its subscriber left" (fun () -> hub.Locks.Count = 0)
        })

        testCaseTask "one connection has at most MaxPublishesInFlight publishes unacknowledged; past it the connection is not read further" (fun () -> task {
            let! store, server = gatedServer (fun o -> o.MaxPublishesInFlight <- 3)
            use _ = server
            let! writer, _ = connectJson (url server "writer")
            use writer = writer
            let count = 12
            for n in 1 .. count do
                do! writer.Send(publishMessage n "room" n)
            do! expectEventually (seconds 15.0) "the first append reaches the store" (fun () -> not store.Batches.IsEmpty)
            do! Task.Delay 300
            store.Open()
            let! acks = collect writer [ "ack" ] count
            Expect.equal [ for a in acks -> offsetOf a ] [ for n in 1 .. count -> uint64 n ] "every publish acknowledged, in order"
            let batches = store.Batches
            Expect.equal (List.sum batches) count "each publication appended once"
            Expect.isLessThanOrEqual (List.max batches) 3 $"no append carried more than the connection's bound (batches: {batches})"
        })

        testCaseTask "a message other than publish waits for the connection's publishes before it: a subscribe after them sees their offsets" (fun () -> task {
            let! store, server = gatedServer ignore
            use _ = server
            let! client, _ = connectJson (url server "ann")
            use client = client
            for n in 1 .. 5 do
                do! client.Send(publishMessage n "room" n)
            do! client.Send """{"type":"subscribe","id":50,"channel":"room"}"""
            do! expectEventually (seconds 15.0) "the first append reaches the store" (fun () -> not store.Batches.IsEmpty)
            store.Open()
            let! replies = collect client [ "ack"; "subscribed" ] 6
            Expect.equal [ for r in replies -> r.GetProperty("type").GetString() ] ((List.replicate 5 "ack") @ [ "subscribed" ]) "the five acks, then subscribed"
            Expect.equal (offsetOf (List.last replies)) 5UL "the subscription starts after the connection's five publications"
        })

        testCaseTask "publishes from the app's code (IRealtimeChannels) and from connections share the channel's one order" (fun () -> task {
            let! store, server = gatedServer ignore
            use _ = server
            let channels = server.App.Services.GetService(typeof<IRealtimeChannels>) :?> IRealtimeChannels
            let! reader, _ = connectJson (url server "reader")
            use reader = reader
            let! _ = subscribe reader 1 "room" ""
            let! writer, _ = connectJson (url server "writer")
            use writer = writer
            for n in 1 .. 10 do
                do! writer.Send(publishMessage n "room" n)
            let fromApp = [ for n in 1 .. 10 -> channels.PublishJsonAsync("room", ReadOnlyMemory(Text.Encoding.UTF8.GetBytes $"\"app-{n}\"")).AsTask() ]
            store.Open()
            let! appPositions = Task.WhenAll fromApp
            Expect.equal [ for p in appPositions -> p.Offset ] (List.sort [ for p in appPositions -> p.Offset ]) "the app's publishes took offsets in the order made"
            let! pubs = collect reader [ "pub" ] 20
            Expect.equal [ for p in pubs -> offsetOf p ] [ 1UL .. 20UL ] "one sequence 1..20"
            let data = [ for p in pubs -> p.GetProperty("data").GetString() ]
            Expect.equal (data |> List.filter (fun d -> d.StartsWith "p-")) [ for n in 1 .. 10 -> $"p-{n}" ] "the connection's in its order"
            Expect.equal (data |> List.filter (fun d -> d.StartsWith "app-")) [ for n in 1 .. 10 -> $"app-{n}" ] "the app's in its order"
        })
    ]

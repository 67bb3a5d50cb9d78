/// Every per-channel resource of the channels server is bounded: the in-memory store holds at most
/// MaxChannels channels and forgets those that hold nothing live, the per-channel locks exist only while
/// a channel is in use, and neither forgetting races a subscribe or a publish.
module Realtime.Server.Tests.ChannelsBoundsTests

open System
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.DependencyInjection
open Realtime
open Realtime.Channels
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.ChannelsClient
open Realtime.Server.Tests.ChannelsTests

let private url (server: RunningServer) (name: string) = $"{server.WsUrl}/channels?name={name}"

let private errorOf (message: JsonElement) =
    message.GetProperty("code").GetString(), message.GetProperty("id").GetInt32()

/// The node's channel state: the in-memory store, the channel locks and the presence.
type private NodeState(server: RunningServer) =
    member _.Store = server.App.Services.GetRequiredService<IChannelStore>() :?> InMemoryChannelStore
    member _.Locks = server.App.Services.GetRequiredService<ChannelHub>().Locks
    member _.Presence = server.App.Services.GetRequiredService<IChannelPresence>() :?> InMemoryChannelPresence

let private unsubscribe (client: ChannelClient) (id: int) (channel: string) : Task =
    task {
        do! client.Send $"""{{"type":"unsubscribe","id":{id},"channel":{quote channel}}}"""
        let! unsubscribed, _ = client.Until "unsubscribed"
        Expect.equal (unsubscribed.GetProperty("id").GetInt32()) id "the reply carries the request's id"
    }

/// Channel locks on their own: the sequencers' locks only (no publish goes through them here).
let private newLocks () = ChannelLocks(fun name -> ChannelSequencer(Unchecked.defaultof<ChannelHub>, name))

/// Runs `work` on `count` thread-pool tasks at once and waits for all (bounded).
let private inParallel (count: int) (work: int -> Task) : Task =
    task {
        let all = Task.WhenAll [| for worker in 0 .. count - 1 -> Task.Run(fun () -> work worker) |]
        do! all.WaitAsync(TimeSpan.FromSeconds 120.0)
    }

[<Tests>]
let tests =
    testList "Channels: bounds" [
        testCaseTask "past MaxChannels a subscribe or publish to a new channel gets too-many-channels; the left channels are forgotten once their history expires" (fun () -> task {
            let clock = ManualClock()
            use! server =
                startChannelsWith
                    (fun services -> services.AddSingleton<TimeProvider>(clock) |> ignore)
                    (fun o ->
                        o.MaxChannels <- 4
                        o.Retention.MaxAge <- TimeSpan.FromMinutes 1.0)
                    ignore
            let node = NodeState server
            let! client, _ = connectJson (url server "ann")
            use client = client
            for i in 1 .. 4 do
                let! _ = subscribe client i $"room:{i}" ""
                ()
            let! first = publish client 10 "room:1" "k1" "\"kept\""
            do! client.Send """{"type":"subscribe","id":5,"channel":"room:5"}"""
            let! refused = client.Expect "error"
            Expect.equal (errorOf refused) ("too-many-channels", 5) "a fifth channel to subscribe to"
            do! client.Send """{"type":"publish","id":6,"channel":"room:6","key":"k","data":1}"""
            let! refused = client.Expect "error"
            Expect.equal (errorOf refused) ("too-many-channels", 6) "a sixth channel to publish to"
            Expect.equal node.Store.ChannelCount 4 "the store holds its most"
            let! _ = publish client 11 "room:2" "k2" "\"also kept\""
            for i in 1 .. 4 do do! unsubscribe client (20 + i) $"room:{i}"
            do! expectEventually (seconds 20.0) "the two channels that held nothing are forgotten, the two with history stay" (fun () ->
                node.Store.ChannelCount = 2)
            Expect.equal node.Locks.Count 0 "no channel lock is left"
            Expect.equal node.Presence.ChannelCount 0 "no presence is left"
            let! _, recovered = subscribe client 30 "room:1" $""","since":{{"epoch":{quote (epochOf first)},"offset":0}}"""
            Expect.equal (recovered |> List.map (fun m -> m.GetProperty("data").GetString())) [ "kept" ] "the history of a left channel is still recovered within retention"
            let! _ = subscribe client 31 "room:5" ""
            do! unsubscribe client 32 "room:1"
            do! unsubscribe client 33 "room:5"
            clock.Advance(TimeSpan.FromMinutes 1.0 + TimeSpan.FromSeconds 1.0)
            do! expectEventually (seconds 20.0) "every channel is forgotten once its history expired" (fun () ->
                node.Store.ChannelCount = 0)
            Expect.equal node.Locks.Count 0 "no channel lock is left"
            let! fresh, _ = subscribe client 40 "room:1" ""
            Expect.notEqual (epochOf fresh) (epochOf first) "a forgotten channel starts a new epoch"
        })

        testCaseTask "100,000 subscribe and leave cycles of distinct names keep the node's channel state within its bounds and leave nothing behind" (fun () -> task {
            use! server = startChannels ignore None ignore
            let node = NodeState server
            let! client, _ = connectJson (url server "ann")
            use client = client
            let cycles = 100_000
            let batch = 500
            let mutable mostChannels = 0
            let mutable mostLocks = 0
            for start in 0 .. batch .. cycles - 1 do
                // A batch of requests in flight at once, then their replies in order.
                for i in start .. start + batch - 1 do
                    do! client.Send $"""{{"type":"subscribe","id":{2 * i + 1},"channel":"c:{i}"}}"""
                    do! client.Send $"""{{"type":"unsubscribe","id":{2 * i + 2},"channel":"c:{i}"}}"""
                for i in start .. start + batch - 1 do
                    let! subscribed = client.Expect "subscribed"
                    Expect.equal (subscribed.GetProperty("id").GetInt32()) (2 * i + 1) "every subscribe is accepted, in order"
                    let! unsubscribed = client.Expect "unsubscribed"
                    Expect.equal (unsubscribed.GetProperty("id").GetInt32()) (2 * i + 2) "every leave is answered, in order"
                mostChannels <- max mostChannels node.Store.ChannelCount
                mostLocks <- max mostLocks node.Locks.Count
            Expect.isLessThanOrEqual mostChannels RealtimeChannelsOptions.DefaultMaxChannels "the store never held more than MaxChannels"
            Expect.isLessThanOrEqual mostLocks 1 "a lock exists only while its channel is in use"
            do! expectEventually (seconds 60.0) "every channel, which holds nothing, is forgotten" (fun () ->
                node.Store.ChannelCount = 0)
            Expect.equal node.Locks.Count 0 "no lock is left"
            Expect.equal node.Presence.ChannelCount 0 "no presence is left"
            Expect.isEmpty (server.Realtime.Topics |> Seq.filter (fun t -> t.StartsWith "ch:" || t.StartsWith "cp:")) "no channel topic is left"
        })

        testCaseTask "a channel lock retired while a caller was about to await it is not granted to that caller: it waits for the fresh lock" (fun () -> task {
            let locks = newLocks ()
            let! first = locks.LockAsync "a"
            let armed = ref true
            let second = ref Unchecked.defaultof<ChannelLocks.Held>
            locks.Found <- fun () ->
                if armed.Value then
                    armed.Value <- false
                    // Between the late caller's find and its wait: the holder leaves (nobody else uses the
                    // entry, so it is retired) and another caller takes the channel's fresh lock.
                    first.Dispose()
                    second.Value <- locks.LockAsync("a").Result
            let late = locks.LockAsync("a").AsTask()
            Expect.isFalse late.IsCompleted "the late caller does not hold the channel while another one does"
            second.Value.Dispose()
            let! third = late.WaitAsync(seconds 10.0)
            third.Dispose()
            Expect.equal locks.Count 0 "every lock is gone once nobody uses it"
        })

        testCaseTask "under stress a channel's lock is never held by two callers, and the locks go when nobody uses them" (fun () -> task {
            let locks = newLocks ()
            // Widens the window between finding an entry and awaiting it, where a release can retire it.
            locks.Found <- fun () -> if Random.Shared.Next 4 = 0 then Thread.Yield() |> ignore
            let names = [| "a"; "b"; "c" |]
            let inside = Array.zeroCreate<int> names.Length
            let mutable overlaps = 0
            do! inParallel 4 (fun worker ->
                task {
                    for i in 1 .. 25_000 do
                        let which = (i + worker) % names.Length
                        let! held = locks.LockAsync names[which]
                        try
                            if Interlocked.Increment(&inside[which]) > 1 then Interlocked.Increment(&overlaps) |> ignore
                            if i % 16 = 0 then do! Task.Yield()
                            Interlocked.Decrement(&inside[which]) |> ignore
                        finally
                            held.Dispose()
                })
            Expect.equal overlaps 0 "no two callers held a channel's lock at once"
            Expect.equal locks.Count 0 "every lock is gone once nobody uses it"
        })

        testCaseTask "an append whose channel the sweep forgets between its find and its lock goes to a fresh log, never the forgotten one" (fun () -> task {
            use store = new InMemoryChannelStore(ChannelRetention(), 100, ManualClock())
            let channels = store :> IChannelStore
            let! before = channels.GetPositionAsync "a"
            let armed = ref true
            store.Found <- fun () ->
                if armed.Value then
                    armed.Value <- false
                    store.Sweep 1_000 |> ignore
            let! appended = channels.AppendAsync("a", ReadOnlyMemory "1"B, null)
            let! now = channels.GetPositionAsync "a"
            Expect.isFalse armed.Value "the sweep ran between the append's find and its lock"
            Expect.equal now appended.Position "the append is in the channel's live log"
            Expect.notEqual appended.Position.Epoch before.Epoch "the forgotten channel came back with a new epoch"
            Expect.equal store.ChannelCount 1 "one channel held"
        })

        testCaseTask "under stress an append that races the sweep forgetting its channel lands in the channel's live log" (fun () -> task {
            let clock = ManualClock()
            let retention = ChannelRetention(MaxAge = TimeSpan.FromMinutes 1.0)
            use store = new InMemoryChannelStore(retention, 1_000_000, clock)
            // Widens the window between finding a log and locking it, where the sweep can forget it.
            store.Found <- fun () -> if Random.Shared.Next 4 = 0 then Thread.Yield() |> ignore
            let channels = store :> IChannelStore
            use stop = new CancellationTokenSource(TimeSpan.FromSeconds 120.0)
            // A thread of its own (the rounds below complete synchronously and would keep a pool thread
            // from ever starting it), and the rounds begin only once it sweeps.
            let sweeping = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            let sweeper =
                Task.Factory.StartNew((fun () ->
                    let mutable sweeps = 0
                    while not stop.IsCancellationRequested do
                        store.Sweep 1_000 |> ignore
                        sweeps <- sweeps + 1
                        sweeping.TrySetResult() |> ignore
                    sweeps), TaskCreationOptions.LongRunning)
            do! sweeping.Task.WaitAsync(TimeSpan.FromSeconds 30.0)
            let mutable lost = 0
            let rounds = 50_000
            for i in 1 .. rounds do
                let name = $"r:{i % 64}"
                // Made (or found) empty, so the sweep may forget it at any moment until the append.
                let! _ = channels.GetPositionAsync name
                let! appended = channels.AppendAsync(name, ReadOnlyMemory "1"B, null)
                let! now = channels.GetPositionAsync name
                if now <> appended.Position then lost <- lost + 1
                // Everything held expires: the sweep forgets this channel next.
                clock.Advance(TimeSpan.FromMinutes 1.0 + TimeSpan.FromMilliseconds 1.0)
            stop.Cancel()
            let! sweeps = sweeper
            Expect.isGreaterThan sweeps 0 "the sweep ran"
            Expect.equal lost 0 $"every append of {rounds} is in the channel's live log"
        })

        testCaseTask "a recovery larger than the connection's send buffer ends the connection with 1008 instead of dropping silently; coming back with its position, the client gets everything once and in order" (fun () -> task {
            // A 64 KiB send buffer against 300 KiB of history: the first recovery cannot fit.
            let! server =
                startWith
                    (fun builder ->
                        let realtime = { new IRealtimeBuilder with member _.Services = builder.Services }
                        realtime.AddRealtimeChannels(fun _ -> ()) |> ignore)
                    (fun o ->
                        o.MaxBufferedAmount <- 64L * 1024L
                        o.BackpressureLimit <- 16L * 1024L)
                    (fun app ->
                        app.MapRealtimeChannels<User>("/channels", fun c ->
                            c.Attach <- fun http -> Attachment.Accept { Name = string http.Request.Query["name"] }) |> ignore)
            use _ = server
            let channels = server.App.Services.GetRequiredService<IRealtimeChannels>()
            let total = 300
            let filler = String('x', 1_000)
            let mutable epoch = ""
            for n in 1 .. total do
                let! position = channels.PublishJsonAsync("room", ReadOnlyMemory(Text.Encoding.UTF8.GetBytes $"\"{n}:{filler}\""))
                epoch <- position.Epoch
            let delivered = Collections.Generic.List<uint64>()
            let mutable ended = 0
            let mutable caughtUp = false
            let mutable attempts = 0
            while not caughtUp && attempts < 50 do
                attempts <- attempts + 1
                let! client, _ = connectJson (url server $"r{attempts}")
                use client = client
                let last = if delivered.Count = 0 then 0UL else delivered[delivered.Count - 1]
                do! client.Send $"""{{"type":"subscribe","id":1,"channel":"room","since":{{"epoch":{quote epoch},"offset":{last}}}}}"""
                let mutable reading = true
                while reading do
                    match! client.NextOrEnd() with
                    | Some message ->
                        match message.GetProperty("type").GetString() with
                        | "pub" -> delivered.Add(offsetOf message)
                        | "subscribed" ->
                            caughtUp <- offsetOf message = uint64 total && message.GetProperty("recovery").GetString() = "recovered"
                            reading <- false
                        | other -> failtest $"unexpected {other}: {message}"
                    | None ->
                        Expect.equal (client.Socket.CloseStatus |> Option.ofNullable |> Option.map int) (Some 1008) "a cut recovery ends the connection with 1008 (send buffer full)"
                        ended <- ended + 1
                        reading <- false
            Expect.isTrue caughtUp $"the client caught up within {attempts} connections"
            Expect.isGreaterThan ended 0 "at least one recovery was cut by the send buffer (else this test did not test it)"
            Expect.sequenceEqual delivered [ for n in 1 .. total -> uint64 n ] "every publication once, in order, across the connections"
        })

        test "MaxChannels below 1 fails the start, naming the option" {
            let problems = RealtimeChannelsOptionsValidation.Problems(RealtimeChannelsOptions(MaxChannels = 0))
            Expect.exists problems (fun p -> p.Contains "MaxChannels is 0") $"a problem names MaxChannels: {problems}"
        }
    ]

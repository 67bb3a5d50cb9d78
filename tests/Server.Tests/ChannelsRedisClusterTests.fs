/// Channels across nodes joined by a real Redis (Realtime.Channels.Redis with the Redis backplane): nodes
/// are Kestrel hosts in this process, and for the crash test a node of its own process killed with
/// SIGKILL; clients follow the protocol's delivery rule (ChannelsRedisClient). Each test checks every
/// subscriber's delivered sequence against the channel's sequence as Redis holds it: nothing lost,
/// nothing twice, one order.
module Realtime.Server.Tests.ChannelsRedisClusterTests

open System
open System.Net.Sockets
open System.Reflection
open System.Text
open System.Threading.Tasks
open Expecto
open Microsoft.Extensions.DependencyInjection
open Realtime.Channels
open Realtime.Channels.Redis
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.ChannelsRedisTests
open Realtime.Server.Tests.ChannelsRedisClient

type private Node =
    { Server: RunningServer
      Name: string }

    member node.Url = node.Server.WsUrl
    member node.Store = node.Server.App.Services.GetRequiredService<IChannelStore>()
    member node.Filled = node.Server.App.Services.GetRequiredService<PublicationGapFiller>().FilledCount

    interface IDisposable with
        member node.Dispose() = (node.Server :> IDisposable).Dispose()

let private startNodeWith (prefix: string) (name: string) (retention: ChannelRetention -> unit) : Task<Node> =
    task {
        let! server =
            startWith
                (fun builder -> ChannelsRedisNode.configure (channelsRedis ()).Endpoint prefix name retention builder.Services)
                ignore
                ChannelsRedisNode.mapRoutes
        return { Server = server; Name = name }
    }

let private startNodes (prefix: string) (names: string list) =
    task {
        let nodes = ResizeArray()
        for name in names do
            let! node = startNodeWith prefix name ignore
            nodes.Add node
        return List.ofSeq nodes
    }

let private connected (name: string) (node: Node) =
    task {
        let client = new RecoveringClient(name)
        do! client.ConnectAsync node.Url
        return client
    }

/// The channel's whole sequence as Redis holds it: the data at offsets 1, 2, ... (nothing trimmed in these tests).
let private channelSequence (node: Node) (channel: string) =
    task {
        let! position = node.Store.GetPositionAsync channel
        let! read = node.Store.ReadAsync(channel, { position with Offset = 0UL }, 100_000)
        Expect.isTrue read.Recovered "nothing was trimmed"
        Expect.equal [ for p in read.Publications -> p.Offset ] [ 1UL .. position.Offset ] "offsets 1..N"
        return [ for p in read.Publications -> Encoding.UTF8.GetString p.Data.Span ]
    }

let private untilDelivered (count: int) (channel: string) (clients: RecoveringClient list) =
    expectEventually (seconds 60.0) $"every subscriber delivers {count} publications" (fun () ->
        clients |> List.forall (fun c -> c.DeliveredCount channel >= count))

/// Every subscriber delivered exactly the channel's sequence, with no lost history.
let private expectSequence (expected: string list) (channel: string) (clients: RecoveringClient list) =
    for client in clients do
        Expect.equal (client.DeliveredData channel) expected $"{client.Name} delivered the channel's sequence exactly once, in order"
        Expect.equal (client.Read(channel, fun v -> v.NotRecovered)) 0 $"{client.Name} was never told of a loss"
        Expect.equal (client.Read(channel, fun v -> v.OtherEpochs)) 0 $"{client.Name} saw one epoch"
        Expect.isEmpty client.Errors $"{client.Name} got no errors"

/// Each publisher's messages appear once each, in the publisher's order.
let private expectEachOnce (sequence: string list) (publisher: string) (count: int) =
    let mine = sequence |> List.filter (fun d -> d.StartsWith $"\"{publisher}-")
    Expect.equal mine [ for n in 1 .. count -> $"\"{publisher}-{n}\"" ] $"{publisher}'s publishes took effect once each, in its order"

let private publishAll (publisher: RecoveringClient) (channel: string) (numbers: int seq) =
    task {
        for n in numbers do
            let! _ = publisher.Publish(channel, $"\"{publisher.Name}-{n}\"")
            ()
    }

let private disposeAll (items: #IDisposable seq) =
    for item in items do
        item.Dispose()

[<Tests>]
let clusterTests =
    testSequenced
    <| testList "Channels on Redis: across nodes" [
        testCaseTask "publishers on three nodes at once: every subscriber on every node delivers the channel's one sequence, exactly once" (fun () -> task {
            let! nodes = startNodes (newPrefix ()) [ "a"; "b"; "c" ]
            let clients = ResizeArray<RecoveringClient>()
            try
                let! subscribers = [ for node in nodes do for i in 1 .. 2 -> connected $"s{node.Name}{i}" node ] |> Task.WhenAll
                clients.AddRange subscribers
                for s in subscribers do do! s.SubscribeAsync("room", false)
                let! publishers = [ for node in nodes -> connected $"p{node.Name}" node ] |> Task.WhenAll
                clients.AddRange publishers
                let perPublisher = 40
                let started = Diagnostics.Stopwatch.StartNew()
                let! _ = publishers |> Array.map (fun p -> publishAll p "room" [ 1 .. perPublisher ]) |> Task.WhenAll
                let acked = started.Elapsed
                let total = perPublisher * publishers.Length
                do! untilDelivered total "room" (List.ofArray subscribers)
                printfn "Channels on Redis, three nodes: %d publishes acknowledged in %.0f ms (3 publishers, one at a time each: %.1f ms per publish round trip), all delivered to 6 subscribers after %.0f ms" total acked.TotalMilliseconds (acked.TotalMilliseconds / float perPublisher) started.Elapsed.TotalMilliseconds
                let! sequence = channelSequence nodes[0] "room"
                Expect.equal sequence.Length total "every publish once in the channel"
                for p in publishers do expectEachOnce sequence p.Name perPublisher
                expectSequence sequence "room" (List.ofArray subscribers)
                // Nothing was dropped, so the nodes saw every delivery and fill nothing, however long
                // the channel stays quiet (here: four gap checks).
                do! Task.Delay(ChannelsRedisNode.gapCheckInterval * 4.0)
                for node in nodes do
                    Expect.equal node.Filled 0L $"node {node.Name} noted every publication it delivered, and filled none"
            finally
                disposeAll clients
                disposeAll nodes
        })

        testCaseTask "pipelined publishers on two nodes (none waits for its acks): one order everywhere, each publisher's offsets in the order it sent" (fun () -> task {
            let! nodes = startNodes (newPrefix ()) [ "a"; "b" ]
            let clients = ResizeArray<RecoveringClient>()
            try
                let! subscribers = [ for node in nodes do for i in 1 .. 2 -> connected $"s{node.Name}{i}" node ] |> Task.WhenAll
                clients.AddRange subscribers
                for s in subscribers do do! s.SubscribeAsync("room", false)
                // Two publishers per node, each sending all its publishes at once.
                let! publishers = [ for node in nodes do for i in 1 .. 2 -> connected $"p{node.Name}{i}" node ] |> Task.WhenAll
                clients.AddRange publishers
                let perPublisher = 150
                let started = Diagnostics.Stopwatch.StartNew()
                let sent = publishers |> Array.map (fun p -> [| for n in 1 .. perPublisher -> p.Publish("room", $"\"{p.Name}-{n}\"") |])
                let! acked = sent |> Array.map Task.WhenAll |> Task.WhenAll
                let ackTime = started.Elapsed
                let total = perPublisher * publishers.Length
                do! untilDelivered total "room" (List.ofArray subscribers)
                printfn "Channels on Redis, two nodes, pipelined: %d publishes from 4 connections acknowledged in %.0f ms, all delivered to 4 subscribers after %.0f ms" total ackTime.TotalMilliseconds started.Elapsed.TotalMilliseconds
                for p, offsets in Array.zip publishers acked do
                    Expect.equal (List.ofArray offsets) (List.sort (List.ofArray offsets)) $"{p.Name}'s acks: offsets increase in the order it sent"
                    Expect.equal (offsets |> Array.distinct).Length perPublisher $"{p.Name}: one offset per publish"
                let! sequence = channelSequence nodes[0] "room"
                Expect.equal sequence.Length total "every publish once in the channel"
                for p in publishers do expectEachOnce sequence p.Name perPublisher
                expectSequence sequence "room" (List.ofArray subscribers)
            finally
                disposeAll clients
                disposeAll nodes
        })

        testCaseTask "a subscriber moving from node to node with its position delivers exactly what it missed, in order" (fun () -> task {
            let! nodes = startNodes (newPrefix ()) [ "a"; "b"; "c" ]
            let a, b, c = nodes[0], nodes[1], nodes[2]
            let clients = ResizeArray<RecoveringClient>()
            try
                let! mover = connected "mover" a
                let! stayer = connected "stayer" c
                let! publisher = connected "p" c
                clients.AddRange [ mover; stayer; publisher ]
                do! mover.SubscribeAsync("room", false)
                do! stayer.SubscribeAsync("room", false)
                do! publishAll publisher "room" [ 1 .. 10 ]
                do! untilDelivered 10 "room" [ mover ]
                mover.Drop()
                do! publishAll publisher "room" [ 11 .. 25 ]
                do! mover.ConnectAsync b.Url
                do! publishAll publisher "room" [ 26 .. 30 ]
                do! untilDelivered 30 "room" [ mover ]
                mover.Drop()
                do! publishAll publisher "room" [ 31 .. 40 ]
                do! mover.ConnectAsync c.Url
                do! untilDelivered 40 "room" [ mover; stayer ]
                let! sequence = channelSequence a "room"
                expectEachOnce sequence "p" 40
                expectSequence sequence "room" [ mover; stayer ]
            finally
                disposeAll clients
                disposeAll nodes
        })

        testCaseTask "a publish retried on another node with the same key takes effect once and is acknowledged with its first position" (fun () -> task {
            let! nodes = startNodes (newPrefix ()) [ "a"; "b" ]
            let clients = ResizeArray<RecoveringClient>()
            try
                let! watcher = connected "w" nodes[1]
                do! watcher.SubscribeAsync("room", false)
                // Two clients with one name make the same keys: the second is the first after a
                // reconnect that lost the acknowledgements.
                let! first = connected "p" nodes[0]
                let! retry = connected "p" nodes[1]
                clients.AddRange [ watcher; first; retry ]
                let! offsetFirst = first.Publish("room", "\"p-1\"")
                let! offsetRetry = retry.Publish("room", "\"p-1\"")
                Expect.equal offsetRetry offsetFirst "the retry is acknowledged with the first position"
                let! _ = first.Publish("room", "\"p-2\"")
                do! untilDelivered 2 "room" [ watcher ]
                let! sequence = channelSequence nodes[0] "room"
                Expect.equal sequence [ "\"p-1\""; "\"p-2\"" ] "the retried publish is in the channel once"
                expectSequence sequence "room" [ watcher ]
            finally
                disposeAll clients
                disposeAll nodes
        })

        testCaseTask "a subscriber away past retention (count) is told not-recovered and delivers what is still held" (fun () -> task {
            let prefix = newPrefix ()
            let! a = startNodeWith prefix "a" (fun r -> r.MaxCount <- 5)
            let! b = startNodeWith prefix "b" (fun r -> r.MaxCount <- 5)
            let clients = ResizeArray<RecoveringClient>()
            try
                let! sub = connected "s" a
                let! publisher = connected "p" b
                clients.AddRange [ sub; publisher ]
                do! sub.SubscribeAsync("room", false)
                do! publishAll publisher "room" [ 1 .. 3 ]
                do! untilDelivered 3 "room" [ sub ]
                sub.Drop()
                do! publishAll publisher "room" [ 4 .. 15 ]
                do! sub.ConnectAsync b.Url
                do! expectEventually (seconds 30.0) "the subscriber is told and catches up" (fun () ->
                    sub.Read("room", fun v -> v.NotRecovered = 1 && v.Offset = 15UL))
                Expect.equal (sub.DeliveredData "room") [ for n in [ 1; 2; 3 ] @ [ 11 .. 15 ] -> $"\"p-{n}\"" ] "what it had, then what the history held (the last 5)"
            finally
                disposeAll clients
                disposeAll [ a; b ]
        })

        testCaseTask "a publication whose live delivery never came, on a channel that then stays quiet, is filled by every node from history" (fun () -> task {
            let! nodes = startNodes (newPrefix ()) [ "a"; "b"; "c" ]
            let clients = ResizeArray<RecoveringClient>()
            try
                let! subscribers = [ for node in nodes -> connected $"s{node.Name}" node ] |> Task.WhenAll
                clients.AddRange subscribers
                for s in subscribers do do! s.SubscribeAsync("room", false)
                let! publisher = connected "p" nodes[0]
                clients.Add publisher
                do! publishAll publisher "room" [ 1 .. 3 ]
                do! untilDelivered 3 "room" (List.ofArray subscribers)
                // Appended in Redis without any node publishing it: what every node's pub/sub lost.
                let! lost = nodes[1].Store.AppendAsync("room", ReadOnlyMemory(Encoding.UTF8.GetBytes "\"lost-1\""), null)
                Expect.equal lost.Position.Offset 4UL "the fourth publication"
                do! untilDelivered 4 "room" (List.ofArray subscribers)
                let! sequence = channelSequence nodes[0] "room"
                expectSequence sequence "room" (List.ofArray subscribers)
                for node in nodes do
                    Expect.equal node.Filled 1L $"node {node.Name} filled the one publication its subscribers missed"
                for s in subscribers do
                    Expect.equal (s.Read("room", fun v -> v.GapRecoveries)) 0 "no client had to notice (nothing followed)"
            finally
                disposeAll clients
                disposeAll nodes
        })

        testCaseTask "pub/sub connections killed over and over mid-stream (CLIENT KILL TYPE pubsub): zero lost, zero duplicated, order kept" (fun () -> task {
            let! nodes = startNodes (newPrefix ()) [ "a"; "b"; "c" ]
            let clients = ResizeArray<RecoveringClient>()
            use admin = StackExchange.Redis.ConnectionMultiplexer.Connect((channelsRedis ()).Endpoint + ",allowAdmin=true")
            let kill () = task {
                let! killed = admin.GetDatabase().ExecuteAsync("CLIENT", "KILL", "TYPE", "pubsub")
                return int killed }
            try
                let! subscribers = [ for node in nodes do for i in 1 .. 2 -> connected $"s{node.Name}{i}" node ] |> Task.WhenAll
                clients.AddRange subscribers
                for s in subscribers do do! s.SubscribeAsync("room", false)
                let! publisher = connected "p" nodes[0]
                clients.Add publisher
                do! publishAll publisher "room" [ 1 .. 20 ]
                let mutable killed = 0
                let mutable rounds = 0
                let mutable published = 20
                let lossesSeen () =
                    (subscribers |> Array.sumBy (fun s -> s.Read("room", fun v -> v.GapRecoveries)))
                    + int (nodes |> List.sumBy (fun n -> n.Filled))
                // Kills can miss every delivery when a burst is quick: bursts repeat (at most 5) until some
                // deliveries were dropped and filled, so the run always tests the loss.
                let mutable bursts = 0
                while bursts = 0 || (lossesSeen () = 0 && bursts < 5) do
                    // Every node's subscriber connections killed every 10 ms while 40 more are published.
                    let burst = publishAll publisher "room" [ published + 1 .. published + 40 ]
                    while not burst.IsCompleted && rounds < 1_000 do
                        let! n = kill ()
                        killed <- killed + n
                        rounds <- rounds + 1
                        do! Task.Delay 10
                    do! burst
                    // A last kill and a burst right after it, then nothing: what this loses only the
                    // nodes' gap checks can fill.
                    let! n = kill ()
                    killed <- killed + n
                    let! _ = [ for n in published + 41 .. published + 50 -> publisher.Publish("room", $"\"p-{n}\"") ] |> Task.WhenAll
                    published <- published + 50
                    bursts <- bursts + 1
                    do! untilDelivered published "room" (List.ofArray subscribers)
                Expect.isGreaterThan killed 0 "subscriber connections were killed"
                let! sequence = channelSequence nodes[0] "room"
                Expect.equal (List.sort sequence) (List.sort [ for n in 1 .. published -> $"\"p-{n}\"" ]) "every publish once in the channel"
                expectSequence sequence "room" (List.ofArray subscribers)
                let recoveries = subscribers |> Array.sumBy (fun s -> s.Read("room", fun v -> v.GapRecoveries))
                let duplicates = subscribers |> Array.sumBy (fun s -> s.Read("room", fun v -> v.Duplicates))
                let filled = nodes |> List.sumBy (fun n -> n.Filled)
                printfn "Channels on Redis, CLIENT KILL TYPE pubsub: %d bursts, %d connections killed in %d rounds; clients recovered %d gaps and dropped %d duplicates; nodes filled %d publications" bursts killed (rounds + bursts) recoveries duplicates filled
                Expect.isGreaterThan (recoveries + int filled) 0 "deliveries were dropped and filled (else this run did not test the loss)"
            finally
                disposeAll clients
                disposeAll nodes
        })

        testCaseTask "a node killed with SIGKILL mid-stream: its clients move with their positions, its publisher's retries take effect once, its members leave in time" (fun () -> task {
            let prefix = newPrefix ()
            let! nodes = startNodes prefix [ "a"; "b" ]
            let a, b = nodes[0], nodes[1]
            let port = freePort ()
            let dll = Assembly.GetExecutingAssembly().Location
            let child, output = startDotnet $"\"{dll}\" --channels-redis-node {port} {(channelsRedis ()).Endpoint} {prefix} k"
            let clients = ResizeArray<RecoveringClient>()
            try
                do! expectEventually (seconds 60.0) "the node process listens" (fun () ->
                    lock output (fun () -> output.ToString().Contains "listening"))
                let kUrl = $"ws://127.0.0.1:{port}"
                let connectTo name url = task {
                    let client = new RecoveringClient(name)
                    do! client.ConnectAsync url
                    clients.Add client
                    return client }
                let! watcher = connectTo "watcher" a.Url
                do! watcher.SubscribeAsync("room", true)
                let! onK1 = connectTo "k1" kUrl
                let! onK2 = connectTo "k2" kUrl
                let! onA = connectTo "sa" a.Url
                let! onB = connectTo "sb" b.Url
                let subscribers = [ watcher; onK1; onK2; onA; onB ]
                for s in subscribers.Tail do do! s.SubscribeAsync("room", true)
                let killedIds = [ onK1.ClientId; onK2.ClientId ]
                do! expectEventually (seconds 10.0) "five members, seen from node a" (fun () -> (watcher.MembersAsync "room").Result.Length = 5)
                let! pk = connectTo "pk" kUrl
                let! pa = connectTo "pa" a.Url
                let perPublisher = 60
                let publishingA = publishAll pa "room" [ 1 .. perPublisher ]
                do! publishAll pk "room" [ 1 .. 20 ]
                // Mid-stream: the next publishes are on their way when the node dies.
                let inFlight = [ for n in 21 .. 25 -> pk.Publish("room", $"\"pk-{n}\"") :> Task ]
                stopProcess child
                let killed = DateTime.UtcNow
                let leftOf () = watcher.PresenceEvents |> List.filter (fun (kind, _, c) -> kind = "leave" && List.contains c killedIds)
                // When both leave events have arrived (watched from the kill on; bounded).
                let leftAt = task {
                    let! seen = eventually (seconds 60.0) (fun () -> (leftOf ()).Length >= 2)
                    return if seen then Some DateTime.UtcNow else None }
                do! onK1.ConnectAsync b.Url
                do! onK2.ConnectAsync a.Url
                do! pk.ConnectAsync b.Url
                do! Task.WhenAll inFlight
                do! publishAll pk "room" [ 26 .. perPublisher ]
                do! publishingA
                do! untilDelivered (2 * perPublisher) "room" subscribers
                let! sequence = channelSequence a "room"
                Expect.equal sequence.Length (2 * perPublisher) "each publish once in the channel"
                expectEachOnce sequence "pk" perPublisher
                expectEachOnce sequence "pa" perPublisher
                expectSequence sequence "room" subscribers
                // Presence: the dead node's members leave (the moved clients are members again under new ids).
                let limit = ChannelsRedisNode.heartbeatTimeout + ChannelsRedisNode.sweepInterval + seconds 3.0
                let! leftTime = leftAt
                let took =
                    match leftTime with
                    | Some time -> time - killed
                    | None -> failtest "no leave events for the dead node's members within 60 s"
                let! members = watcher.MembersAsync "room"
                Expect.isEmpty (Set.intersect (set members) (set killedIds)) "the dead node's members are gone"
                Expect.equal members.Length 5 "the moved clients are members again"
                Expect.equal (leftOf () |> List.map (fun (_, _, c) -> c) |> List.sort) (List.sort killedIds) "one leave per dead member"
                Expect.isLessThan took limit $"the dead node's members left within {limit}"
                printfn "Channels on Redis, SIGKILL: the dead node's members left %.1f s after the kill (heartbeat timeout %.1f s)" took.TotalSeconds ChannelsRedisNode.heartbeatTimeout.TotalSeconds
            finally
                stopProcess child
                disposeAll clients
                disposeAll nodes
        })
    ]

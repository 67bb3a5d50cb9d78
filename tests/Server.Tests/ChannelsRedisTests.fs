/// Channel history and presence in a real Redis (Realtime.Channels.Redis), shared by several nodes: each
/// "node" here is a store or presence with a Redis connection of its own, as on separate servers. The
/// redis-server is this list's own, on a private port, started on first use and stopped when the run ends.
module Realtime.Server.Tests.ChannelsRedisTests

open System
open System.Collections.Concurrent
open System.Text
open System.Threading.Tasks
open Expecto
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging.Abstractions
open Realtime.Channels
open Realtime.Channels.Redis
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.RedisTests

let private redis =
    lazy
        (let instance = RedisInstance(freePort ())
         AppDomain.CurrentDomain.ProcessExit.Add(fun _ -> instance.Remove())
         instance.Start()
         instance)

/// The redis-server of the channels tests (this list's and ChannelsRedisClusterTests'), started on first use.
let channelsRedis () =
    let instance = redis.Value
    if not instance.IsRunning then instance.Start()
    instance

let private runningRedis () = channelsRedis ()

/// Settings for one test: keys under a prefix of their own, so that tests do not see each other's channels.
let private optionsFor (prefix: string) (change: RedisChannelsOptions -> unit) =
    let options = RedisChannelsOptions(Configuration = (runningRedis ()).Endpoint + ",connectTimeout=2000", KeyPrefix = prefix)
    change options
    options

/// A key prefix of its own for one test.
let newPrefix () = "t" + Guid.NewGuid().ToString("N").Substring(0, 10)

let private retention (change: ChannelRetention -> unit) =
    let r = ChannelRetention()
    change r
    r

/// A node's store: its own Redis connection, shared retention settings.
type private StoreNode(options: RedisChannelsOptions, retention: ChannelRetention) =
    let connection = new RedisChannelsConnection(options)
    member val Store = RedisChannelStore(connection, retention, options)
    interface IAsyncDisposable with
        member _.DisposeAsync() = connection.DisposeAsync()

let private bytes (text: string) = ReadOnlyMemory(Encoding.UTF8.GetBytes text)
let private text (data: ReadOnlyMemory<byte>) = Encoding.UTF8.GetString data.Span
let private json (n: int) = bytes $"{{\"n\":{n}}}"

let private offsets (read: ChannelHistoryRead) = read.Publications |> Seq.map (fun p -> p.Offset) |> List.ofSeq
let private texts (read: ChannelHistoryRead) = read.Publications |> Seq.map (fun p -> text p.Data) |> List.ofSeq

/// Everything after `since`, read page by page (`page` at a time) until the current position.
let private readAll (store: IChannelStore) (channel: string) (since: ChannelPosition) (page: int) =
    task {
        let all = ResizeArray<ChannelPublication>()
        let! first = store.ReadAsync(channel, since, page)
        all.AddRange first.Publications
        let mutable last = if first.Publications.Count = 0 then since.Offset else first.Publications[first.Publications.Count - 1].Offset
        let mutable pages = 1
        while last < first.Position.Offset && pages < 10_000 do
            let! next = store.ReadAsync(channel, { Epoch = first.Position.Epoch; Offset = last }, page)
            all.AddRange next.Publications
            last <- next.Publications[next.Publications.Count - 1].Offset
            pages <- pages + 1
        return first, List.ofSeq all
    }

let private storeNodes (count: int) (prefix: string) (retention: ChannelRetention) =
    let options = optionsFor prefix ignore
    [ for _ in 1 .. count -> new StoreNode(options, retention) ]

let private disposeAll (nodes: #IAsyncDisposable list) =
    task {
        for node in nodes do
            do! node.DisposeAsync()
    }

[<Tests>]
let historyTests =
    testSequenced
    <| testList "Channels on Redis: history" [
        testCaseTask "the first use of a channel on any node sets its epoch, and every node sees the same one at offset 0" (fun () -> task {
            let nodes = storeNodes 3 (newPrefix ()) (ChannelRetention())
            try
                let! positions = nodes |> List.map (fun n -> n.Store.GetPositionAsync("room").AsTask()) |> Task.WhenAll
                Expect.equal (positions |> Array.map (fun p -> p.Epoch) |> Array.distinct).Length 1 "one epoch"
                Expect.isFalse (String.IsNullOrEmpty positions[0].Epoch) "an epoch is set"
                Expect.equal (positions |> Array.map (fun p -> p.Offset) |> Array.distinct) [| 0UL |] "no publication yet"
            finally
                (disposeAll nodes).Wait()
        })

        testCaseTask "three nodes publishing at once get offsets 1..N, each once, and every node reads one order" (fun () -> task {
            let nodes = storeNodes 3 (newPrefix ()) (ChannelRetention())
            try
                let perNode = 60
                let! results =
                    nodes
                    |> List.mapi (fun i node -> task {
                        let mine = ResizeArray()
                        for n in 1 .. perNode do
                            let! result = node.Store.AppendAsync("room", bytes $"\"{i}:{n}\"", null)
                            mine.Add((result.Position, $"\"{i}:{n}\""))
                        return List.ofSeq mine })
                    |> Task.WhenAll
                let appended = results |> List.concat
                let epoch = (fst appended.Head).Epoch
                Expect.allEqual (appended |> List.map (fun (p, _) -> p.Epoch)) epoch "one epoch"
                Expect.equal (appended |> List.map (fun (p, _) -> p.Offset) |> List.sort) [ 1UL .. uint64 (3 * perNode) ] "offsets 1..N, no gap, no repeat"
                for mine in results do
                    let own = mine |> List.map (fun (p, _) -> p.Offset)
                    Expect.equal own (List.sort own) "a node's own appends are in its order"
                let expected = appended |> List.sortBy (fun (p, _) -> p.Offset) |> List.map snd
                for node in nodes do
                    let! first, all = readAll node.Store "room" { Epoch = epoch; Offset = 0UL } 50
                    Expect.isTrue first.Recovered "nothing trimmed"
                    Expect.equal (all |> List.map (fun p -> text p.Data)) expected "the same sequence on every node"
                    Expect.equal (all |> List.map (fun p -> p.Offset)) [ 1UL .. uint64 (3 * perNode) ] "offsets in order"
            finally
                (disposeAll nodes).Wait()
        })

        testCaseTask "reading after a position returns what followed, page by page, recovered" (fun () -> task {
            let nodes = storeNodes 2 (newPrefix ()) (ChannelRetention())
            let a, b = nodes[0], nodes[1]
            try
                for n in 1 .. 25 do
                    let! _ = a.Store.AppendAsync("feed", json n, null)
                    ()
                let! position = b.Store.GetPositionAsync "feed"
                Expect.equal position.Offset 25UL "current position"
                let! page = b.Store.ReadAsync("feed", { position with Offset = 10UL }, 10)
                Expect.isTrue page.Recovered "nothing missing"
                Expect.equal (offsets page) [ 11UL .. 20UL ] "the next ten"
                Expect.equal (texts page) [ for n in 11 .. 20 -> $"{{\"n\":{n}}}" ] "their data, byte for byte"
                let! rest = b.Store.ReadAsync("feed", { position with Offset = 20UL }, 10)
                Expect.equal (offsets rest) [ 21UL .. 25UL ] "the rest"
                let! ahead = b.Store.ReadAsync("feed", { position with Offset = 99UL }, 10)
                Expect.isFalse ahead.Recovered "a position this history never had is not recovered"
                Expect.equal (offsets ahead) [ 1UL .. 10UL ] "and gets what is held, from the oldest"
                let! upToDate = b.Store.ReadAsync("feed", position, 10)
                Expect.isTrue upToDate.Recovered "a reader at the end missed nothing"
                Expect.isEmpty upToDate.Publications "and gets nothing"
            finally
                (disposeAll nodes).Wait()
        })

        testCaseTask "a publish key repeated on another node takes effect once and gets the first position" (fun () -> task {
            let nodes = storeNodes 3 (newPrefix ()) (ChannelRetention())
            try
                let! first = nodes[0].Store.AppendAsync("room", bytes "\"once\"", "client-1:7")
                let! _ = nodes[1].Store.AppendAsync("room", bytes "\"other\"", "client-2:1")
                let! retry = nodes[2].Store.AppendAsync("room", bytes "\"once\"", "client-1:7")
                let! retryAgain = nodes[1].Store.AppendAsync("room", bytes "\"once\"", "client-1:7")
                Expect.isFalse first.Duplicate "the first takes effect"
                Expect.isTrue retry.Duplicate "the retry is recognised"
                Expect.equal retry.Position first.Position "and answered with the first position"
                Expect.equal retryAgain.Position first.Position "every time"
                let! read = nodes[0].Store.ReadAsync("room", { first.Position with Offset = 0UL }, 100)
                Expect.equal (texts read) [ "\"once\""; "\"other\"" ] "held once"
                // A key is per channel.
                let! elsewhere = nodes[0].Store.AppendAsync("other-room", bytes "\"once\"", "client-1:7")
                Expect.isFalse elsewhere.Duplicate "the same key in another channel is another publish"
            finally
                (disposeAll nodes).Wait()
        })

        testCaseTask "a batch of appends is one step that does what appending each in turn does: the in-memory store as the model" (fun () -> task {
            let limits (r: ChannelRetention) =
                r.MaxCount <- 7
                r.MaxKeys <- 4
            let options = optionsFor (newPrefix ()) ignore
            let node = new StoreNode(options, retention limits)
            let model = InMemoryChannelStore(retention limits) :> IChannelStore
            let store = node.Store :> IChannelStore
            try
                // Keys repeated within a batch, across batches, and after MaxKeys newer ones made them forgotten.
                let batches =
                    [ [ "a", "k1"; "b", null; "c", "k1"; "d", "k2" ]
                      [ "e", "k3"; "f", "k4"; "g", "k5"; "h", "k1"; "i", "k2" ]
                      [ "j", null; "k", "k5"; "l", "k6"; "m", "k6"; "n", "k1" ]
                      [ "o", "k9" ] ]
                for batch in batches do
                    let requests = [| for data, key in batch -> ChannelAppendRequest(bytes $"\"{data}\"", key) |]
                    let! results = store.AppendManyAsync("room", requests)
                    let expected = ResizeArray()
                    for request in requests do
                        let! r = model.AppendAsync("room", request.Data, request.Key)
                        expected.Add r
                    Expect.equal [ for r in results -> r.Position.Offset, r.Duplicate ] [ for r in expected -> r.Position.Offset, r.Duplicate ] $"the batch {batch} as appended one at a time"
                    Expect.equal (results |> Seq.map (fun r -> r.Position.Epoch) |> Seq.distinct |> Seq.length) 1 "one epoch"
                let! position = store.GetPositionAsync "room"
                let! modelPosition = model.GetPositionAsync "room"
                Expect.equal position.Offset modelPosition.Offset "the same last offset"
                let! held = store.ReadAsync("room", { position with Offset = 0UL }, 100)
                let! modelHeld = model.ReadAsync("room", { modelPosition with Offset = 0UL }, 100)
                Expect.equal (offsets held, texts held) (offsets modelHeld, texts modelHeld) "the same history held after trimming by count"
            finally
                (node :> IAsyncDisposable).DisposeAsync().AsTask().Wait()
        })

        testCaseTask "publish keys are forgotten past the retention's MaxKeys (oldest first)" (fun () -> task {
            let options = optionsFor (newPrefix ()) ignore
            let node = new StoreNode(options, retention (fun r -> r.MaxKeys <- 3))
            try
                for n in 1 .. 4 do
                    let! _ = node.Store.AppendAsync("room", json n, $"k{n}")
                    ()
                let! oldest = node.Store.AppendAsync("room", json 1, "k1")
                Expect.isFalse oldest.Duplicate "k1 was forgotten: a publish again"
                Expect.equal oldest.Position.Offset 5UL "at the next offset"
                let! recent = node.Store.AppendAsync("room", json 4, "k4")
                Expect.isTrue recent.Duplicate "k4 is remembered"
                Expect.equal recent.Position.Offset 4UL "with its position"
            finally
                (node :> IAsyncDisposable).DisposeAsync().AsTask().Wait()
        })

        testCaseTask "retention by count trims the oldest; a reader behind the trim is not recovered and gets what is held" (fun () -> task {
            let nodes = storeNodes 2 (newPrefix ()) (retention (fun r -> r.MaxCount <- 5))
            try
                let mutable epoch = ""
                for n in 1 .. 8 do
                    let! r = nodes[0].Store.AppendAsync("room", json n, null)
                    epoch <- r.Position.Epoch
                let! fromStart = nodes[1].Store.ReadAsync("room", { Epoch = epoch; Offset = 0UL }, 100)
                Expect.isFalse fromStart.Recovered "1..3 were trimmed: lost to this reader, and it is told"
                Expect.equal (offsets fromStart) [ 4UL .. 8UL ] "what is held"
                let! justInside = nodes[1].Store.ReadAsync("room", { Epoch = epoch; Offset = 3UL }, 100)
                Expect.isTrue justInside.Recovered "a reader at 3 missed nothing that is gone"
                Expect.equal (offsets justInside) [ 4UL .. 8UL ] "it gets 4..8"
                let! behind = nodes[1].Store.ReadAsync("room", { Epoch = epoch; Offset = 2UL }, 100)
                Expect.isFalse behind.Recovered "a reader at 2 lost 3"
            finally
                (disposeAll nodes).Wait()
        })

        testCaseTask "retention by bytes keeps the newest publications whose data fits" (fun () -> task {
            let nodes = storeNodes 1 (newPrefix ()) (retention (fun r -> r.MaxBytes <- 10L))
            try
                let mutable epoch = ""
                for word in [ "\"aa\""; "\"bb\""; "\"cc\"" ] do
                    let! r = nodes[0].Store.AppendAsync("room", bytes word, null)
                    epoch <- r.Position.Epoch
                let! read = nodes[0].Store.ReadAsync("room", { Epoch = epoch; Offset = 0UL }, 100)
                Expect.equal (texts read) [ "\"bb\""; "\"cc\"" ] "4 + 4 bytes fit in 10, a third would not"
                Expect.isFalse read.Recovered "offset 1 is lost"
                let! _ = nodes[0].Store.AppendAsync("room", bytes "\"0123456789\"", null)
                let! afterBig = nodes[0].Store.ReadAsync("room", { Epoch = epoch; Offset = 3UL }, 100)
                Expect.isEmpty afterBig.Publications "a publication bigger than the bound is not kept"
                Expect.isFalse afterBig.Recovered "and a reader that missed it is told"
                Expect.equal afterBig.Position.Offset 4UL "it still took its position"
            finally
                (disposeAll nodes).Wait()
        })

        testCaseTask "retention by age: publications older than MaxAge are trimmed and their readers told" (fun () -> task {
            let nodes = storeNodes 1 (newPrefix ()) (retention (fun r -> r.MaxAge <- millis 400.0))
            try
                let! first = nodes[0].Store.AppendAsync("room", json 1, null)
                let! _ = nodes[0].Store.AppendAsync("room", json 2, null)
                let since = { first.Position with Offset = 0UL }
                let! fresh = nodes[0].Store.ReadAsync("room", since, 100)
                Expect.equal (offsets fresh) [ 1UL; 2UL ] "young enough at first"
                let mutable last = fresh
                let! aged =
                    eventually (seconds 10.0) (fun () ->
                        last <- nodes[0].Store.ReadAsync("room", since, 100).AsTask().Result
                        last.Publications.Count = 0)
                Expect.isTrue aged "trimmed by age within 10 s"
                Expect.isFalse last.Recovered "the reader from 0 is told it lost them"
                Expect.equal last.Position.Offset 2UL "the position stays"
                let! atEnd = nodes[0].Store.ReadAsync("room", { since with Offset = 2UL }, 100)
                Expect.isTrue atEnd.Recovered "a reader that had both lost nothing"
                let! next = nodes[0].Store.AppendAsync("room", json 3, null)
                Expect.equal next.Position.Offset 3UL "offsets go on after a trim"
            finally
                (disposeAll nodes).Wait()
        })

        testCaseTask "history removed from Redis starts a new epoch, and a reader of the old one is not recovered" (fun () -> task {
            let prefix = newPrefix ()
            let nodes = storeNodes 1 prefix (ChannelRetention())
            try
                let! old = nodes[0].Store.AppendAsync("room", json 1, "k")
                (runningRedis ()).Cli [ "del"; $"realtime:channels:{prefix}:{{room}}:position" ] |> ignore
                let! read = nodes[0].Store.ReadAsync("room", old.Position, 100)
                Expect.notEqual read.Position.Epoch old.Position.Epoch "a new epoch"
                Expect.equal read.Position.Offset 0UL "from the start"
                Expect.isFalse read.Recovered "the old epoch's reader is told"
                let! again = nodes[0].Store.AppendAsync("room", json 1, "k")
                Expect.isFalse again.Duplicate "the old history's keys went with it"
                Expect.equal again.Position { Epoch = read.Position.Epoch; Offset = 1UL } "offset 1 of the new epoch"
            finally
                (disposeAll nodes).Wait()
        })

        testCaseTask "a node that restarts (a new connection) recovers everything published before and during its absence" (fun () -> task {
            let options = optionsFor (newPrefix ()) ignore
            let first = new StoreNode(options, ChannelRetention())
            let other = new StoreNode(options, ChannelRetention())
            try
                let! a = first.Store.AppendAsync("room", json 1, null)
                do! (first :> IAsyncDisposable).DisposeAsync()
                let! _ = other.Store.AppendAsync("room", json 2, null)
                let restarted = new StoreNode(options, ChannelRetention())
                try
                    let! read = restarted.Store.ReadAsync("room", { a.Position with Offset = 0UL }, 100)
                    Expect.isTrue read.Recovered "nothing lost"
                    Expect.equal (texts read) [ "{\"n\":1}"; "{\"n\":2}" ] "both, in order"
                finally
                    (restarted :> IAsyncDisposable).DisposeAsync().AsTask().Wait()
            finally
                (other :> IAsyncDisposable).DisposeAsync().AsTask().Wait()
        })
    ]

/// Collects what a presence reports about members that left because their node died.
type private LeftMembers() =
    let left = ConcurrentQueue<string * string>()
    member _.All = left |> Seq.toList
    interface IChannelPresenceListener with
        member _.MembersLeft(channel, members) =
            for m in members do left.Enqueue(channel, m.Client)

/// A node's presence: its own Redis connection and node id, started with its own listener.
type private PresenceNode(options: RedisChannelsOptions, node: string) =
    let connection = new RedisChannelsConnection(options)
    let presence = new RedisChannelPresence(connection, options, node, NullLogger.Instance)
    let listener = LeftMembers()
    do presence.Start listener
    member _.Presence = presence
    member _.Left = listener.All
    /// Stops the heartbeat and sweep without telling anyone, as a crash would.
    member _.Crash() = presence.StopLoopsAsync()
    /// One heartbeat, as a node whose loops were stopped would send when it resumes.
    member _.Beat() = presence.BeatAsync()
    interface IAsyncDisposable with
        member _.DisposeAsync() =
            task {
                do! presence.DisposeAsync()
                do! connection.DisposeAsync()
            }
            |> ValueTask

let private mem (client: string) (name: string) : PresenceMember =
    { Client = client; Info = ChannelData.OfBytes(bytes $"{{\"name\":\"{name}\"}}") }

let private membersOf (node: PresenceNode) (channel: string) =
    task {
        let! members = node.Presence.GetMembersAsync channel
        return members |> Seq.map (fun m -> m.Client, text m.Info.Json) |> Seq.sort |> List.ofSeq
    }

[<Tests>]
let presenceTests =
    testSequenced
    <| testList "Channels on Redis: presence" [
        testCaseTask "members joined on three nodes are seen, with their information, from every node; a leave removes one" (fun () -> task {
            let options = optionsFor (newPrefix ()) ignore
            let nodes = [ for name in [ "a"; "b"; "c" ] -> new PresenceNode(options, name) ]
            try
                for node, client in List.zip nodes [ "a-1"; "b-1"; "c-1" ] do
                    let! added = node.Presence.JoinAsync("room", mem client client)
                    Expect.isTrue added "a new member"
                let! again = nodes[0].Presence.JoinAsync("room", mem "a-1" "a-1")
                Expect.isFalse again "joining twice adds nothing"
                let expected = [ for c in [ "a-1"; "b-1"; "c-1" ] -> c, $"{{\"name\":\"{c}\"}}" ]
                for node in nodes do
                    let! members = membersOf node "room"
                    Expect.equal members expected "every node sees the three"
                let! left = nodes[2].Presence.LeaveAsync("room", "b-1")
                Expect.equal (left |> Option.ofNullable |> Option.map (fun m -> m.Client)) (Some "b-1") "leave returns the member"
                let! none = nodes[2].Presence.LeaveAsync("room", "b-1")
                Expect.isFalse none.HasValue "a second leave finds nobody"
                let! members = membersOf nodes[0] "room"
                Expect.equal (members |> List.map fst) [ "a-1"; "c-1" ] "b-1 left"
                let! elsewhere = membersOf nodes[0] "other"
                Expect.isEmpty elsewhere "channels are separate"
            finally
                (disposeAll nodes).Wait()
        })

        testCaseTask "a crashed node's members leave within HeartbeatTimeout + SweepInterval, each reported once across the other nodes" (fun () -> task {
            let timeout, sweep = seconds 1.5, millis 250.0
            let options =
                optionsFor (newPrefix ()) (fun o ->
                    o.HeartbeatTimeout <- timeout
                    o.HeartbeatInterval <- millis 250.0
                    o.SweepInterval <- sweep)
            let a = new PresenceNode(options, "a")
            let b = new PresenceNode(options, "b")
            let c = new PresenceNode(options, "c")
            try
                let! _ = a.Presence.JoinAsync("room", mem "a-1" "ann")
                let! _ = c.Presence.JoinAsync("room", mem "c-1" "cid")
                let! _ = c.Presence.JoinAsync("room", mem "c-2" "cy")
                let! _ = c.Presence.JoinAsync("lobby", mem "c-1" "cid")
                // Three sweeps with everyone alive: nobody leaves.
                do! Task.Delay(sweep * 3.0)
                let! before = membersOf a "room"
                Expect.equal (before |> List.map fst) [ "a-1"; "c-1"; "c-2" ] "all present while c lives"
                Expect.isEmpty (a.Left @ b.Left) "no leave while every node beats"
                do! c.Crash()
                let crashed = DateTime.UtcNow
                let limit = timeout + sweep + seconds 3.0
                do! expectEventually limit "c's members leave" (fun () ->
                    let members = (membersOf a "room").Result
                    members |> List.map fst = [ "a-1" ])
                let took = DateTime.UtcNow - crashed
                do! expectEventually (seconds 5.0) "the leaves are reported" (fun () -> (a.Left @ b.Left).Length >= 3)
                let reported = a.Left @ b.Left |> List.sort
                Expect.equal reported [ "lobby", "c-1"; "room", "c-1"; "room", "c-2" ] "each member of c reported once, in all"
                let! lobby = membersOf b "lobby"
                Expect.isEmpty lobby "c-1 left the lobby too"
                Expect.isLessThan took limit $"within {limit}"
                printfn "Channels on Redis: a crashed node's members left %.1f s after its crash (heartbeat timeout %.1f s, sweep %.2f s)" took.TotalSeconds timeout.TotalSeconds sweep.TotalSeconds
            finally
                (disposeAll [ a; b; c ]).Wait()
        })

        testCaseTask "a node that stops gracefully has its remaining members removed by the others at once" (fun () -> task {
            let options = optionsFor (newPrefix ()) (fun o -> o.SweepInterval <- millis 250.0)
            let a = new PresenceNode(options, "a")
            let b = new PresenceNode(options, "b")
            try
                let! _ = b.Presence.JoinAsync("room", mem "b-1" "bo")
                do! expectEventually (seconds 5.0) "b is known" (fun () -> (runningRedis ()).Cli [ "smembers"; $"realtime:channels:{options.KeyPrefix}:nodes" ] |> fun s -> s.Contains "b")
                do! (b :> IAsyncDisposable).DisposeAsync()
                do! expectEventually (seconds 3.0) "b's member leaves, and a reports it, well before its heartbeat would expire (5 s)" (fun () ->
                    (membersOf a "room").Result.IsEmpty && a.Left = [ "room", "b-1" ])
            finally
                (disposeAll [ a ]).Wait()
        })

        testCaseTask "a node declared dead while it was only paused puts its members back when it beats again" (fun () -> task {
            let options =
                optionsFor (newPrefix ()) (fun o ->
                    o.HeartbeatTimeout <- seconds 1.0
                    o.HeartbeatInterval <- millis 200.0
                    o.SweepInterval <- millis 200.0)
            let a = new PresenceNode(options, "a")
            let b = new PresenceNode(options, "b")
            try
                let! _ = b.Presence.JoinAsync("room", mem "b-1" "bo")
                do! expectEventually (seconds 5.0) "b beats" (fun () -> (runningRedis ()).Cli [ "exists"; $"realtime:channels:{options.KeyPrefix}:node:{{b}}:heartbeat" ] = "1")
                // b pauses (its loops stop) past its timeout: a sweeps its member.
                do! b.Crash()
                do! expectEventually (seconds 5.0) "a reports b-1 gone" (fun () -> a.Left = [ "room", "b-1" ])
                let! gone = membersOf a "room"
                Expect.isEmpty gone "b-1 was removed"
                // b resumes: its next beat finds its heartbeat gone and registers its members again.
                do! b.Beat()
                let! back = membersOf a "room"
                Expect.equal (back |> List.map fst) [ "b-1" ] "b-1 is a member again"
            finally
                (disposeAll [ a; b ]).Wait()
        })
    ]

[<Tests>]
let settingsTests =
    testList "Channels on Redis: settings" [
        testCaseTask "settings out of range fail the start with OptionsValidationException naming each" (fun () -> task {
            let mutable failure: exn = null
            try
                let! server =
                    startWith
                        (fun builder ->
                            let realtime = { new Realtime.IRealtimeBuilder with member _.Services = builder.Services }
                            realtime
                                .AddRealtimeChannels()
                                .AddRedis((channelsRedis ()).Endpoint, fun o ->
                                    o.KeyPrefix <- "has{brace}"
                                    o.HeartbeatInterval <- seconds 2.0
                                    o.HeartbeatTimeout <- seconds 1.0)
                            |> ignore)
                        ignore
                        ignore
                do! server.StopAsync()
            with e -> failure <- e
            let validation =
                match failure with
                | :? Microsoft.Extensions.Options.OptionsValidationException as v -> v
                | :? AggregateException as a when (a.InnerException :? Microsoft.Extensions.Options.OptionsValidationException) ->
                    a.InnerException :?> Microsoft.Extensions.Options.OptionsValidationException
                | other -> failtestf "expected OptionsValidationException, got %A" other
            Expect.stringContains validation.Message "RedisChannelsOptions.KeyPrefix is \"has{brace}\"" "names the prefix"
            Expect.stringContains validation.Message "RedisChannelsOptions.HeartbeatTimeout is 00:00:01" "names the timeout"
        })
    ]

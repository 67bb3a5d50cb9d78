/// The channels server (Realtime.Channels) on real Kestrel with .NET ClientWebSocket clients speaking
/// the JSON form (one test the binary form): docs/channels-protocol.md as a specification.
module Realtime.Server.Tests.ChannelsTests

open System
open System.Net.WebSockets
open System.Text.Json
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.DependencyInjection
open Realtime
open Realtime.Channels
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.ChannelsClient

/// What Attach keeps of a connection in these tests.
type User = { Name: string }

/// A clock the test moves by hand, for the store's retention by age.
type ManualClock() =
    inherit TimeProvider()
    let mutable now = 0L
    member _.Advance(by: TimeSpan) = now <- now + by.Ticks
    override _.GetTimestamp() = now
    override _.TimestampFrequency = TimeSpan.TicksPerSecond

/// Starts a server with a channels endpoint at /channels: `options` sets retention and limits, `store`
/// replaces the in-memory store when given, `handlers` sets the callbacks (Attach reads ?name=).
let startChannelsWith (services: IServiceCollection -> unit) (options: RealtimeChannelsOptions -> unit) (handlers: RealtimeChannelHandlers<User> -> unit) =
    startWith
        (fun builder ->
            let realtime = { new IRealtimeBuilder with member _.Services = builder.Services }
            realtime.AddRealtimeChannels(Action<RealtimeChannelsOptions> options) |> ignore
            services builder.Services)
        ignore
        (fun app ->
            app.MapRealtimeChannels<User>("/channels", fun c ->
                c.Attach <- fun http -> Attachment.Accept { Name = string http.Request.Query["name"] }
                handlers c) |> ignore)

/// `startChannelsWith`, with `store` in place of the in-memory store when given.
let startChannels (options: RealtimeChannelsOptions -> unit) (store: IChannelStore option) (handlers: RealtimeChannelHandlers<User> -> unit) =
    startChannelsWith (fun services -> store |> Option.iter (fun s -> services.AddSingleton<IChannelStore>(s) |> ignore)) options handlers

/// The in-memory store whose history reads take `delay` first, as a remote store's would: it widens the
/// window between a subscriber's live subscription and its history read, where a publication could be
/// missed or sent twice.
type SlowReadStore(inner: IChannelStore, delay: TimeSpan) =
    interface IChannelStore with
        member _.AppendAsync(channel, data, key, cancel) = inner.AppendAsync(channel, data, key, cancel)
        member _.GetPositionAsync(channel, cancel) = inner.GetPositionAsync(channel, cancel)
        member _.ReadAsync(channel, since, limit, cancel) =
            ValueTask<ChannelHistoryRead>(
                task {
                    do! Task.Delay(delay, cancel)
                    return! inner.ReadAsync(channel, since, limit, cancel)
                })

/// The in-memory presence, keeping the listener the channels server gives it, so a test can report
/// members of a dead node as a shared presence would.
type ReportingPresence() =
    let inner = InMemoryChannelPresence()
    member val Listener: IChannelPresenceListener = Unchecked.defaultof<_> with get, set
    interface IChannelPresence with
        member this.Start listener = this.Listener <- listener
        member _.JoinAsync(channel, memberInfo, cancel) = (inner :> IChannelPresence).JoinAsync(channel, memberInfo, cancel)
        member _.LeaveAsync(channel, client, cancel) = (inner :> IChannelPresence).LeaveAsync(channel, client, cancel)
        member _.GetMembersAsync(channel, cancel) = (inner :> IChannelPresence).GetMembersAsync(channel, cancel)

let private url (server: RunningServer) (name: string) = $"{server.WsUrl}/channels?name={name}"

let private offsets (messages: JsonElement list) = messages |> List.map offsetOf

let private dataOf (message: JsonElement) = message.GetProperty("data").GetRawText()

/// Publications until `count` have arrived (fails on anything else or on a timeout).
let private takePubs (client: ChannelClient) (count: int) : Task<JsonElement list> =
    task {
        let received = Collections.Generic.List<JsonElement>()
        while received.Count < count do
            let! m = client.Expect "pub"
            received.Add m
        return List.ofSeq received
    }

let private errorCode (message: JsonElement) = message.GetProperty("code").GetString()

[<Tests>]
let tests =
    testList "Channels" [
        testCaseTask "the JSON form is negotiated and greets with welcome, version 1 and a client id" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let! socket = connectOffering (url server "ann") [ "other"; ChannelSubprotocol.Json ]
            Expect.equal socket.SubProtocol ChannelSubprotocol.Json "the JSON form is chosen"
            use client = new ChannelClient(socket)
            let! welcome = client.Expect "welcome"
            Expect.equal (welcome.GetProperty("version").GetInt32()) 1 "version 1"
            Expect.isNonEmpty (welcome.GetProperty("client").GetString()) "a client id"
        })

        testCaseTask "an upgrade that offers neither form is refused with 400, and one without any subprotocol too" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            for offered in [ [ "chat" ]; [] ] do
                use socket = new ClientWebSocket()
                for p in offered do socket.Options.AddSubProtocol p
                socket.Options.CollectHttpResponseDetails <- true
                let! refused =
                    task {
                        try
                            do! socket.ConnectAsync(Uri(url server "ann"), Threading.CancellationToken.None)
                            return false
                        with :? WebSocketException -> return true
                    }
                Expect.isTrue refused "the handshake fails"
                Expect.equal socket.HttpStatusCode Net.HttpStatusCode.BadRequest $"400 for {offered}"
        })

        testCaseTask "a subscriber gets each publication with its position and data byte for byte; the publisher gets an ack" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let! reader, _ = connectJson (url server "ann")
            use reader = reader
            let! writer, _ = connectJson (url server "bob")
            use writer = writer
            let! subscribed, recovered = subscribe reader 1 "room:a" ""
            Expect.equal (subscribed.GetProperty("recovery").GetString()) "fresh" "no since: fresh"
            Expect.equal (offsetOf subscribed) 0UL "an empty channel is at offset 0"
            Expect.isEmpty recovered "nothing recovered"
            let data = """{"text":"hi",  "n":[1, 2.50]}"""
            let! ack = publish writer 7 "room:a" "k-1" data
            Expect.equal (offsetOf ack) 1UL "the first publication is offset 1"
            Expect.equal (epochOf ack) (epochOf subscribed) "same epoch"
            let! pub = reader.Expect "pub"
            Expect.equal (pub.GetProperty("channel").GetString()) "room:a" "channel"
            Expect.equal (offsetOf pub) 1UL "offset"
            Expect.equal (epochOf pub) (epochOf ack) "epoch"
            Expect.equal (dataOf pub) data "the data as the publisher wrote it"
        })

        testCaseTask "the publisher receives its own publication too, before its ack" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let! client, _ = connectJson (url server "ann")
            use client = client
            let! _ = subscribe client 1 "room:a" ""
            do! client.Send """{"type":"publish","id":2,"channel":"room:a","key":"k","data":"mine"}"""
            let! pub = client.Expect "pub"
            Expect.equal (dataOf pub) "\"mine\"" "its own publication"
            let! ack = client.Expect "ack"
            Expect.equal (offsetOf ack) (offsetOf pub) "acknowledged at the same position"
        })

        testCaseTask "concurrent publishers: every subscriber sees offsets 1..N with no gap and the same sequence" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let subscribers = 3
            let publishers = 4
            let each = 40
            let readers = Collections.Generic.List<ChannelClient>()
            for i in 1..subscribers do
                let! reader, _ = connectJson (url server $"r{i}")
                let! _ = subscribe reader 1 "room:busy" ""
                readers.Add reader
            let! writers =
                Task.WhenAll [| for p in 1..publishers ->
                                    task {
                                        let! writer, _ = connectJson (url server $"w{p}")
                                        for i in 1..each do
                                            let! _ = publish writer i "room:busy" $"w{p}-{i}" $"\"w{p}-{i}\""
                                            ()
                                        return writer } |]
            let total = publishers * each
            let! sequences = Task.WhenAll [| for r in readers -> takePubs r total |]
            let first = Array.head sequences
            Expect.equal (offsets first) [ for o in 1..total -> uint64 o ] "positions 1..N, strictly increasing, no gaps"
            for s in sequences do
                Expect.equal (s |> List.map dataOf) (first |> List.map dataOf) "every subscriber has the identical sequence"
            let published = set [ for p in 1..publishers do for i in 1..each -> $"\"w{p}-{i}\"" ]
            Expect.equal (first |> List.map dataOf |> set) published "each publication exactly once"
            for p in 1..publishers do
                let own = first |> List.map dataOf |> List.filter (fun d -> d.StartsWith $"\"w{p}-")
                Expect.equal own [ for i in 1..each -> $"\"w{p}-{i}\"" ] "each publisher's order kept"
            for r in readers do (r :> IDisposable).Dispose()
            for w in writers do (w :> IDisposable).Dispose()
        })

        testCaseTask "after a reconnect, what was published while away arrives once, in order, before subscribed (recovered), then live" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let! writer, _ = connectJson (url server "bob")
            use writer = writer
            let! first, _ = connectJson (url server "ann")
            let! subscribed, _ = subscribe first 1 "room:r" ""
            for i in 1..3 do
                let! _ = publish writer i "room:r" $"a{i}" (string i)
                ()
            let! seen = takePubs first 3
            let position = List.last seen
            first.Abort()
            (first :> IDisposable).Dispose()
            for i in 4..8 do
                let! _ = publish writer i "room:r" $"a{i}" (string i)
                ()
            let! again, _ = connectJson (url server "ann")
            use again = again
            let since = $""","since":{{"epoch":{quote (epochOf position)},"offset":{offsetOf position}}}"""
            let! resubscribed, recovered = subscribe again 2 "room:r" since
            Expect.equal (offsets recovered) [ 4UL .. 8UL ] "exactly the missed offsets, in order"
            Expect.equal (recovered |> List.map dataOf) [ for i in 4..8 -> string i ] "their data"
            Expect.equal (resubscribed.GetProperty("recovery").GetString()) "recovered" "recovered"
            Expect.equal (offsetOf resubscribed) 8UL "subscribed gives the current position"
            Expect.equal (epochOf resubscribed) (epochOf subscribed) "same epoch"
            let! _ = publish writer 9 "room:r" "a9" "9"
            let! live = again.Expect "pub"
            Expect.equal (offsetOf live) 9UL "then live publications follow"
        })

        testCaseTask "subscribing with a position while others publish misses nothing and duplicates nothing" (fun () -> task {
            let store = SlowReadStore(InMemoryChannelStore(ChannelRetention()), TimeSpan.FromMilliseconds 40.0)
            let! server = startChannels ignore (Some store) ignore
            use _ = server
            let channel = "room:race"
            let! writer, _ = connectJson (url server "w")
            use writer = writer
            for i in 1..20 do
                let! _ = publish writer i channel $"pre{i}" (string i)
                ()
            let! epochProbe, _ = connectJson (url server "probe")
            let! probe, _ = subscribe epochProbe 1 channel ""
            let epoch = epochOf probe
            (epochProbe :> IDisposable).Dispose()
            let publishing =
                task {
                    for i in 21..220 do
                        let! _ = publish writer i channel $"live{i}" (string i)
                        ()
                }
            let readers =
                [| for r in 1..6 ->
                       task {
                           do! Task.Delay(r * 15)
                           let! reader, _ = connectJson (url server $"r{r}")
                           use reader = reader
                           let since = (r * 3) % 20
                           let! subscribed, recovered = subscribe reader 1 channel $""","since":{{"epoch":{quote epoch},"offset":{since}}}"""
                           Expect.equal (subscribed.GetProperty("recovery").GetString()) "recovered" "within retention"
                           let remaining = 220 - int (offsetOf subscribed)
                           let! live = takePubs reader remaining
                           return since, recovered @ live } |]
            do! publishing
            let! results = Task.WhenAll readers
            for since, delivered in results do
                Expect.equal (offsets delivered) [ uint64 (since + 1) .. 220UL ] $"from {since}: every later offset once, in order"
        })

        testCaseTask "past retention by count the client is told not-recovered and gets what is still held" (fun () -> task {
            let! server = startChannels (fun o -> o.Retention.MaxCount <- 3) None ignore
            use _ = server
            let! writer, _ = connectJson (url server "w")
            use writer = writer
            let mutable epoch = ""
            for i in 1..10 do
                let! ack = publish writer i "room:c" $"k{i}" (string i)
                epoch <- epochOf ack
            let! reader, _ = connectJson (url server "r")
            use reader = reader
            let! subscribed, recovered = subscribe reader 1 "room:c" $""","since":{{"epoch":{quote epoch},"offset":2}}"""
            Expect.equal (subscribed.GetProperty("recovery").GetString()) "not-recovered" "offsets 3..7 were trimmed"
            Expect.equal (offsets recovered) [ 8UL; 9UL; 10UL ] "the three held"
            let! _, within = subscribe reader 2 "room:c" $""","since":{{"epoch":{quote epoch},"offset":8}}"""
            Expect.equal (offsets within) [ 9UL; 10UL ] "a position still held recovers"
        })

        testCaseTask "past retention by bytes the client is told not-recovered" (fun () -> task {
            let! server = startChannels (fun o -> o.Retention.MaxBytes <- 25L) None ignore
            use _ = server
            let! writer, _ = connectJson (url server "w")
            use writer = writer
            let mutable epoch = ""
            for i in 1..5 do
                let! ack = publish writer i "room:b" $"k{i}" "\"0123456789\""
                epoch <- epochOf ack
            let! reader, _ = connectJson (url server "r")
            use reader = reader
            let! subscribed, recovered = subscribe reader 1 "room:b" $""","since":{{"epoch":{quote epoch},"offset":0}}"""
            Expect.equal (subscribed.GetProperty("recovery").GetString()) "not-recovered" "12-byte publications: only two fit in 25 bytes"
            Expect.equal (offsets recovered) [ 4UL; 5UL ] "the two newest"
        })

        testCaseTask "past retention by age the client is told not-recovered" (fun () -> task {
            let clock = ManualClock()
            let retention = ChannelRetention(MaxAge = TimeSpan.FromSeconds 30.0)
            let! server = startChannels ignore (Some(InMemoryChannelStore(retention, clock))) ignore
            use _ = server
            let! writer, _ = connectJson (url server "w")
            use writer = writer
            let! first = publish writer 1 "room:t" "k1" "1"
            clock.Advance(TimeSpan.FromSeconds 20.0)
            let! _ = publish writer 2 "room:t" "k2" "2"
            clock.Advance(TimeSpan.FromSeconds 15.0)
            let! reader, _ = connectJson (url server "r")
            use reader = reader
            let! subscribed, recovered = subscribe reader 1 "room:t" $""","since":{{"epoch":{quote (epochOf first)},"offset":0}}"""
            Expect.equal (subscribed.GetProperty("recovery").GetString()) "not-recovered" "offset 1 is 35 s old"
            Expect.equal (offsets recovered) [ 2UL ] "offset 2 (15 s old) is held"
        })

        testCaseTask "a position of another epoch is not recovered" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let! writer, _ = connectJson (url server "w")
            use writer = writer
            let! _ = publish writer 1 "room:e" "k1" "1"
            let! reader, _ = connectJson (url server "r")
            use reader = reader
            let! subscribed, recovered = subscribe reader 1 "room:e" ""","since":{"epoch":"gone","offset":5}"""
            Expect.equal (subscribed.GetProperty("recovery").GetString()) "not-recovered" "another epoch"
            Expect.equal (offsets recovered) [ 1UL ] "what the current epoch holds"
        })

        testCaseTask "a publish retried with the same key, even from a new connection, takes effect once" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let! reader, _ = connectJson (url server "r")
            use reader = reader
            let! _ = subscribe reader 1 "room:k" ""
            let! writer, _ = connectJson (url server "w")
            let! firstAck = publish writer 1 "room:k" "same-key" "\"once\""
            writer.Abort()
            (writer :> IDisposable).Dispose()
            let! retry, _ = connectJson (url server "w")
            use retry = retry
            let! secondAck = publish retry 1 "room:k" "same-key" "\"once\""
            Expect.equal (offsetOf secondAck) (offsetOf firstAck) "the retry is acknowledged with the first position"
            let! next = publish retry 2 "room:k" "other-key" "\"next\""
            Expect.equal (offsetOf next) (offsetOf firstAck + 1UL) "the retry took no position"
            let! pubs = takePubs reader 2
            Expect.equal (pubs |> List.map dataOf) [ "\"once\""; "\"next\"" ] "the subscriber got the publication once"
        })

        testCaseTask "authorization callbacks see Attach's data and the channel; a refusal is error forbidden" (fun () -> task {
            use! server =
                startChannels ignore None (fun c ->
                    c.CanSubscribe <- fun conn channel -> channel <> "secret" || conn.Data.Name = "admin"
                    c.CanPublishAsync <- fun conn channel -> ValueTask.FromResult(conn.Data.Name <> "guest")
                    c.CanSeePresence <- fun conn _ -> conn.Data.Name <> "guest")
            let! guest, _ = connectJson (url server "guest")
            use guest = guest
            do! guest.Send """{"type":"subscribe","id":1,"channel":"secret"}"""
            let! refused = guest.Expect "error"
            Expect.equal (errorCode refused) "forbidden" "subscribe refused"
            Expect.equal (refused.GetProperty("id").GetInt32()) 1 "for request 1"
            do! guest.Send """{"type":"publish","id":2,"channel":"room","key":"k","data":1}"""
            let! refused = guest.Expect "error"
            Expect.equal (errorCode refused, refused.GetProperty("id").GetInt32()) ("forbidden", 2) "publish refused"
            do! guest.Send """{"type":"presence","id":3,"channel":"room"}"""
            let! refused = guest.Expect "error"
            Expect.equal (errorCode refused, refused.GetProperty("id").GetInt32()) ("forbidden", 3) "presence query refused"
            do! guest.Send """{"type":"subscribe","id":4,"channel":"room","presence":true}"""
            let! refused = guest.Expect "error"
            Expect.equal (errorCode refused, refused.GetProperty("id").GetInt32()) ("forbidden", 4) "join and leave events refused"
            let! admin, _ = connectJson (url server "admin")
            use admin = admin
            let! _ = subscribe admin 1 "secret" ""
            let! ack = publish admin 2 "secret" "k" "1"
            Expect.equal (offsetOf ack) 1UL "the admin may"
        })

        testCaseTask "presence: members with the app's info, join on subscribe, leave on unsubscribe and on disconnect" (fun () -> task {
            let! server = startChannels ignore None (fun c -> c.PresenceInfo <- fun conn -> box {| name = conn.Data.Name |})
            use _ = server
            let! ann, annId = connectJson (url server "ann")
            use ann = ann
            let! _ = subscribe ann 1 "room:p" ""","presence":true"""
            let! ownJoin = ann.Expect "join"
            Expect.equal (ownJoin.GetProperty("member").GetProperty("client").GetString()) annId "its own join"
            let! bob, bobId = connectJson (url server "bob")
            let! _ = subscribe bob 1 "room:p" ""
            let! join = ann.Expect "join"
            Expect.equal (join.GetProperty("member").GetProperty("client").GetString()) bobId "bob joined"
            Expect.equal (join.GetProperty("member").GetProperty("info").GetRawText()) """{"name":"bob"}""" "with the app's info"
            do! ann.Send """{"type":"presence","id":2,"channel":"room:p"}"""
            let! members = ann.Expect "presence"
            let listed =
                [ for m in members.GetProperty("members").EnumerateArray() -> m.GetProperty("client").GetString(), m.GetProperty("info").GetProperty("name").GetString() ]
                |> List.sort
            Expect.equal listed (List.sort [ annId, "ann"; bobId, "bob" ]) "both members"
            do! bob.Send """{"type":"unsubscribe","id":2,"channel":"room:p"}"""
            let! _ = bob.Expect "unsubscribed"
            let! leave = ann.Expect "leave"
            Expect.equal (leave.GetProperty("member").GetProperty("client").GetString()) bobId "bob left on unsubscribe"
            let! _ = subscribe bob 3 "room:p" ""
            let! rejoin = ann.Expect "join"
            Expect.equal (rejoin.GetProperty("member").GetProperty("client").GetString()) bobId "bob is back"
            bob.Abort()
            (bob :> IDisposable).Dispose()
            let! leave = ann.Expect "leave"
            Expect.equal (leave.GetProperty("member").GetProperty("client").GetString()) bobId "bob left on disconnect"
            do! ann.Send """{"type":"presence","id":4,"channel":"room:p"}"""
            let! members = ann.Expect "presence"
            Expect.equal (members.GetProperty("members").GetArrayLength()) 1 "only ann is left"
        })

        testCaseTask "members a shared presence reports dead (their node crashed) leave: watchers on this node get leave events" (fun () -> task {
            let presence = ReportingPresence()
            let! server = startChannelsWith (fun services -> services.AddSingleton<IChannelPresence>(presence) |> ignore) ignore ignore
            use _ = server
            Expect.isNotNull (box presence.Listener) "the channels server started the presence with a listener"
            let! watcher, _ = connectJson (url server "ann")
            use watcher = watcher
            let! _ = subscribe watcher 1 "room:dead" ""","presence":true"""
            let! _ = watcher.Expect "join"
            let gone = { Client = "n9-1"; Info = ChannelData.OfBytes(ReadOnlyMemory(Text.Encoding.UTF8.GetBytes "\"bob\"")) }
            presence.Listener.MembersLeft("room:dead", [| gone |])
            let! leave = watcher.Expect "leave"
            Expect.equal (leave.GetProperty("member").GetProperty("client").GetString(), leave.GetProperty("member").GetProperty("info").GetString()) ("n9-1", "bob") "the dead member left"
        })

        testCaseTask "options out of range fail the start with a message naming them" (fun () -> task {
            let! failure =
                task {
                    try
                        let! server = startChannels (fun o -> o.MaxDataBytes <- 0; o.Retention.MaxCount <- -1) None ignore
                        do! server.StopAsync()
                        return None
                    with e -> return Some e
                }
            match failure with
            | Some(:? Microsoft.Extensions.Options.OptionsValidationException as e) ->
                Expect.stringContains e.Message "RealtimeChannelsOptions.MaxDataBytes is 0" "names the option and value"
                Expect.stringContains e.Message "Retention.MaxCount is -1" "every problem"
            | other -> failtestf "expected OptionsValidationException, got %A" other
        })

        testCaseTask "unsubscribe ends the publications; unsubscribing twice is error not-subscribed" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let! client, _ = connectJson (url server "ann")
            use client = client
            let! _ = subscribe client 1 "room:u" ""
            do! client.Send """{"type":"unsubscribe","id":2,"channel":"room:u"}"""
            let! unsubscribed = client.Expect "unsubscribed"
            Expect.equal (unsubscribed.GetProperty("id").GetInt32()) 2 "the reply"
            let! writer, _ = connectJson (url server "w")
            use writer = writer
            let! _ = publish writer 1 "room:u" "k" "1"
            do! client.Send """{"type":"unsubscribe","id":3,"channel":"room:u"}"""
            let! next = client.Next()
            Expect.equal (next.GetProperty("type").GetString(), errorCode next) ("error", "not-subscribed") "no publication came, and the second unsubscribe is refused"
        })

        testCaseTask "requests are answered by the method's handler; unknown methods and failing handlers are errors" (fun () -> task {
            use! server =
                startChannels ignore None (fun c ->
                    c.Requests["whoami"] <- fun conn data -> ValueTask.FromResult(box {| name = conn.Data.Name; asked = data.GetProperty("q").GetString() |})
                    c.Requests["fail"] <- fun _ _ -> raise (InvalidOperationException "boom"))
            let! client, _ = connectJson (url server "ann")
            use client = client
            do! client.Send """{"type":"request","id":5,"method":"whoami","data":{"q":"x"}}"""
            let! response = client.Expect "response"
            Expect.equal (response.GetProperty("id").GetInt32()) 5 "the reply carries the id"
            let result = response.GetProperty "data"
            Expect.equal (result.GetProperty("name").GetString(), result.GetProperty("asked").GetString()) ("ann", "x") "the handler's result, which saw Attach's data and the request's"
            do! client.Send """{"type":"request","id":6,"method":"nope","data":null}"""
            let! unknown = client.Expect "error"
            Expect.equal (errorCode unknown, unknown.GetProperty("id").GetInt32()) ("unknown-method", 6) "unknown method"
            do! client.Send """{"type":"request","id":7,"method":"fail"}"""
            let! failed = client.Expect "error"
            Expect.equal (errorCode failed, failed.GetProperty("id").GetInt32()) ("internal", 7) "a failing handler"
        })

        testCaseTask "malformed messages get error bad-message and neither this client nor others are closed" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let! other, _ = connectJson (url server "other")
            use other = other
            let! _ = subscribe other 1 "room:m" ""
            let! client, _ = connectJson (url server "ann")
            use client = client
            let bad =
                [ "not json"; "{}"; """{"type":"subscribe"}"""; """{"type":"subscribe","id":0,"channel":"a"}"""
                  """{"type":"publish","id":1,"channel":"a","key":"k"}"""; """{"type":"fly","id":1}"""
                  """{"type":"subscribe","id":1,"channel":"a"} trailing"""; "[1,2]"; """{"type":"subscribe","id":1,"channel":"a","since":{"epoch":1}}""" ]
            for text in bad do
                do! client.Send text
                let! error = client.Expect "error"
                Expect.equal (errorCode error, error.GetProperty("id").GetInt32()) ("bad-message", 0) $"for {text}"
            do! client.Socket.SendAsync(ArraySegment [| 1uy; 2uy |], WebSocketMessageType.Binary, true, Threading.CancellationToken.None)
            let! error = client.Expect "error"
            Expect.equal (errorCode error) "bad-message" "a binary frame on the JSON form"
            let! ack = publish client 9 "room:m" "k" "\"still here\""
            Expect.equal (offsetOf ack) 1UL "the client still works"
            let! pub = other.Expect "pub"
            Expect.equal (dataOf pub) "\"still here\"" "and the other client too"
        })

        testCaseTask "limits: channels per connection, data size and the channel-name rule" (fun () -> task {
            use! server =
                startChannels (fun o ->
                    o.MaxChannelsPerConnection <- 2
                    o.MaxDataBytes <- 100
                    o.ChannelNameRule <- fun name -> name.StartsWith "room:") None ignore
            let! client, _ = connectJson (url server "ann")
            use client = client
            let! _ = subscribe client 1 "room:1" ""
            let! _ = subscribe client 2 "room:2" ""
            let! _ = subscribe client 3 "room:1" ""
            do! client.Send """{"type":"subscribe","id":4,"channel":"room:3"}"""
            let! error = client.Expect "error"
            Expect.equal (errorCode error, error.GetProperty("id").GetInt32()) ("rate-limited", 4) "a third channel"
            let big = quote (String('x', 120))
            do! client.Send $"""{{"type":"publish","id":5,"channel":"room:1","key":"k","data":{big}}}"""
            let! error = client.Expect "error"
            Expect.equal (errorCode error, error.GetProperty("id").GetInt32()) ("too-large", 5) "data over 100 bytes"
            do! client.Send """{"type":"publish","id":6,"channel":"lobby","key":"k","data":1}"""
            let! error = client.Expect "error"
            Expect.equal (errorCode error, error.GetProperty("id").GetInt32()) ("unknown-channel", 6) "the app's rule"
            let long = "room:" + String('y', 252)
            do! client.Send $"""{{"type":"subscribe","id":7,"channel":{quote long}}}"""
            let! error = client.Expect "error"
            Expect.equal (errorCode error, error.GetProperty("id").GetInt32()) ("bad-message", 0) "257 bytes is past the contract's limit: not a message of the protocol"
            let longest = "room:" + String('y', 251)
            do! client.Send $"""{{"type":"unsubscribe","id":8,"channel":"room:2"}}"""
            let! _ = client.Expect "unsubscribed"
            let! subscribed, _ = subscribe client 9 longest ""
            Expect.equal (subscribed.GetProperty("channel").GetString()) longest "256 bytes is allowed"
        })

        testCaseTask "the app publishes from its own code through IRealtimeChannels, with positions, history and keys like a client" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let channels = server.App.Services.GetRequiredService<IRealtimeChannels>()
            let! client, _ = connectJson (url server "ann")
            use client = client
            let! _ = subscribe client 1 "room:app" ""
            let! first = channels.PublishAsync("room:app", {| text = "from a route" |}, "route-1")
            let! again = channels.PublishAsync("room:app", {| text = "from a route" |}, "route-1")
            Expect.equal again first "the same key publishes once"
            let! second = channels.PublishJsonAsync("room:app", ReadOnlyMemory(Text.Encoding.UTF8.GetBytes "[1,2]"))
            Expect.equal second.Offset (first.Offset + 1UL) "the next position"
            let! pubs = takePubs client 2
            Expect.equal (pubs |> List.map dataOf) [ """{"text":"from a route"}"""; "[1,2]" ] "both, once each, in order"
            let! refused =
                task {
                    try
                        let! _ = channels.PublishJsonAsync("room:app", ReadOnlyMemory(Text.Encoding.UTF8.GetBytes "{oops"))
                        return false
                    with :? ArgumentException -> return true
                }
            Expect.isTrue refused "data that is not JSON is refused"
        })

        testCaseTask "the binary form: subscribe, publish, pub and ack in binary frames, with the same data a JSON subscriber gets" (fun () -> task {
            let! server = startChannels ignore None ignore
            use _ = server
            let! json, _ = connectJson (url server "j")
            use json = json
            let! _ = subscribe json 1 "room:bin" ""
            let! socket = connectOffering (url server "b") [ ChannelSubprotocol.Binary ]
            use _ = socket
            Expect.equal socket.SubProtocol ChannelSubprotocol.Binary "the binary form is chosen"
            let sendBinary (bytes: byte[]) = socket.SendAsync(ArraySegment bytes, WebSocketMessageType.Binary, true, Threading.CancellationToken.None)
            let expectBinary (kind: byte) =
                task {
                    let! messageType, bytes = receive socket
                    Expect.equal messageType WebSocketMessageType.Binary "a binary frame"
                    Expect.equal bytes[0] kind $"kind {kind}"
                    return bytes
                }
            let! welcome = expectBinary 64uy
            Expect.equal welcome[1] 1uy "version 1"
            let str (s: string) = Array.append [| byte s.Length |] (Text.Encoding.UTF8.GetBytes s)
            do! sendBinary (Array.concat [ [| 1uy; 1uy |]; str "room:bin"; [| 0uy |] ])
            let! subscribed = expectBinary 65uy
            Expect.equal subscribed[1] 1uy "id 1"
            Expect.equal subscribed[subscribed.Length - 1] 0uy "fresh"
            let data = """{"b":true}"""
            do! sendBinary (Array.concat [ [| 3uy; 2uy |]; str "room:bin"; str "key-1"; str data ])
            let! pub = expectBinary 67uy
            let tail = pub[pub.Length - data.Length ..]
            Expect.equal (Text.Encoding.UTF8.GetString tail) data "the data at the end"
            Expect.equal pub[pub.Length - data.Length - 2] 1uy "offset 1 just before the data's length"
            let! ack = expectBinary 68uy
            Expect.equal ack[1] 2uy "id 2"
            Expect.equal ack[ack.Length - 1] 1uy "offset 1"
            let! jsonPub = json.Expect "pub"
            Expect.equal (dataOf jsonPub) data "the JSON subscriber gets the same data"
            do! sendBinary [| 3uy; 2uy |]
            let! error = expectBinary 73uy
            Expect.equal error[1] 0uy "a truncated message is an error with id 0"
        })
    ]

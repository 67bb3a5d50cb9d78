/// Scale-out through a real Redis: several Kestrel servers in one run, each with the Redis backplane,
/// against a redis-server this test run starts itself on a private port (and stops when it ends).
/// Every list here is sequenced: they share the one Redis, and one of them stops and restarts it.
module Realtime.Server.Tests.RedisTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Net.WebSockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Microsoft.Extensions.Logging.Abstractions
open Microsoft.Extensions.Options
open StackExchange.Redis
open Realtime
open Realtime.Redis
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.TestLogs

// ---------------------------------------------------------------------------------------------
// Processes: redis-server, redis-cli, dotnet.
// ---------------------------------------------------------------------------------------------

/// Runs a program to its end (at most `seconds`), returning its exit code and standard output.
let private run (program: string) (arguments: string list) (seconds: float) : int * string =
    let info = ProcessStartInfo(program)
    for argument in arguments do info.ArgumentList.Add argument
    info.UseShellExecute <- false
    info.RedirectStandardOutput <- true
    info.RedirectStandardError <- true
    use child = Process.Start info
    let output = child.StandardOutput.ReadToEndAsync()
    let errors = child.StandardError.ReadToEndAsync()
    if not (child.WaitForExit(TimeSpan.FromSeconds seconds)) then
        (try child.Kill true with _ -> ())
        failwithf "%s %s did not finish within %.0f s" program (String.Join(" ", arguments)) seconds
    child.ExitCode, output.Result + errors.Result

/// A redis-server of this test run: private port, no persistence, daemonized with a pid file.
type RedisInstance(port: int) =
    let folder = Path.Combine(Path.GetTempPath(), $"realtime-redis-{Environment.ProcessId}-{port}")
    let mutable running = false

    member _.Port = port
    member _.Endpoint = $"127.0.0.1:{port}"
    member _.LogFile = Path.Combine(folder, "redis.log")
    member _.IsRunning = running

    /// Stops it and removes its folder (pid file, log).
    member this.Remove() =
        this.Stop()
        try Directory.Delete(folder, true) with _ -> ()

    /// redis-cli against this instance; its output, trimmed.
    member _.Cli(arguments: string list) : string =
        let code, output = run "redis-cli" ([ "-p"; string port ] @ arguments) 10.0
        if code <> 0 then failwithf "redis-cli %A failed (%d): %s" arguments code output
        output.Trim()

    member private this.Answers() =
        try run "redis-cli" [ "-p"; string port; "ping" ] 5.0 |> snd |> fun s -> s.Trim() = "PONG" with _ -> false

    /// Starts redis-server and waits (at most 10 s) until it answers.
    member this.Start() =
        Directory.CreateDirectory folder |> ignore
        let code, output =
            try
                run
                    "redis-server"
                    [ "--port"; string port; "--bind"; "127.0.0.1"; "--save"; ""; "--appendonly"; "no"
                      "--daemonize"; "yes"; "--pidfile"; Path.Combine(folder, "redis.pid"); "--logfile"; this.LogFile
                      "--dir"; folder ]
                    10.0
            with :? ComponentModel.Win32Exception ->
                failwith "redis-server is not installed (apt-get install redis-server)"
        if code <> 0 then failwithf "redis-server did not start (%d): %s" code output
        running <- true
        let deadline = DateTime.UtcNow.AddSeconds 10.0
        while not (this.Answers()) do
            if DateTime.UtcNow > deadline then failwithf "redis-server on %d did not answer within 10 s" port
            Thread.Sleep 50

    /// Stops it (shutdown nosave) and waits (at most 10 s) until the port is closed.
    member this.Stop() =
        if running then
            running <- false
            (try run "redis-cli" [ "-p"; string port; "shutdown"; "nosave" ] 10.0 |> ignore with _ -> ())
            let deadline = DateTime.UtcNow.AddSeconds 10.0
            while this.Answers() && DateTime.UtcNow < deadline do
                Thread.Sleep 50

/// The one instance of this run, started on first use and stopped when the test process exits.
let private redis =
    lazy
        (let instance = RedisInstance(freePort ())
         AppDomain.CurrentDomain.ProcessExit.Add(fun _ -> instance.Remove())
         Console.CancelKeyPress.Add(fun _ -> instance.Remove())
         instance.Start()
         instance)

/// The run's Redis, started again if a test that stops it failed before restarting it.
let private runningRedis () =
    let instance = redis.Value
    if not instance.IsRunning then instance.Start()
    instance

/// Stops Redis for the body, and starts it again afterwards even when the body fails.
let private whileStopped (body: unit -> Task<unit>) : Task<unit> =
    task {
        redis.Value.Stop()
        try
            do! body ()
        finally
            if not redis.Value.IsRunning then redis.Value.Start()
    }

/// How many servers subscribe in Redis to a channel (PUBSUB NUMSUB).
let private subscribersOf (channel: string) =
    let output = (runningRedis ()).Cli [ "pubsub"; "numsub"; channel ]
    let lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
    int lines[lines.Length - 1]

/// The channels with at least one subscriber matching a pattern (PUBSUB CHANNELS).
let private channelsLike (pattern: string) =
    (redis.Value.Cli [ "pubsub"; "channels"; pattern ]).Split('\n', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
    |> Array.sort
    |> Array.toList

let private within (seconds: float) (what: string) (condition: unit -> bool) =
    task {
        let! held = eventually (TimeSpan.FromSeconds seconds) condition
        if not held then failtestf "not within %.0f s: %s" seconds what
    }

// ---------------------------------------------------------------------------------------------
// Nodes and clients.
// ---------------------------------------------------------------------------------------------

/// A test node's one endpoint, driven by text commands:
/// "sub T" / "unsub T" subscribe or unsubscribe and answer "subscribed T" / "unsubscribed T" once done;
/// "pub T BODY" publishes BODY to T (skipping the sender); "ping" answers "pong".
let private nodeRoutes (app: WebApplication) =
    app.MapRealtime(
        "/node",
        RealtimeHandlers<obj>(
            Message =
                fun ws message ->
                    let text = message.Text
                    if text.StartsWith "sub " then
                        ws.Subscribe(text.Substring 4) |> ignore
                        ws.Send("subscribed " + text.Substring 4) |> ignore
                    elif text.StartsWith "unsub " then
                        ws.Unsubscribe(text.Substring 6) |> ignore
                        ws.Send("unsubscribed " + text.Substring 6) |> ignore
                    elif text = "ping" then
                        ws.Send "pong" |> ignore
                    elif text.StartsWith "pub " then
                        let rest = text.Substring 4
                        let space = rest.IndexOf ' '
                        ws.Publish(rest.Substring(0, space), rest.Substring(space + 1)) |> ignore))
    |> ignore

type private Node =
    { Server: RunningServer
      Backplane: RedisBackplane
      Logs: CapturedLogs }

    member node.Url = node.Server.WsUrl + "/node"

    interface IDisposable with
        member node.Dispose() = (node.Server :> IDisposable).Dispose()

/// A server with the Redis backplane on this run's Redis, channels under `prefix`, its client and
/// backplane settings changed by the two functions.
let private startNodeWith (prefix: string) (configureClient: ConfigurationOptions -> unit) (configureBackplane: RedisBackplaneOptions -> unit) : Task<Node> =
    task {
        let redis = runningRedis ()
        let logs = new CapturedLogs(LogLevel.Trace)
        let! server =
            startWith
                (fun host ->
                    let services = host.Services
                    services.AddSingleton<ILoggerProvider>(logs) |> ignore
                    let builder = { new IRealtimeBuilder with member _.Services = services }
                    let configuration = ConfigurationOptions()
                    configuration.EndPoints.Add(IPAddress.Loopback, redis.Port)
                    configuration.ConnectTimeout <- 2000
                    configuration.ReconnectRetryPolicy <- LinearRetry(250)
                    configureClient configuration
                    builder.AddRedisBackplane(configuration, fun options ->
                        options.ChannelPrefix <- prefix
                        configureBackplane options) |> ignore)
                ignore
                nodeRoutes
        let backplane = server.App.Services.GetRequiredService<RedisBackplane>()
        return { Server = server; Backplane = backplane; Logs = logs }
    }

/// A server with the Redis backplane on this run's Redis, channels under `prefix`.
let private startNode (prefix: string) : Task<Node> = startNodeWith prefix ignore ignore

/// A prefix no other test uses, so tests on the shared Redis never see each other's channels.
let private newPrefix () = "t" + Guid.NewGuid().ToString("N").Substring(0, 8)

/// A client whose messages are read in the background into a queue, so a test can wait for the
/// next one with any timeout without aborting the socket.
type private Client(socket: ClientWebSocket) =
    let inbox = Channels.Channel.CreateUnbounded<string>()
    let reading =
        task {
            let buffer = Array.zeroCreate 65536
            use stream = new MemoryStream()
            try
                while socket.State = WebSocketState.Open do
                    let! result = socket.ReceiveAsync(ArraySegment buffer, CancellationToken.None)
                    if result.MessageType = WebSocketMessageType.Close then
                        inbox.Writer.TryComplete() |> ignore
                    else
                        stream.Write(buffer, 0, result.Count)
                        if result.EndOfMessage then
                            inbox.Writer.TryWrite(Encoding.UTF8.GetString(stream.ToArray())) |> ignore
                            stream.SetLength 0L
            with _ -> ()
            inbox.Writer.TryComplete() |> ignore
        }

    static member Connect(url: string) =
        task {
            let! socket = connect url
            return new Client(socket)
        }

    member _.Send(text: string) = sendText socket text

    /// The next message within `seconds`, or None.
    member _.TryNext(seconds: float) : Task<string option> =
        task {
            use cancel = new CancellationTokenSource(TimeSpan.FromSeconds seconds)
            try
                let! text = inbox.Reader.ReadAsync(cancel.Token)
                return Some text
            with _ ->
                return None
        }

    /// The next message (fails the test after 10 s).
    member client.Next() : Task<string> =
        task {
            match! client.TryNext 10.0 with
            | Some text -> return text
            | None -> return failtest "no message within 10 s"
        }

    /// Sends a command and reads until its answer; returns what came before it.
    member client.Command (command: string) (answer: string) : Task<string list> =
        task {
            do! client.Send command
            let before = ResizeArray()
            let mutable finished = false
            while not finished do
                let! text = client.Next()
                if text = answer then finished <- true else before.Add text
            return List.ofSeq before
        }

    member client.Subscribe(topic: string) = task { let! _ = client.Command ("sub " + topic) ("subscribed " + topic) in () }

    interface IDisposable with
        member _.Dispose() =
            (try socket.Abort() with _ -> ())
            socket.Dispose()

/// Waits until `count` servers subscribe in Redis to the topic's channel.
let private untilSubscribed (node: Node) (topic: string) (count: int) =
    let channel = node.Backplane.ChannelOf topic
    within 10.0 $"{count} servers subscribed to {channel}" (fun () -> subscribersOf channel = count)

let private disposeAll (things: IDisposable seq) =
    for thing in Seq.rev (Seq.toList things) do
        try thing.Dispose() with _ -> ()

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

[<Tests>]
let fanoutTests =
    testSequenced
    <| testList "Redis scale-out: three servers as one" [
        testCaseTask "a publish on each node reaches every subscriber on every node exactly once, skips its sender, in order" (fun () -> task {
            let prefix = newPrefix ()
            let! a = startNode prefix
            let! b = startNode prefix
            let! c = startNode prefix
            let nodes = [ a; b; c ]
            let owned = ResizeArray<IDisposable>(nodes |> List.map (fun n -> n :> IDisposable))
            try
                // Two clients on each node.
                let! clients =
                    [ for node in nodes do yield node; yield node ]
                    |> List.map (fun node -> Client.Connect node.Url)
                    |> Task.WhenAll
                for client in clients do owned.Add client
                for client in clients do do! client.Subscribe "room"
                do! untilSubscribed a "room" 3
                let perSender = 40
                // Every client publishes numbered messages, then "fin".
                let! _ =
                    clients
                    |> Array.mapi (fun i client -> task {
                        for n in 1 .. perSender do do! client.Send $"pub room {i}:{n}"
                        do! client.Send $"pub room {i}:fin" })
                    |> Task.WhenAll
                // Each receives every other client's messages in order, then its fin, and none of its own.
                let! _ =
                    clients
                    |> Array.mapi (fun i client -> task {
                        let next = Array.create clients.Length 1
                        let mutable fins = 0
                        while fins < clients.Length - 1 do
                            let! text = client.Next()
                            let sender, body = let parts = text.Split ':' in int parts[0], parts[1]
                            if sender = i then failtestf "client %d got its own message %s" i text
                            if body = "fin" then
                                Expect.equal next[sender] (perSender + 1) $"client {i}: all of {sender}'s messages before its fin"
                                next[sender] <- perSender + 2
                                fins <- fins + 1
                            else
                                Expect.equal (int body) next[sender] $"client {i}: {sender}'s messages in order, once"
                                next[sender] <- next[sender] + 1 })
                    |> Task.WhenAll
                // A last message from one client of each node crosses Redis after everything above:
                // a duplicate still on its way would arrive before it.
                let lastSenders = [ 0; 2; 4 ]
                for i in lastSenders do do! clients[i].Send $"pub room {i}:last"
                let! _ =
                    clients
                    |> Array.mapi (fun i client -> task {
                        let expected = lastSenders |> List.filter (fun s -> s <> i) |> List.length
                        for _ in 1 .. expected do
                            let! text = client.Next()
                            Expect.stringEnds text ":last" $"client {i}: nothing but the last messages, no duplicate"
                        let! extra = client.TryNext 0.2
                        Expect.isNone extra $"client {i}: nothing more" })
                    |> Task.WhenAll
                for node in nodes do
                    Expect.equal node.Backplane.UnreadableCount 0L "no unreadable envelope"
                    Expect.equal node.Backplane.PublishFailureCount 0L "no lost publish"
            finally
                disposeAll owned
        })

        testCaseTask "a server-wide publish on a node without subscribers reaches the other nodes" (fun () -> task {
            let prefix = newPrefix ()
            let! a = startNode prefix
            use _ = a
            let! b = startNode prefix
            use _ = b
            let! listener = Client.Connect b.Url
            use _ = listener
            do! listener.Subscribe "news"
            do! untilSubscribed b "news" 1
            Expect.equal (a.Server.Realtime.Publish("news", "from a's route")) 0 "nobody local on a"
            let! text = listener.Next()
            Expect.equal text "from a's route" "crossed through Redis"
        })

        testCaseTask "subscribe/unsubscribe churn while publishing: nothing after an unsubscribe returned, nothing lost to steady subscribers" (fun () -> task {
            let prefix = newPrefix ()
            let! a = startNode prefix
            let! b = startNode prefix
            let! c = startNode prefix
            let owned = ResizeArray<IDisposable>([ a :> IDisposable; b; c ])
            try
                let! publisher = Client.Connect a.Url
                owned.Add publisher
                let! steadyA = Client.Connect a.Url
                owned.Add steadyA
                let! steadyB = Client.Connect b.Url
                owned.Add steadyB
                do! steadyA.Subscribe "churn"
                do! steadyB.Subscribe "churn"
                do! untilSubscribed a "churn" 2
                let! churners = [ b; b; c ] |> List.map (fun n -> Client.Connect n.Url) |> Task.WhenAll
                for churner in churners do owned.Add churner
                let total = 400
                let published = ref 0
                let publishing =
                    task {
                        for n in 1 .. total do
                            do! publisher.Send $"pub churn {n}"
                            published.Value <- n
                            if n % 10 = 0 then do! Task.Delay 5
                        do! publisher.Send "pub churn end"
                    }
                // Steady subscribers read everything, in order, while the churners come and go.
                let steadyRead (client: Client) = task {
                    let mutable expected = 1
                    let mutable finished = false
                    while not finished do
                        let! text = client.Next()
                        if text = "end" then finished <- true
                        else
                            Expect.equal (int text) expected "a steady subscriber misses nothing"
                            expected <- expected + 1
                    Expect.equal expected (total + 1) "all of them"
                }
                let steadyReading = Task.WhenAll [| steadyRead steadyA; steadyRead steadyB |]
                let churn (client: Client) = task {
                    let mutable rounds = 0
                    while published.Value < total - 20 && rounds < 50 do
                        rounds <- rounds + 1
                        let! _ = client.Command "sub churn" "subscribed churn"
                        do! Task.Delay 10
                        // Whatever arrives before the answer to unsubscribe is allowed.
                        let! _ = client.Command "unsub churn" "unsubscribed churn"
                        // Let publishes made after the unsubscribe reach the nodes, then a marker through
                        // the same connection: anything on the topic before it came after the unsubscribe.
                        let mark = published.Value
                        let! _ = eventually (TimeSpan.FromSeconds 2.0) (fun () -> published.Value >= min total (mark + 5))
                        do! Task.Delay 20
                        let! stray = client.Command "ping" "pong"
                        Expect.isEmpty stray "nothing on the topic after its unsubscribe returned"
                    return rounds
                }
                let! rounds = churners |> Array.map churn |> Task.WhenAll
                do! publishing
                let! _ = steadyReading
                Expect.isTrue (Array.forall (fun r -> r >= 2) rounds) $"each churner came and went at least twice ({rounds})"
            finally
                disposeAll owned
        })

        testCaseTask "traffic follows interest: a node subscribes to a topic's channel only while it has local subscribers" (fun () -> task {
            let prefix = newPrefix ()
            let! a = startNode prefix
            use _ = a
            let! b = startNode prefix
            use _ = b
            let pattern = $"realtime:{prefix}:*"
            let channel = a.Backplane.ChannelOf "alpha"
            Expect.equal channel $"realtime:{prefix}:alpha" "one channel per topic"
            Expect.isEmpty (channelsLike pattern) "no subscriber, no channel"
            let! first = Client.Connect a.Url
            use _ = first
            let! second = Client.Connect a.Url
            use _ = second
            do! first.Subscribe "alpha"
            do! within 10.0 "a subscribed to alpha" (fun () -> channelsLike pattern = [ channel ])
            do! second.Subscribe "alpha"
            do! Task.Delay 100
            Expect.equal (subscribersOf channel) 1 "one Redis subscription for the node, however many local subscribers"
            let! _ = first.Command "unsub alpha" "unsubscribed alpha"
            do! Task.Delay 200
            Expect.equal (channelsLike pattern) [ channel ] "still one local subscriber"
            // The last one leaves by closing its connection.
            do! second.Send "ping"
            let! _ = second.Next()
            (second :> IDisposable).Dispose()
            do! within 10.0 "alpha dropped once its last subscriber left" (fun () -> channelsLike pattern |> List.isEmpty)
            // Back again.
            do! first.Subscribe "alpha"
            do! within 10.0 "alpha subscribed again" (fun () -> channelsLike pattern = [ channel ])
            Expect.equal (subscribersOf (b.Backplane.ChannelOf "alpha")) 1 "b, with no subscriber, never subscribed"
        })

        testCaseTask "an unreadable envelope on a channel is ignored, counted and logged; delivery goes on" (fun () -> task {
            let prefix = newPrefix ()
            let! a = startNode prefix
            use _ = a
            let! b = startNode prefix
            use _ = b
            let! listener = Client.Connect a.Url
            use _ = listener
            let! sender = Client.Connect b.Url
            use _ = sender
            do! listener.Subscribe "room"
            do! untilSubscribed a "room" 1
            let channel = a.Backplane.ChannelOf "room"
            let receivers = redis.Value.Cli [ "publish"; channel; "not an envelope" ]
            Expect.equal receivers "1" "a received it"
            // Version 1, text kind, valid header, but the topic is another one's.
            let wrongTopic = Realtime.Protocol.BackplaneEnvelope.encodeParts ("other", Realtime.Protocol.MessageKind.Text, ReadOnlySpan(Encoding.UTF8.GetBytes "x"), false, "someone", 1L)
            use client = ConnectionMultiplexer.Connect(redis.Value.Endpoint)
            client.GetSubscriber().Publish(RedisChannel.Literal channel, RedisValue.op_Implicit wrongTopic) |> ignore
            do! within 10.0 "two unreadable envelopes counted" (fun () -> a.Backplane.UnreadableCount = 2L)
            do! within 5.0 "logged as a warning" (fun () -> a.Logs.Has 105 LogLevel.Warning)
            do! sender.Send "pub room after the garbage"
            let! text = listener.Next()
            Expect.equal text "after the garbage" "still delivering"
        })
    ]

[<Tests>]
let outageTests =
    testSequenced
    <| testList "Redis scale-out: Redis going away and coming back" [
        testCaseTask "while Redis is down local delivery goes on and lost publishes are counted and logged; after it restarts delivery across nodes resumes" (fun () -> task {
            let prefix = newPrefix ()
            let! a = startNode prefix
            use _ = a
            let! b = startNode prefix
            use _ = b
            let! a1 = Client.Connect a.Url
            use _ = a1
            let! a2 = Client.Connect a.Url
            use _ = a2
            let! b1 = Client.Connect b.Url
            use _ = b1
            for client in [ a1; a2; b1 ] do do! client.Subscribe "room"
            do! untilSubscribed a "room" 2
            do! a1.Send "pub room before"
            let! onA = a2.Next()
            let! onB = b1.Next()
            Expect.equal (onA, onB) ("before", "before") "crosses while Redis is up"

            do! whileStopped (fun () -> task {
                do! within 10.0 "both nodes see Redis gone" (fun () -> not a.Backplane.IsConnected && not b.Backplane.IsConnected)
                do! a1.Send "pub room during"
                let! local = a2.Next()
                Expect.equal local "during" "local delivery goes on"
                do! within 5.0 "the lost publish is counted" (fun () -> a.Backplane.PublishFailureCount >= 1L)
                do! within 5.0 "and logged as a warning" (fun () -> a.Logs.Has 104 LogLevel.Warning)
            })
            // Bounded: probes until one crosses (the subscriptions come back without a server restart).
            let deadline = DateTime.UtcNow.AddSeconds 30.0
            let mutable crossed = false
            let mutable probe = 0
            while not crossed && DateTime.UtcNow < deadline do
                probe <- probe + 1
                do! a1.Send $"pub room probe {probe}"
                let! _ = a2.Next()
                match! b1.TryNext 0.3 with
                | Some text when text.StartsWith "probe" -> crossed <- true
                | Some text -> failtestf "b got %s" text
                | None -> ()
            Expect.isTrue crossed "a publish on a reaches b again within 30 s of Redis's return"
            Expect.equal (channelsLike $"realtime:{prefix}:*") [ a.Backplane.ChannelOf "room" ] "the channel is subscribed again"
            Expect.equal (subscribersOf (a.Backplane.ChannelOf "room")) 2 "by both nodes"
            // And the other way, with subscriptions made while Redis was away restored as well.
            do! b1.Send "pub room from b"
            let! fromB = a1.Next()
            let! fromB2 = a2.Next()
            Expect.equal (fromB, fromB2) ("from b", "from b") "b to a"
        })

        testCaseTask "a topic first subscribed while Redis is down is subscribed once it returns" (fun () -> task {
            let prefix = newPrefix ()
            let! a = startNode prefix
            use _ = a
            let! b = startNode prefix
            use _ = b
            do! within 10.0 "connected" (fun () -> a.Backplane.IsConnected && b.Backplane.IsConnected)
            let! listener = Client.Connect b.Url
            use _ = listener
            do! whileStopped (fun () -> task {
                do! within 10.0 "both nodes see Redis gone" (fun () -> not a.Backplane.IsConnected && not b.Backplane.IsConnected)
                do! listener.Subscribe "late"
                do! Task.Delay 700 // at least one failed attempt
            })
            do! untilSubscribed b "late" 1
            do! within 10.0 "a reconnected too" (fun () -> a.Backplane.IsConnected)
            let! sender = Client.Connect a.Url
            use _ = sender
            do! sender.Send "pub late hello"
            let! text = listener.Next()
            Expect.equal text "hello" "crossed"
            Expect.equal (subscribersOf (b.Backplane.ChannelOf "late")) 1 "one subscription, not a leftover duplicate"
        })
    ]

// ---------------------------------------------------------------------------------------------
// A slow but connected Redis (CLIENT PAUSE): the bound of publishes in flight.
// ---------------------------------------------------------------------------------------------

/// How long Redis holds every write command (PUBLISH among them) in these tests.
let private pauseMilliseconds = 3000

/// Reads a backplane's in-flight figures about every millisecond on a thread of its own, until
/// stopped (and at most 60 s), keeping the highest of each.
type private InFlightSampler(backplane: RedisBackplane) =
    let stopped = new ManualResetEventSlim(false)
    let mutable highestCount = 0
    let mutable highestBytes = 0L
    let mutable samples = 0
    let thread =
        Thread(
            (fun () ->
                let clock = Stopwatch.StartNew()
                while not (stopped.Wait 1) && clock.Elapsed < TimeSpan.FromSeconds 60.0 do
                    highestCount <- max highestCount backplane.InFlightCount
                    highestBytes <- max highestBytes backplane.InFlightBytes
                    samples <- samples + 1),
            IsBackground = true)
    do thread.Start()

    /// Stops sampling; the highest count and bytes seen, and how many samples were taken.
    member _.Stop() =
        stopped.Set()
        thread.Join()
        stopped.Dispose()
        highestCount, highestBytes, samples

/// What a burst of publishes on one node did while Redis was paused, and after.
type private Burst =
    { /// The longest one Publish call took.
      SlowestCall: TimeSpan
      /// Publishes Redis answered while the burst ran (0: the burst ended before the pause did).
      AnsweredDuringBurst: int64
      /// InFlightCount and InFlightBytes right after the burst, Redis still paused.
      HeldCount: int
      HeldBytes: int64
      /// The highest InFlightCount and InFlightBytes sampled from the pause until everything was answered.
      HighestCount: int
      HighestBytes: int64
      Samples: int
      /// Managed heap right after the burst minus right before it (both after a full collection).
      HeapGrowth: int64
      /// Growth of PublishFailureCount and PublishedCount over the burst.
      Failures: int64
      Answered: int64
      /// The sequence numbers the subscriber on the other node received, in arrival order.
      Delivered: int list
      /// The publishing node's log.
      Log: LogEntry list }

/// Two nodes (backplane settings from `configure`), a subscriber to "burst" on b; pauses Redis's
/// writes, then publishes `count` messages "n:" + `size` bytes from a's IRealtimeServer at once,
/// waits until Redis has answered whatever a held, and reads what crossed to b. Then checks that
/// delivery goes on: 10 more publishes, one at a time, all cross after the burst's.
let private burstWhilePaused (configure: RedisBackplaneOptions -> unit) (count: int) (size: int) : Task<Burst> =
    task {
        let prefix = newPrefix ()
        // Requests wait out the pause instead of timing out in the client.
        let! a = startNodeWith prefix (fun client -> client.AsyncTimeout <- 30_000; client.SyncTimeout <- 30_000) configure
        use _ = a
        let! b = startNodeWith prefix ignore configure
        use _ = b
        let! listener = Client.Connect b.Url
        use _ = listener
        do! listener.Subscribe "burst"
        do! untilSubscribed a "burst" 1
        a.Server.Realtime.Publish("burst", "0:warm") |> ignore
        let! warm = listener.Next()
        Expect.equal warm "0:warm" "a publish crosses before the pause"
        do! within 10.0 "nothing in flight before the burst" (fun () -> a.Backplane.InFlightCount = 0 && a.Backplane.InFlightBytes = 0L)
        let failuresBefore = a.Backplane.PublishFailureCount
        let answeredBefore = a.Backplane.PublishedCount
        let padding = String('x', size)
        let heapBefore = GC.GetTotalMemory true

        Expect.equal (redis.Value.Cli [ "client"; "pause"; string pauseMilliseconds; "WRITE" ]) "OK" "Redis paused its writes"
        let sampler = InFlightSampler a.Backplane
        let mutable slowest = TimeSpan.Zero
        for n in 1 .. count do
            let text = $"{n}:" + padding
            let clock = Stopwatch.StartNew()
            a.Server.Realtime.Publish("burst", text) |> ignore
            slowest <- max slowest clock.Elapsed
        let answeredDuringBurst = a.Backplane.PublishedCount - answeredBefore
        let heldCount, heldBytes = a.Backplane.InFlightCount, a.Backplane.InFlightBytes
        let heapGrowth = GC.GetTotalMemory true - heapBefore

        do! within 30.0 "Redis answered everything a held, once the pause ended" (fun () -> a.Backplane.InFlightCount = 0 && a.Backplane.InFlightBytes = 0L)
        let highestCount, highestBytes, samples = sampler.Stop()
        let failures = a.Backplane.PublishFailureCount - failuresBefore
        let answered = a.Backplane.PublishedCount - answeredBefore
        printfn
            "burst of %d x %d bytes while Redis was paused: slowest Publish %.2f ms; held %d publishes, %d bytes; highest sampled %d, %d bytes (%d samples); managed heap grew %d bytes; %d answered, %d dropped"
            count size slowest.TotalMilliseconds heldCount heldBytes highestCount highestBytes samples heapGrowth answered failures
        let delivered = ResizeArray()
        for _ in 1L .. answered do
            let! text = listener.Next()
            delivered.Add(int (text.Substring(0, text.IndexOf ':')))

        // One at a time: a burst of these could meet the bound again.
        for n in 1 .. 10 do
            a.Server.Realtime.Publish("burst", $"after:{n}") |> ignore
            let! text = listener.Next()
            Expect.equal text $"after:{n}" "after the pause publishes cross again, after the burst's"
        Expect.equal (a.Backplane.PublishFailureCount - failuresBefore) failures "none of them is lost"
        return
            { SlowestCall = slowest
              AnsweredDuringBurst = answeredDuringBurst
              HeldCount = heldCount
              HeldBytes = heldBytes
              HighestCount = highestCount
              HighestBytes = highestBytes
              Samples = samples
              HeapGrowth = heapGrowth
              Failures = failures
              Answered = answered
              Delivered = List.ofSeq delivered
              Log = a.Logs.Entries |> Array.toList }
    }

/// What every burst shows, whichever bound held it.
let private expectBoundedBurst (burst: Burst) (count: int) =
    Expect.isLessThan burst.SlowestCall (TimeSpan.FromSeconds 1.0) $"no Publish waited for Redis (paused {pauseMilliseconds} ms); the slowest took {burst.SlowestCall.TotalMilliseconds:F1} ms"
    Expect.equal burst.AnsweredDuringBurst 0L "the whole burst was published while Redis answered nothing"
    Expect.isGreaterThan burst.Samples 10 "the in-flight figures were sampled throughout"
    Expect.isGreaterThan burst.HeldCount 0 "Redis's pause held publishes in flight"
    Expect.equal burst.Answered (int64 burst.HeldCount) "what was held is what Redis answered once the pause ended"
    Expect.equal (burst.Answered + burst.Failures) (int64 count) "each publish either crossed or was counted as a failure"
    Expect.equal burst.Delivered [ 1 .. int burst.Answered ] "the other node got what was held: the burst's first publishes, in order, once each"
    Expect.isTrue
        (burst.Log |> List.exists (fun e -> e.EventId = 104 && e.Level = LogLevel.Warning && e.Message.Contains "InFlight reached"))
        "the drops were reported by the rate-limited warning, naming the bound"

[<Tests>]
let slowRedisTests =
    testSequenced
    <| testList "Redis scale-out: a slow but connected Redis (publishes in flight bounded)" [
        testCaseTask "a burst of large publishes during CLIENT PAUSE holds at most MaxPublishBytesInFlight; the rest are dropped and counted; Publish never waits; delivery resumes in order" (fun () -> task {
            let bound = 1L <<< 20
            let size = 200 * 1024
            let count = 160 // 32 MiB, 32 times the bound
            let! burst = burstWhilePaused (fun options -> options.MaxPublishBytesInFlight <- bound) count size
            expectBoundedBurst burst count
            Expect.isLessThanOrEqual burst.HighestBytes bound "the bytes in flight never passed the bound"
            Expect.isLessThanOrEqual burst.HeldBytes bound "nor right after the burst"
            Expect.isGreaterThan burst.HeldBytes (bound - int64 size - 200L) "the bound was filled: no room for one more publish"
            Expect.isLessThan burst.HeapGrowth (bound + (8L <<< 20)) "the managed heap (the Redis client's queues included) grew by the bound at most, plus 8 MiB, not by the burst"
        })

        testCaseTask "a burst of small publishes during CLIENT PAUSE holds at most MaxPublishesInFlight; the rest are dropped and counted; Publish never waits; delivery resumes in order" (fun () -> task {
            let bound = 16
            let count = 2000
            let! burst = burstWhilePaused (fun options -> options.MaxPublishesInFlight <- bound) count 16
            expectBoundedBurst burst count
            Expect.isLessThanOrEqual burst.HighestCount bound "the publishes in flight never passed the bound"
            Expect.equal burst.HeldCount bound "the bound was filled, and held until Redis answered"
        })

        testCaseTask "a pause longer than the Redis client's AsyncTimeout: timed-out publishes stay counted until Redis answers, so the client holds no more than MaxPublishBytesInFlight; then they are let go without another publish" (fun () -> task {
            let bound = 4L <<< 20
            let size = 200 * 1024
            let pause = 6000
            let prefix = newPrefix ()
            // The client gives up on a publish after about a second; Redis holds it for six.
            let! a = startNodeWith prefix (fun client -> client.AsyncTimeout <- 1000) (fun options -> options.MaxPublishBytesInFlight <- bound)
            use _ = a
            let! b = startNodeWith prefix ignore ignore
            use _ = b
            let! listener = Client.Connect b.Url
            use _ = listener
            do! listener.Subscribe "burst"
            do! untilSubscribed a "burst" 1
            a.Server.Realtime.Publish("burst", "0:warm") |> ignore
            let! warm = listener.Next()
            Expect.equal warm "0:warm" "a publish crosses before the pause"
            do! within 10.0 "nothing in flight before the pause" (fun () -> a.Backplane.InFlightCount = 0)
            let failuresBefore = a.Backplane.PublishFailureCount
            let padding = String('x', size)
            let heapBefore = GC.GetTotalMemory true

            Expect.equal (redis.Value.Cli [ "client"; "pause"; string pause; "WRITE" ]) "OK" "Redis paused its writes"
            let paused = Stopwatch.StartNew()
            let sampler = InFlightSampler a.Backplane
            // Bursts of twice the bound every 200 ms, for most of the pause: each time the client gives
            // up on the publishes it holds, more would take their place if they were let go.
            let mutable n = 0
            let mutable slowest = TimeSpan.Zero
            while paused.ElapsedMilliseconds < int64 pause - 1500L do
                for _ in 1 .. 20 do
                    n <- n + 1
                    let text = $"{n}:" + padding
                    let clock = Stopwatch.StartNew()
                    a.Server.Realtime.Publish("burst", text) |> ignore
                    slowest <- max slowest clock.Elapsed
                do! Task.Delay 200
            let heldBytes = a.Backplane.InFlightBytes
            let heapGrowth = GC.GetTotalMemory true - heapBefore
            let heapMeasuredAt = paused.Elapsed
            let failures = a.Backplane.PublishFailureCount - failuresBefore
            // Nothing more is published: what was held is let go once Redis answers.
            do! within 30.0 "nothing in flight once Redis answers again" (fun () -> a.Backplane.InFlightCount = 0 && a.Backplane.InFlightBytes = 0L)
            let highestCount, highestBytes, samples = sampler.Stop()
            printfn
                "pause %d ms, client timeout 1000 ms: %d publishes of %d bytes; slowest Publish %.2f ms; held %d bytes at %.1f s; highest sampled %d, %d bytes (%d samples); managed heap grew %d bytes; %d dropped"
                pause n size slowest.TotalMilliseconds heldBytes heapMeasuredAt.TotalSeconds highestCount highestBytes samples heapGrowth failures
            Expect.isLessThan heapMeasuredAt (TimeSpan.FromMilliseconds(float pause)) "the heap was measured while Redis was still paused"
            Expect.isLessThan slowest (TimeSpan.FromSeconds 1.0) "no Publish waited for Redis"
            Expect.isLessThanOrEqual highestBytes bound "the bytes in flight never passed the bound"
            Expect.isGreaterThan heldBytes (bound - int64 size - 200L) "long after the client's timeout the publishes it still holds are counted: the bound stays full"
            // Twice the bound: the envelopes and the client's write buffers (about 2x the bound, measured).
            Expect.isLessThan heapGrowth (2L * bound + (4L <<< 20)) "the managed heap (the Redis client's queues included) grew by twice the bound at most, plus 4 MiB, not by the bound at each timeout"
            Expect.isGreaterThan failures (int64 n / 2L) "most of the publishes were dropped and counted"

            // Delivery resumes: what Redis still carried comes first, in order, then each new publish.
            a.Server.Realtime.Publish("burst", "after:1") |> ignore
            let mutable previous = 0
            let mutable finished = false
            while not finished do
                let! text = listener.Next()
                if text = "after:1" then finished <- true
                else
                    let number = int (text.Substring(0, text.IndexOf ':'))
                    Expect.isGreaterThan number previous "what crossed from the pause arrives in order, once each"
                    previous <- number
            for k in 2 .. 5 do
                a.Server.Realtime.Publish("burst", $"after:{k}") |> ignore
                let! text = listener.Next()
                Expect.equal text $"after:{k}" "after the pause publishes cross again"
        })

        testCase "the bounds are checked when the backplane is made: below 1 is refused, naming the option" (fun () ->
            let refused (configure: RedisBackplaneOptions -> unit) =
                let options = RedisBackplaneOptions(Configuration = "127.0.0.1:1")
                configure options
                try
                    use _ = new RedisBackplane(Options.Create options, NullLogger<RedisBackplane>.Instance)
                    None
                with :? ArgumentOutOfRangeException as e -> Some e.Message
            let defaults = RedisBackplaneOptions()
            Expect.equal (defaults.MaxPublishesInFlight, defaults.MaxPublishBytesInFlight) (65_536, 64L <<< 20) "the documented defaults"
            Expect.isNone (refused ignore) "the defaults are accepted"
            for value in [ 0; -1 ] do
                let message = refused (fun o -> o.MaxPublishesInFlight <- value)
                Expect.isSome message $"MaxPublishesInFlight = {value} is refused"
                Expect.stringContains message.Value "MaxPublishesInFlight must be at least 1" "and named"
            for value in [ 0L; -1L ] do
                let message = refused (fun o -> o.MaxPublishBytesInFlight <- value)
                Expect.isSome message $"MaxPublishBytesInFlight = {value} is refused"
                Expect.stringContains message.Value "MaxPublishBytesInFlight must be at least 1" "and named")
    ]

// ---------------------------------------------------------------------------------------------
// The real samples/Echo, two processes on one Redis.
// ---------------------------------------------------------------------------------------------

[<Tests>]
let sampleTests =
    testSequenced
    <| testList "Redis scale-out: two real samples/Echo --redis processes" [
        testCaseTask "/fanout spans both nodes: every other connection on either node gets each message once, in order per sender, the sender none" (fun () -> task {
            match! ensureEchoSampleBuilt () with
            | Some reason -> failtest reason
            | None -> ()
            let port1, port2 = freePort (), freePort ()
            let! node1, _ = startEchoSample port1 $"--urls http://127.0.0.1:{port1} --redis {redis.Value.Endpoint}"
            use _ = node1
            let! node2, _ = startEchoSample port2 $"--urls http://127.0.0.1:{port2} --redis {redis.Value.Endpoint}"
            use _ = node2
            let owned = ResizeArray<IDisposable>()
            try
                let! clients =
                    [ port1; port1; port2; port2 ]
                    |> List.map (fun port -> Client.Connect $"ws://127.0.0.1:{port}/fanout")
                    |> Task.WhenAll
                for client in clients do owned.Add client
                do! within 10.0 "both Echo nodes subscribed to realtime:default:fanout" (fun () -> subscribersOf "realtime:default:fanout" = 2)
                let perSender = 30
                let! _ =
                    clients
                    |> Array.mapi (fun i client -> task {
                        for n in 1 .. perSender do do! client.Send $"{i}:{n}" })
                    |> Task.WhenAll
                let! _ =
                    clients
                    |> Array.mapi (fun i client -> task {
                        let next = Array.create clients.Length 1
                        for _ in 1 .. (clients.Length - 1) * perSender do
                            let! text = client.Next()
                            let sender, n = let parts = text.Split ':' in int parts[0], int parts[1]
                            if sender = i then failtestf "client %d got its own message %s" i text
                            Expect.equal n next[sender] $"client {i}: {sender}'s messages in order, once"
                            next[sender] <- n + 1
                        let! extra = client.TryNext 0.3
                        Expect.isNone extra $"client {i}: nothing more" })
                    |> Task.WhenAll
                ()
            finally
                disposeAll owned
                stopProcess node1
                stopProcess node2
        })
    ]

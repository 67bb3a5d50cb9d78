/// The host's topic registry (a lock per topic and per connection, none server-wide): it agrees
/// with a naive model (FsCheck command lists: subscribe within the core's limits, unsubscribe,
/// close, publish without the sender, first/last hooks in order), keeps its arrays proportional to
/// its topics, publishes without allocating, and under many threads subscribing, unsubscribing
/// and publishing on one topic it ends consistent and queues nothing to a subscriber after its
/// Unsubscribe returned.
module Realtime.Server.Tests.TopicRegistryTests

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime

/// A subscriber standing in for a connection: it records what it was delivered, and whether its
/// Unsubscribe has returned. The probe itself is its send lock, as a connection's queue lock is.
[<AllowNullLiteral>]
type private Probe(id: int) =
    member val Id = id
    member val Subscriptions: Subscriptions<Probe> = Unchecked.defaultof<_> with get, set
    member val Left = false with get, set
    member val Received = 0 with get, set
    member val ReceivedAfterLeaving = 0 with get, set

let private probe id =
    let p = Probe id
    p.Subscriptions <- Subscriptions<Probe>(p, p)
    p

let private limitsOf length count : Realtime.Protocol.Topics.TopicLimits =
    { MaxTopicLength = length; MaxTopicsPerSubscriber = count }

/// Delivers to every recipient of the topic but the sender as RealtimeServer's publish does: the
/// subscription is checked under the recipient's send lock at the moment of queueing. Returns the
/// ids delivered to, in order.
let private publish (registry: TopicRegistry<Probe>) (topic: string) (sender: Probe) : int[] =
    match registry.Find topic with
    | null -> [||]
    | subscribers ->
        let delivered = ResizeArray<int>()
        for subscription in subscribers.Recipients sender do
            let recipient = subscription.Subscriber
            lock recipient (fun () ->
                if subscription.IsActive then
                    recipient.Received <- recipient.Received + 1
                    if recipient.Left then recipient.ReceivedAfterLeaving <- recipient.ReceivedAfterLeaving + 1
                    delivered.Add recipient.Id)
        delivered.ToArray()

/// Records the first-subscriber / last-left hooks in order.
type private Hooks() =
    let events = List<string * bool>()
    member _.Activated(topic: string) = lock events (fun () -> events.Add((topic, true)))
    member _.Deactivated(topic: string) = lock events (fun () -> events.Add((topic, false)))
    member _.Events = lock events (fun () -> events.ToArray())

// ---- model-based checking -------------------------------------------------------------------

type private Command =
    | Subscribe of string * int
    | Unsubscribe of string * int
    | Close of int
    | Publish of string * int option

/// The naive model: (topic, subscriber) pairs in subscription order, and the hook calls so far.
type private Model = { Pairs: (string * int) list; Events: (string * bool) list }

let private topicUniverse = [ "a"; "b"; "c"; ""; "A"; "t\u00e9"; "long-name" ]
let private subscriberUniverse = [ 0..7 ]

let private modelSubscribers (m: Model) topic =
    m.Pairs |> List.filter (fun (t, _) -> t = topic) |> List.map snd

let private modelTopics (m: Model) s =
    m.Pairs |> List.filter (fun (_, x) -> x = s) |> List.map fst

/// The registry's world: one probe per subscriber id (replaced by a new one when it closes).
type private World = { Registry: TopicRegistry<Probe>; Hooks: Hooks; Probes: Probe[] }

let private newWorld () =
    let hooks = Hooks()
    { Registry = TopicRegistry<Probe>(Action<string>(hooks.Activated), Action<string>(hooks.Deactivated))
      Hooks = hooks
      Probes = subscriberUniverse |> List.map probe |> Array.ofList }

/// Everything the registry answers, over the whole universe, as one comparable value.
let private snapshot (w: World) =
    [ for topic in topicUniverse ->
          w.Registry.SubscriberCount topic,
          publish w.Registry topic null,
          [ for s in subscriberUniverse ->
                TopicRegistry<Probe>.IsSubscribed(w.Probes[s].Subscriptions, topic), publish w.Registry topic w.Probes[s] ] ],
    [ for s in subscriberUniverse -> TopicRegistry<Probe>.TopicsOf w.Probes[s].Subscriptions ],
    w.Registry.Names(),
    List.ofArray w.Hooks.Events

/// What the snapshot of a registry equal to the model must be.
let private modelSnapshot (m: Model) =
    [ for topic in topicUniverse ->
          let subs = modelSubscribers m topic |> Array.ofList
          subs.Length, subs, [ for s in subscriberUniverse -> List.contains (topic, s) m.Pairs, Array.filter ((<>) s) subs ] ],
    [ for s in subscriberUniverse -> modelTopics m s |> Array.ofList ],
    m.Pairs |> List.map fst |> List.distinct |> List.sortWith (fun a b -> String.CompareOrdinal(a, b)) |> Array.ofList,
    m.Events

/// One command on the registry and on the model, within `limits`.
let private step (limits: Realtime.Protocol.Topics.TopicLimits) (w: World) (m: Model) command : Model =
    match command with
    | Subscribe(topic, s) ->
        let subscriptions = w.Probes[s].Subscriptions
        if Text.Encoding.UTF8.GetByteCount topic > limits.MaxTopicLength then
            Expect.throwsT<ArgumentException> (fun () -> w.Registry.Subscribe(subscriptions, topic, limits) |> ignore) (sprintf "%A throws" command)
            m
        else
            let outcome = w.Registry.Subscribe(subscriptions, topic, limits)
            if List.contains (topic, s) m.Pairs then
                Expect.equal outcome SubscribeOutcome.AlreadySubscribed (sprintf "%A" command)
                m
            elif (modelTopics m s).Length >= limits.MaxTopicsPerSubscriber then
                Expect.equal outcome SubscribeOutcome.TopicLimitReached (sprintf "%A" command)
                m
            else
                Expect.equal outcome SubscribeOutcome.Subscribed (sprintf "%A" command)
                let first = (modelSubscribers m topic).IsEmpty
                { Pairs = m.Pairs @ [ topic, s ]; Events = if first then m.Events @ [ topic, true ] else m.Events }
    | Unsubscribe(topic, s) ->
        let removed = w.Registry.Unsubscribe(w.Probes[s].Subscriptions, topic)
        Expect.equal removed (List.contains (topic, s) m.Pairs) (sprintf "%A" command)
        if removed then
            let pairs = m.Pairs |> List.filter ((<>) (topic, s))
            let last = pairs |> List.forall (fun (t, _) -> t <> topic)
            { Pairs = pairs; Events = if last then m.Events @ [ topic, false ] else m.Events }
        else
            m
    | Close s ->
        // The connection ends: it leaves every topic, is refused from then on, and its id goes to a new connection.
        let closing = w.Probes[s]
        w.Registry.RemoveAll closing.Subscriptions
        Expect.equal (w.Registry.Subscribe(closing.Subscriptions, "a", limitsOf 10 10)) SubscribeOutcome.Closed "a closed connection is refused"
        w.Probes[s] <- probe s
        let emptied = modelTopics m s |> List.filter (fun topic -> modelSubscribers m topic = [ s ])
        { Pairs = m.Pairs |> List.filter (fun (_, x) -> x <> s); Events = m.Events @ [ for t in emptied -> t, false ] }
    | Publish(topic, sender) ->
        let expected = modelSubscribers m topic |> List.filter (fun s -> Some s <> sender) |> Array.ofList
        let from = match sender with Some s -> w.Probes[s] | None -> null
        Expect.equal (publish w.Registry topic from) expected (sprintf "%A recipients, in subscription order" command)
        m

let private genTopic = Gen.elements topicUniverse
let private genSubscriber = Gen.choose (0, 7)

let private genCommand =
    Gen.frequency
        [ 5, Gen.map2 (fun t s -> Subscribe(t, s)) genTopic genSubscriber
          3, Gen.map2 (fun t s -> Unsubscribe(t, s)) genTopic genSubscriber
          1, Gen.map Close genSubscriber
          2, Gen.map2 (fun t s -> Publish(t, s)) genTopic (Gen.oneof [ Gen.constant None; Gen.map Some genSubscriber ]) ]

let private genLimits =
    Gen.oneof
        [ Gen.map2 limitsOf (Gen.choose (0, 10)) (Gen.choose (0, 4))
          Gen.constant (limitsOf Int32.MaxValue Int32.MaxValue) ]

let private shrinkList (xs: 'a list) = seq { for i in 0 .. xs.Length - 1 -> List.removeAt i xs }

let private arbScenario =
    Arb.fromGenShrink (
        Gen.zip genLimits (Gen.listOf genCommand),
        fun (limits, commands) -> shrinkList commands |> Seq.map (fun c -> limits, c)
    )

let private config = { FsCheckConfig.defaultConfig with maxTest = 300 }

// ---- concurrency ----------------------------------------------------------------------------

/// `threads` threads, each owning `perThread` probes, subscribe, unsubscribe (and close, when
/// `closes`) and publish on one topic for up to `duration`; checks what must hold after.
let private hammer (threads: int) (perThread: int) (duration: TimeSpan) (closes: bool) =
    let hooks = Hooks()
    let registry = TopicRegistry<Probe>(Action<string>(hooks.Activated), Action<string>(hooks.Deactivated))
    let probes = Array.init (threads * perThread) probe
    let subscribed = Array.zeroCreate<bool> probes.Length
    // Closed connections, replaced in `probes` by new ones: what they received still counts.
    let closed = System.Collections.Concurrent.ConcurrentBag<Probe>()
    let publishes = ref 0L
    let leaves = ref 0L
    let errors = System.Collections.Concurrent.ConcurrentQueue<exn>()
    let stopwatch = Stopwatch.StartNew()
    let run (thread: int) () =
        try
            let random = Random(thread)
            let mutable rounds = 0
            // Bounded in time and in count.
            while stopwatch.Elapsed < duration && rounds < 2_000_000 do
                rounds <- rounds + 1
                // Each thread owns its slice of probes, so it knows their state exactly.
                let i = thread * perThread + random.Next perThread
                let p = probes[i]
                match random.Next 3 with
                | 0 ->
                    if subscribed[i] then
                        if closes && random.Next 4 = 0 then
                            registry.RemoveAll p.Subscriptions
                            lock p (fun () -> p.Left <- true)
                            closed.Add p
                            probes[i] <- probe i
                        else
                            Expect.isTrue (registry.Unsubscribe(p.Subscriptions, "room")) "was subscribed"
                            lock p (fun () -> p.Left <- true)
                        subscribed[i] <- false
                        Interlocked.Increment(&leaves.contents) |> ignore
                    else
                        lock p (fun () -> p.Left <- false)
                        Expect.equal (registry.Subscribe(p.Subscriptions, "room", limitsOf 256 10)) SubscribeOutcome.Subscribed "subscribes"
                        subscribed[i] <- true
                | _ ->
                    publish registry "room" p |> ignore
                    Interlocked.Increment(&publishes.contents) |> ignore
        with e -> errors.Enqueue e
    let workers = Array.init threads (fun t -> Thread(run t, IsBackground = true))
    for w in workers do w.Start()
    for w in workers do Expect.isTrue (w.Join(TimeSpan.FromSeconds 60.0)) "every thread ends"
    Expect.isEmpty errors "no thread failed"
    Expect.isGreaterThan publishes.Value 1000L "publishes ran"
    Expect.isGreaterThan leaves.Value 100L "unsubscribes ran"
    let expected = subscribed |> Array.filter id |> Array.length
    Expect.equal (registry.SubscriberCount "room") expected "the count is the subscribers left"
    Expect.equal (publish registry "room" null |> Array.sort) (Array.init probes.Length id |> Array.filter (fun i -> subscribed[i])) "a publish reaches exactly them"
    let everyone = Array.append probes (closed.ToArray())
    if closes then Expect.isGreaterThan closed.Count 10 "connections closed"
    Expect.isGreaterThan (everyone |> Array.sumBy (fun p -> p.Received)) 0 "messages were delivered"
    Expect.equal (everyone |> Array.sumBy (fun p -> p.ReceivedAfterLeaving)) 0 "nothing was delivered after an Unsubscribe (or close) returned"
    let events = hooks.Events |> Array.map snd
    Expect.isTrue (events |> Array.mapi (fun k active -> active = (k % 2 = 0)) |> Array.forall id) "first/last hooks alternate"
    Expect.equal (events.Length % 2 = 1) (expected > 0) "and end as the topic is"

/// Bytes allocated by 1,000 enumerations of a publish to 100 subscribers but the sender (after a
/// warm-up), and the sum of the recipients' ids seen. Outside a test builder, whose loops allocate.
let private measurePublish () =
    let registry = TopicRegistry<Probe>()
    let probes = Array.init 100 probe
    for p in probes do registry.Subscribe(p.Subscriptions, "room", limitsOf 256 10) |> ignore
    let sender = probes[50]
    let run () =
        let mutable sum = 0
        let mutable e = registry.Find("room").Recipients(sender).GetEnumerator()
        while e.MoveNext() do
            sum <- sum + e.Current.Subscriber.Id
        sum
    let mutable i = 0
    while i < 1000 do
        run () |> ignore
        i <- i + 1
    let before = GC.GetAllocatedBytesForCurrentThread()
    let mutable total = 0
    i <- 0
    while i < 1000 do
        total <- total + run ()
        i <- i + 1
    GC.GetAllocatedBytesForCurrentThread() - before, total

[<Tests>]
let tests =
    testList "Topic registry" [
        testPropertyWithConfig config "agrees with a naive model after every command, within the core's limits"
        <| Prop.forAll arbScenario (fun (limits, commands) ->
            let w = newWorld ()
            commands
            |> List.fold
                (fun m command ->
                    let m' = step limits w m command
                    Expect.equal (snapshot w) (modelSnapshot m') (sprintf "queries after %A within %A" command limits)
                    m')
                { Pairs = []; Events = [] }
            |> ignore)

        test "a topic grown to 5,000 and shrunk to 10 in random order publishes to exactly the 10 left, in order, from a small array" {
            let registry = TopicRegistry<Probe>()
            let probes = Array.init 5_000 probe
            for p in probes do registry.Subscribe(p.Subscriptions, "room", limitsOf 256 10) |> ignore
            let order = Array.copy probes
            Random(7).Shuffle order
            for p in order[10..] do Expect.isTrue (registry.Unsubscribe(p.Subscriptions, "room")) "was subscribed"
            Expect.equal (registry.SubscriberCount "room") 10 "ten left"
            let left = order[..9] |> Array.map (fun p -> p.Id) |> Array.sort
            Expect.equal (publish registry "room" null) left "exactly the ones left, in subscription order"
            Expect.isLessThanOrEqual (registry.Find("room").Capacity) 64 "the array shrank with the topic"
        }

        test "a closed connection is refused: a late Subscribe does not bring it back" {
            let registry = TopicRegistry<Probe>()
            let p = probe 1
            Expect.equal (registry.Subscribe(p.Subscriptions, "room", limitsOf 256 10)) SubscribeOutcome.Subscribed "first subscribe"
            registry.RemoveAll p.Subscriptions
            Expect.equal (registry.Subscribe(p.Subscriptions, "room", limitsOf 256 10)) SubscribeOutcome.Closed "after closing"
            Expect.equal (registry.SubscriberCount "room") 0 "the topic is empty"
            Expect.isEmpty (registry.Names()) "and gone"
        }

        test "a subscription ended while a publish holds it queues nothing: the check is at queueing, under the send lock" {
            let registry = TopicRegistry<Probe>()
            let a = probe 1
            let b = probe 2
            for p in [ a; b ] do registry.Subscribe(p.Subscriptions, "room", limitsOf 256 10) |> ignore
            // A publish has begun (it holds the topic's array) when b unsubscribes.
            let mutable recipients = registry.Find("room").Recipients(null).GetEnumerator()
            Expect.isTrue (recipients.MoveNext()) "a first"
            let first = recipients.Current
            Expect.isTrue (recipients.MoveNext()) "b second"
            let second = recipients.Current
            Expect.isTrue (registry.Unsubscribe(b.Subscriptions, "room")) "b leaves"
            Expect.isTrue (lock a (fun () -> first.IsActive)) "a may still be queued to"
            Expect.isFalse (lock b (fun () -> second.IsActive)) "b may not, though the publish already holds its entry"
            Expect.isFalse (recipients.MoveNext()) "nobody else"
        }

        test "a publish enumerates 100 recipients without allocating" {
            let allocated, total = measurePublish ()
            Expect.equal allocated 0L "no allocation"
            Expect.equal total (1000 * (4950 - 50)) "every recipient but the sender, each time"
        }

        test "8 threads subscribing, unsubscribing and publishing on one topic for 2 s: consistent, nothing after Unsubscribe" {
            hammer 8 50 (TimeSpan.FromSeconds 2.0) false
        }

        test "8 threads subscribing, unsubscribing, closing and publishing on one topic for 2 s: consistent, nothing after leaving" {
            hammer 8 50 (TimeSpan.FromSeconds 2.0) true
        }
    ]

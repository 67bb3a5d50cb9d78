/// The host's topic registry (a lock per topic and per connection, none server-wide): it agrees
/// with a naive model, keeps the per-connection limit, and under many threads subscribing,
/// unsubscribing and publishing on one topic it ends consistent and delivers nothing to a
/// subscriber after its Unsubscribe returned.
module Realtime.Server.Tests.TopicRegistryTests

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading
open Expecto
open Realtime

/// A subscriber that records what it was delivered, and whether its Unsubscribe has returned.
type private Probe(id: int) =
    member val Id = id
    member val Subscriptions = Subscriptions<Probe>()
    member val Left = false with get, set
    member val Received = 0 with get, set
    member val ReceivedAfterLeaving = 0 with get, set

let private limits maxTopics : Realtime.Protocol.Topics.TopicLimits =
    { MaxTopicLength = 256; MaxTopicsPerSubscriber = maxTopics }

/// Delivers to every subscriber of the topic but the sender, as RealtimeServer's publish does.
let private publish (registry: TopicRegistry<Probe>) (topic: string) (sender: Probe) =
    match registry.Find topic with
    | null -> 0
    | subscribers ->
        let mutable epoch = 0
        let recipients = subscribers.BeginPublish(&epoch)
        let mutable delivered = 0
        try
            for recipient in recipients do
                if not (obj.ReferenceEquals(recipient, sender)) then
                    lock recipient (fun () ->
                        recipient.Received <- recipient.Received + 1
                        if recipient.Left then recipient.ReceivedAfterLeaving <- recipient.ReceivedAfterLeaving + 1)
                    delivered <- delivered + 1
        finally
            subscribers.EndPublish epoch
        delivered

/// Records the first-subscriber / last-left hooks in order.
type private Hooks() =
    let events = List<string * bool>()
    member _.Activated(topic: string) = lock events (fun () -> events.Add((topic, true)))
    member _.Deactivated(topic: string) = lock events (fun () -> events.Add((topic, false)))
    member _.Events = lock events (fun () -> events.ToArray())

[<Tests>]
let tests =
    testList "Topic registry" [
        test "agrees with a naive model over 20,000 random subscribes, unsubscribes, removals and publishes" {
            let random = Random 14
            let hooks = Hooks()
            let registry = TopicRegistry<Probe>(Action<string>(hooks.Activated), Action<string>(hooks.Deactivated))
            let probes = Array.init 40 Probe
            let topicNames = [| "a"; "b"; "c"; "d" |]
            let model = Dictionary<string, HashSet<int>>()
            for t in topicNames do model[t] <- HashSet()
            let fresh = Array.init probes.Length (fun _ -> true)
            for _ in 1..20_000 do
                let i = random.Next probes.Length
                let probe = probes[i]
                let topic = topicNames[random.Next topicNames.Length]
                match random.Next 10 with
                | 0 when fresh[i] ->
                    // The connection closes: it leaves every topic and is replaced by a new one.
                    registry.RemoveAll(probe.Subscriptions, probe)
                    for t in topicNames do model[t].Remove i |> ignore
                    probes[i] <- Probe i
                | n when n < 5 ->
                    let outcome = registry.Subscribe(probe.Subscriptions, probe, topic, limits 3)
                    let inTopics = topicNames |> Array.filter (fun t -> model[t].Contains i)
                    let expected =
                        if model[topic].Contains i then SubscribeOutcome.AlreadySubscribed
                        elif inTopics.Length >= 3 then SubscribeOutcome.TopicLimitReached
                        else SubscribeOutcome.Subscribed
                    Expect.equal outcome expected "subscribe outcome"
                    if expected = SubscribeOutcome.Subscribed then model[topic].Add i |> ignore
                | n when n < 8 ->
                    let removed = registry.Unsubscribe(probe.Subscriptions, probe, topic)
                    Expect.equal removed (model[topic].Remove i) "unsubscribe outcome"
                | _ ->
                    let delivered = publish registry topic probe
                    let expected = model[topic].Count - (if model[topic].Contains i then 1 else 0)
                    Expect.equal delivered expected "publish reaches every subscriber but the sender"
                for t in topicNames do
                    Expect.equal (registry.SubscriberCount t) model[t].Count $"subscriber count of {t}"
                Expect.sequenceEqual
                    (TopicRegistry<Probe>.TopicsOf probes[i].Subscriptions |> Array.sort)
                    (topicNames |> Array.filter (fun t -> model[t].Contains i))
                    "the connection's topics"
            Expect.sequenceEqual (registry.Names()) (topicNames |> Array.filter (fun t -> model[t].Count > 0)) "topics with subscribers"
            // Per topic the hooks alternate, starting with the first subscriber, and end as the topic is.
            for t in topicNames do
                let mine = hooks.Events |> Array.filter (fun (name, _) -> name = t) |> Array.map snd
                Expect.isTrue (mine |> Array.mapi (fun k active -> active = (k % 2 = 0)) |> Array.forall id) $"hooks of {t} alternate"
                Expect.equal (mine.Length % 2 = 1) (model[t].Count > 0) $"hooks of {t} end as the topic is"
        }

        test "a topic grown to 5,000 and shrunk to 10 in random order publishes to exactly the 10 left" {
            let registry = TopicRegistry<Probe>()
            let probes = Array.init 5_000 Probe
            for p in probes do registry.Subscribe(p.Subscriptions, p, "room", limits 10) |> ignore
            let order = Array.copy probes
            Random(7).Shuffle order
            for p in order[10..] do Expect.isTrue (registry.Unsubscribe(p.Subscriptions, p, "room")) "was subscribed"
            Expect.equal (registry.SubscriberCount "room") 10 "ten left"
            Expect.equal (publish registry "room" null) 10 "a publish reaches ten"
            let reached = probes |> Array.filter (fun p -> p.Received = 1) |> Array.map (fun p -> p.Id) |> Array.sort
            Expect.sequenceEqual reached (order[..9] |> Array.map (fun p -> p.Id) |> Array.sort) "exactly the ones left"
        }

        test "a closed connection is refused: a late Subscribe does not bring it back" {
            let registry = TopicRegistry<Probe>()
            let probe = Probe 1
            Expect.equal (registry.Subscribe(probe.Subscriptions, probe, "room", limits 10)) SubscribeOutcome.Subscribed "first subscribe"
            registry.RemoveAll(probe.Subscriptions, probe)
            Expect.equal (registry.Subscribe(probe.Subscriptions, probe, "room", limits 10)) SubscribeOutcome.Closed "after closing"
            Expect.equal (registry.SubscriberCount "room") 0 "the topic is empty"
            Expect.isEmpty (registry.Names()) "and gone"
        }

        test "8 threads subscribing, unsubscribing and publishing on one topic for 2 s: consistent, nothing after Unsubscribe" {
            let hooks = Hooks()
            let registry = TopicRegistry<Probe>(Action<string>(hooks.Activated), Action<string>(hooks.Deactivated))
            let threads = 8
            let perThread = 50
            let probes = Array.init (threads * perThread) Probe
            let subscribed = Array.zeroCreate<bool> probes.Length
            let publishes = ref 0L
            let leaves = ref 0L
            let errors = System.Collections.Concurrent.ConcurrentQueue<exn>()
            let stopwatch = Stopwatch.StartNew()
            let run (thread: int) () =
                try
                    let random = Random(thread)
                    let mutable rounds = 0
                    // Bounded in time and in count.
                    while stopwatch.Elapsed < TimeSpan.FromSeconds 2.0 && rounds < 2_000_000 do
                        rounds <- rounds + 1
                        // Each thread owns its slice of probes, so it knows their state exactly.
                        let i = thread * perThread + random.Next perThread
                        let probe = probes[i]
                        match random.Next 3 with
                        | 0 ->
                            if subscribed[i] then
                                Expect.isTrue (registry.Unsubscribe(probe.Subscriptions, probe, "room")) "was subscribed"
                                lock probe (fun () -> probe.Left <- true)
                                subscribed[i] <- false
                                Interlocked.Increment(&leaves.contents) |> ignore
                            else
                                lock probe (fun () -> probe.Left <- false)
                                Expect.equal (registry.Subscribe(probe.Subscriptions, probe, "room", limits 10)) SubscribeOutcome.Subscribed "subscribes"
                                subscribed[i] <- true
                        | _ ->
                            publish registry "room" probe |> ignore
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
            Expect.equal (publish registry "room" null) expected "a publish reaches exactly them"
            Expect.isGreaterThan (probes |> Array.sumBy (fun p -> p.Received)) 0 "messages were delivered"
            Expect.equal (probes |> Array.sumBy (fun p -> p.ReceivedAfterLeaving)) 0 "nothing was delivered after an Unsubscribe returned"
            let events = hooks.Events |> Array.map snd
            Expect.isTrue (events |> Array.mapi (fun k active -> active = (k % 2 = 0)) |> Array.forall id) "first/last hooks alternate"
            Expect.equal (events.Length % 2 = 1) (expected > 0) "and end as the topic is"
        }
    ]

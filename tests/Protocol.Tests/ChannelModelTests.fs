/// The channel guarantees (docs/channels-protocol.md, "Guarantees") checked on a small executable
/// model: one channel with a history, a few subscribers, and the network between them, in which
/// every decision is the core's (ChannelHistory, ChannelRecovery, ChannelDelivery, PublishKeys).
/// FsCheck generates interleavings of publishes, client publishes, time passing (age trimming),
/// history loss (a new epoch), disconnects, reconnects, and pub/sub faults on live deliveries
/// (dropped, repeated, swapped). After the run the model settles (faults stop, everyone reconnects,
/// one more publication makes every gap visible, every message is processed) and each subscriber's
/// app-level log is checked against the channel's sequence.
module Realtime.Protocol.Tests.ChannelModelTests

open System.Collections.Generic
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.ChannelDelivery
open Realtime.Protocol.Tests.Properties

/// What the server sends a connection (`Live` marks a publication fanned out to subscribers, the
/// kind pub/sub carries between nodes and may drop, repeat or reorder).
type private ToClient =
    | Pub of position: ChannelPosition * id: int * live: bool
    | SubscribedReply of position: ChannelPosition * recovery: Recovery
    | UnsubscribedReply
    | AckReply of key: string * position: ChannelPosition

/// What a client sends.
type private ToServer =
    | SubscribeRequest of since: ChannelPosition voption
    | UnsubscribeRequest
    | PublishRequest of key: string

/// What the app sees, in order.
type private AppEvent =
    | Delivered of id: int
    /// The app was told publications were lost, at this model step.
    | Lost of step: int

/// One step of an interleaving.
type private Command =
    | ServerPublish of bytes: int
    | ClientPublish of subscriber: int
    | Wait of milliseconds: int
    | LoseHistory
    | ServerReads of subscriber: int
    | ClientReads of subscriber: int
    | DropLive of subscriber: int
    | RepeatLive of subscriber: int
    | SwapLive of subscriber: int
    | Disconnect of subscriber: int
    | Reconnect of subscriber: int

/// A publication of the channel: its position, its client key (if a client published it), and
/// the model step at which the history stopped holding it (trimmed, or lost with its epoch).
type private Publication =
    { Position: ChannelPosition
      Key: string option
      mutable RemovedAt: int option }

type private Subscriber() =
    member val Connected = true with get, set
    member val ServerSubscribed = false with get, set
    member val Inbox = LinkedList<ToClient>() with get
    member val Outbox = Queue<ToServer>() with get
    member val Delivery = subscribe ValueNone with get, set
    member val Log = ResizeArray<AppEvent>() with get
    /// The first publication id the subscription is expected to deliver (set by its fresh subscribe).
    member val Start = 0 with get, set
    /// Keys of publishes not acknowledged yet, in order.
    member val Pending = ResizeArray<string>() with get
    member val Acks = Dictionary<string, ChannelPosition>() with get
    member val Published = 0 with get, set

/// The model's parameters: retention, paging of recovery replies, and how many subscribers.
type private Setup =
    { Retention: ChannelHistory.Retention
      PageSize: int option
      Subscribers: int }

type private Model(setup: Setup) =
    let keyLimits: PublishKeys.KeyLimits = { MaxKeys = 100_000; MaxAge = System.Int64.MaxValue }
    let mutable epochs = 0
    let mutable window = ChannelHistory.empty "epoch-0"
    // The entries the history holds, oldest first: (publication id, bytes, time).
    let held = Queue<int * int * int64>()
    let publications = ResizeArray<Publication>()
    let keys = Dictionary<string, PublishKeys.Entry>()
    let subscribers = Array.init setup.Subscribers (fun _ -> Subscriber())
    let mutable now = 0L
    let mutable step = 0
    let mutable removals = 0

    let trimHistory () =
        let mutable go = true

        while go do
            let oldestBytes, oldestTime =
                if held.Count = 0 then 0, 0L
                else
                    let _, b, t = held.Peek()
                    b, t

            match ChannelHistory.trim setup.Retention now window oldestBytes oldestTime with
            | struct (w, ChannelHistory.Trim _) ->
                window <- w
                let id, _, _ = held.Dequeue()
                publications[id].RemovedAt <- Some step
                removals <- removals + 1
            | struct (_, ChannelHistory.Keep) -> go <- false

    /// Appends a publication, fans it out live, and returns its position.
    let publish (bytes: int) (key: string option) =
        let struct (w, position) = ChannelHistory.append window bytes
        window <- w
        let id = publications.Count
        publications.Add { Position = position; Key = key; RemovedAt = None }
        held.Enqueue(id, bytes, now)
        trimHistory ()

        for s in subscribers do
            if s.ServerSubscribed then
                s.Inbox.AddLast(Pub(position, id, true)) |> ignore

        position

    let idAt (offset: uint64) =
        held |> Seq.map (fun (id, _, _) -> id) |> Seq.find (fun id -> publications[id].Position.Offset = offset)

    let serve (s: Subscriber) (request: ToServer) =
        match request with
        | SubscribeRequest since ->
            let plan = ChannelRecovery.plan window since

            let plan =
                match setup.PageSize with
                | Some size -> ChannelRecovery.page size plan
                | None -> plan

            if since.IsNone then
                s.Start <- publications.Count

            for offset in plan.From .. plan.Through do
                s.Inbox.AddLast(Pub(publications[idAt offset].Position, idAt offset, false)) |> ignore

            s.Inbox.AddLast(SubscribedReply(plan.Position, plan.Recovery)) |> ignore
            s.ServerSubscribed <- true
        | UnsubscribeRequest ->
            s.ServerSubscribed <- false
            s.Inbox.AddLast UnsubscribedReply |> ignore
        | PublishRequest key ->
            let found =
                match keys.TryGetValue key with
                | true, e -> ValueSome e
                | _ -> ValueNone

            match PublishKeys.check keyLimits now found with
            | PublishKeys.Repeat first -> s.Inbox.AddLast(AckReply(key, first)) |> ignore
            | PublishKeys.Publish ->
                let position = publish 10 (Some key)
                keys[key] <- { Position = position; Time = now }
                s.Inbox.AddLast(AckReply(key, position)) |> ignore

    let askAgain (s: Subscriber) (from: ChannelPosition) =
        s.Outbox.Enqueue UnsubscribeRequest
        s.Outbox.Enqueue(SubscribeRequest(ValueSome from))

    let receive (s: Subscriber) (message: ToClient) =
        match message with
        | Pub(position, id, _) ->
            let struct (delivery, verdict) = onPublication s.Delivery position
            s.Delivery <- delivery

            match verdict with
            | Deliver -> s.Log.Add(Delivered id)
            | DeliverAfterLoss ->
                s.Log.Add(Lost step)
                s.Log.Add(Delivered id)
            | Duplicate
            | Stale -> ()
            | Gap from
            | NewEpoch from -> askAgain s from
        | SubscribedReply(position, recovery) ->
            let struct (delivery, verdict) = onSubscribed s.Delivery position recovery
            s.Delivery <- delivery

            match verdict with
            | Subscribed
            | Ignored -> ()
            | SubscribedAfterLoss -> s.Log.Add(Lost step)
            | Incomplete from -> askAgain s from
        | UnsubscribedReply ->
            let struct (delivery, _) = onUnsubscribed s.Delivery
            s.Delivery <- delivery
        | AckReply(key, position) ->
            s.Pending.Remove key |> ignore
            s.Acks[key] <- position

    /// The first live publication in an inbox, if any.
    let firstLive (s: Subscriber) =
        let mutable node = s.Inbox.First

        while not (isNull node)
              && (match node.Value with
                  | Pub(_, _, true) -> false
                  | _ -> true) do
            node <- node.Next

        node

    do
        for s in subscribers do
            s.Outbox.Enqueue(SubscribeRequest ValueNone)

    member _.Subscribers = subscribers
    member _.Publications = publications
    member _.Removals = removals

    member _.Run(command: Command) =
        step <- step + 1
        let at i = subscribers[i % subscribers.Length]

        match command with
        | ServerPublish bytes -> publish bytes None |> ignore
        | ClientPublish i ->
            let s = at i
            s.Published <- s.Published + 1
            let key = $"s{i % subscribers.Length}-{s.Published}"
            s.Pending.Add key

            if s.Connected then
                s.Outbox.Enqueue(PublishRequest key)
        | Wait ms ->
            now <- now + int64 ms
            trimHistory ()
        | LoseHistory ->
            for id, _, _ in held do
                publications[id].RemovedAt <- Some step

            held.Clear()
            removals <- removals + 1
            epochs <- epochs + 1
            window <- ChannelHistory.empty $"epoch-{epochs}"
        | ServerReads i ->
            let s = at i

            if s.Connected && s.Outbox.Count > 0 then
                serve s (s.Outbox.Dequeue())
        | ClientReads i ->
            let s = at i

            if s.Connected && s.Inbox.Count > 0 then
                let message = s.Inbox.First.Value
                s.Inbox.RemoveFirst()
                receive s message
        | DropLive i ->
            let node = firstLive (at i)

            if not (isNull node) then
                (at i).Inbox.Remove node
        | RepeatLive i ->
            let node = firstLive (at i)

            if not (isNull node) then
                (at i).Inbox.AddAfter(node, node.Value) |> ignore
        | SwapLive i ->
            let node = firstLive (at i)

            if not (isNull node) && not (isNull node.Next) then
                match node.Next.Value with
                | Pub(_, _, true) ->
                    let next = node.Next.Value
                    node.Next.Value <- node.Value
                    node.Value <- next
                | _ -> ()
        | Disconnect i ->
            let s = at i
            s.Connected <- false
            s.ServerSubscribed <- false
            s.Inbox.Clear()
            s.Outbox.Clear()
        | Reconnect i ->
            let s = at i

            if not s.Connected then
                s.Connected <- true
                s.Delivery <- resubscribe s.Delivery
                s.Outbox.Enqueue(SubscribeRequest(since s.Delivery))

                for key in s.Pending do
                    s.Outbox.Enqueue(PublishRequest key)

    /// Faults stop, everyone reconnects, one more publication makes a gap at the tail visible, and
    /// every message is processed. False if it did not settle within the bound.
    member m.Settle() =
        for i in 0 .. subscribers.Length - 1 do
            m.Run(Reconnect i)

        m.Run(ServerPublish 1)
        let mutable rounds = 0

        let busy () =
            subscribers |> Array.exists (fun s -> s.Inbox.Count > 0 || s.Outbox.Count > 0)

        while busy () && rounds < 10_000 do
            for i in 0 .. subscribers.Length - 1 do
                while subscribers[i].Outbox.Count > 0 do
                    m.Run(ServerReads i)

                while subscribers[i].Inbox.Count > 0 do
                    m.Run(ClientReads i)

            rounds <- rounds + 1

        not (busy ())

let private commands (subscribers: int) =
    let who = Gen.choose (0, subscribers - 1)

    Gen.frequency
        [ 6, Gen.choose (1, 30) |> Gen.map ServerPublish
          2, who |> Gen.map ClientPublish
          2, Gen.choose (1, 40) |> Gen.map Wait
          1, Gen.constant LoseHistory
          8, who |> Gen.map ServerReads
          10, who |> Gen.map ClientReads
          1, who |> Gen.map DropLive
          1, who |> Gen.map RepeatLive
          1, who |> Gen.map SwapLive
          1, who |> Gen.map Disconnect
          2, who |> Gen.map Reconnect ]
    |> Gen.listOf

let private setups =
    gen {
        let! count = Gen.frequency [ 2, Gen.choose (0, 6); 1, Gen.constant 1_000_000 ]
        let! bytes = Gen.frequency [ 2, Gen.choose (0, 100); 1, Gen.constant 1_000_000_000 ]
        let! age = Gen.frequency [ 2, Gen.choose (0, 80); 1, Gen.constant 1_000_000_000 ]
        let! pageSize = Gen.frequency [ 3, Gen.constant None; 1, Gen.choose (1, 3) |> Gen.map Some ]
        let! subscribers = Gen.choose (1, 3)

        return
            { Retention =
                { MaxCount = count
                  MaxBytes = int64 bytes
                  MaxAge = int64 age }
              PageSize = pageSize
              Subscribers = subscribers }
    }

let private runs =
    gen {
        let! setup = setups
        let! steps = commands setup.Subscribers
        return setup, steps
    }

/// Checks one subscriber's app log against the channel: deliveries in the channel's order without
/// repeats, from its start; every publication it missed was removed from the history before a loss
/// report placed between the deliveries around it.
let private checkSubscriber (model: Model) (index: int) (s: Subscriber) =
    let name = $"subscriber {index}"
    let publications = model.Publications
    let delivered = s.Log |> Seq.choose (function Delivered id -> Some id | Lost _ -> None) |> List.ofSeq

    Expect.equal delivered (List.sort (List.distinct delivered)) $"{name}: no duplicate, in the channel's order"
    Expect.isTrue (delivered |> List.forall (fun id -> id >= s.Start)) $"{name}: nothing before its start"

    // Walk the log: every id skipped between two deliveries (or after the last) needs a loss report
    // in that stretch of the log, made after the history stopped holding it.
    let mutable next = s.Start
    let mutable lossesInStretch = []

    let checkSkipped upTo =
        for id in next .. upTo - 1 do
            match publications[id].RemovedAt with
            | None -> failtestf "%s: publication %d (%A) was never delivered, yet the history still held it" name id publications[id].Position
            | Some removedAt ->
                if not (lossesInStretch |> List.exists (fun lostAt -> lostAt >= removedAt)) then
                    failtestf "%s: publication %d (%A) was lost without a loss report after its removal (losses at %A, removed at %d)" name id publications[id].Position lossesInStretch removedAt

    for event in s.Log do
        match event with
        | Lost at -> lossesInStretch <- at :: lossesInStretch
        | Delivered id ->
            checkSkipped id
            next <- id + 1
            lossesInStretch <- []

    checkSkipped publications.Count

    for event in s.Log do
        match event with
        | Lost _ -> Expect.isGreaterThan model.Removals 0 $"{name}: a loss is reported only when the history lost something"
        | Delivered _ -> ()

    Expect.isEmpty s.Pending $"{name}: every publish acknowledged"
    Expect.equal s.Delivery.Phase Active $"{name}: live"

[<Tests>]
let properties =
    testList
        "Channels: delivery guarantees (model)"
        [ property
              "every subscriber delivers the channel's sequence once and in order, missing only what the history lost, and is told"
          <| Prop.forAll (Arb.fromGen runs) (fun (setup, steps) ->
              let model = Model setup

              for command in steps do
                  model.Run command

              Expect.isTrue (model.Settle()) "the model settles"

              model.Subscribers |> Array.iteri (checkSubscriber model)

              // Client publishes: each key took effect once, at the position its acknowledgement gave.
              let byKey =
                  model.Publications
                  |> Seq.choose (fun p -> p.Key |> Option.map (fun k -> k, p.Position))
                  |> List.ofSeq

              Expect.equal (byKey |> List.map fst) (byKey |> List.map fst |> List.distinct) "no key published twice"

              for s in model.Subscribers do
                  Expect.equal s.Acks.Count s.Published "every publish acknowledged"

                  for KeyValue(key, position) in s.Acks do
                      Expect.equal (List.tryFind (fun (k, _) -> k = key) byKey) (Some(key, position)) $"{key} acknowledged at its position")

          property "without trimming or history loss nothing is ever reported lost and everything is delivered"
          <| Prop.forAll
              (Arb.fromGen (
                  gen {
                      let! subscribers = Gen.choose (1, 3)
                      let! steps = commands subscribers
                      return subscribers, steps |> List.filter (function LoseHistory -> false | _ -> true)
                  }
              ))
              (fun (subscribers, steps) ->
                  let model =
                      Model
                          { Retention = { MaxCount = 1_000_000; MaxBytes = 1_000_000_000L; MaxAge = 1_000_000_000L }
                            PageSize = Some 2
                            Subscribers = subscribers }

                  for command in steps do
                      model.Run command

                  Expect.isTrue (model.Settle()) "the model settles"

                  for s in model.Subscribers do
                      Expect.isFalse (s.Log |> Seq.exists (function Lost _ -> true | _ -> false)) "no loss reported"

                      let delivered = s.Log |> Seq.choose (function Delivered id -> Some id | _ -> None) |> List.ofSeq
                      Expect.equal delivered [ s.Start .. model.Publications.Count - 1 ] "everything from its start, in order") ]

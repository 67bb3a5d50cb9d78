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
    /// Repeat a live publication, the copy arriving after up to `later` other live publications.
    | RepeatLive of subscriber: int * later: int
    | SwapLive of subscriber: int
    /// A live publication overtakes up to `messages` messages before it that are its
    /// subscription's recovery or `subscribed` reply (a publication from another node arriving
    /// while a subscribe reads the history).
    | OvertakeLive of subscriber: int * messages: int
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
    /// Live publications pub/sub dropped on the current subscription (its node's quiet-channel
    /// check sends them again while the history holds them).
    member val DroppedLive = ResizeArray<ChannelPosition * int>() with get
    /// Whether one of those was trimmed before its node could send it again.
    member val DroppedAndTrimmed = false with get, set

/// The model's parameters: retention, paging of recovery replies, and how many subscribers.
type private Setup =
    { Retention: ChannelHistory.Retention
      PageSize: int option
      Subscribers: int }

/// A channel's history as a host keeps it with the core's rules: the window, the entries it holds
/// (publication id, bytes, time), and every publication ever made with the step it was removed at.
type private History(retention: ChannelHistory.Retention) =
    let mutable epochs = 0
    let mutable window = ChannelHistory.empty "epoch-0"
    let held = Queue<int * int * int64>()
    let publications = ResizeArray<Publication>()
    let mutable firstRemoval: int option = None

    let removed (id: int) (step: int) =
        publications[id].RemovedAt <- Some step

        if firstRemoval.IsNone then
            firstRemoval <- Some step

    member _.Window = window
    member _.Publications = publications
    /// The model step at which the history first lost something, if it did.
    member _.FirstRemoval = firstRemoval

    /// Trims at `now` until the core says Keep.
    member _.Trim(now: int64, step: int) =
        let mutable go = true

        while go do
            let oldestBytes, oldestTime =
                if held.Count = 0 then
                    0, 0L
                else
                    let _, b, t = held.Peek()
                    b, t

            match ChannelHistory.trim retention now window oldestBytes oldestTime with
            | struct (w, ChannelHistory.Trim _) ->
                window <- w
                let id, _, _ = held.Dequeue()
                removed id step
            | struct (_, ChannelHistory.Keep) -> go <- false

    /// Appends a publication and trims: its id and position.
    member h.Append(bytes: int, key: string option, now: int64, step: int) =
        let struct (w, position) = ChannelHistory.append window bytes
        window <- w
        let id = publications.Count
        publications.Add { Position = position; Key = key; RemovedAt = None }
        held.Enqueue(id, bytes, now)
        h.Trim(now, step)
        id, position

    /// The history is lost: a new epoch begins (a loss even when nothing was held).
    member _.Lose(step: int) =
        for id, _, _ in held do
            removed id step

        held.Clear()

        if firstRemoval.IsNone then
            firstRemoval <- Some step

        epochs <- epochs + 1
        window <- ChannelHistory.empty $"epoch-{epochs}"

    /// The held publications a recovery plan names, in order: (id, position).
    member _.Read(plan: ChannelRecovery.RecoveryPlan) =
        held
        |> Seq.map (fun (id, _, _) -> id, publications[id].Position)
        |> Seq.filter (fun (_, p) -> p.Offset >= plan.From && p.Offset <= plan.Through)
        |> List.ofSeq

type private Model(setup: Setup) =
    let keyLimits: PublishKeys.KeyLimits = { MaxKeys = 100_000; MaxAge = System.Int64.MaxValue }
    let history = History setup.Retention
    let keys = Dictionary<string, PublishKeys.Entry>()
    let subscribers = Array.init setup.Subscribers (fun _ -> Subscriber())
    let mutable now = 0L
    let mutable step = 0

    /// Appends a publication, fans it out live, and returns its position.
    let publish (bytes: int) (key: string option) =
        let id, position = history.Append(bytes, key, now, step)

        for s in subscribers do
            if s.ServerSubscribed then
                s.Inbox.AddLast(Pub(position, id, true)) |> ignore

        position

    let serve (s: Subscriber) (request: ToServer) =
        match request with
        | SubscribeRequest since ->
            let plan = ChannelRecovery.plan history.Window since

            let plan =
                match setup.PageSize with
                | Some size -> ChannelRecovery.page size plan
                | None -> plan

            if since.IsNone then
                s.Start <- history.Publications.Count

            for id, position in history.Read plan do
                s.Inbox.AddLast(Pub(position, id, false)) |> ignore

            s.Inbox.AddLast(SubscribedReply(plan.Position, plan.Recovery)) |> ignore
            s.ServerSubscribed <- true
        | UnsubscribeRequest ->
            s.ServerSubscribed <- false
            s.DroppedLive.Clear()
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
            | Duplicate
            | Stale
            | Ahead -> ()
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
            | IncompleteAfterLoss from ->
                s.Log.Add(Lost step)
                askAgain s from
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
    member _.History = history

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
            history.Trim(now, step)
        | LoseHistory -> history.Lose step
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
                match node.Value with
                | Pub(position, id, _) -> (at i).DroppedLive.Add((position, id))
                | _ -> ()

                (at i).Inbox.Remove node
        | RepeatLive(i, later) ->
            let node = firstLive (at i)

            if not (isNull node) then
                let mutable after = node
                let mutable moved = 0

                while moved < later
                      && not (isNull after.Next)
                      && (match after.Next.Value with
                          | Pub(_, _, true) -> true
                          | _ -> false) do
                    after <- after.Next
                    moved <- moved + 1

                (at i).Inbox.AddAfter(after, node.Value) |> ignore
        | SwapLive i ->
            let node = firstLive (at i)

            if not (isNull node) && not (isNull node.Next) then
                match node.Next.Value with
                | Pub(_, _, true) ->
                    let next = node.Next.Value
                    node.Next.Value <- node.Value
                    node.Value <- next
                | _ -> ()
        | OvertakeLive(i, messages) ->
            let overtakes (node: LinkedListNode<ToClient>) =
                not (isNull node.Previous)
                && (match node.Value, node.Previous.Value with
                    | Pub(_, _, true), (Pub(_, _, false) | SubscribedReply _) -> true
                    | _ -> false)

            let mutable node = (at i).Inbox.First

            while not (isNull node) && not (overtakes node) do
                node <- node.Next

            let mutable moved = 0

            while moved < messages && not (isNull node) && overtakes node do
                let previous = node.Previous.Value
                node.Previous.Value <- node.Value
                node.Value <- previous
                node <- node.Previous
                moved <- moved + 1
        | Disconnect i ->
            let s = at i
            s.Connected <- false
            s.ServerSubscribed <- false
            s.DroppedLive.Clear()
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

    /// Processes every message in flight (no more faults). False if that did not end within the bound.
    member m.Drain() =
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

    /// The nodes' quiet-channel check: each live subscription gets again, in order, the live
    /// publications pub/sub dropped on it that the history still holds.
    member _.ResendDropped() =
        for s in subscribers do
            if s.ServerSubscribed then
                for position, id in s.DroppedLive do
                    if history.Publications[id].RemovedAt.IsNone then
                        s.Inbox.AddLast(Pub(position, id, true)) |> ignore
                    else
                        s.DroppedAndTrimmed <- true

            s.DroppedLive.Clear()

    /// Faults stop and everyone reconnects; every message is processed; the nodes' quiet-channel
    /// check runs; then every subscriber must be at the channel's position without a further
    /// publication (unless pub/sub dropped one that was trimmed before the check, or the history
    /// was lost since its last publication: nothing tells a client of those until the next one).
    /// Then one more publication, and every message is processed again.
    member m.Settle() =
        for i in 0 .. subscribers.Length - 1 do
            m.Run(Reconnect i)

        Expect.isTrue (m.Drain()) "the model settles"
        m.ResendDropped()
        Expect.isTrue (m.Drain()) "the model settles after the quiet-channel check"

        subscribers
        |> Array.iteri (fun i s ->
            let channel = history.Window.Position

            match s.Delivery.Position with
            | ValueSome p when p.Epoch = channel.Epoch && not s.DroppedAndTrimmed ->
                Expect.equal p channel $"subscriber {i}: caught up with a quiet channel"
            | _ -> ())

        m.Run(ServerPublish 1)
        Expect.isTrue (m.Drain()) "the model settles after one more publication"

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
          1, Gen.zip who (Gen.choose (0, 3)) |> Gen.map RepeatLive
          1, who |> Gen.map SwapLive
          2, Gen.zip who (Gen.choose (1, 4)) |> Gen.map OvertakeLive
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

/// Checks an app log (deliveries and loss reports, in order) against the channel's publications:
/// deliveries in the channel's order without repeats, from `start`; every publication missed was
/// removed from the history before a loss report placed between the deliveries around it; a loss
/// is reported only after the history lost something.
let private checkLog (name: string) (start: int) (log: AppEvent seq) (history: History) =
    let publications = history.Publications
    let delivered = log |> Seq.choose (function Delivered id -> Some id | Lost _ -> None) |> List.ofSeq

    Expect.equal delivered (List.sort (List.distinct delivered)) $"{name}: no duplicate, in the channel's order"
    Expect.isTrue (delivered |> List.forall (fun id -> id >= start)) $"{name}: nothing before its start"

    let mutable next = start
    let mutable lossesInStretch = []

    let checkSkipped upTo =
        for id in next .. upTo - 1 do
            match publications[id].RemovedAt with
            | None -> failtestf "%s: publication %d (%A) was never delivered, yet the history still held it" name id publications[id].Position
            | Some removedAt ->
                if not (lossesInStretch |> List.exists (fun lostAt -> lostAt >= removedAt)) then
                    failtestf "%s: publication %d (%A) was lost without a loss report after its removal (losses at %A, removed at %d)" name id publications[id].Position lossesInStretch removedAt

    for event in log do
        match event with
        | Lost at ->
            let afterARemoval = history.FirstRemoval |> Option.exists (fun removal -> removal <= at)

            if not afterARemoval then
                failtestf "%s: a loss reported at step %d, before the history lost anything (%A)" name at history.FirstRemoval

            lossesInStretch <- at :: lossesInStretch
        | Delivered id ->
            checkSkipped id
            next <- id + 1
            lossesInStretch <- []

    checkSkipped publications.Count

let private checkSubscriber (model: Model) (index: int) (s: Subscriber) =
    let name = $"subscriber {index}"
    checkLog name s.Start s.Log model.History
    Expect.isEmpty s.Pending $"{name}: every publish acknowledged"
    Expect.equal s.Delivery.Phase Active $"{name}: live"

/// One step of a node that follows a channel through pub/sub and fills gaps from the store.
type private NodeCommand =
    | NodePublish of bytes: int
    | NodeWait of milliseconds: int
    | NodeLoseHistory
    | NodeReceives
    | NodeChecksQuietChannel
    | NodeDrop
    | NodeRepeat of later: int
    | NodeSwap

/// A node following one channel (the node side of the delivery rule): publications reach it through
/// pub/sub (which may drop, repeat and reorder them); a gap, a new epoch, or a quiet check that finds
/// the store ahead makes it read the store from its position (paged) until it is live again. What it
/// forwards to its local subscribers is its log. A read is atomic here: a host reads asynchronously
/// and holds back pub/sub arrivals meanwhile.
type private NodeModel(retention: ChannelHistory.Retention, pageSize: int option) =
    let history = History retention
    let feed = LinkedList<ChannelPosition * int>()
    let mutable state = active history.Window.Position
    let log = ResizeArray<AppEvent>()
    let mutable now = 0L
    let mutable step = 0

    let forward (verdict: PublicationVerdict) (id: int) =
        match verdict with
        | Deliver -> log.Add(Delivered id)
        | Duplicate
        | Stale
        | Ahead
        | Gap _
        | NewEpoch _ -> ()

    let fill () =
        let mutable reads = 0
        let mutable live = false

        while not live && reads < 1000 do
            reads <- reads + 1
            state <- resubscribe state
            let plan = ChannelRecovery.plan history.Window (since state)

            let plan =
                match pageSize with
                | Some size -> ChannelRecovery.page size plan
                | None -> plan

            for id, position in history.Read plan do
                let struct (next, verdict) = onPublication state position
                state <- next
                forward verdict id

            if state.Phase.IsAwaitingSubscribed then
                let struct (next, verdict) = onSubscribed state plan.Position plan.Recovery
                state <- next

                match verdict with
                | Subscribed
                | Ignored -> live <- true
                | SubscribedAfterLoss ->
                    log.Add(Lost step)
                    live <- true
                | Incomplete _ -> ()
                | IncompleteAfterLoss _ -> log.Add(Lost step)

    member _.History = history
    member _.Log = log
    member _.State = state

    member _.Run(command: NodeCommand) =
        step <- step + 1

        match command with
        | NodePublish bytes ->
            let id, position = history.Append(bytes, None, now, step)
            feed.AddLast((position, id)) |> ignore
        | NodeWait ms ->
            now <- now + int64 ms
            history.Trim(now, step)
        | NodeLoseHistory -> history.Lose step
        | NodeReceives ->
            if feed.Count > 0 then
                let position, id = feed.First.Value
                feed.RemoveFirst()
                let struct (next, verdict) = onPublication state position
                state <- next

                match verdict with
                | Gap _
                | NewEpoch _ -> fill ()
                | _ -> forward verdict id
        | NodeChecksQuietChannel ->
            if isBehind state history.Window.Position then
                fill ()
        | NodeDrop ->
            if feed.Count > 0 then
                feed.RemoveFirst()
        | NodeRepeat later ->
            if feed.Count > 0 then
                let mutable after = feed.First
                let mutable moved = 0

                while moved < later && not (isNull after.Next) do
                    after <- after.Next
                    moved <- moved + 1

                feed.AddAfter(after, feed.First.Value) |> ignore
        | NodeSwap ->
            if feed.Count > 1 then
                let first = feed.First
                let value = first.Value
                first.Value <- first.Next.Value
                first.Next.Value <- value

    /// Pub/sub delivers what is in flight, then the node checks the quiet channel once.
    member m.Settle() =
        while feed.Count > 0 do
            m.Run NodeReceives

        m.Run NodeChecksQuietChannel

let private nodeCommands =
    Gen.frequency
        [ 6, Gen.choose (1, 30) |> Gen.map NodePublish
          2, Gen.choose (1, 40) |> Gen.map NodeWait
          1, Gen.constant NodeLoseHistory
          8, Gen.constant NodeReceives
          1, Gen.constant NodeChecksQuietChannel
          2, Gen.constant NodeDrop
          1, Gen.choose (0, 3) |> Gen.map NodeRepeat
          1, Gen.constant NodeSwap ]
    |> Gen.listOf

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

              model.Settle()
              model.Subscribers |> Array.iteri (checkSubscriber model)

              // Client publishes: each key took effect once, at the position its acknowledgement gave.
              let byKey =
                  model.History.Publications
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

                  model.Settle()

                  for s in model.Subscribers do
                      Expect.isFalse (s.Log |> Seq.exists (function Lost _ -> true | _ -> false)) "no loss reported"

                      let delivered = s.Log |> Seq.choose (function Delivered id -> Some id | _ -> None) |> List.ofSeq
                      Expect.equal delivered [ s.Start .. model.History.Publications.Count - 1 ] "everything from its start, in order") ]

[<Tests>]
let nodeProperties =
    testList
        "Channels: a node following a channel (model)"
        [ property "a node forwards the channel's sequence once and in order, missing only what the history lost, and says so"
          <| Prop.forAll (Arb.fromGen (Gen.zip setups nodeCommands)) (fun (setup, steps) ->
              let node = NodeModel(setup.Retention, setup.PageSize)

              for command in steps do
                  node.Run command

              node.Settle()
              checkLog "node" 0 node.Log node.History
              Expect.equal node.State.Phase Active "live"
              Expect.isFalse (isBehind node.State node.History.Window.Position) "caught up with the store")

          property "without trimming or history loss a node forwards everything, dropped deliveries included"
          <| Prop.forAll
              (Arb.fromGen (nodeCommands |> Gen.map (List.filter (function NodeLoseHistory -> false | _ -> true))))
              (fun steps ->
                  let unbounded: ChannelHistory.Retention =
                      { MaxCount = 1_000_000
                        MaxBytes = 1_000_000_000L
                        MaxAge = 1_000_000_000L }
                  let node = NodeModel(unbounded, Some 2)

                  for command in steps do
                      node.Run command

                  node.Settle()
                  let forwarded = node.Log |> Seq.choose (function Delivered id -> Some id | Lost _ -> None) |> List.ofSeq
                  Expect.equal forwarded [ 0 .. node.History.Publications.Count - 1 ] "everything, in order, once"
                  Expect.equal node.Log.Count forwarded.Length "no loss reported") ]

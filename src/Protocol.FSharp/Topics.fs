/// The immutable topic table behind publish/subscribe: which subscribers listen to which topics.
/// Each topic keeps its subscribers in a plain array (copy-on-write), so a publish is one lookup
/// and a loop over an array, without allocating; a subscriber-to-topics index makes closing a
/// connection proportional to the topics it had.
module Realtime.Protocol.Topics

open System
open System.Collections.Generic
open System.Collections.Immutable

/// What a subscribe changed.
[<Struct>]
type SubscribeChange =
    /// The subscriber was added to the topic.
    | Subscribed of firstSubscriber: bool
    /// The subscriber was already subscribed; the table is unchanged.
    | AlreadySubscribed
    /// Bad input (a null topic or subscriber, or a topic name over the limits' length); the table
    /// is unchanged. Codes: "null-topic", "null-subscriber", "topic-too-long".
    | Rejected of code: string
    /// The subscriber is already in as many topics as the limits allow; the table is unchanged.
    | TopicLimitReached

/// Bounds a subscribe must stay within (see `subscribeWithin`).
[<Struct>]
type TopicLimits =
    {
        /// The longest topic name, in UTF-8 bytes.
        MaxTopicLength: int
        /// The most topics one subscriber may be in at once.
        MaxTopicsPerSubscriber: int
    }

/// Whether a subscriber may join a topic (see `admit`): the rules of `subscribeWithin`, for a host
/// that keeps its subscribers in a structure of its own.
[<Struct>]
type Admission =
    /// The subscriber may join the topic.
    | Admitted
    /// The subscriber is already in the topic: nothing changes.
    | AlreadyIn
    /// Bad input: nothing changes. Codes: "null-topic", "topic-too-long".
    | Refused of code: string
    /// The subscriber is already in as many topics as the limits allow: nothing changes.
    | AtTopicLimit

/// What an unsubscribe changed.
[<Struct>]
type UnsubscribeChange =
    /// The subscriber was removed from the topic.
    | Unsubscribed of lastSubscriberLeft: bool
    /// The subscriber was not subscribed (also for a null topic or subscriber); the table is unchanged.
    | NotSubscribed

/// What removing a subscriber (its connection closed) changed.
type Removal =
    {
        /// The topics the subscriber was in, in the order it subscribed to them.
        TopicsLeft: string[]
        /// The subset of TopicsLeft that now has no subscriber (and is no longer in the table), same order.
        TopicsEmptied: string[]
    }

/// Loops over the recipients of a publish, skipping the excluded sender.
/// A mutable struct: use it through `for` (F#) or `foreach` (C#), which do not allocate.
[<Struct; NoEquality; NoComparison>]
type RecipientsEnumerator<'S> =
    val private items: 'S[]
    val private skip: int
    val mutable private index: int

    /// An enumerator over `items` that skips position `skip` (-1 skips nothing).
    new(items: 'S[], skip: int) = { items = items; skip = skip; index = -1 }

    /// The current recipient; valid after MoveNext returned true.
    member e.Current: 'S = e.items[e.index]

    /// Advances to the next recipient; false when there is none.
    member e.MoveNext() : bool =
        if isNull e.items then
            false
        else
            let next = e.index + 1
            let next = if next = e.skip then next + 1 else next
            e.index <- next
            next < e.items.Length

/// The recipients of a publish: a topic's subscriber array and the position of the excluded
/// sender. A struct over the table's own array, so creating and iterating it does not allocate.
[<Struct>]
type Recipients<'S> =
    private
        { items: 'S[]
          skip: int }

    /// How many subscribers receive the message (the sender is not counted).
    member r.Count: int =
        if isNull r.items then 0
        elif r.skip >= 0 then r.items.Length - 1
        else r.items.Length

    /// True when nobody receives the message.
    member r.IsEmpty: bool = r.Count = 0

    /// A non-allocating enumerator, for `for r in recipients` (F#) and `foreach` (C#).
    member r.GetEnumerator() : RecipientsEnumerator<'S> = RecipientsEnumerator<'S>(r.items, r.skip)

    /// The recipients in delivery (subscription) order, as a new array. Allocates: for tests and diagnostics.
    member r.ToArray() : 'S[] =
        if isNull r.items then
            [||]
        elif r.skip < 0 then
            Array.copy r.items
        else
            Array.append r.items[.. r.skip - 1] r.items[r.skip + 1 ..]

/// An immutable table of topics and their subscribers. Every operation returns a new table and
/// leaves the old one valid, so a publish can iterate a snapshot while others subscribe.
/// Tables compare by reference: compare their queries instead.
[<NoEquality; NoComparison>]
type TopicTable<'S when 'S: equality> =
    private
        { comparer: IEqualityComparer<'S>
          byTopic: ImmutableDictionary<string, 'S[]>
          bySubscriber: ImmutableDictionary<'S, string[]> }

let private indexOfTopic (topics: string[]) (topic: string) =
    let mutable found = -1
    let mutable i = 0
    while found < 0 && i < topics.Length do
        if String.Equals(topics[i], topic, StringComparison.Ordinal) then found <- i
        i <- i + 1
    found

let private containsTopic (topics: string[]) (topic: string) = indexOfTopic topics topic >= 0

let private indexOfSubscriber (comparer: IEqualityComparer<'S>) (items: 'S[]) (subscriber: 'S) =
    let mutable found = -1
    let mutable i = 0
    while found < 0 && i < items.Length do
        if comparer.Equals(items[i], subscriber) then found <- i
        i <- i + 1
    found

let private without (items: 'T[]) (index: int) =
    let result = Array.zeroCreate (items.Length - 1)
    Array.blit items 0 result 0 index
    Array.blit items (index + 1) result index (items.Length - index - 1)
    result

let private appended (items: 'T[]) (item: 'T) =
    let result = Array.zeroCreate (items.Length + 1)
    Array.blit items 0 result 0 items.Length
    result[items.Length] <- item
    result

/// An empty table whose subscribers are compared with `comparer`
/// (a null comparer means EqualityComparer.Default). The host passes a reference-equality
/// comparer for connection objects. O(1).
let emptyWith (comparer: IEqualityComparer<'S>) : TopicTable<'S> =
    let comparer = if isNull comparer then EqualityComparer<'S>.Default :> IEqualityComparer<'S> else comparer
    { comparer = comparer
      byTopic = ImmutableDictionary.Create<string, 'S[]>(StringComparer.Ordinal)
      bySubscriber = ImmutableDictionary.Create<'S, string[]>(comparer) }

/// An empty table comparing subscribers with EqualityComparer.Default
/// (reference equality for classes that do not override Equals). O(1).
let empty<'S when 'S: equality> : TopicTable<'S> =
    emptyWith EqualityComparer<'S>.Default

/// How many topics have at least one subscriber. O(1).
let topicCount (table: TopicTable<'S>) : int = table.byTopic.Count

/// The topics that have at least one subscriber, in ordinal order. O(T log T); allocates the array.
let topics (table: TopicTable<'S>) : string[] =
    let names = Array.ofSeq table.byTopic.Keys
    Array.sortInPlaceWith (fun (a: string) b -> String.CompareOrdinal(a, b)) names
    names

/// How many subscribers a topic has (0 for an unknown or null topic).
/// O(log T) for T topics, without allocating.
let subscriberCount (table: TopicTable<'S>) (topic: string) : int =
    let mutable items = null

    if not (isNull topic) && table.byTopic.TryGetValue(topic, &items) then
        items.Length
    else
        0

/// The subscribers of a topic in subscription order, as a new array (empty for an unknown topic).
/// O(log T + n) for n subscribers.
let subscribers (table: TopicTable<'S>) (topic: string) : 'S[] =
    let mutable items = null

    if not (isNull topic) && table.byTopic.TryGetValue(topic, &items) then
        Array.copy items
    else
        [||]

/// The topics a subscriber is in, in the order it subscribed, as a new array.
/// O(log C + k) for C subscribers and k topics of this subscriber.
let topicsOf (table: TopicTable<'S>) (subscriber: 'S) : string[] =
    let mutable topics = null

    if not (isNull (box subscriber)) && table.bySubscriber.TryGetValue(subscriber, &topics) then
        Array.copy topics
    else
        [||]

/// Whether a subscriber is subscribed to a topic. O(log C + k), without allocating.
let isSubscribed (table: TopicTable<'S>) (topic: string) (subscriber: 'S) : bool =
    let mutable topics = null

    not (isNull topic)
    && not (isNull (box subscriber))
    && table.bySubscriber.TryGetValue(subscriber, &topics)
    && containsTopic topics topic

/// No bounds at all: what `subscribe` applies.
let unlimited: TopicLimits =
    { MaxTopicLength = Int32.MaxValue
      MaxTopicsPerSubscriber = Int32.MaxValue }

/// Whether a topic name is at most `maxLength` UTF-8 bytes long (a lone surrogate counts as the 3
/// bytes of U+FFFD it is encoded as). False for a null name. Counts only when the name's length in
/// UTF-16 units does not decide it, so an over-long name costs O(1).
let nameFits (maxLength: int) (topic: string) : bool =
    if isNull topic || maxLength < 0 then false
    // Each UTF-16 unit takes 1 to 3 UTF-8 bytes (a surrogate pair, two units, takes 4).
    elif topic.Length > maxLength then false
    elif topic.Length <= maxLength / 3 then true
    else Text.Encoding.UTF8.GetByteCount topic <= maxLength

/// Whether a subscriber that is in `topicsHeld` topics (`alreadyIn` this one) may join `topic`
/// within `limits`: a name longer than `MaxTopicLength` is Refused "topic-too-long", a subscriber
/// already in the topic is AlreadyIn (even at its limit), one in `MaxTopicsPerSubscriber` topics
/// or more is AtTopicLimit. O(1) for a name under a third of the limit, O(name) otherwise.
let admit (limits: TopicLimits) (topic: string) (alreadyIn: bool) (topicsHeld: int) : Admission =
    if isNull topic then Refused "null-topic"
    elif not (nameFits limits.MaxTopicLength topic) then Refused "topic-too-long"
    elif alreadyIn then AlreadyIn
    elif topicsHeld >= limits.MaxTopicsPerSubscriber then AtTopicLimit
    else Admitted

/// Adds a subscriber to a topic, at the end of the topic's delivery order, within `limits`: a
/// name longer than `MaxTopicLength` is Rejected "topic-too-long", and a subscriber already in
/// `MaxTopicsPerSubscriber` topics gets TopicLimitReached (subscribing again to one of its topics
/// is still AlreadySubscribed). O(k + n + log T + log C): the topic's array of n subscribers is
/// copied, not mutated.
let subscribeWithin (limits: TopicLimits) (table: TopicTable<'S>) (topic: string) (subscriber: 'S) : struct (TopicTable<'S> * SubscribeChange) =
    if isNull topic then
        struct (table, Rejected "null-topic")
    elif isNull (box subscriber) then
        struct (table, Rejected "null-subscriber")
    else
        let mutable topics = null
        let known = table.bySubscriber.TryGetValue(subscriber, &topics)

        match admit limits topic (known && containsTopic topics topic) (if known then topics.Length else 0) with
        | Refused code -> struct (table, Rejected code)
        | AlreadyIn -> struct (table, AlreadySubscribed)
        | AtTopicLimit -> struct (table, TopicLimitReached)
        | Admitted ->
            let mutable items = null
            let existed = table.byTopic.TryGetValue(topic, &items)
            let items' = if existed then appended items subscriber else [| subscriber |]
            let topics' = if known then appended topics topic else [| topic |]

            let table' =
                { table with
                    byTopic = table.byTopic.SetItem(topic, items')
                    bySubscriber = table.bySubscriber.SetItem(subscriber, topics') }

            struct (table', Subscribed(not existed))

/// Adds a subscriber to a topic, at the end of the topic's delivery order, without limits
/// (`subscribeWithin unlimited`). O(k + n + log T + log C).
let subscribe (table: TopicTable<'S>) (topic: string) (subscriber: 'S) : struct (TopicTable<'S> * SubscribeChange) =
    subscribeWithin unlimited table topic subscriber

/// Removes a subscriber from a topic; the others keep their order. A topic left without
/// subscribers is dropped from the table. O(k + n + log T + log C).
let unsubscribe (table: TopicTable<'S>) (topic: string) (subscriber: 'S) : struct (TopicTable<'S> * UnsubscribeChange) =
    let mutable topics = null
    let mutable items = null

    if isNull topic
       || isNull (box subscriber)
       || not (table.bySubscriber.TryGetValue(subscriber, &topics))
       || not (table.byTopic.TryGetValue(topic, &items)) then
        struct (table, NotSubscribed)
    else
        let topicIndex = indexOfTopic topics topic
        let itemIndex = indexOfSubscriber table.comparer items subscriber

        if topicIndex < 0 || itemIndex < 0 then
            struct (table, NotSubscribed)
        else
            let items' = without items itemIndex
            let topics' = without topics topicIndex
            let lastLeft = items'.Length = 0

            let table' =
                { table with
                    byTopic =
                        if lastLeft then
                            table.byTopic.Remove topic
                        else
                            table.byTopic.SetItem(topic, items')
                    bySubscriber =
                        if topics'.Length = 0 then
                            table.bySubscriber.Remove subscriber
                        else
                            table.bySubscriber.SetItem(subscriber, topics') }

            struct (table', Unsubscribed lastLeft)

/// Removes a subscriber from every topic it is in (its connection closed).
/// O(sum of n over its k topics + k log T + log C): untouched topics cost nothing.
let removeSubscriber (table: TopicTable<'S>) (subscriber: 'S) : struct (TopicTable<'S> * Removal) =
    let mutable topics = null

    if isNull (box subscriber) || not (table.bySubscriber.TryGetValue(subscriber, &topics)) then
        struct (table, { TopicsLeft = [||]; TopicsEmptied = [||] })
    else
        let mutable byTopic = table.byTopic
        let emptied = ResizeArray<string>()

        for topic in topics do
            let mutable items = null

            if byTopic.TryGetValue(topic, &items) then
                let index = indexOfSubscriber table.comparer items subscriber

                if index >= 0 then
                    if items.Length = 1 then
                        byTopic <- byTopic.Remove topic
                        emptied.Add topic
                    else
                        byTopic <- byTopic.SetItem(topic, without items index)

        let table' =
            { table with
                byTopic = byTopic
                bySubscriber = table.bySubscriber.Remove subscriber }

        struct (table', { TopicsLeft = Array.copy topics; TopicsEmptied = emptied.ToArray() })

/// The subscribers that receive a message published to a topic, in subscription order, without
/// `sender` (ValueNone for a server-wide publish that reaches everyone). An unknown topic gives
/// empty recipients. O(log T) lookup plus, with a sender, an O(n) scan for its position;
/// allocates nothing.
let publish (table: TopicTable<'S>) (topic: string) (sender: 'S voption) : Recipients<'S> =
    let mutable items = null

    if not (isNull topic) && table.byTopic.TryGetValue(topic, &items) then
        let skip =
            match sender with
            | ValueSome s -> indexOfSubscriber table.comparer items s
            | ValueNone -> -1

        { items = items; skip = skip }
    else
        { items = Array.Empty<'S>(); skip = -1 }

module Realtime.Protocol.Tests.TopicsTests

open System
open System.Collections.Generic
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Topics
open Realtime.Protocol.Tests.Properties

let private sub (table: TopicTable<'S>) topic s =
    let struct (table', change) = subscribe table topic s
    table', change

let private subWithin limits (table: TopicTable<'S>) topic s =
    let struct (table', change) = subscribeWithin limits table topic s
    table', change

let private unsub (table: TopicTable<'S>) topic s =
    let struct (table', change) = unsubscribe table topic s
    table', change

let private remove (table: TopicTable<'S>) s =
    let struct (table', removal) = removeSubscriber table s
    table', removal

let private tableOf (pairs: (string * int) list) =
    pairs |> List.fold (fun t (topic, s) -> fst (sub t topic s)) Topics.empty<int>

let private recipients table topic sender = (publish table topic sender).ToArray()

/// Iterates with F#'s `for` over the struct enumerator (a test CE's `for` would need a seq).
let private iterate (r: Recipients<'S>) =
    let seen = ResizeArray<'S>()

    for x in r do
        seen.Add x

    List.ofSeq seen

/// Bytes allocated by 1000 publishes with iteration (after a warm-up), and the sum of recipients seen.
let private measurePublish () =
    let t = tableOf [ for s in 0..99 -> "room", s ]

    let run () =
        let mutable sum = 0
        let mutable e = (publish t "room" (ValueSome 50)).GetEnumerator()

        while e.MoveNext() do
            sum <- sum + e.Current

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

/// A connection stand-in with structural equality, to show the table can use reference equality instead.
type private Conn = { Name: string }

[<Tests>]
let examples =
    testList
        "Topics: subscribe / unsubscribe / publish"
        [ test "the first subscriber of a topic is reported as first" {
              let t, change = sub Topics.empty<int> "news" 1
              Expect.equal change (Subscribed true) "first"
              let _, change = sub t "news" 2
              Expect.equal change (Subscribed false) "second"
          }

          test "subscribing twice is AlreadySubscribed and changes nothing" {
              let t = tableOf [ "news", 1 ]
              let t', change = sub t "news" 1
              Expect.equal change AlreadySubscribed "again"
              Expect.equal (subscribers t' "news") [| 1 |] "one entry"
          }

          test "unsubscribe reports whether the last subscriber left and drops empty topics" {
              let t = tableOf [ "news", 1; "news", 2 ]
              let t, change = unsub t "news" 1
              Expect.equal change (Unsubscribed false) "not last"
              Expect.equal (topicCount t) 1 "topic kept"
              let t, change = unsub t "news" 2
              Expect.equal change (Unsubscribed true) "last"
              Expect.equal (topicCount t) 0 "topic gone"
              Expect.equal (subscriberCount t "news") 0 "no subscribers"
              let _, change = unsub t "news" 2
              Expect.equal change NotSubscribed "already gone"
          }

          test "unsubscribe from an unknown topic or by a stranger is NotSubscribed" {
              let t = tableOf [ "news", 1 ]
              Expect.equal (snd (unsub t "sports" 1)) NotSubscribed "unknown topic"
              Expect.equal (snd (unsub t "news" 9)) NotSubscribed "stranger"
              Expect.equal (subscribers t "news") [| 1 |] "unchanged"
          }

          test "publish excludes the sender and keeps subscription order" {
              let t = tableOf [ "room", 3; "room", 1; "room", 2 ]
              let r = publish t "room" (ValueSome 1)
              Expect.equal r.Count 2 "count"
              Expect.equal (r.ToArray()) [| 3; 2 |] "sender excluded"
          }

          test "a server publish reaches every subscriber" {
              let t = tableOf [ "room", 3; "room", 1; "room", 2 ]
              Expect.equal (recipients t "room" ValueNone) [| 3; 1; 2 |] "everyone"
          }

          test "a sender that is not subscribed excludes nobody" {
              let t = tableOf [ "room", 3; "room", 1 ]
              let r = publish t "room" (ValueSome 7)
              Expect.equal r.Count 2 "count"
              Expect.equal (r.ToArray()) [| 3; 1 |] "everyone"
          }

          test "the only subscriber publishing reaches nobody" {
              let r = publish (tableOf [ "room", 1 ]) "room" (ValueSome 1)
              Expect.isTrue r.IsEmpty "empty"
              Expect.equal (r.ToArray()) [||] "nobody"
          }

          test "publish on an unknown topic has no recipients" {
              let r = publish (tableOf [ "room", 1 ]) "elsewhere" ValueNone
              Expect.equal r.Count 0 "count"
              Expect.isTrue r.IsEmpty "empty"
              Expect.equal (r.ToArray()) [||] "nobody"
          }

          test "iterating recipients with for visits them in order" {
              let t = tableOf [ "room", 1; "room", 2; "room", 3; "room", 4 ]
              Expect.equal (iterate (publish t "room" (ValueSome 3))) [ 1; 2; 4 ] "order, sender skipped"
          }

          test "default recipients (as C# default) are empty" {
              let r = Unchecked.defaultof<Recipients<int>>
              Expect.equal r.Count 0 "count"
              Expect.equal (r.ToArray()) [||] "empty"
              let mutable e = r.GetEnumerator()
              Expect.isFalse (e.MoveNext()) "no element"
          }

          test "publish and iteration allocate nothing" {
              let allocated, total = measurePublish ()
              Expect.equal allocated 0L "no allocation"
              Expect.equal total (1000 * (4950 - 50)) "all visited"
          }

          test "topic names are ordinal" {
              let t = tableOf [ "Room", 1; "room", 2; "ro\u00f6m", 3 ]
              Expect.equal (topicCount t) 3 "three topics"
              Expect.equal (recipients t "Room" ValueNone) [| 1 |] "case matters"
          }

          test "queries on a subscriber in several topics" {
              let t = tableOf [ "b", 1; "a", 1; "a", 2; "c", 1 ]
              Expect.equal (topicsOf t 1) [| "b"; "a"; "c" |] "subscription order"
              Expect.isTrue (isSubscribed t "a" 1) "in a"
              Expect.isFalse (isSubscribed t "b" 2) "2 not in b"
              Expect.equal (subscriberCount t "a") 2 "a has two"
              Expect.equal (topicsOf t 9) [||] "stranger has none"
          }

          test "removing a subscriber in many topics reports the topics left and emptied" {
              let t = tableOf [ "a", 1; "b", 1; "b", 2; "c", 1; "d", 2 ]
              let t', removal = remove t 1
              Expect.equal removal.TopicsLeft [| "a"; "b"; "c" |] "left"
              Expect.equal removal.TopicsEmptied [| "a"; "c" |] "emptied"
              Expect.equal (topicCount t') 2 "b and d remain"
              Expect.equal (topicsOf t' 1) [||] "no topics"
              Expect.equal (subscribers t' "b") [| 2 |] "b keeps 2"
              Expect.equal (topicsOf t' 2) [| "b"; "d" |] "2 untouched"
          }

          test "removing an unknown subscriber changes nothing" {
              let t = tableOf [ "a", 1 ]
              let t', removal = remove t 5
              Expect.equal removal { TopicsLeft = [||]; TopicsEmptied = [||] } "nothing"
              Expect.equal (subscribers t' "a") [| 1 |] "unchanged"
          }

          test "earlier tables are unchanged by later operations" {
              let t1 = tableOf [ "a", 1; "a", 2 ]
              let t2, _ = sub t1 "a" 3
              let t3, _ = unsub t2 "a" 1
              let t4, _ = remove t3 2
              Expect.equal (subscribers t1 "a") [| 1; 2 |] "t1"
              Expect.equal (subscribers t2 "a") [| 1; 2; 3 |] "t2"
              Expect.equal (subscribers t3 "a") [| 2; 3 |] "t3"
              Expect.equal (subscribers t4 "a") [| 3 |] "t4"
          }

          test "null topics and subscribers are rejected or absent, never an exception" {
              let t = Topics.empty<string>
              Expect.equal (snd (sub t null "x")) (Rejected "null-topic") "null topic"
              Expect.equal (snd (sub t "a" null)) (Rejected "null-subscriber") "null subscriber"
              Expect.equal (snd (unsub t null "x")) NotSubscribed "unsubscribe null topic"
              Expect.equal (snd (unsub t "a" null)) NotSubscribed "unsubscribe null subscriber"
              Expect.equal (snd (remove t null)).TopicsLeft [||] "remove null"
              Expect.equal (publish t null ValueNone).Count 0 "publish null"
              Expect.equal (subscriberCount t null) 0 "count null"
              Expect.equal (subscribers t null) [||] "subscribers null"
              Expect.equal (topicsOf t null) [||] "topicsOf null"
              Expect.isFalse (isSubscribed t null null) "isSubscribed null"
          }

          test "a table can compare subscribers by reference" {
              let a = { Name = "same" }
              let b = { Name = "same" }
              let t = Topics.emptyWith (HashIdentity.Reference: IEqualityComparer<Conn>)
              let t, _ = sub t "room" a
              let t, change = sub t "room" b
              Expect.equal change (Subscribed false) "a second, distinct subscriber"
              Expect.isTrue (obj.ReferenceEquals((publish t "room" (ValueSome a)).ToArray()[0], b)) "only b"
              let byValue, _ = sub (fst (sub Topics.empty<Conn> "room" a)) "room" b
              Expect.equal (subscriberCount byValue "room") 1 "equal records are one subscriber by default"
          }

          test "a null comparer means the default one" {
              let t = Topics.emptyWith (null: IEqualityComparer<int>)
              let t, _ = sub t "a" 1
              Expect.isTrue (isSubscribed t "a" 1) "works"
          } ]

[<Tests>]
let limits =
    testList
        "Topics: limits on topic names and topics per subscriber"
        [ test "a name is measured in UTF-8 bytes" {
              Expect.isTrue (nameFits 3 "abc") "3 ASCII bytes fit in 3"
              Expect.isFalse (nameFits 3 "abcd") "4 do not"
              Expect.isFalse (nameFits 3 "a\u00e9\u00e9") "1 + 2 + 2 bytes do not fit in 3 (though 3 chars)"
              Expect.isTrue (nameFits 5 "a\u00e9\u00e9") "they fit in 5"
              Expect.isFalse (nameFits 3 "\U0001F600") "a surrogate pair is 4 bytes"
              Expect.isFalse (nameFits 2 "\ud800") "a lone surrogate counts as U+FFFD, 3 bytes"
              Expect.isTrue (nameFits 0 "") "the empty name fits any limit"
              Expect.isFalse (nameFits 10 null) "a null name never fits"
              Expect.isFalse (nameFits -1 "") "a negative limit fits nothing"
          }

          test "a name over the length limit is rejected and changes nothing" {
              let limits = { MaxTopicLength = 4; MaxTopicsPerSubscriber = 10 }
              let t, change = subWithin limits Topics.empty<int> "abcde" 1
              Expect.equal change (Rejected "topic-too-long") "rejected"
              Expect.equal (topicCount t) 0 "no topic"
              let _, change = subWithin limits t "abcd" 1
              Expect.equal change (Subscribed true) "exactly the limit is fine"
          }

          test "a subscriber at its topic limit gets TopicLimitReached, but may resubscribe and may join again after leaving one" {
              let limits = { MaxTopicLength = 256; MaxTopicsPerSubscriber = 2 }
              let t, _ = subWithin limits Topics.empty<int> "a" 1
              let t, _ = subWithin limits t "b" 1
              let t', change = subWithin limits t "c" 1
              Expect.equal change TopicLimitReached "third topic refused"
              Expect.equal (topicsOf t' 1) [| "a"; "b" |] "unchanged"
              Expect.equal (snd (subWithin limits t "a" 1)) AlreadySubscribed "an existing topic is still AlreadySubscribed"
              Expect.equal (snd (subWithin limits t "c" 2)) (Subscribed true) "other subscribers have their own count"
              let t, _ = unsub t "a" 1
              Expect.equal (snd (subWithin limits t "c" 1)) (Subscribed true) "room again after leaving one"
          }

          test "a limit of zero topics refuses every subscribe" {
              let limits = { MaxTopicLength = 256; MaxTopicsPerSubscriber = 0 }
              Expect.equal (snd (subWithin limits Topics.empty<int> "a" 1)) TopicLimitReached "refused"
          }

          test "admit decides a subscribe for a host that keeps its own subscribers" {
              let limits = { MaxTopicLength = 4; MaxTopicsPerSubscriber = 2 }
              Expect.equal (admit limits "room" false 0) Admitted "a free subscriber joins"
              Expect.equal (admit limits "room" false 1) Admitted "one under the limit joins"
              Expect.equal (admit limits "room" false 2) AtTopicLimit "at the limit it does not"
              Expect.equal (admit limits "room" true 2) AlreadyIn "already in is already in, even at the limit"
              Expect.equal (admit limits "rooms" false 0) (Refused "topic-too-long") "5 bytes over a limit of 4"
              Expect.equal (admit limits null false 0) (Refused "null-topic") "null"
          }

          test "subscribe is subscribeWithin unlimited" {
              Expect.equal unlimited { MaxTopicLength = Int32.MaxValue; MaxTopicsPerSubscriber = Int32.MaxValue } "no bounds"
              let long = String('x', 100_000)
              Expect.equal (snd (sub Topics.empty<int> long 1)) (Subscribed true) "any length"
          }

          property "nameFits agrees with counting the UTF-8 bytes"
          <| Prop.forAll
              (Arb.fromGen (
                  Gen.zip
                      (Gen.choose (-1, 40))
                      (Gen.map
                          (fun (cs: char list) -> String(Array.ofList cs))
                          (Gen.listOf (Gen.elements [ 'a'; 'z'; '\u00e9'; '\u20ac'; '\ud83d'; '\ude00'; '\ud800'; '\u0000' ])))
              ))
              (fun (limit, name) ->
                  Expect.equal
                      (nameFits limit name)
                      (limit >= 0 && Text.Encoding.UTF8.GetByteCount name <= limit)
                      (sprintf "%d %A" limit name)) ]

// ---- model-based checking -------------------------------------------------------------------

type private Command =
    | Subscribe of string * int
    | Unsubscribe of string * int
    | Remove of int
    | Publish of string * int voption

/// The naive model: (topic, subscriber) pairs in subscription order.
type private Model = (string * int) list

let private topicUniverse = [ "a"; "b"; "c"; ""; "A"; "t\u00e9"; "long-name" ]
let private subscriberUniverse = [ 0..7 ]

let private modelSubscribers (m: Model) topic =
    m |> List.filter (fun (t, _) -> t = topic) |> List.map snd

let private modelTopics (m: Model) s =
    m |> List.filter (fun (_, x) -> x = s) |> List.map fst

/// Everything the table answers, over the whole universe, as one comparable value.
let private snapshot (t: TopicTable<int>) =
    topicCount t,
    [ for topic in topicUniverse ->
          subscriberCount t topic,
          subscribers t topic,
          recipients t topic ValueNone,
          [ for s in subscriberUniverse -> isSubscribed t topic s, recipients t topic (ValueSome s) ] ],
    [ for s in subscriberUniverse -> topicsOf t s ]

/// What the snapshot of a table equal to the model must be.
let private modelSnapshot (m: Model) =
    List.length (List.distinct (List.map fst m)),
    [ for topic in topicUniverse ->
          let subs = modelSubscribers m topic |> Array.ofList

          subs.Length,
          subs,
          subs,
          [ for s in subscriberUniverse -> List.contains (topic, s) m, Array.filter ((<>) s) subs ] ],
    [ for s in subscriberUniverse -> modelTopics m s |> Array.ofList ]

let private genTopic = Gen.elements topicUniverse
let private genSubscriber = Gen.choose (0, 7)

let private genCommand =
    Gen.frequency
        [ 5, Gen.map2 (fun t s -> Subscribe(t, s)) genTopic genSubscriber
          3, Gen.map2 (fun t s -> Unsubscribe(t, s)) genTopic genSubscriber
          1, Gen.map Remove genSubscriber
          2,
          Gen.map2
              (fun t s -> Publish(t, s))
              genTopic
              (Gen.oneof [ Gen.constant ValueNone; Gen.map ValueSome genSubscriber ]) ]

let private shrinkList (xs: 'a list) =
    seq {
        for i in 0 .. xs.Length - 1 do
            List.removeAt i xs
    }

let private arbCommands = Arb.fromGenShrink (Gen.listOf genCommand, shrinkList)

let private build (commands: Command list) =
    commands
    |> List.fold
        (fun t command ->
            match command with
            | Subscribe(topic, s) -> fst (sub t topic s)
            | Unsubscribe(topic, s) -> fst (unsub t topic s)
            | Remove s -> fst (remove t s)
            | Publish _ -> t)
        Topics.empty<int>

let private arbScenario =
    Arb.fromGen (
        gen {
            let! commands = Gen.listOf genCommand
            let! topic = genTopic
            let! s = genSubscriber
            return commands, topic, s
        }
    )

/// One command on the table and the model; subscribes stay within `limits`.
let private stepWithin (limits: TopicLimits) (t: TopicTable<int>, m: Model) command =
    match command with
    | Subscribe(topic, s) ->
        let t', change = subWithin limits t topic s

        let expected, m' =
            if Text.Encoding.UTF8.GetByteCount topic > limits.MaxTopicLength then
                Rejected "topic-too-long", m
            elif List.contains (topic, s) m then
                AlreadySubscribed, m
            elif (modelTopics m s).Length >= limits.MaxTopicsPerSubscriber then
                TopicLimitReached, m
            else
                Subscribed (modelSubscribers m topic).IsEmpty, m @ [ topic, s ]

        Expect.equal change expected (sprintf "%A" command)
        t', m'
    | Unsubscribe(topic, s) ->
        let t', change = unsub t topic s

        let expected, m' =
            if List.contains (topic, s) m then
                let m' = m |> List.filter ((<>) (topic, s))
                Unsubscribed (modelSubscribers m' topic).IsEmpty, m'
            else
                NotSubscribed, m

        Expect.equal change expected (sprintf "%A" command)
        t', m'
    | Remove s ->
        let t', removal = remove t s
        let left = modelTopics m s
        let emptied = left |> List.filter (fun topic -> modelSubscribers m topic = [ s ])
        Expect.equal removal.TopicsLeft (Array.ofList left) (sprintf "%A left" command)
        Expect.equal removal.TopicsEmptied (Array.ofList emptied) (sprintf "%A emptied" command)
        t', m |> List.filter (fun (_, x) -> x <> s)
    | Publish(topic, sender) ->
        let expected =
            modelSubscribers m topic
            |> List.filter (fun s -> ValueSome s <> sender)
            |> Array.ofList

        let r = publish t topic sender
        Expect.equal (r.ToArray()) expected (sprintf "%A recipients" command)
        Expect.equal r.Count expected.Length (sprintf "%A count" command)
        Expect.equal (iterate r |> Array.ofList) expected (sprintf "%A iteration" command)
        t, m

let private step state command = stepWithin unlimited state command

let private genLimits =
    Gen.map2
        (fun length count -> { MaxTopicLength = length; MaxTopicsPerSubscriber = count })
        (Gen.choose (0, 10))
        (Gen.choose (0, 4))

/// Runs commands within limits against the model; no subscriber passes the count limit and no
/// topic in the table passes the length limit, after any command.
let private checkWithin (limits: TopicLimits) (commands: Command list) =
    commands
    |> List.fold
        (fun state command ->
            let t, m = stepWithin limits state command
            Expect.equal (snapshot t) (modelSnapshot m) (sprintf "queries after %A within %A" command limits)

            for s in subscriberUniverse do
                Expect.isLessThanOrEqual (topicsOf t s).Length limits.MaxTopicsPerSubscriber "within the count limit"

            for topic in topics t do
                Expect.isTrue (nameFits limits.MaxTopicLength topic) "every topic within the length limit"

            t, m)
        (Topics.empty<int>, [])
    |> ignore

[<Tests>]
let properties =
    testList
        "Topics: properties"
        [ property "the table agrees with a naive model after every command"
          <| Prop.forAll arbCommands (fun commands ->
              commands
              |> List.fold
                  (fun state command ->
                      let t, m = step state command
                      Expect.equal (snapshot t) (modelSnapshot m) (sprintf "queries after %A" command)
                      t, m)
                  (Topics.empty<int>, [])
              |> ignore)

          property "within limits, the table agrees with a model that refuses over-long names and topics past the limit"
          <| Prop.forAll (Arb.fromGen (Gen.zip genLimits (Gen.listOf genCommand))) (fun (limits, commands) ->
              checkWithin limits commands)

          property "admit agrees with subscribeWithin on any table"
          <| Prop.forAll (Arb.fromGen (Gen.zip genLimits arbScenario.Generator)) (fun (limits, (commands, topic, s)) ->
              let t = build commands
              let expected =
                  match snd (subWithin limits t topic s) with
                  | Rejected code -> Refused code
                  | AlreadySubscribed -> AlreadyIn
                  | TopicLimitReached -> AtTopicLimit
                  | Subscribed _ -> Admitted
              Expect.equal (admit limits topic (isSubscribed t topic s) (topicsOf t s).Length) expected "same verdict")

          property "subscribe is idempotent"
          <| Prop.forAll arbScenario (fun (commands, topic, s) ->
              let t1, _ = sub (build commands) topic s
              let t2, change = sub t1 topic s
              Expect.equal change AlreadySubscribed "second subscribe"
              Expect.equal (snapshot t2) (snapshot t1) "same queries")

          property "unsubscribe after subscribe restores the previous queries"
          <| Prop.forAll arbScenario (fun (commands, topic, s) ->
              let t0, _ = unsub (build commands) topic s
              let wasEmpty = subscriberCount t0 topic = 0
              let t1, subscribed = sub t0 topic s
              let t2, unsubscribed = unsub t1 topic s
              Expect.equal subscribed (Subscribed wasEmpty) "first flag"
              Expect.equal unsubscribed (Unsubscribed wasEmpty) "last flag"
              Expect.equal (snapshot t2) (snapshot t0) "restored")

          property "removeSubscriber leaves no trace of the subscriber"
          <| Prop.forAll arbScenario (fun (commands, _, s) ->
              let t = build commands
              let before = topicsOf t s
              let t', removal = remove t s
              Expect.equal removal.TopicsLeft before "left what it had"

              Expect.equal
                  removal.TopicsEmptied
                  (before |> Array.filter (fun topic -> subscriberCount t topic = 1))
                  "emptied where it was alone"

              Expect.equal (topicsOf t' s) [||] "no topics"

              for topic in topicUniverse do
                  Expect.isFalse (isSubscribed t' topic s) "not subscribed"
                  Expect.isFalse (Array.contains s (recipients t' topic ValueNone)) "never a recipient"

                  Expect.equal
                      (subscribers t' topic)
                      (subscribers t topic |> Array.filter ((<>) s))
                      "others keep their order"

              for other in subscriberUniverse |> List.filter ((<>) s) do
                  Expect.equal (topicsOf t' other) (topicsOf t other) "others untouched") ]


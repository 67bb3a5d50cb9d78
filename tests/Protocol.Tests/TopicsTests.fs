/// The core's rules of publish/subscribe: topic name length and the admission of a subscribe. The
/// host's topic registry, which applies them, is checked against a naive model in Server.Tests
/// (TopicRegistryTests).
module Realtime.Protocol.Tests.TopicsTests

open System
open Expecto
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Topics
open Realtime.Protocol.Tests.Properties

let private genName =
    Gen.map
        (fun (cs: char list) -> String(Array.ofList cs))
        (Gen.listOf (Gen.elements [ 'a'; 'z'; '\u00e9'; '\u20ac'; '\ud83d'; '\ude00'; '\ud800'; '\u0000' ]))

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

          test "admit decides a subscribe for a host that keeps its own subscribers" {
              let limits = { MaxTopicLength = 4; MaxTopicsPerSubscriber = 2 }
              Expect.equal (admit limits "room" false 0) Admitted "a free subscriber joins"
              Expect.equal (admit limits "room" false 1) Admitted "one under the limit joins"
              Expect.equal (admit limits "room" false 2) AtTopicLimit "at the limit it does not"
              Expect.equal (admit limits "room" true 2) AlreadyIn "already in is already in, even at the limit"
              Expect.equal (admit limits "rooms" false 0) (Refused "topic-too-long") "5 bytes over a limit of 4"
              Expect.equal (admit limits "rooms" true 0) (Refused "topic-too-long") "a name over the limit is refused before anything else"
              Expect.equal (admit limits null false 0) (Refused "null-topic") "null"
          }

          test "a limit of zero topics refuses every new subscribe" {
              let limits = { MaxTopicLength = 256; MaxTopicsPerSubscriber = 0 }
              Expect.equal (admit limits "a" false 0) AtTopicLimit "refused"
          }

          property "nameFits agrees with counting the UTF-8 bytes"
          <| Prop.forAll (Arb.fromGen (Gen.zip (Gen.choose (-1, 40)) genName)) (fun (limit, name) ->
              Expect.equal
                  (nameFits limit name)
                  (limit >= 0 && Text.Encoding.UTF8.GetByteCount name <= limit)
                  (sprintf "%d %A" limit name))

          property "admit agrees with the naive rule: length first, then already in, then the count"
          <| Prop.forAll
              (Arb.fromGen (
                  Gen.zip
                      (Gen.zip (Gen.choose (0, 10)) (Gen.choose (0, 4)))
                      (Gen.zip (Gen.oneof [ genName; Gen.constant null ]) (Gen.zip (Gen.elements [ true; false ]) (Gen.choose (0, 6))))
              ))
              (fun ((length, count), (name, (alreadyIn, held))) ->
                  let limits = { MaxTopicLength = length; MaxTopicsPerSubscriber = count }
                  let expected =
                      if isNull name then Refused "null-topic"
                      elif Text.Encoding.UTF8.GetByteCount name > length then Refused "topic-too-long"
                      elif alreadyIn then AlreadyIn
                      elif held >= count then AtTopicLimit
                      else Admitted
                  Expect.equal (admit limits name alreadyIn held) expected (sprintf "%A %A %b %d" limits name alreadyIn held)) ]

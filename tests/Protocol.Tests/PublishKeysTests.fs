module Realtime.Protocol.Tests.PublishKeysTests

open System
open System.Collections.Generic
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.PublishKeys
open Realtime.Protocol.Tests.Properties

let private at offset : ChannelPosition = { Epoch = "e"; Offset = offset }

let private limits keys age = { MaxKeys = keys; MaxAge = age }

/// A channel's publish path as a host writes it with these rules: a dictionary of keys, the keys
/// in the order recorded, and the channel's history (only its last offset matters here).
type private Channel(limits: KeyLimits) =
    let entries = Dictionary<string, Entry>()
    let order = Queue<string>()
    let mutable last = 0UL

    let forget now =
        while order.Count > 0 && shouldForget limits now order.Count entries[order.Peek()].Time do
            entries.Remove(order.Dequeue()) |> ignore

    /// Publishes with `key` at `now`: the position acknowledged, and whether it was appended.
    member _.Publish(key: string, now: int64) : ChannelPosition * bool =
        forget now

        let found =
            match entries.TryGetValue key with
            | true, entry -> ValueSome entry
            | _ -> ValueNone

        match check limits now found with
        | Repeat first -> first, false
        | Publish ->
            last <- last + 1UL
            let position = at last
            // The forget loop above removed any entry past MaxAge, so the key is new here.
            entries[key] <- { Position = position; Time = now }
            order.Enqueue key
            forget now
            position, true

    member _.Remembered = entries.Count

/// Bytes allocated by 1000 key checks (found and not) and forget decisions, after a warm-up.
let private measureChecks () =
    let l = limits 10 1000L
    let found = ValueSome { Position = at 7UL; Time = 0L }

    let checkAll () =
        let mutable repeats = 0
        let mutable i = 0L

        while i < 1000L do
            match check l i found with
            | Repeat _ -> repeats <- repeats + 1
            | Publish -> ()

            match check l i ValueNone with
            | Publish -> ()
            | Repeat _ -> repeats <- repeats - 1000

            if shouldForget l i 5 0L then
                repeats <- repeats - 1

            i <- i + 1L

        repeats

    checkAll () |> ignore
    let before = GC.GetAllocatedBytesForCurrentThread()
    let repeats = checkAll ()
    let allocated = GC.GetAllocatedBytesForCurrentThread() - before
    Expect.equal repeats 1000 "every found entry within MaxAge is a repeat, none is forgotten"
    allocated

[<Tests>]
let examples =
    testList
        "Channels: publish keys"
        [ test "defaults remember the last 1000 keys for 5 minutes, as long as the default history" {
              Expect.equal defaults.MaxKeys 1000 "keys"
              Expect.equal defaults.MaxAge 300_000L "age"
              Expect.equal defaults.MaxAge ChannelHistory.defaults.MaxAge "same as the history's age"
          }

          test "a new key publishes; a repeated key returns the first position without publishing" {
              let c = Channel(limits 10 1000L)
              Expect.equal (c.Publish("a", 0L)) (at 1UL, true) "a publishes at 1"
              Expect.equal (c.Publish("b", 1L)) (at 2UL, true) "b at 2"
              Expect.equal (c.Publish("a", 2L)) (at 1UL, false) "a again: acknowledged at 1, not published"
              Expect.equal (c.Publish("c", 3L)) (at 3UL, true) "c at 3: nothing was appended for the retry"
          }

          test "check: a found entry within MaxAge is a repeat, one past it or none is a publish" {
              let l = limits 10 100L
              let entry = { Position = at 7UL; Time = 1000L }
              Expect.equal (check l 1100L (ValueSome entry)) (Repeat(at 7UL)) "exactly MaxAge old"
              Expect.equal (check l 1101L (ValueSome entry)) Publish "older"
              Expect.equal (check l 1101L ValueNone) Publish "none"
          }

          test "a key older than MaxAge is forgotten: its retry publishes again" {
              let c = Channel(limits 10 100L)
              c.Publish("a", 0L) |> ignore
              Expect.equal (c.Publish("a", 100L)) (at 1UL, false) "still remembered at MaxAge"
              Expect.equal (c.Publish("a", 201L)) (at 2UL, true) "forgotten after"
          }

          test "only the last MaxKeys keys are remembered" {
              let c = Channel(limits 2 1000L)
              c.Publish("a", 0L) |> ignore
              c.Publish("b", 0L) |> ignore
              c.Publish("c", 0L) |> ignore
              Expect.equal c.Remembered 2 "two remembered"
              Expect.equal (c.Publish("b", 0L)) (at 2UL, false) "b is"
              Expect.equal (c.Publish("a", 0L)) (at 4UL, true) "a is not"
          }

          test "shouldForget: too many keys, or the oldest past MaxAge; never with no keys" {
              let l = limits 2 10L
              Expect.isTrue (shouldForget l 0L 3 0L) "3 keys"
              Expect.isFalse (shouldForget l 10L 2 0L) "2 keys, 10 ms old"
              Expect.isTrue (shouldForget l 11L 2 0L) "11 ms old"
              Expect.isFalse (shouldForget (limits -1 -1L) 0L 0 0L) "no keys"
          }

          test "keys are 1 to 64 UTF-8 bytes" {
              Expect.isTrue (isValidKey "c7f0-17") "a short key"
              Expect.isTrue (isValidKey (String.replicate 64 "k")) "64 bytes"
              Expect.isFalse (isValidKey (String.replicate 65 "k")) "65 bytes"
              Expect.isTrue (isValidKey (String.replicate 32 "é")) "32 two-byte characters"
              Expect.isFalse (isValidKey (String.replicate 33 "é")) "33 of them"
              Expect.isFalse (isValidKey "") "empty"
              Expect.isFalse (isValidKey null) "null"
          }

          test "checking keys allocates nothing" {
              Expect.equal (measureChecks ()) 0L "bytes allocated by 1000 checks"
          } ]

/// A publish: which key (from a small set, so keys repeat) after how long.
let private publishes =
    Gen.zip (Gen.elements [ "a"; "b"; "c"; "d"; "e"; "f" ]) (Gen.choose (0, 20))
    |> Gen.listOf

[<Tests>]
let properties =
    testList
        "Channels: publish keys (properties)"
        [ property "a key publishes once while it is among the last MaxKeys within MaxAge, and its retries get the first position"
          <| Prop.forAll
              (Arb.fromGen (Gen.zip3 (Gen.choose (0, 5)) (Gen.choose (0, 50)) publishes))
              (fun (maxKeys, maxAge, steps) ->
                  let l = limits maxKeys (int64 maxAge)
                  let c = Channel l
                  let mutable now = 0L
                  // The model: every publish that took effect (key, time, position), latest first.
                  let mutable published: (string * int64 * ChannelPosition) list = []

                  for key, wait in steps do
                      now <- now + int64 wait

                      let remembered =
                          published
                          |> List.truncate maxKeys
                          |> List.tryFind (fun (k, t, _) -> k = key && now - t <= l.MaxAge)

                      let position, appended = c.Publish(key, now)

                      match remembered with
                      | Some(_, _, first) ->
                          Expect.isFalse appended "a remembered key does not publish again"
                          Expect.equal position first "it gets the first position"
                      | None ->
                          Expect.isTrue appended "a new or forgotten key publishes"
                          Expect.equal position (at (uint64 published.Length + 1UL)) "at the next offset"
                          published <- (key, now, position) :: published

                      Expect.isTrue (c.Remembered <= max 0 maxKeys) "at most MaxKeys remembered") ]

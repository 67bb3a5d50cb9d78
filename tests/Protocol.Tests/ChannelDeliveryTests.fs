module Realtime.Protocol.Tests.ChannelDeliveryTests

open System
open Expecto
open Realtime.Protocol
open Realtime.Protocol.ChannelDelivery

let private at epoch offset : ChannelPosition = { Epoch = epoch; Offset = offset }

let private pub state epoch offset =
    let struct (state, verdict) = onPublication state (at epoch offset)
    state, verdict

let private subscribed state epoch offset recovery =
    let struct (state, verdict) = onSubscribed state (at epoch offset) recovery
    state, verdict

let private unsubscribed state =
    let struct (state, verdict) = onUnsubscribed state
    state, verdict

/// A subscription live at (epoch "e", offset).
let private liveAt offset =
    let s, v = subscribed (subscribe (ValueSome(at "e" offset))) "e" offset Recovery.Recovered
    Expect.equal v Subscribed "live"
    s

/// Bytes allocated by 1000 publications delivered in order, after a warm-up.
let private measureDelivery () =
    let deliverAll (start: Subscription) (from: uint64) =
        let mutable s = start
        let mutable offset = from

        while offset < from + 1000UL do
            offset <- offset + 1UL
            let struct (next, _) = onPublication s { Epoch = "e"; Offset = offset }
            s <- next

        s

    let warm = deliverAll (active (at "e" 0UL)) 0UL
    let before = GC.GetAllocatedBytesForCurrentThread()
    let s = deliverAll warm 1000UL
    let allocated = GC.GetAllocatedBytesForCurrentThread() - before
    Expect.equal s.Position (ValueSome(at "e" 2000UL)) "all delivered"
    allocated

[<Tests>]
let examples =
    testList
        "Channels: delivery"
        [ test "live: the next offset is delivered, a lower one is a duplicate" {
              let s = liveAt 4UL
              let s, v = pub s "e" 5UL
              Expect.equal v Deliver "5 follows 4"
              Expect.equal s.Position (ValueSome(at "e" 5UL)) "position 5"
              let s, v = pub s "e" 5UL
              Expect.equal v Duplicate "5 again"
              let s, v = pub s "e" 2UL
              Expect.equal v Duplicate "2"
              Expect.equal s.Position (ValueSome(at "e" 5UL)) "still 5"
              Expect.equal s.Phase Active "still live"
          }

          test "live: a higher offset is a gap to recover from the position; later ones are stale until unsubscribed" {
              let s, v = pub (liveAt 4UL) "e" 7UL
              Expect.equal v (Gap(at "e" 4UL)) "recover from 4"
              Expect.equal s.Phase AwaitingUnsubscribed "awaits unsubscribed"
              Expect.equal (since s) (ValueSome(at "e" 4UL)) "the subscribe carries since 4"
              let s, v = pub s "e" 8UL
              Expect.equal v Stale "8 is the old subscription's"
              let s, v = pub s "e" 5UL
              Expect.equal v Stale "so is 5: the recovery sends it"
              let s, v = unsubscribed s
              Expect.equal v RecoveryFollows "the boundary"
              Expect.equal s.Phase AwaitingSubscribed "awaits subscribed"
              let s, v = pub s "e" 5UL
              Expect.equal v Deliver "recovered 5"
              let s, v = pub s "e" 6UL
              Expect.equal v Deliver "recovered 6"
              let s, v = subscribed s "e" 6UL Recovery.Recovered
              Expect.equal v Subscribed "live again, nothing lost"
              Expect.equal s.Phase Active "active"
          }

          test "live: another epoch means the history was lost; recover as for a gap" {
              let s, v = pub (liveAt 41UL) "new" 1UL
              Expect.equal v (NewEpoch(at "e" 41UL)) "recover from e/41"
              let s, _ = unsubscribed s
              let s, v = pub s "new" 1UL
              Expect.equal v DeliverAfterLoss "the new epoch's history starts after a loss"
              let s, v = pub s "new" 2UL
              Expect.equal v Deliver "then in order"
              let s, v = subscribed s "new" 2UL Recovery.NotRecovered
              Expect.equal v Subscribed "the loss was already reported, once"
              Expect.equal s.Position (ValueSome(at "new" 2UL)) "position in the new epoch"
          }

          test "a fresh subscribe starts at the subscribed position" {
              let s = subscribe ValueNone
              Expect.equal (since s) ValueNone "no since"
              Expect.equal s.Position ValueNone "no position"
              let s, v = subscribed s "e" 9UL Recovery.Fresh
              Expect.equal v Subscribed "live"
              Expect.equal s.Position (ValueSome(at "e" 9UL)) "from 9"
              let _, v = pub s "e" 10UL
              Expect.equal v Deliver "10 follows"
          }

          test "a fresh subscribe delivers a publication sent before its reply and keeps its place" {
              let s, v = pub (subscribe ValueNone) "e" 10UL
              Expect.equal v Deliver "the first one"
              let s, v = subscribed s "e" 9UL Recovery.Fresh
              Expect.equal v Subscribed "live"
              Expect.equal s.Position (ValueSome(at "e" 10UL)) "still at 10"
          }

          test "a reconnect recovers from the position: Recovered delivers what was missed, nothing lost" {
              let s = resubscribe (liveAt 3UL)
              Expect.equal s.Phase AwaitingSubscribed "awaits subscribed"
              Expect.equal (since s) (ValueSome(at "e" 3UL)) "since 3"
              let s, v1 = pub s "e" 4UL
              let s, v2 = pub s "e" 5UL
              let s, v = subscribed s "e" 5UL Recovery.Recovered
              Expect.equal [ v1; v2 ] [ Deliver; Deliver ] "4 and 5"
              Expect.equal v Subscribed "nothing lost"
              Expect.equal s.Phase Active "live"
          }

          test "NotRecovered with what is held: the first publication reports the loss, the reply does not again" {
              let s = resubscribe (liveAt 3UL)
              let s, v = pub s "e" 7UL
              Expect.equal v DeliverAfterLoss "4 ..= 6 were trimmed"
              let s, v = pub s "e" 8UL
              Expect.equal v Deliver "8"
              let s, v = subscribed s "e" 8UL Recovery.NotRecovered
              Expect.equal v Subscribed "reported once"
              Expect.equal s.Position (ValueSome(at "e" 8UL)) "at 8"
          }

          test "NotRecovered with nothing held: the reply reports the loss and moves the position" {
              let s, v = subscribed (resubscribe (liveAt 3UL)) "e" 8UL Recovery.NotRecovered
              Expect.equal v SubscribedAfterLoss "lost 4 ..= 8"
              Expect.equal s.Position (ValueSome(at "e" 8UL)) "at 8"
              Expect.equal s.Phase Active "live"
          }

          test "NotRecovered for a client already at the position still reports the loss" {
              // A history lost and begun again under the same epoch cannot vouch for the client's position.
              let s, v = subscribed (resubscribe (liveAt 8UL)) "e" 8UL Recovery.NotRecovered
              Expect.equal v SubscribedAfterLoss "reported"
              Expect.equal s.Position (ValueSome(at "e" 8UL)) "at 8"
          }

          test "while recovering, a duplicate is dropped and does not count as the start of the history" {
              let s = resubscribe (liveAt 5UL)
              let s, v = pub s "e" 5UL
              Expect.equal v Duplicate "5 again"
              let s, v = pub s "e" 6UL
              Expect.equal v Deliver "6"
              let _, v = subscribed s "e" 6UL Recovery.Recovered
              Expect.equal v Subscribed "nothing lost"
          }

          test "while recovering, a jump after the first delivered publication is a gap" {
              let s = resubscribe (liveAt 5UL)
              let s, _ = pub s "e" 6UL
              let s, v = pub s "e" 9UL
              Expect.equal v (Gap(at "e" 6UL)) "7 and 8 are missing"
              let _, v = subscribed s "e" 9UL Recovery.Recovered
              Expect.equal v Ignored "the reply of the subscribe being replaced"
          }

          test "a paged reply is incomplete: ask again from the position" {
              let s = resubscribe (liveAt 2UL)
              let s, _ = pub s "e" 3UL
              let s, _ = pub s "e" 4UL
              let s, v = subscribed s "e" 9UL Recovery.Recovered
              Expect.equal v (Incomplete(at "e" 4UL)) "5 ..= 9 follow on asking again"
              Expect.equal s.Phase AwaitingUnsubscribed "unsubscribe, then subscribe since 4"
              let s = resubscribe (liveAt 2UL)
              let s, _ = pub s "e" 6UL
              let _, v = subscribed s "e" 9UL Recovery.NotRecovered
              Expect.equal v (Incomplete(at "e" 6UL)) "a paged NotRecovered too (its loss already reported)"
          }

          test "a Fresh reply to a subscribe that gave a position reports the loss" {
              let s, v = subscribed (resubscribe (liveAt 2UL)) "e" 9UL Recovery.Fresh
              Expect.equal v SubscribedAfterLoss "nothing was recovered"
              Expect.equal s.Position (ValueSome(at "e" 9UL)) "at 9"
          }

          test "replies nobody waits for change nothing" {
              let s = liveAt 4UL
              let s2, v = subscribed s "e" 9UL Recovery.Recovered
              Expect.equal v Ignored "not subscribing"
              Expect.equal s2 s "unchanged"
              let s3, v = unsubscribed s
              Expect.equal v Ended "the server ended it"
              Expect.equal s3 s "unchanged: the host decides"
          }

          test "a node follows a channel from its store's position and sees when it fell behind" {
              let s = active (at "e" 10UL)
              Expect.isFalse (isBehind s (at "e" 10UL)) "up to date"
              Expect.isTrue (isBehind s (at "e" 11UL)) "a publication it did not get"
              Expect.isTrue (isBehind s (at "other" 1UL)) "another epoch"
              Expect.isTrue (isBehind (subscribe ValueNone) (at "e" 1UL)) "no position yet"
              Expect.isFalse (isBehind (subscribe ValueNone) (at "e" 0UL)) "nothing published"
          }

          test "the delivery step allocates nothing" {
              Expect.equal (measureDelivery ()) 0L "bytes allocated by 1000 deliveries"
          } ]

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

/// Bytes allocated by 1000 recoveries (resubscribe, one publication ahead, the reply asking again,
/// unsubscribed, the publication, the reply), after a warm-up.
let private measureRecoveries () =
    let recoverAll (start: Subscription) =
        let mutable s = start
        let mutable i = 0

        while i < 1000 do
            let next = (match s.Position with ValueSome p -> p.Offset | ValueNone -> 0UL) + 1UL
            s <- resubscribe s
            let struct (a, _) = onPublication s { Epoch = "e"; Offset = next + 1UL }
            let struct (b, _) = onSubscribed a { Epoch = "e"; Offset = next + 1UL } Recovery.NotRecovered
            let struct (c, _) = onUnsubscribed b
            let struct (d, _) = onPublication c { Epoch = "e"; Offset = next + 1UL }
            let struct (e, _) = onSubscribed d { Epoch = "e"; Offset = next + 1UL } Recovery.Recovered
            s <- e
            i <- i + 1

        s

    let warm = recoverAll (active (at "e" 0UL))
    let before = GC.GetAllocatedBytesForCurrentThread()
    let s = recoverAll warm
    let allocated = GC.GetAllocatedBytesForCurrentThread() - before
    Expect.equal s.Position (ValueSome(at "e" 4000UL)) "each recovery lost one publication and delivered the next"
    Expect.equal s.Phase Active "live"
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
              let s, v1 = pub s "new" 1UL
              let s, v2 = pub s "new" 2UL
              Expect.equal [ v1; v2 ] [ Ahead; Ahead ] "the new epoch's history does not continue the position"
              let s, v = subscribed s "new" 2UL Recovery.NotRecovered
              Expect.equal v (IncompleteAfterLoss(at "new" 0UL)) "tell the app, then ask for the new epoch from its start"
              let s, _ = unsubscribed s
              let s, v1 = pub s "new" 1UL
              let s, v2 = pub s "new" 2UL
              Expect.equal [ v1; v2 ] [ Deliver; Deliver ] "now they continue it"
              let s, v = subscribed s "new" 2UL Recovery.Recovered
              Expect.equal v Subscribed "live, the loss told once"
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

          test "a fresh subscribe overtaken by a later publication asks for it after the reply" {
              let s, v = pub (subscribe ValueNone) "e" 10UL
              Expect.equal v Ahead "no position yet"
              let s, v = subscribed s "e" 9UL Recovery.Fresh
              Expect.equal v (Incomplete(at "e" 9UL)) "10 is after now: ask for it"
              Expect.equal s.Position (ValueSome(at "e" 9UL)) "from 9"
          }

          test "a fresh subscribe forgets publications before its reply's position" {
              let s, v = pub (subscribe ValueNone) "e" 9UL
              Expect.equal v Ahead "no position yet"
              let s, v = subscribed s "e" 9UL Recovery.Fresh
              Expect.equal v Subscribed "9 is before now"
              Expect.equal s.Phase Active "live"
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

          test "NotRecovered with what is held: the reply reports the loss and asks from the first held" {
              let s = resubscribe (liveAt 3UL)
              let s, v1 = pub s "e" 7UL
              let s, v2 = pub s "e" 8UL
              Expect.equal [ v1; v2 ] [ Ahead; Ahead ] "4 ..= 6 were trimmed: 7 does not continue 3"
              let s, v = subscribed s "e" 8UL Recovery.NotRecovered
              Expect.equal v (IncompleteAfterLoss(at "e" 6UL)) "4 ..= 6 lost; ask from 6"
              Expect.equal s.Position (ValueSome(at "e" 6UL)) "the position moved past the loss"
              let s, _ = unsubscribed s
              let s, v1 = pub s "e" 7UL
              let s, v2 = pub s "e" 8UL
              let s, v = subscribed s "e" 8UL Recovery.Recovered
              Expect.equal [ v1; v2 ] [ Deliver; Deliver ] "7 and 8"
              Expect.equal v Subscribed "nothing more lost"
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

          test "a live publication that overtakes the recovery is dropped and asked for after the reply" {
              let s = resubscribe (liveAt 5UL)
              let s, v0 = pub s "e" 6UL
              let s, v = pub s "e" 9UL
              Expect.equal v Ahead "9 came from another node before the recovery's 7"
              let s, v1 = pub s "e" 7UL
              let s, v2 = pub s "e" 8UL
              Expect.equal [ v0; v1; v2 ] [ Deliver; Deliver; Deliver ] "the recovery continues"
              let s, v = subscribed s "e" 8UL Recovery.Recovered
              Expect.equal v (Incomplete(at "e" 8UL)) "9 is past the position: ask again"
              Expect.equal s.Phase AwaitingUnsubscribed "unsubscribe, then subscribe since 8"
          }

          test "an overtaking publication the recovery reached asks for nothing more" {
              let s = resubscribe (liveAt 5UL)
              let s, v = pub s "e" 7UL
              Expect.equal v Ahead "7 before 6"
              let s, _ = pub s "e" 6UL
              let s, _ = pub s "e" 7UL
              let _, v = subscribed s "e" 7UL Recovery.Recovered
              Expect.equal v Subscribed "live"
          }

          test "publications dropped as ahead in another epoch than the reply's are not asked for" {
              let s = resubscribe (liveAt 5UL)
              let s, v = pub s "older" 3UL
              Expect.equal v Ahead "another epoch"
              let s, _ = pub s "e" 6UL
              let _, v = subscribed s "e" 6UL Recovery.Recovered
              Expect.equal v Subscribed "live"
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
              Expect.equal v (IncompleteAfterLoss(at "e" 5UL)) "a paged NotRecovered: 3 ..= 5 lost, ask from 5"
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
          }

          test "the recovery steps allocate nothing" {
              Expect.equal (measureRecoveries ()) 0L "bytes allocated by 1000 recoveries"
          } ]

module Realtime.Protocol.Tests.ChannelRecoveryTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.ChannelRecovery
open Realtime.Protocol.Tests.Properties

let private at epoch offset : ChannelPosition = { Epoch = epoch; Offset = offset }

/// A history of epoch "e" holding offsets first ..= last.
let private window first last =
    ChannelHistory.restore "e" first last (int64 (last + 1UL - first))

let private offsetsSent (plan: RecoveryPlan) =
    if plan.From > plan.Through then [] else [ plan.From .. plan.Through ]

/// Bytes allocated by 1000 recovery plans (paged) after a warm-up.
let private measurePlans () =
    let w = window 3UL 900UL
    let since = ValueSome(at "e" 10UL)

    let planAll () =
        let mutable total = 0UL
        let mutable i = 0

        while i < 1000 do
            let p = page 100 (plan w since)
            total <- total + p.Count
            i <- i + 1

        total

    planAll () |> ignore
    let before = GC.GetAllocatedBytesForCurrentThread()
    let total = planAll ()
    let allocated = GC.GetAllocatedBytesForCurrentThread() - before
    Expect.equal total 100_000UL "100 per page"
    allocated

[<Tests>]
let examples =
    testList
        "Channels: recovery"
        [ test "no position: Fresh, nothing sent, subscribed at the channel's position" {
              let p = plan (window 3UL 9UL) ValueNone
              Expect.equal p.Recovery Recovery.Fresh "fresh"
              Expect.equal (offsetsSent p) [] "nothing"
              Expect.equal p.Count 0UL "count"
              Expect.equal p.Position (at "e" 9UL) "position"
          }

          test "a position whose successors are all held: Recovered with exactly those" {
              let p = plan (window 3UL 9UL) (ValueSome(at "e" 5UL))
              Expect.equal p.Recovery Recovery.Recovered "recovered"
              Expect.equal (offsetsSent p) [ 6UL .. 9UL ] "6 ..= 9"
              Expect.equal p.Count 4UL "count"
              Expect.equal p.Position (at "e" 9UL) "position"
          }

          test "the position just before the oldest held is still Recovered" {
              let p = plan (window 3UL 9UL) (ValueSome(at "e" 2UL))
              Expect.equal p.Recovery Recovery.Recovered "recovered"
              Expect.equal (offsetsSent p) [ 3UL .. 9UL ] "everything held"
          }

          test "an up-to-date position is Recovered with nothing to send, even when nothing is held" {
              let p = plan (window 10UL 9UL) (ValueSome(at "e" 9UL))
              Expect.equal p.Recovery Recovery.Recovered "recovered"
              Expect.equal (offsetsSent p) [] "nothing"
          }

          test "a position older than the history: NotRecovered with everything held" {
              let p = plan (window 3UL 9UL) (ValueSome(at "e" 1UL))
              Expect.equal p.Recovery Recovery.NotRecovered "not recovered"
              Expect.equal (offsetsSent p) [ 3UL .. 9UL ] "3 ..= 9"
              Expect.equal p.Position (at "e" 9UL) "position"
          }

          test "a position older than a history trimmed to nothing: NotRecovered, nothing to send" {
              let p = plan (window 10UL 9UL) (ValueSome(at "e" 4UL))
              Expect.equal p.Recovery Recovery.NotRecovered "not recovered"
              Expect.equal (offsetsSent p) [] "nothing"
          }

          test "a position of another epoch: NotRecovered with everything held, whatever its offset" {
              for offset in [ 0UL; 2UL; 9UL; 50UL ] do
                  let p = plan (window 3UL 9UL) (ValueSome(at "lost" offset))
                  Expect.equal p.Recovery Recovery.NotRecovered "not recovered"
                  Expect.equal (offsetsSent p) [ 3UL .. 9UL ] "3 ..= 9"
          }

          test "a position past the history's last offset: NotRecovered with everything held" {
              let p = plan (window 3UL 9UL) (ValueSome(at "e" 12UL))
              Expect.equal p.Recovery Recovery.NotRecovered "not recovered"
              Expect.equal (offsetsSent p) [ 3UL .. 9UL ] "3 ..= 9"
          }

          test "offset 0 of a history that held everything from 1 is Recovered" {
              let p = plan (window 1UL 4UL) (ValueSome(at "e" 0UL))
              Expect.equal p.Recovery Recovery.Recovered "recovered"
              Expect.equal (offsetsSent p) [ 1UL .. 4UL ] "1 ..= 4"
          }

          test "paging sends at most N per reply and keeps the channel's position" {
              let full = plan (window 1UL 9UL) (ValueSome(at "e" 2UL))
              let p = page 3 full
              Expect.equal (offsetsSent p) [ 3UL; 4UL; 5UL ] "first page"
              Expect.equal p.Recovery Recovery.Recovered "recovery kept"
              Expect.equal p.Position (at "e" 9UL) "position kept"
              Expect.equal (page 7 full) full "a plan that fits is unchanged"
              Expect.equal (offsetsSent (page 0 full)) [ 3UL ] "at least one per page"
              let fresh = plan (window 1UL 9UL) ValueNone
              Expect.equal (page 2 fresh) fresh "nothing to page"
          }

          test "planning allocates nothing" {
              Expect.equal (measurePlans ()) 0L "bytes allocated by 1000 paged plans"
          } ]

let private positions =
    gen {
        let! epoch = Gen.elements [ "e"; "other" ]
        let! offset = Gen.choose (0, 14)
        return at epoch (uint64 offset)
    }

let private windows =
    gen {
        let! last = Gen.choose (0, 12)
        let! first = Gen.choose (1, last + 1)
        return window (uint64 first) (uint64 last)
    }

[<Tests>]
let properties =
    testList
        "Channels: recovery (properties)"
        [ property "Recovered sends exactly what the client misses; otherwise NotRecovered sends all that is held"
          <| Prop.forAll (Arb.fromGen (Gen.zip windows positions)) (fun (w, since) ->
              let p = plan w (ValueSome since)
              let held = [ w.FirstOffset .. w.LastOffset ]

              // What a client at `since` misses, when `since` is a position of this history.
              let missed =
                  if since.Epoch = w.Epoch && since.Offset <= w.LastOffset then
                      Some [ since.Offset + 1UL .. w.LastOffset ]
                  else
                      None

              Expect.equal p.Position w.Position "subscribed carries the channel's position"

              match missed with
              | Some missed when missed |> List.forall (fun o -> List.contains o held) ->
                  Expect.equal p.Recovery Recovery.Recovered "everything missed is held"
                  Expect.equal (offsetsSent p) missed "exactly what was missed"
              | _ ->
                  Expect.equal p.Recovery Recovery.NotRecovered "something missed is gone, or the position is not of this history"
                  Expect.equal (offsetsSent p) held "everything held")

          property "pages concatenate to the whole plan"
          <| Prop.forAll (Arb.fromGen (Gen.zip3 windows positions (Gen.choose (1, 5)))) (fun (w, since, size) ->
              let whole = plan w (ValueSome since)
              // Each page's client resubscribes from the page's last offset; what follows is Recovered.
              let rec pages (from: ChannelPosition voption) acc guard =
                  let paged = page size (plan w from)
                  let acc = acc @ offsetsSent paged

                  if paged.Through >= w.LastOffset || paged.Count = 0UL || guard = 0 then
                      acc, paged
                  else
                      pages (ValueSome(at w.Epoch paged.Through)) acc (guard - 1)

              let sent, lastPage = pages (ValueSome since) [] 100
              Expect.equal sent (offsetsSent whole) "same offsets, in order"
              Expect.isTrue (lastPage.Count <= uint64 size) "each page within the size") ]

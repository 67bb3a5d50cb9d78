module Realtime.Protocol.Tests.BackpressureTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Backpressure
open Realtime.Protocol.Tests.Properties

let private small =
    { SoftLimit = 100L
      HardLimit = 1000L
      CloseOnLimit = false }

let private offerTo limits state bytes =
    let struct (state', result) = offer limits state bytes
    state', result

let private flush limits state bytes =
    let struct (state', result) = flushed limits state bytes
    state', result

/// Offers each size in turn, returning the final state and the last result.
let private offerAll limits state sizes =
    sizes
    |> List.fold (fun (s, _) bytes -> offerTo limits s bytes) (state, Sent 0)

/// Bytes allocated by 1000 offer/flush pairs after a warm-up.
let private measureAccounting () =
    let run (s: State) =
        let struct (s, _) = offer small s 150
        let struct (s, _) = flushed small s 150
        s

    let mutable s = initial
    let mutable i = 0

    while i < 1000 do
        s <- run s
        i <- i + 1

    let before = GC.GetAllocatedBytesForCurrentThread()
    i <- 0

    while i < 1000 do
        s <- run s
        i <- i + 1

    GC.GetAllocatedBytesForCurrentThread() - before

[<Tests>]
let examples =
    testList
        "Backpressure: offer / flushed"
        [ test "defaults are 64 KiB soft, 16 MiB hard, drop on limit, and valid" {
              Expect.equal defaults.SoftLimit 65536L "soft"
              Expect.equal defaults.HardLimit 16777216L "hard"
              Expect.isFalse defaults.CloseOnLimit "drop"
              Expect.equal (validate defaults) (Ok defaults) "valid"
          }

          test "validation reports the first problem with a stable code" {
              let check limits expected code =
                  match validate limits with
                  | Error e ->
                      Expect.equal e expected "error"
                      Expect.equal e.Code code "code"
                      Expect.isNotEmpty e.Message "message"
                  | Ok _ -> failtest "expected an error"

              check { small with SoftLimit = -1L } NegativeSoftLimit "negative-soft-limit"
              check { small with HardLimit = -1L } NegativeHardLimit "negative-hard-limit"
              check { small with SoftLimit = 1001L } SoftLimitAboveHardLimit "soft-limit-above-hard-limit"
              Expect.isOk (validate { small with SoftLimit = 1000L }) "soft = hard is fine"
              Expect.isOk (validate { small with SoftLimit = 0L; HardLimit = 0L }) "zero is fine"
          }

          test "a send below the soft limit is Sent with its size" {
              let s, r = offerTo small initial 40
              Expect.equal r (Sent 40) "sent"
              Expect.equal s.Buffered 40L "buffered"
              Expect.isFalse s.InBackpressure "no backpressure"
          }

          test "reaching exactly the soft limit is still Sent; one byte more is Backpressure" {
              let s, r = offerAll small initial [ 60; 40 ]
              Expect.equal r (Sent 40) "at the soft limit"
              Expect.equal s.Buffered 100L "buffered"
              let s, r = offerTo small s 1
              Expect.equal r Backpressure "over"
              Expect.isTrue s.InBackpressure "episode"
              Expect.equal s.Buffered 101L "queued"
              let s, r = offerTo small s 1
              Expect.equal r Backpressure "continues"
              Expect.equal s.Buffered 102L "queued"
          }

          test "reaching exactly the hard limit is accepted; one byte more is dropped" {
              let s, r = offerTo small initial 1000
              Expect.equal r Backpressure "exactly hard is queued"
              Expect.equal s.Buffered 1000L "full"
              let s', r = offerTo small s 1
              Expect.equal r (Dropped OverLimit) "over hard"
              Expect.equal s' s "unchanged"
              let _, r = offerTo small s 0
              Expect.equal r Backpressure "an empty send still fits"
          }

          test "the hard check is buffered + bytes > hard" {
              let s, _ = offerTo small initial 600
              let _, r = offerTo small s 401
              Expect.equal r (Dropped OverLimit) "601 + 400 would be 1001"
              let s', r = offerTo small s 400
              Expect.equal r Backpressure "600 + 400 = 1000 fits"
              Expect.equal s'.Buffered 1000L "buffered"
          }

          test "a message larger than the hard limit is dropped even on an empty buffer" {
              let s, r = offerTo small initial 1001
              Expect.equal r (Dropped OverLimit) "too big"
              Expect.equal s initial "unchanged"
          }

          test "with CloseOnLimit, crossing the hard limit asks the host to close" {
              let limits = { small with CloseOnLimit = true }
              let s, _ = offerTo limits initial 900
              let s', r = offerTo limits s 101
              Expect.equal r CloseForLimit "close"
              Expect.equal s'.Buffered 900L "not queued"
          }

          test "a negative length is dropped as invalid" {
              let s, r = offerTo small initial -1
              Expect.equal r (Dropped InvalidLength) "invalid"
              Expect.equal s initial "unchanged"
          }

          test "an empty message is Sent 0" {
              let _, r = offerTo small initial 0
              Expect.equal r (Sent 0) "empty"
          }

          test "Drain fires exactly once, when the buffer falls back to the soft limit" {
              let s, r = offerTo small initial 300
              Expect.equal r Backpressure "episode starts"
              let s, d = flush small s 150
              Expect.equal d NoDrain "150 buffered, still over"
              let s, d = flush small s 50
              Expect.equal d Drain "exactly at the soft limit"
              Expect.isFalse s.InBackpressure "episode over"
              let s, d = flush small s 50
              Expect.equal d NoDrain "no second drain"
              Expect.equal s.Buffered 50L "buffered"
          }

          test "each episode drains once" {
              let s, _ = offerTo small initial 200
              let s, d1 = flush small s 200
              let s, _ = offerTo small s 200
              let _, d2 = flush small s 200
              Expect.equal [ d1; d2 ] [ Drain; Drain ] "one per episode"
          }

          test "flushing without backpressure never drains" {
              let s, _ = offerTo small initial 80
              let s, d = flush small s 80
              Expect.equal d NoDrain "no episode"
              Expect.equal s.Buffered 0L "empty"
          }

          test "flushing more than buffered clamps at zero, a negative flush counts as zero" {
              let s, _ = offerTo small initial 30
              let s', _ = flush small s 100
              Expect.equal s'.Buffered 0L "clamped"
              let s'', _ = flush small s -5
              Expect.equal s''.Buffered 30L "unchanged"
          }

          test "resize corrects a message queued at a bound of its size, keeping the episode open" {
              let s, r = offerTo small initial 500
              Expect.equal r Backpressure "queued at the bound"
              let s = resize s 500 80
              Expect.equal s.Buffered 80L "the real size"
              Expect.isTrue s.InBackpressure "the episode is still open"
              let s, d = flush small s 0
              Expect.equal d Drain "the next flush ends it"
              Expect.equal (resize s 10 -5).Buffered 70L "a negative size counts as zero"
              Expect.equal (resize s 500 0).Buffered 0L "clamped at zero"
          }

          test "queued results and drop codes" {
              Expect.isTrue (isQueued (Sent 1)) "sent"
              Expect.isTrue (isQueued Backpressure) "backpressure"
              Expect.isFalse (isQueued (Dropped OverLimit)) "dropped"
              Expect.isFalse (isQueued CloseForLimit) "closing"

              Expect.equal
                  (List.map dropReasonCode [ ConnectionClosed; OverLimit; InvalidLength ])
                  [ "connection-closed"; "over-limit"; "invalid-length" ]
                  "codes"
          }

          test "a huge hard limit does not overflow" {
              let limits =
                  { SoftLimit = Int64.MaxValue - 10L
                    HardLimit = Int64.MaxValue
                    CloseOnLimit = false }

              let s, r = offerAll limits initial (List.replicate 5 Int32.MaxValue)
              Expect.equal r (Sent Int32.MaxValue) "still sent"
              Expect.equal s.Buffered (5L * int64 Int32.MaxValue) "summed"
          }

          test "offer and flushed allocate nothing" { Expect.equal (measureAccounting ()) 0L "no allocation" } ]

// ---- properties over random operation sequences ----------------------------------------------

type private Op =
    | Offer of int
    | Flush of int

type private Outcome =
    | Offered of SendResult
    | Flushed of FlushResult

type private Step =
    { Op: Op
      Before: State
      After: State
      Outcome: Outcome }

let private genLimits =
    gen {
        let! soft = Gen.choose (0, 300)
        let! extra = Gen.choose (0, 500)
        let! closeOnLimit = Gen.elements [ false; true ]

        return
            { SoftLimit = int64 soft
              HardLimit = int64 (soft + extra)
              CloseOnLimit = closeOnLimit }
    }

let private genOp =
    Gen.frequency
        [ 12, Gen.map Offer (Gen.choose (0, 200))
          8, Gen.map Flush (Gen.choose (0, 300)) ]

let private arbRun =
    Arb.fromGen (Gen.zip genLimits (Gen.listOf genOp))

let private run limits ops =
    ops
    |> List.mapFold
        (fun state op ->
            let after, outcome =
                match op with
                | Offer n ->
                    let s, r = offerTo limits state n
                    s, Offered r
                | Flush n ->
                    let s, r = flush limits state n
                    s, Flushed r

            { Op = op
              Before = state
              After = after
              Outcome = outcome },
            after)
        initial
    |> fst

let private forAllRuns (check: Limits -> Step list -> unit) =
    Prop.forAll arbRun (fun (limits, ops) -> check limits (run limits ops))

[<Tests>]
let properties =
    testList
        "Backpressure: properties"
        [ property "buffered is never negative and never above the hard limit"
          <| forAllRuns (fun limits steps ->
              for step in steps do
                  Expect.isGreaterThanOrEqual step.After.Buffered 0L "non-negative"
                  Expect.isLessThanOrEqual step.After.Buffered limits.HardLimit "bounded")

          property "buffered is the queued bytes minus the flushed bytes, clamped at zero"
          <| forAllRuns (fun _ steps ->
              steps
              |> List.fold
                  (fun expected step ->
                      let expected =
                          match step.Op, step.Outcome with
                          | Offer n, Offered r when isQueued r -> expected + int64 n
                          | Flush n, _ -> max 0L (expected - int64 n)
                          | _ -> expected

                      Expect.equal step.After.Buffered expected (sprintf "after %A" step.Op)
                      expected)
                  0L
              |> ignore)

          property "Drain comes only after Backpressure, exactly once per episode"
          <| forAllRuns (fun limits steps ->
              steps
              |> List.fold
                  (fun episodeOpen step ->
                      match step.Outcome with
                      | Offered Backpressure -> true
                      | Flushed Drain ->
                          Expect.isTrue episodeOpen "a drain ends an open episode"
                          false
                      | Flushed NoDrain ->
                          let shouldDrain =
                              episodeOpen && step.After.Buffered <= limits.SoftLimit

                          Expect.isFalse shouldDrain "a drain is due"
                          episodeOpen
                      | _ -> episodeOpen)
                  false
              |> ignore)

          property "Dropped and CloseForLimit never change buffered"
          <| forAllRuns (fun _ steps ->
              for step in steps do
                  match step.Outcome with
                  | Offered(Dropped _ | CloseForLimit) ->
                      Expect.equal step.After.Buffered step.Before.Buffered "unchanged"
                  | _ -> ())

          property "each result agrees with the limits"
          <| forAllRuns (fun limits steps ->
              for step in steps do
                  match step.Op, step.Outcome with
                  | Offer n, Offered r ->
                      let total = step.Before.Buffered + int64 n

                      let expected =
                          if total > limits.HardLimit then
                              if limits.CloseOnLimit then CloseForLimit else Dropped OverLimit
                          elif total > limits.SoftLimit then
                              Backpressure
                          else
                              Sent n

                      Expect.equal r expected (sprintf "offer %d on %d" n step.Before.Buffered)
                  | _ -> ())

          property "arbitrary limits and sizes never throw and never go negative"
          <| Prop.forAll
              (Arb.fromGen (
                  Gen.zip3
                      (ArbMap.defaults |> ArbMap.generate<int64 * int64 * bool>)
                      (Gen.listOf (Gen.zip (ArbMap.defaults |> ArbMap.generate<bool>) (ArbMap.defaults |> ArbMap.generate<int>)))
                      (Gen.elements [ 0; 1; Int32.MaxValue; Int32.MinValue; -1 ])
              ))
              (fun ((soft, hard, closeOnLimit), ops, extreme) ->
                  let limits =
                      { SoftLimit = soft
                        HardLimit = hard
                        CloseOnLimit = closeOnLimit }

                  let final =
                      (ops @ [ true, extreme; false, extreme ])
                      |> List.fold
                          (fun state (isOffer, n) ->
                              let state' =
                                  if isOffer then fst (offerTo limits state n) else fst (flush limits state n)

                              Expect.isGreaterThanOrEqual state'.Buffered 0L "non-negative"
                              state')
                          initial

                  Expect.isGreaterThanOrEqual final.Buffered 0L "non-negative") ]

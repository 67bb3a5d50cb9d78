module Realtime.Protocol.Tests.ChannelHistoryTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.ChannelHistory
open Realtime.Protocol.Tests.Properties

let private retention count bytes age =
    { MaxCount = count
      MaxBytes = bytes
      MaxAge = age }

/// A host's history as the tests keep it: the window and the entries (offset, bytes, time) it
/// holds, oldest first.
type private Held = { Window: Window; Entries: (uint64 * int * int64) list }

let private appendTo (held: Held) (bytes: int) (time: int64) =
    let struct (window, position) = append held.Window bytes
    { Window = window; Entries = held.Entries @ [ position.Offset, bytes, time ] }

/// Calls `trim` until it answers Keep, dropping the oldest entry on each Trim; the reasons in order.
let private trimAll (retention: Retention) (now: int64) (held: Held) =
    let rec loop (held: Held) reasons =
        match held.Entries with
        | [] ->
            let struct (_, step) = trim retention now held.Window 0 0L
            Expect.equal step Keep "an empty window keeps"
            held, List.rev reasons
        | (_, bytes, time) :: rest ->
            match trim retention now held.Window bytes time with
            | struct (window, Trim reason) -> loop { Window = window; Entries = rest } (reason :: reasons)
            | struct (window, Keep) ->
                Expect.equal window held.Window "Keep leaves the window as it was"
                held, List.rev reasons

    loop held []

let private emptyHeld epoch = { Window = empty epoch; Entries = [] }

/// Bytes allocated by 1000 append-and-trim steps of a full history, after a warm-up.
let private measureAppendAndTrim () =
    let limits = retention 8 1_000_000L 1_000_000L

    let step (window: Window) (i: int64) =
        let struct (window, _) = append window 100
        let struct (window, step) = trim limits i window 100 0L
        let struct (window, _) = trim limits i window 100 0L
        ignore step
        window

    let mutable window = empty "e"
    let mutable i = 0L

    while i < 1000L do
        window <- step window i
        i <- i + 1L

    let before = GC.GetAllocatedBytesForCurrentThread()
    i <- 0L

    while i < 1000L do
        window <- step window i
        i <- i + 1L

    GC.GetAllocatedBytesForCurrentThread() - before

[<Tests>]
let examples =
    testList
        "Channels: retention"
        [ test "defaults are 1000 publications, 4 MiB, 5 minutes, and valid" {
              Expect.equal defaults.MaxCount 1000 "count"
              Expect.equal defaults.MaxBytes (4L * 1024L * 1024L) "bytes"
              Expect.equal defaults.MaxAge 300_000L "age"
              Expect.equal (validate defaults) (Ok defaults) "valid"
          }

          test "validation reports the first negative bound with a stable code" {
              let check r expected (code: string) =
                  match validate r with
                  | Error e ->
                      Expect.equal e expected "error"
                      Expect.equal e.Code code "code"
                      Expect.isNotEmpty e.Message "message"
                  | Ok _ -> failtest "expected an error"

              check (retention -1 -1L -1L) NegativeCount "negative-count"
              check (retention 0 -1L -1L) NegativeBytes "negative-bytes"
              check (retention 0 0L -1L) NegativeAge "negative-age"
              Expect.isOk (validate (retention 0 0L 0L)) "zero bounds are valid (nothing is kept)"
          }

          test "a new history holds nothing and is at offset 0 of its epoch" {
              let w = empty "k3J9"
              Expect.equal w.Epoch "k3J9" "epoch"
              Expect.equal (w.FirstOffset, w.LastOffset, w.Count, w.Bytes) (1UL, 0UL, 0UL, 0L) "numbers"
              Expect.isTrue w.IsEmpty "empty"
              Expect.equal w.Position { Epoch = "k3J9"; Offset = 0UL } "position"
          }

          test "appending numbers publications 1, 2, 3 in the window's epoch and sums their bytes" {
              let struct (w, p1) = append (empty "e") 10
              let struct (w, p2) = append w 20
              let struct (w, p3) = append w 30
              Expect.equal [ p1; p2; p3 ] [ for o in 1UL .. 3UL -> { Epoch = "e"; Offset = o } ] "positions"
              Expect.equal (w.FirstOffset, w.LastOffset, w.Count, w.Bytes) (1UL, 3UL, 3UL, 60L) "numbers"
              Expect.equal w.Position p3 "the position is the last publication's"
              Expect.isTrue (holds w 1UL && holds w 3UL) "holds 1 and 3"
              Expect.isFalse (holds w 0UL || holds w 4UL) "not 0 or 4"
          }

          test "a negative size counts as zero bytes" {
              let struct (w, _) = append (empty "e") -5
              Expect.equal w.Bytes 0L "bytes"
          }

          test "trimming by count removes the oldest until MaxCount are held" {
              let held =
                  [ 1..5 ] |> List.fold (fun h i -> appendTo h 1 (int64 i)) (emptyHeld "e")

              let held, reasons = trimAll (retention 3 1000L 1000L) 5L held
              Expect.equal reasons [ OverCount; OverCount ] "two trimmed for count"
              Expect.equal (held.Window.FirstOffset, held.Window.LastOffset) (3UL, 5UL) "3 ..= 5 held"
              Expect.equal held.Window.Bytes 3L "their bytes"
          }

          test "trimming by bytes removes the oldest until at most MaxBytes are held" {
              let held =
                  [ 40; 30; 20; 10 ] |> List.fold (fun h b -> appendTo h b 0L) (emptyHeld "e")

              let held, reasons = trimAll (retention 100 35L 1000L) 0L held
              Expect.equal reasons [ OverBytes; OverBytes ] "two trimmed for bytes"
              Expect.equal (held.Window.FirstOffset, held.Window.Bytes) (3UL, 30L) "3 ..= 4, 30 bytes"
          }

          test "trimming by age removes publications older than MaxAge; one exactly MaxAge old stays" {
              let held =
                  [ 0L; 10L; 20L ] |> List.fold (fun h t -> appendTo h 1 t) (emptyHeld "e")

              let held, reasons = trimAll (retention 100 1000L 10L) 20L held
              Expect.equal reasons [ OverAge ] "the one 20 ms old"
              Expect.equal held.Window.FirstOffset 2UL "the one 10 ms old stays"
              let held, reasons = trimAll (retention 100 1000L 10L) 1000L held
              Expect.equal reasons [ OverAge; OverAge ] "all of them, later"
              Expect.isTrue held.Window.IsEmpty "nothing held"
              Expect.equal held.Window.LastOffset 3UL "the last offset stays: the next is 4"
              Expect.equal held.Window.Bytes 0L "no bytes"
          }

          test "count is checked before bytes, bytes before age" {
              let held = appendTo (appendTo (emptyHeld "e") 50 0L) 50 0L
              let _, reasons = trimAll (retention 1 10L 0L) 100L held
              Expect.equal reasons [ OverCount; OverBytes ] "count first, then bytes for the last one"
          }

          test "with MaxCount 0 a publication is trimmed as soon as it is appended, its offset still counts" {
              let held, reasons = trimAll (retention 0 1000L 1000L) 0L (appendTo (emptyHeld "e") 5 0L)
              Expect.equal reasons [ OverCount ] "trimmed"
              let held = appendTo held 5 0L
              Expect.equal held.Window.LastOffset 2UL "the next offset is 2"
          }

          test "a clock that goes back does not trim by age" {
              let _, reasons = trimAll (retention 10 1000L 5L) -100L (appendTo (emptyHeld "e") 1 50L)
              Expect.isEmpty reasons "kept"
          }

          test "restore describes a history the host holds, bringing inputs into range" {
              let w = restore "e" 4UL 9UL 60L
              Expect.equal (w.FirstOffset, w.LastOffset, w.Count, w.Bytes) (4UL, 9UL, 6UL, 60L) "as given"
              let w = restore "e" 0UL 3UL 10L
              Expect.equal w.FirstOffset 1UL "first offset at least 1"
              let w = restore "e" 20UL 9UL 10L
              Expect.equal (w.FirstOffset, w.Count, w.Bytes) (10UL, 0UL, 0L) "past the last: nothing held"
              let w = restore "e" 1UL 2UL -3L
              Expect.equal w.Bytes 0L "bytes at least 0"
              let struct (w, p) = append (restore "e" 5UL 9UL 10L) 1
              Expect.equal p.Offset 10UL "appending continues after the last offset"
              Expect.equal w.Count 6UL "count"
          }

          test "append and trim allocate nothing" {
              Expect.equal (measureAppendAndTrim ()) 0L "bytes allocated by 1000 append-and-trim steps"
          } ]

/// One step a host takes: append a publication of this many bytes, or let time pass.
type private HostStep =
    | Publish of bytes: int
    | Wait of milliseconds: int64

let private hostSteps =
    Gen.frequency
        [ 4, Gen.choose (0, 40) |> Gen.map Publish
          1, Gen.choose (0, 30) |> Gen.map (int64 >> Wait) ]
    |> Gen.listOf

let private retentions =
    gen {
        let! count = Gen.choose (0, 8)
        let! bytes = Gen.choose (0, 120)
        let! age = Gen.choose (0, 60)
        return retention count (int64 bytes) (int64 age)
    }

/// What retention should hold at `now`: the longest run of the latest publications (offset, bytes,
/// time) within every bound. Trimming only ever removes the oldest, and a run that breaks a bound
/// keeps breaking it as publications are added and time passes, so this is what a host holds.
let private expectedHeld (r: Retention) (now: int64) (all: (uint64 * int * int64) list) =
    let fits (run: (uint64 * int * int64) list) =
        run.Length <= r.MaxCount
        && (run |> List.sumBy (fun (_, b, _) -> int64 b)) <= r.MaxBytes
        && run |> List.forall (fun (_, _, t) -> now - t <= r.MaxAge)

    [ 0 .. all.Length ] |> List.map (fun skip -> List.skip skip all) |> List.find fits

[<Tests>]
let properties =
    testList
        "Channels: retention (properties)"
        [ property "a host that trims after each step holds exactly the latest publications within every bound"
          <| Prop.forAll (Arb.fromGen (Gen.zip retentions hostSteps)) (fun (r, steps) ->
              let mutable now = 0L
              let mutable held = emptyHeld "e"
              let mutable all = []

              for step in steps do
                  match step with
                  | Publish bytes ->
                      held <- appendTo held bytes now
                      all <- all @ [ held.Window.LastOffset, bytes, now ]
                  | Wait ms -> now <- now + ms

                  let trimmed, _ = trimAll r now held
                  held <- trimmed
                  let expected = expectedHeld r now all
                  Expect.equal held.Entries expected "held"
                  let w = held.Window
                  Expect.equal w.LastOffset (uint64 all.Length) "one offset per publication, no gaps"
                  Expect.equal w.Count (uint64 expected.Length) "count"
                  Expect.equal w.Bytes (expected |> List.sumBy (fun (_, b, _) -> int64 b)) "bytes"

                  match expected with
                  | (first, _, _) :: _ -> Expect.equal w.FirstOffset first "first offset"
                  | [] -> Expect.isTrue w.IsEmpty "empty")

          property "any inputs give a window within its invariants, never an exception"
          <| Prop.forAll
              (Arb.fromGen (
                  Gen.zip3
                      (Gen.zip3 (Gen.choose (0, 50)) (Gen.choose (0, 50)) (Gen.choose (-10, 10)))
                      (Gen.zip3 (Gen.choose (-1, 5)) (Gen.choose (-10, 100)) (Gen.choose (-10, 100)))
                      (Gen.zip (Gen.choose (-10, 50)) (Gen.choose (-100, 100)))
              ))
              (fun ((first, last, bytes), (count, maxBytes, age), (oldestBytes, oldestTime)) ->
                  let w = restore "e" (uint64 first) (uint64 last) (int64 bytes)
                  let r = retention count (int64 maxBytes) (int64 age)
                  let struct (w2, _) = trim r 0L w oldestBytes (int64 oldestTime)
                  let struct (w3, _) = append w2 oldestBytes

                  for x in [ w; w2; w3 ] do
                      Expect.isTrue (x.FirstOffset >= 1UL && x.FirstOffset <= x.LastOffset + 1UL) "first in range"
                      Expect.isTrue (x.Bytes >= 0L) "bytes non-negative"
                      Expect.equal x.Count (x.LastOffset + 1UL - x.FirstOffset) "count") ]

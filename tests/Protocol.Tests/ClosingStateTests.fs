/// The closing state lives in the core: the codes and reasons sent and received, and the
/// transport's end (RFC 6455 §7.1.5: 1006 when it ended without a close frame).
module Realtime.Protocol.Tests.ClosingStateTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Tests.Properties
open Realtime.Protocol.Tests.ClientFrames

/// Keep-alive options: 1 s idle timeout, 0.5 s close timeout.
let private keepAlive = { Connection.defaultOptions with IdleTimeout = 1000L; CloseTimeout = 500L }

let private fresh () = Connection.create (keepAlive, 0L)

let private feed (connection: Connection) (bytes: byte[]) : Connection =
    let driver = Driver(keepAlive, 0L)
    driver.Set connection
    driver.Feed(bytes, 0L)
    driver.Connection

let private closeWith (code: uint16) (reason: string) (connection: Connection) : Connection =
    let struct (next, _) = Connection.close (connection, code, reason, 0L)
    next

let private tickAt (now: int64) (connection: Connection) : Connection =
    let struct (next, _) = Connection.tick (connection, now)
    next

let private abnormal = struct (1006us, "")

/// What a connection may go through, for the properties.
type private Step =
    | PeerText
    | PeerClose of code: uint16 * reason: string
    | PeerBreaksProtocol
    | OurClose of code: uint16 * reason: string
    | HostFailsMessage of error: ProtocolError
    | InflatedNotText
    | Tick of after: int64
    | TransportEnded
    | WritingStopped

let private stepGen =
    let codeGen = Gen.elements [ 1000us; 1001us; 1003us; 1008us; 1011us; 3000us; 4999us ]
    let reasonGen = Gen.elements [ ""; "bye"; "server shutdown"; "héllo" ]
    Gen.frequency [
        3, Gen.constant PeerText
        2, Gen.map2 (fun c r -> PeerClose(c, r)) codeGen reasonGen
        1, Gen.constant PeerBreaksProtocol
        2, Gen.map2 (fun c r -> OurClose(c, r)) codeGen reasonGen
        1, Gen.elements [ HostFailsMessage InvalidCompressedData; HostFailsMessage(MessageTooBig 5L) ]
        1, Gen.constant InflatedNotText
        3, Gen.choose (0, 1200) |> Gen.map (int64 >> Tick)
        1, Gen.constant TransportEnded
        1, Gen.constant WritingStopped
    ]

/// Applies a step at time `now`; the connection negotiated permessage-deflate, so that inflated bytes apply.
let private apply (now: int64) (connection: Connection) (step: Step) : Connection =
    match step with
    | PeerText -> feed connection (text "hi")
    | PeerClose(code, reason) -> feed connection (close code reason)
    | PeerBreaksProtocol -> feed connection (hex "81 00")
    | OurClose(code, reason) ->
        let struct (next, _) = Connection.close (connection, code, reason, now)
        next
    | HostFailsMessage error ->
        let struct (next, _) = Connection.failMessage (connection, error)
        next
    | InflatedNotText ->
        let struct (next, _) = Connection.inflated (feed connection (clientFrameRsv true 4uy 1uy key [||]), ReadOnlySpan(hex "ff"), true)
        next
    | Tick _ -> tickAt now connection
    | TransportEnded -> Connection.transportEnded connection
    | WritingStopped -> Connection.writingStopped connection

/// Runs the steps, with time passing as Tick says, and returns every connection value on the way.
let private run (steps: Step list) : Connection list =
    let start = Connection.create ({ keepAlive with PerMessageDeflate = true }, 0L)
    steps
    |> List.scan (fun (now, connection) step ->
        let now = match step with Tick after -> now + after | _ -> now
        now, apply now connection step) (0L, start)
    |> List.map snd

let private stepsGen = Gen.listOf stepGen |> Gen.map (List.truncate 16)

[<Tests>]
let closeOutcomeTests =
    testList "Close outcome: what the application's Close handler is told" [
        testCase "the peer's close first: its code and reason" <| fun () ->
            let closed = feed (fresh ()) (close 4001us "bye now")
            Expect.equal (Connection.closeOutcome closed) (struct (4001us, "bye now")) "the peer's"
            Expect.equal (Connection.closeOutcome (Connection.transportEnded closed)) (struct (4001us, "bye now")) "after the transport ended"
        testCase "an empty close from the peer: 1005" <| fun () ->
            Expect.equal (Connection.closeOutcome (feed (fresh ()) (clientFrame true Opcode.Close key [||]))) (struct (1005us, "")) "1005"
        testCase "our close first: our code and reason, whatever the peer answers" <| fun () ->
            let closing = fresh () |> closeWith 4000us "done"
            Expect.equal (Connection.closeOutcome closing) (struct (4000us, "done")) "ours while waiting"
            let answered = feed closing (close 1000us "")
            Expect.equal (Connection.closeStatus answered) (struct (1000us, "")) "the peer answered 1000"
            Expect.equal (Connection.closeOutcome answered) (struct (4000us, "done")) "still ours"
        testCase "our close with a long reason: the reason as asked, though the frame carried 123 bytes of it" <| fun () ->
            let reason = String.replicate 100 "é"
            Expect.equal (Connection.closeOutcome (fresh () |> closeWith 1000us reason)) (struct (1000us, reason)) "as asked"
        testCase "a close code that may not be sent records nothing" <| fun () ->
            Expect.equal (Connection.closeOutcome (fresh () |> closeWith 1006us "no")) abnormal "nothing sent"
        testCase "the peer broke the protocol: the failure's code and message" <| fun () ->
            let failed = feed (fresh ()) (hex "81 00")
            Expect.equal (Connection.closeOutcome failed) (struct (1002us, "client frames must be masked")) "1002"
        testCase "the host failed a message: its code and message" <| fun () ->
            let struct (failed, _) = Connection.failMessage (fresh (), InvalidCompressedData)
            Expect.equal (Connection.closeOutcome failed) (struct (1007us, "invalid compressed data")) "1007"
        testCase "the core refused an inflated message: its code and message" <| fun () ->
            let options = { keepAlive with PerMessageDeflate = true; MaxMessageSize = 4L }
            let struct (received, _, _) = Connection.receive (Connection.create (options, 0L), ReadOnlySpan(clientFrameRsv true 4uy 2uy key [||]), 0L)
            let struct (failed, _) = Connection.inflated (received, ReadOnlySpan(Array.zeroCreate 5), true)
            Expect.equal (Connection.closeOutcome failed) (struct (1009us, "message over 4 bytes")) "1009"
        testCase "a failure after our close keeps our code" <| fun () ->
            let failed = feed (fresh () |> closeWith 3000us "moving") (hex "81 00")
            Expect.isTrue failed.IsClosed "failed"
            Expect.equal (Connection.closeOutcome failed) (struct (3000us, "moving")) "ours"
        testCase "the idle close: 1001, idle timeout" <| fun () ->
            let timedOut = fresh () |> tickAt 1000L |> tickAt 2000L
            Expect.isTrue timedOut.IsClosed "timed out"
            Expect.equal (Connection.closeOutcome timedOut) (struct (1001us, "idle timeout")) "1001"
        testCase "a closing handshake the peer never finished: our code" <| fun () ->
            let timedOut = fresh () |> closeWith 1000us "bye" |> tickAt 500L
            Expect.isTrue timedOut.IsClosed "timed out"
            Expect.equal (Connection.closeOutcome timedOut) (struct (1000us, "bye")) "ours"
        testCase "the transport ended without a close frame: 1006" <| fun () ->
            Expect.equal (Connection.closeOutcome (fresh ())) abnormal "new"
            Expect.equal (Connection.closeOutcome (Connection.transportEnded (feed (fresh ()) (text "hi")))) abnormal "ended"
            Expect.equal (Connection.closeOutcome (Connection.writingStopped (fresh ()))) abnormal "a write failed"
        property "once set, the outcome never changes" <| Prop.forAll (Arb.fromGen stepsGen) (fun steps ->
            let outcomes = run steps |> List.map Connection.closeOutcome
            let firstSet = outcomes |> List.tryFindIndex (fun outcome -> outcome <> abnormal)
            match firstSet with
            | None -> true
            | Some i -> outcomes |> List.skip i |> List.forall (fun outcome -> outcome = outcomes[i]))
        property "the outcome is set by the first close frame either side sends, or the first failure" <| Prop.forAll (Arb.fromGen stepsGen) (fun steps ->
            let connections = run steps
            let outcome = Connection.closeOutcome (List.last connections)
            // The step after which the connection first was closing (a close frame went or came).
            match connections |> List.tryFindIndex (fun connection -> connection.IsClosing || connection.IsClosed) with
            | None -> outcome = abnormal
            | Some i -> outcome = Connection.closeOutcome connections[i])
    ]

[<Tests>]
let transportEndTests =
    testList "Transport end" [
        testCase "after transportEnded nothing is sent, read, closed or timed" <| fun () ->
            let ended = Connection.transportEnded (fresh ())
            Expect.isTrue ended.HasEnded "ended"
            Expect.isFalse ended.CanSend "no data"
            Expect.isFalse ended.ShouldRead "no reading"
            Expect.isTrue ended.IsClosed "closed"
            Expect.isTrue ended.CanWrite "what is queued may still be written"
            let struct (_, request) = Connection.close (ended, 1000us, "", 0L)
            Expect.equal request AlreadyClosing "no close frame"
            Expect.equal (Connection.nextDeadline ended) Int64.MaxValue "no deadline"
            let struct (_, action) = Connection.tick (ended, 5000L)
            Expect.equal action NoAction "no ping, no idle close"
            let bytes = Array.append (text "late") (ping [||])
            let struct (_, consumed, event) = Connection.receive (ended, ReadOnlySpan bytes, 0L)
            Expect.equal (consumed, event) (bytes.Length, NeedMoreData) "nothing read"
            let struct (_, closeFrame) = Connection.failMessage (ended, InvalidCompressedData)
            Expect.isEmpty closeFrame "no close frame"
            Expect.equal (Connection.closeOutcome ended) abnormal "1006"
        testCase "writingStopped: nothing more is written, read or sent" <| fun () ->
            let stopped = Connection.writingStopped (fresh ())
            Expect.isFalse stopped.CanWrite "no writing"
            Expect.isFalse stopped.CanSend "a send could never reach the peer"
            Expect.isFalse stopped.ShouldRead "no reading"
            Expect.isFalse stopped.HasEnded "the host has not finished it yet"
        testCase "a running connection can send, write and read" <| fun () ->
            let connection = fresh ()
            Expect.isTrue connection.CanSend "send"
            Expect.isTrue connection.CanWrite "write"
            Expect.isTrue connection.ShouldRead "read"
            Expect.isFalse connection.HasEnded "running"
        testCase "after our close frame data is not sent, but the loop reads on to the peer's close" <| fun () ->
            let closing = fresh () |> closeWith 1000us ""
            Expect.isFalse closing.CanSend "no data after a close frame"
            Expect.isTrue closing.ShouldRead "reads on"
            Expect.isFalse (feed closing (close 1000us "")).ShouldRead "the handshake is complete"
        testCase "both transitions happen once" <| fun () ->
            let ended = Connection.transportEnded (fresh ())
            Expect.equal (Connection.transportEnded ended) ended "ended once"
            let stopped = Connection.writingStopped ended
            Expect.equal (Connection.writingStopped stopped) stopped "stopped once"
        property "after transportEnded, whatever happens, nothing is sendable or read and the outcome stays" <| Prop.forAll (Arb.fromGen (Gen.zip stepsGen stepsGen)) (fun (before, after) ->
            let ended = List.last (run (before @ [ TransportEnded ]))
            let outcome = Connection.closeOutcome ended
            let later = run (before @ [ TransportEnded ] @ after) |> List.skip (before.Length + 1)
            later
            |> List.forall (fun connection ->
                not connection.CanSend && not connection.ShouldRead && connection.HasEnded
                && Connection.closeOutcome connection = outcome))
    ]

module Realtime.Protocol.Tests.SendTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Backpressure
open Realtime.Protocol.Tests.Properties
open Realtime.Protocol.Tests.ClientFrames

let private small =
    { SoftLimit = 100L
      HardLimit = 1000L
      CloseOnLimit = false }

let private unlimited =
    { SoftLimit = Int64.MaxValue
      HardLimit = Int64.MaxValue
      CloseOnLimit = false }

let private fresh () = Connection.create (Connection.defaultOptions, 0L)

/// One send step; returns the next connection, the verdict and the header it wrote.
let private sendOn limits (connection: Connection) kind length compressed =
    let header = Array.zeroCreate<byte> Frame.MaxHeaderSize
    let mutable next = connection
    let struct (verdict, headerLength) = Connection.send (&next, limits, kind, length, compressed, Span header)
    next, verdict, Array.sub header 0 headerLength

let private flushOn limits (connection: Connection) bytes =
    let mutable next = connection
    let result = Connection.flushed (&next, limits, bytes)
    next, result

let private closeLocally (connection: Connection) =
    let struct (next, _) = Connection.close (connection, CloseCode.NormalClosure, "", 0L)
    next

/// The frame header the peer reads (RFC 6455 §5.2), decoded as a client decodes a server's frames.
let private decodeAsClient (header: byte[]) : FrameHeader * int =
    let struct (_, consumed, event) = FrameDecoder.step (Role.Client, true, FrameDecoder.initial, ReadOnlySpan header)
    match event with
    | Header decoded -> decoded, consumed
    | other -> failtestf "expected a header, got %A" other

/// RFC 6455 §5.2: the minimal length encoding of an unmasked header.
let private headerLength (payloadLength: int) = if payloadLength <= 125 then 2 elif payloadLength <= 0xFFFF then 4 else 10

/// Bytes allocated by 1000 send/flushed pairs after a warm-up.
let private measureSending () =
    let header = Array.zeroCreate<byte> Frame.MaxHeaderSize
    let run (c: Connection) =
        let mutable c = c
        Connection.send (&c, small, MessageKind.Text, 150, false, Span header) |> ignore
        Connection.flushed (&c, small, 152) |> ignore
        c
    let mutable c = fresh ()
    for _ in 1..1000 do c <- run c
    let before = GC.GetAllocatedBytesForCurrentThread()
    for _ in 1..1000 do c <- run c
    GC.GetAllocatedBytesForCurrentThread() - before

[<Tests>]
let examples =
    testList
        "Connection: sending"
        [ test "a send frames the message and counts the whole frame" {
              let c, verdict, header = sendOn small (fresh ()) MessageKind.Text 40 false
              Expect.equal verdict (Sent 42) "the header's 2 bytes and the payload"
              Expect.equal header [| 0x81uy; 40uy |] "FIN, text, unmasked, 40"
              Expect.equal c.Buffered 42L "buffered"
              let c, verdict, header = sendOn small c MessageKind.Binary 70 true
              Expect.equal verdict Backpressure "42 + 72 is over the soft limit"
              Expect.equal header [| 0xC2uy; 70uy |] "FIN, RSV1 (RFC 7692 §6), binary"
              Expect.isTrue c.InBackpressure "episode"
          }

          test "restoreSendState undoes an admitted send the host could not queue, episode included" {
              let c, _, _ = sendOn small (fresh ()) MessageKind.Text 40 false
              let before = c.SendState
              let mutable after, verdict, _ = sendOn small c MessageKind.Binary 70 false
              Expect.equal verdict Backpressure "admitted, over the soft limit"
              Connection.restoreSendState (&after, before)
              Expect.equal after.Buffered 42L "the first message only"
              Expect.isFalse after.InBackpressure "no episode began"
              Expect.equal after.SendState before "as before"
          }

          test "sendFramed judges a frame made already as send judges the message it frames" {
              let viaSend, sendVerdict, _ = sendOn small (fresh ()) MessageKind.Text 100 false
              let mutable viaFramed = fresh ()
              let framedVerdict = Connection.sendFramed (&viaFramed, small, 102)
              Expect.equal framedVerdict sendVerdict "same verdict for the same 102 bytes on the wire"
              Expect.equal viaFramed.SendState viaSend.SendState "same account"
              let mutable closed = closeLocally (fresh ())
              Expect.equal (Connection.sendFramed (&closed, small, 10)) (Dropped ConnectionClosed) "nothing after a close frame"
              Expect.equal (Connection.sendFramed (&viaFramed, small, -1)) (Dropped InvalidLength) "a negative length"
          }

          test "a send changes the connection it is given, not copies of it" {
              let original = fresh ()
              let mutable working = original
              let header = Array.zeroCreate<byte> Frame.MaxHeaderSize
              Connection.send (&working, small, MessageKind.Text, 10, false, Span header) |> ignore
              Expect.equal working.Buffered 12L "the working connection counts it"
              Expect.equal original.Buffered 0L "the copy taken before is unchanged"
          }

          test "a refused send writes no header and changes nothing" {
              let c, _, _ = sendOn small (fresh ()) MessageKind.Binary 900 false
              let c', verdict, header = sendOn small c MessageKind.Binary 200 false
              Expect.equal verdict (Dropped OverLimit) "over the hard limit"
              Expect.isEmpty header "no header"
              Expect.equal c'.Buffered c.Buffered "unchanged"
          }

          test "a negative length or a header span shorter than MaxHeaderSize is an invalid send" {
              let _, verdict, _ = sendOn small (fresh ()) MessageKind.Text -1 false
              Expect.equal verdict (Dropped InvalidLength) "negative"
              let short = Array.zeroCreate<byte> 4
              let mutable c = fresh ()
              let struct (verdict, length) = Connection.send (&c, small, MessageKind.Text, 10, false, Span short)
              Expect.equal verdict (Dropped InvalidLength) "short span"
              Expect.equal length 0 "nothing written"
          }

          test "after the connection closed every send is Dropped ConnectionClosed, flushes still count, nothing drains" {
              let c, verdict, _ = sendOn small (fresh ()) MessageKind.Binary 296 false
              Expect.equal verdict Backpressure "episode starts"
              let c = closeLocally c
              let c', verdict, header = sendOn small c MessageKind.Binary 1 false
              Expect.equal verdict (Dropped ConnectionClosed) "dropped"
              Expect.isEmpty header "no header"
              Expect.equal c'.Buffered c.Buffered "unchanged"
              let c, drain = flushOn small c 300
              Expect.equal drain NoDrain "a closed connection does not drain"
              Expect.equal c.Buffered 0L "flushed"
          }

          test "after the peer's close frame nothing more is sent (RFC 6455 §5.5.1)" {
              let closeFrame = clientFrame true Opcode.Close 0x11223344u [| 0x03uy; 0xE8uy |]
              let struct (c, _, _) = Connection.receive (fresh (), ReadOnlySpan closeFrame, 1L)
              let _, verdict, _ = sendOn small c MessageKind.Text 1 false
              Expect.equal verdict (Dropped ConnectionClosed) "dropped"
          }

          test "with CloseOnLimit, crossing the hard limit asks the host to close; once it has, later sends are dropped" {
              let limits = { small with CloseOnLimit = true }
              let c, _, _ = sendOn limits (fresh ()) MessageKind.Binary 896 false
              let c', verdict, _ = sendOn limits c MessageKind.Binary 99 false
              Expect.equal verdict CloseForLimit "close"
              Expect.equal c'.Buffered 900L "not queued"
              let _, verdict, _ = sendOn limits (closeLocally c') MessageKind.Binary 1 false
              Expect.equal verdict (Dropped ConnectionClosed) "later sends dropped"
          }

          test "settle writes the real header of a message admitted at a bound and gives back the difference" {
              let c, verdict, _ = sendOn small (fresh ()) MessageKind.Text 300 true
              Expect.equal verdict Backpressure "admitted at the bound, 304 bytes"
              let header = Array.zeroCreate<byte> Frame.MaxHeaderSize
              let mutable c = c
              let struct (total, length) = Connection.settle (&c, MessageKind.Text, 300, 50, Span header)
              Expect.equal total 52 "the real frame"
              Expect.equal (Array.sub header 0 length) [| 0xC1uy; 50uy |] "compressed text of 50 bytes"
              Expect.equal c.Buffered 52L "the bound's extra is given back"
              let _, drain = flushOn small c 0
              Expect.equal drain Drain "the episode the bound began ends at the next flush"
          }

          test "writeDataHeader writes what send writes" {
              for length in [ 0; 125; 126; 65535; 65536; Int32.MaxValue ] do
                  for compressed in [ false; true ] do
                      let _, _, sent = sendOn unlimited (fresh ()) MessageKind.Binary length compressed
                      let written = Array.zeroCreate<byte> Frame.MaxHeaderSize
                      let n = Connection.writeDataHeader (MessageKind.Binary, length, compressed, Span written)
                      Expect.equal (Array.sub written 0 n) sent $"{length} bytes, compressed {compressed}"
          }

          test "send and flushed allocate nothing" { Expect.equal (measureSending ()) 0L "no allocation" } ]

// ---- properties ---------------------------------------------------------------------------------

let private genLength =
    Gen.oneof [ Gen.choose (0, 200); Gen.choose (120, 70_000); Gen.choose (65_530, Int32.MaxValue) ]

let private genKind = Gen.elements [ MessageKind.Text; MessageKind.Binary ]

type private Op =
    | Send of kind: MessageKind * length: int * compressed: bool
    | Flush of int
    | CloseLocal

let private genLimits =
    gen {
        let! soft = Gen.choose (0, 300)
        let! extra = Gen.choose (0, 500)
        let! closeOnLimit = Gen.elements [ false; true ]
        return { SoftLimit = int64 soft; HardLimit = int64 (soft + extra); CloseOnLimit = closeOnLimit }
    }

let private genOp =
    Gen.frequency
        [ 12, Gen.map3 (fun k l c -> Send(k, l, c)) genKind (Gen.choose (0, 200)) (Gen.elements [ false; true ])
          8, Gen.map Flush (Gen.choose (0, 300))
          1, Gen.constant CloseLocal ]

/// The naive account: bytes queued, an open episode, closed.
type private Model = { Buffered: int64; Episode: bool; Closed: bool }

[<Tests>]
let properties =
    testList
        "Connection: sending properties"
        [ property "the header written decodes, as a client reads it, to the same kind, length and RSV1"
          <| Prop.forAll (Arb.fromGen (Gen.zip3 genKind genLength (Gen.elements [ false; true ]))) (fun (kind, length, compressed) ->
              let _, verdict, header = sendOn unlimited (fresh ()) kind length compressed
              Expect.isTrue (isQueued verdict) "queued"
              let decoded, consumed = decodeAsClient header
              Expect.equal consumed header.Length "the whole header, nothing more"
              Expect.equal header.Length (headerLength length) "minimal length encoding"
              Expect.isTrue decoded.Fin "a whole message"
              Expect.equal decoded.Rsv1 compressed "RSV1 marks compression"
              Expect.isFalse (decoded.Rsv2 || decoded.Rsv3) "no other reserved bit"
              Expect.isFalse decoded.Masked "a server does not mask"
              Expect.equal decoded.Opcode (if kind = MessageKind.Text then Opcode.Text else Opcode.Binary) "kind"
              Expect.equal decoded.PayloadLength (int64 length) "length")

          property "writeDataHeader writes the bytes Frame.writeHeader writes for the same unmasked header"
          <| Prop.forAll (Arb.fromGen (Gen.zip3 genKind (Gen.oneof [ genLength; Gen.choose (-10, -1) ]) (Gen.elements [ false; true ]))) (fun (kind, length, compressed) ->
              let opcode = if kind = MessageKind.Text then Opcode.Text else Opcode.Binary
              let general = if compressed then Frame.compressedHeader opcode (int64 length) else Frame.header opcode (int64 length)
              let expected = Array.zeroCreate<byte> Frame.MaxHeaderSize
              let expectedLength = Frame.writeHeader (general, Span expected)
              let written = Array.zeroCreate<byte> Frame.MaxHeaderSize
              let writtenLength = Connection.writeDataHeader (kind, length, compressed, Span written)
              Expect.equal (Array.sub written 0 writtenLength) (Array.sub expected 0 expectedLength) $"{kind} of {length}, compressed {compressed}")

          property "verdicts and buffered bytes follow the naive account over sends, flushes and a close"
          <| Prop.forAll (Arb.fromGen (Gen.zip genLimits (Gen.listOf genOp))) (fun (limits, ops) ->
              ops
              |> List.fold
                  (fun (connection: Connection, model: Model) op ->
                      match op with
                      | Send(kind, length, compressed) ->
                          let next, verdict, header = sendOn limits connection kind length compressed
                          let total = int64 (headerLength length + length)
                          let expected, model' =
                              if model.Closed then Dropped ConnectionClosed, model
                              elif model.Buffered + total > limits.HardLimit then
                                  (if limits.CloseOnLimit then CloseForLimit else Dropped OverLimit), model
                              elif model.Buffered + total > limits.SoftLimit then
                                  Backpressure, { model with Buffered = model.Buffered + total; Episode = true }
                              else
                                  Sent(int total), { model with Buffered = model.Buffered + total }
                          Expect.equal verdict expected $"send {length} on {model.Buffered}"
                          Expect.equal header.Length (if isQueued verdict then headerLength length else 0) "a header when queued"
                          Expect.equal next.Buffered model'.Buffered "buffered"
                          if not model'.Closed then Expect.equal next.InBackpressure model'.Episode "episode"
                          next, model'
                      | Flush n ->
                          let next, result = flushOn limits connection n
                          let buffered = max 0L (model.Buffered - int64 n)
                          let drains = model.Episode && not model.Closed && buffered <= limits.SoftLimit
                          Expect.equal result (if drains then Drain else NoDrain) $"flush {n} of {model.Buffered}"
                          Expect.equal next.Buffered buffered "buffered"
                          next, { model with Buffered = buffered; Episode = model.Episode && not drains }
                      | CloseLocal -> closeLocally connection, { model with Closed = true })
                  (fresh (), { Buffered = 0L; Episode = false; Closed = false })
              |> ignore)

          property "nothing is queued after close"
          <| Prop.forAll (Arb.fromGen (Gen.zip genLimits (Gen.listOf genOp))) (fun (limits, ops) ->
              ops
              |> List.fold
                  (fun (connection: Connection, closed) op ->
                      match op with
                      | Send(kind, length, compressed) ->
                          let next, verdict, _ = sendOn limits connection kind length compressed
                          if closed then
                              Expect.equal verdict (Dropped ConnectionClosed) "dropped after close"
                              Expect.isLessThanOrEqual next.Buffered connection.Buffered "nothing added"
                          next, closed
                      | Flush n -> fst (flushOn limits connection n), closed
                      | CloseLocal -> closeLocally connection, true)
                  (fresh (), false)
              |> ignore) ]

module Realtime.Protocol.Tests.BackplaneEnvelopeTests

open System
open System.Text
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.BackplaneEnvelope
open Realtime.Protocol.Tests.Properties

let private envelope topic kind (payload: byte[]) compress nodeId sender =
    { Topic = topic
      Kind = kind
      Payload = ReadOnlyMemory payload
      Compress = compress
      NodeId = nodeId
      SenderConnectionId = sender }

let private decoded (bytes: byte[]) =
    match decode (ReadOnlyMemory bytes) with
    | Ok e -> e
    | Error e -> failtestf "expected an envelope, got %s (%A)" e.Code e

let private decodeError (bytes: byte[]) =
    match decode (ReadOnlyMemory bytes) with
    | Ok e -> failtestf "expected an error, got %A" e
    | Error e -> e

/// Envelopes compare by content (ReadOnlyMemory compares by reference).
let private same (a: Envelope) (b: Envelope) =
    a.Topic = b.Topic
    && a.Kind = b.Kind
    && a.Payload.Span.SequenceEqual(b.Payload.Span)
    && a.Compress = b.Compress
    && a.NodeId = b.NodeId
    && a.SenderConnectionId = b.SenderConnectionId

[<Tests>]
let examples =
    testList
        "Backplane envelope"
        [ test "a text publish encodes to the documented layout" {
              let bytes = encode (envelope "room" MessageKind.Text (Encoding.UTF8.GetBytes "hi") true "n1" 300L)
              let expected =
                  Array.concat
                      [ [| 1uy; 1uy; 1uy |]
                        [| 0xACuy; 0x02uy |] // 300 as a varint
                        [| 2uy |]
                        Encoding.UTF8.GetBytes "n1"
                        [| 4uy |]
                        Encoding.UTF8.GetBytes "room"
                        [| 2uy |]
                        Encoding.UTF8.GetBytes "hi" ]
              Expect.equal bytes expected "version, kind, flags, sender, node id, topic, payload"
          }

          test "a server-wide binary publish round-trips, payload sliced from the input" {
              let original = envelope "prices:EUR" MessageKind.Binary [| 0uy; 255uy; 7uy |] false "node-b" 0L
              let bytes = encode original
              let back = decoded bytes
              Expect.isTrue (same original back) "same envelope"
              Expect.equal bytes.Length (3 + 1 + 1 + 6 + 1 + 10 + 1 + 3) "compact: one byte per small varint"
          }

          test "an empty payload, topic and node id round-trip" {
              let original = envelope "" MessageKind.Text [||] false "" 0L
              Expect.equal (encode original).Length 7 "seven bytes"
              Expect.isTrue (same original (decoded (encode original))) "same"
          }

          test "the largest connection id round-trips (ten-byte varint)" {
              let original = envelope "t" MessageKind.Binary [| 1uy |] false "n" Int64.MaxValue
              Expect.isTrue (same original (decoded (encode original))) "Int64.MaxValue"
              let negative = envelope "t" MessageKind.Binary [| 1uy |] false "n" -1L
              Expect.isTrue (same negative (decoded (encode negative))) "the sign survives as the 64th bit"
          }

          test "no bytes is truncated" { Expect.equal (decodeError [||]).Code "truncated" "empty" }

          test "an unknown version is refused before anything else is read" {
              let bytes = encode (envelope "t" MessageKind.Text [||] false "n" 1L)
              bytes[0] <- 2uy
              Expect.equal (decodeError bytes).Code "unknown-version" "version 2"
              Expect.equal (decodeError [| 0uy |]).Code "unknown-version" "version 0, alone"
          }

          test "a kind other than text or binary is refused" {
              for kind in [ 0uy; 3uy; 8uy; 9uy; 255uy ] do
                  let bytes = encode (envelope "t" MessageKind.Binary [||] false "n" 1L)
                  bytes[1] <- kind
                  Expect.equal (decodeError bytes).Code "bad-kind" $"kind {kind}"
          }

          test "a reserved flag bit is refused" {
              let bytes = encode (envelope "t" MessageKind.Binary [||] true "n" 1L)
              bytes[2] <- 3uy
              Expect.equal (decodeError bytes).Code "bad-flags" "bit 1"
          }

          test "a varint past 64 bits is refused" {
              let bytes = Array.concat [ [| 1uy; 2uy; 0uy |]; Array.create 10 0xFFuy; [| 1uy |] ]
              Expect.equal (decodeError bytes).Code "bad-length" "eleven-byte varint"
              let tenth = Array.concat [ [| 1uy; 2uy; 0uy |]; Array.create 9 0xFFuy; [| 2uy |] ]
              Expect.equal (decodeError tenth).Code "bad-length" "tenth byte over one bit"
          }

          test "a length past the end is truncated, even a huge one" {
              let bytes = Array.concat [ [| 1uy; 2uy; 0uy; 0uy |]; [| 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0x0Fuy |]; [| 65uy |] ]
              Expect.equal (decodeError bytes).Code "truncated" "node id length 2^32 - 1"
          }

          test "invalid UTF-8 in the topic, node id or a text payload is refused; binary payloads are not checked" {
              let text = encode (envelope "t" MessageKind.Text [| 0xC3uy |] false "n" 1L)
              Expect.equal (decodeError text) (BadUtf8 "payload") "text payload"
              let binary = encode (envelope "t" MessageKind.Binary [| 0xC3uy |] false "n" 1L)
              Expect.equal (decoded binary).Payload.Length 1 "binary payload"
              let badTopic = [| 1uy; 2uy; 0uy; 0uy; 0uy; 1uy; 0xFFuy; 0uy |]
              Expect.equal (decodeError badTopic) (BadUtf8 "topic") "topic"
              let badNode = [| 1uy; 2uy; 0uy; 0uy; 1uy; 0xFFuy; 0uy; 0uy |]
              Expect.equal (decodeError badNode) (BadUtf8 "node id") "node id"
          }

          test "bytes after the payload are refused" {
              let bytes = encode (envelope "t" MessageKind.Binary [| 1uy |] false "n" 1L)
              Expect.equal (decodeError (Array.append bytes [| 0uy |])).Code "trailing-bytes" "one extra byte"
          } ]

let private genKind = Gen.elements [ MessageKind.Text; MessageKind.Binary ]

/// Strings that survive UTF-8 (no lone surrogates).
let private genText =
    ArbMap.defaults
    |> ArbMap.generate<string>
    |> Gen.map (fun s -> if isNull s then "" else s)
    |> Gen.filter (fun s -> Encoding.UTF8.GetString(Encoding.UTF8.GetBytes s) = s)

let private genEnvelope =
    gen {
        let! kind = genKind
        let! topic = genText
        let! nodeId = genText
        let! compress = ArbMap.defaults |> ArbMap.generate<bool>
        let! sender = ArbMap.defaults |> ArbMap.generate<int64>
        let! payload =
            if kind = MessageKind.Text then genText |> Gen.map Encoding.UTF8.GetBytes
            else ArbMap.defaults |> ArbMap.generate<byte[]> |> Gen.map (fun b -> if isNull b then [||] else b)
        return envelope topic kind payload compress nodeId sender
    }

let private arbEnvelope = Arb.fromGen genEnvelope

let private arbBytes =
    Arb.fromGen (
        Gen.oneof
            [ ArbMap.defaults |> ArbMap.generate<byte[]> |> Gen.map (fun b -> if isNull b then [||] else b)
              // Mostly-valid prefixes reach the deeper checks more often than random bytes do.
              gen {
                  let! e = genEnvelope
                  let bytes = encode e
                  let! index = Gen.choose (0, bytes.Length)
                  let! value = ArbMap.defaults |> ArbMap.generate<byte>
                  if index < bytes.Length then bytes[index] <- value
                  return bytes
              } ]
    )

[<Tests>]
let properties =
    testList
        "Backplane envelope: properties"
        [ property "decode (encode e) = e"
          <| Prop.forAll arbEnvelope (fun e -> Expect.isTrue (same e (decoded (encode e))) "round trip")

          property "decode never throws on arbitrary bytes, and what it reads re-encodes to a readable envelope"
          <| Prop.forAll arbBytes (fun bytes ->
              match decode (ReadOnlyMemory bytes) with
              | Ok e -> Expect.isTrue (same e (decoded (encode e))) "re-encoded"
              | Error e -> Expect.isNotEmpty e.Code "a code")

          property "every strict prefix of an envelope is truncated"
          <| Prop.forAll arbEnvelope (fun e ->
              let bytes = encode e
              for cut in 0 .. bytes.Length - 1 do
                  match decode (ReadOnlyMemory(bytes, 0, cut)) with
                  | Ok _ -> failtestf "a %d-byte prefix of %d decoded" cut bytes.Length
                  | Error err -> Expect.equal err.Code "truncated" $"prefix of {cut}") ]

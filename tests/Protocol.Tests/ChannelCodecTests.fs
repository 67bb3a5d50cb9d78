module Realtime.Protocol.Tests.ChannelCodecTests

open System
open System.Buffers
open System.Runtime.InteropServices
open System.Text
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.Tests.Properties

let private utf8 (text: string) = Encoding.UTF8.GetBytes text
let private data (json: string) = ChannelData.OfBytes(ReadOnlyMemory(utf8 json))
let private position epoch offset : ChannelPosition = { Epoch = epoch; Offset = offset }
let private memberOf client info : PresenceMember = { Client = client; Info = data info }

let private jsonClient (text: string) = ChannelJson.decodeClient (ReadOnlyMemory(utf8 text))
let private jsonServer (text: string) = ChannelJson.decodeServer (ReadOnlyMemory(utf8 text))

let private ok what result =
    match result with
    | Ok message -> message
    | Error(e: ChannelCodecError) -> failtestf "%s: expected a message, got %s (%A)" what e.Code e

let private refused what result =
    match result with
    | Ok message -> failtestf "%s: expected an error, got %A" what message
    | Error(e: ChannelCodecError) -> e

// ---------------------------------------------------------------------------------------------
// Generators: names and keys within their byte limits (with characters JSON must escape,
// non-ASCII and surrogate pairs), ids over the whole range, and JSON data values written as a
// publisher might (whitespace, escapes, exponents), kept as text so their bytes can be compared.

/// Pieces that exercise the encoders: plain ASCII, characters JSON escapes, two- to four-byte UTF-8.
let private pieces =
    [ "a"; "Z"; "room"; "0"; ":"; "-"; " "; "/"; "\""; "\\"; "\n"; "\t"; "\r"; "\b"; "\f"; "\u0001"; "\u001f"; "\u007f"
      "é"; "ß"; "中"; "\u2028"; "😀"; "\uffff" ]

/// A string of at most `maxBytes` UTF-8 bytes (at least `minBytes`, padded with "x").
let private genText minBytes maxBytes =
    gen {
        let! parts =
            Gen.oneof
                [ Gen.listOf (Gen.elements pieces)
                  // Long runs, to reach the limit: 128 two-byte characters are exactly 256 bytes.
                  gen {
                      let! piece = Gen.elements [ "é"; "a"; "中"; "\"" ]
                      let! count = Gen.choose (0, maxBytes)
                      return List.replicate count piece
                  } ]
        let builder = StringBuilder()
        let mutable size = 0
        for part in parts do
            let partSize = Encoding.UTF8.GetByteCount part
            if size + partSize <= maxBytes then
                builder.Append part |> ignore
                size <- size + partSize
        while size < minBytes do
            builder.Append 'x' |> ignore
            size <- size + 1
        return builder.ToString()
    }

let private genChannel = genText 1 ChannelJson.MaxChannelBytes
let private genKey = genText 1 ChannelJson.MaxKeyBytes
let private genFree = genText 0 40

let private genId =
    Gen.oneof [ Gen.elements [ 1u; 127u; 128u; UInt32.MaxValue ]; ArbMap.defaults |> ArbMap.generate<uint32> |> Gen.map (max 1u) ]

let private genOffset =
    Gen.oneof [ Gen.elements [ 0UL; 1UL; 127UL; 128UL; UInt64.MaxValue ]; ArbMap.defaults |> ArbMap.generate<uint64> ]

let private genPosition =
    gen {
        let! epoch = genFree
        let! offset = genOffset
        return position epoch offset
    }

let private genWhitespace = Gen.elements [ ""; ""; ""; " "; "\n  "; "\t"; "\r\n" ]

let private genJsonString =
    gen {
        let! parts =
            Gen.listOf (
                Gen.elements
                    [ "a"; "text"; " "; "é"; "中"; "😀"; "\\\""; "\\\\"; "\\/"; "\\b"; "\\f"; "\\n"; "\\r"; "\\t"; "\\u00e9"
                      "\\u0000"; "\\uD83D\\uDE00"; "\\u2028"; "<"; "&" ]
            )
        return "\"" + String.concat "" parts + "\""
    }

let private genNumber =
    Gen.oneof
        [ ArbMap.defaults |> ArbMap.generate<int64> |> Gen.map string
          Gen.elements [ "0"; "-0"; "1.5"; "-12.25e+3"; "6.02E23"; "1e-7"; "18446744073709551616"; "0.1" ] ]

let rec private genJsonOfSize size : Gen<string> =
    let scalar = Gen.oneof [ Gen.elements [ "null"; "true"; "false" ]; genNumber; genJsonString ]
    if size <= 0 then
        scalar
    else
        let element =
            gen {
                let! before = genWhitespace
                let! value = genJsonOfSize (size / 3)
                let! after = genWhitespace
                return before + value + after
            }
        let array =
            gen {
                let! items = Gen.choose (0, 3) |> Gen.bind (fun count -> Gen.listOfLength count element)
                let! inner = genWhitespace
                return if items.IsEmpty then "[" + inner + "]" else "[" + String.Join(",", items) + "]"
            }
        let object =
            gen {
                let! count = Gen.choose (0, 3)
                let! names = Gen.listOfLength count genJsonString
                let! values = Gen.listOfLength count element
                let members = List.map2 (fun name value -> name + ":" + value) names values
                return "{" + String.Join(",", members) + "}"
            }
        Gen.frequency [ 2, scalar; 1, array; 1, object ]

let private genJson = Gen.sized (fun size -> genJsonOfSize (min size 30))
let private genData = genJson |> Gen.map data

let private genMember =
    gen {
        let! client = genFree
        let! info = genData
        return { Client = client; Info = info }
    }

let private genRecovery = Gen.elements [ Recovery.Fresh; Recovery.Recovered; Recovery.NotRecovered ]

let private genErrorCode =
    Gen.elements
        [ ChannelErrorCode.BadMessage; ChannelErrorCode.Forbidden; ChannelErrorCode.UnknownChannel; ChannelErrorCode.NotSubscribed
          ChannelErrorCode.TooLarge; ChannelErrorCode.RateLimited; ChannelErrorCode.UnknownMethod; ChannelErrorCode.Internal
          ChannelErrorCode.TooManyChannels ]

let private genClientMessage =
    Gen.oneof
        [ gen {
              let! id = genId
              let! channel = genChannel
              let! since = Gen.oneof [ Gen.constant ValueNone; genPosition |> Gen.map ValueSome ]
              let! presence = Gen.elements [ true; false ]
              return ClientMessage.Subscribe(id, channel, since, presence)
          }
          Gen.map2 (fun id channel -> ClientMessage.Unsubscribe(id, channel)) genId genChannel
          gen {
              let! id = genId
              let! channel = genChannel
              let! key = genKey
              let! payload = genData
              return ClientMessage.Publish(id, channel, key, payload)
          }
          Gen.map2 (fun id channel -> ClientMessage.PresenceQuery(id, channel)) genId genChannel
          Gen.map3 (fun id method payload -> ClientMessage.Request(id, method, payload)) genId genFree genData ]

/// Ids of messages that may carry 0 (a server-ended subscription, an unreadable message).
let private genIdOrZero = Gen.oneof [ Gen.constant 0u; genId ]

let private genServerMessage =
    Gen.oneof
        [ Gen.map2 (fun version client -> ServerMessage.Welcome(version, client)) (Gen.oneof [ Gen.constant 1; Gen.choose (1, Int32.MaxValue) ]) genFree
          gen {
              let! id = genId
              let! channel = genChannel
              let! at = genPosition
              let! recovery = genRecovery
              return ServerMessage.Subscribed(id, channel, at, recovery)
          }
          Gen.map2 (fun id channel -> ServerMessage.Unsubscribed(id, channel)) genIdOrZero genChannel
          Gen.map3 (fun channel at payload -> ServerMessage.Publication(channel, at, payload)) genChannel genPosition genData
          Gen.map3 (fun id channel at -> ServerMessage.Ack(id, channel, at)) genId genChannel genPosition
          gen {
              let! id = genId
              let! channel = genChannel
              let! count = Gen.choose (0, 4)
              let! members = Gen.listOfLength count genMember
              return ServerMessage.Presence(id, channel, members)
          }
          Gen.map2 (fun channel m -> ServerMessage.Join(channel, m)) genChannel genMember
          Gen.map2 (fun channel m -> ServerMessage.Leave(channel, m)) genChannel genMember
          Gen.map2 (fun id payload -> ServerMessage.Response(id, payload)) genId genData
          Gen.map3 (fun id code text -> ServerMessage.Error(id, code, text)) genIdOrZero genErrorCode genFree ]

let private arbClient = Arb.fromGen genClientMessage
let private arbServer = Arb.fromGen genServerMessage

let private genBytes = ArbMap.defaults |> ArbMap.generate<byte[]> |> Gen.map (fun b -> if isNull b then [||] else b)

/// Bytes that are mostly a valid encoding: one byte replaced, or a random cut, so the decoders'
/// deeper checks are reached more often than by random bytes.
let private mutated (encode: 'm -> byte[]) (genMessage: Gen<'m>) =
    gen {
        let! message = genMessage
        let bytes = encode message
        let! index = Gen.choose (0, bytes.Length - 1)
        let! value = ArbMap.defaults |> ArbMap.generate<byte>
        let! cut = Gen.choose (0, bytes.Length)
        let! how = Gen.choose (0, 2)
        match how with
        | 0 ->
            bytes[index] <- value
            return bytes
        | 1 -> return bytes[.. cut - 1]
        | _ -> return Array.append bytes [| value |]
    }

/// Random JSON-looking text: tokens of the protocol in random order.
let private genJsonish =
    gen {
        let! tokens =
            Gen.listOf (
                Gen.oneof
                    [ Gen.elements
                          [ "{"; "}"; "["; "]"; ":"; ","; "\"type\""; "\"id\""; "\"channel\""; "\"data\""; "\"since\""; "\"members\""
                            "\"member\""; "\"publish\""; "\"pub\""; "\"subscribe\""; "\"presence\""; "1"; "-1"; "4294967296"; "null"
                            "true"; "\"\\ud800\""; "\"x\""; "\"epoch\""; "\"offset\""; "\"client\""; "\"info\""; "\"key\"" ]
                      genJsonString ]
            )
        return utf8 (String.concat "" tokens)
    }

// ---------------------------------------------------------------------------------------------

/// The JSON lines of docs/channels-protocol.md, with the unions they stand for.
let private contractClientLines =
    [ """{"type":"subscribe","id":1,"channel":"room:lobby","since":{"epoch":"k3J9","offset":41},"presence":true}""",
      ClientMessage.Subscribe(1u, "room:lobby", ValueSome(position "k3J9" 41UL), true)
      """{"type":"unsubscribe","id":2,"channel":"room:lobby"}""", ClientMessage.Unsubscribe(2u, "room:lobby")
      """{"type":"publish","id":3,"channel":"room:lobby","key":"c7f0-17","data":{"text":"hi"}}""",
      ClientMessage.Publish(3u, "room:lobby", "c7f0-17", data """{"text":"hi"}""")
      """{"type":"presence","id":4,"channel":"room:lobby"}""", ClientMessage.PresenceQuery(4u, "room:lobby")
      """{"type":"request","id":5,"method":"whoami","data":null}""", ClientMessage.Request(5u, "whoami", data "null") ]

let private contractServerLines =
    [ """{"type":"welcome","version":1,"client":"n1-8f2c"}""", ServerMessage.Welcome(1, "n1-8f2c")
      """{"type":"subscribed","id":1,"channel":"room:lobby","epoch":"k3J9","offset":45,"recovery":"recovered"}""",
      ServerMessage.Subscribed(1u, "room:lobby", position "k3J9" 45UL, Recovery.Recovered)
      """{"type":"unsubscribed","id":2,"channel":"room:lobby"}""", ServerMessage.Unsubscribed(2u, "room:lobby")
      """{"type":"pub","channel":"room:lobby","epoch":"k3J9","offset":46,"data":{"text":"hi"}}""",
      ServerMessage.Publication("room:lobby", position "k3J9" 46UL, data """{"text":"hi"}""")
      """{"type":"ack","id":3,"channel":"room:lobby","epoch":"k3J9","offset":46}""",
      ServerMessage.Ack(3u, "room:lobby", position "k3J9" 46UL)
      """{"type":"presence","id":4,"channel":"room:lobby","members":[{"client":"n1-8f2c","info":{"name":"ann"}}]}""",
      ServerMessage.Presence(4u, "room:lobby", [ memberOf "n1-8f2c" """{"name":"ann"}""" ])
      """{"type":"join","channel":"room:lobby","member":{"client":"n2-11aa","info":{"name":"bob"}}}""",
      ServerMessage.Join("room:lobby", memberOf "n2-11aa" """{"name":"bob"}""")
      """{"type":"leave","channel":"room:lobby","member":{"client":"n2-11aa","info":{"name":"bob"}}}""",
      ServerMessage.Leave("room:lobby", memberOf "n2-11aa" """{"name":"bob"}""")
      """{"type":"response","id":5,"data":{"name":"ann"}}""", ServerMessage.Response(5u, data """{"name":"ann"}""")
      """{"type":"error","id":3,"code":"forbidden","message":"not allowed to publish to room:lobby"}""",
      ServerMessage.Error(3u, ChannelErrorCode.Forbidden, "not allowed to publish to room:lobby") ]

let private nested depth = String.replicate depth "[" + String.replicate depth "]"

let private publishWith (field: string) =
    """{"type":"publish","id":3,"channel":"c","key":"k","data":1""" + field + "}"

[<Tests>]
let jsonForm =
    testList
        "Channels protocol: JSON form"
        [ test "the contract's client lines decode to their messages and encode back to the same text" {
              for line, message in contractClientLines do
                  Expect.equal (ok line (jsonClient line)) message line
                  Expect.equal (Encoding.UTF8.GetString(ChannelJson.encodeClient message)) line "encoded as in the contract"
          }

          test "the contract's server lines decode to their messages and encode back to the same text" {
              for line, message in contractServerLines do
                  Expect.equal (ok line (jsonServer line)) message line
                  Expect.equal (Encoding.UTF8.GetString(ChannelJson.encodeServer message)) line "encoded as in the contract"
          }

          test "a pub written from its parts is the pub message's encoding, in an array, a span or a buffer writer" {
              let at = position "k3J9" 46UL
              let payload = utf8 """{"text":"hi"}"""
              let expected = ChannelJson.encodeServer (ServerMessage.Publication("room:lobby", at, data """{"text":"hi"}"""))
              Expect.equal (ChannelJson.encodePublication ("room:lobby", at, ReadOnlySpan payload)) expected "array"
              let size = ChannelJson.publicationSize ("room:lobby", at, ReadOnlySpan payload)
              Expect.equal size expected.Length "size"
              let destination = Array.zeroCreate (size + 5)
              Expect.equal (ChannelJson.writePublication ("room:lobby", at, ReadOnlySpan payload, Span destination)) size "written"
              Expect.equal destination[.. size - 1] expected "span"
              Expect.equal (ChannelJson.writePublication ("room:lobby", at, ReadOnlySpan payload, Span(Array.zeroCreate (size - 1)))) 0 "too short: nothing"
              let writer = ArrayBufferWriter<byte>()
              ChannelJson.writeServer (ServerMessage.Welcome(1, "n1"), writer)
              ChannelJson.writeClient (ClientMessage.Unsubscribe(2u, "c"), writer)
              let both = Array.append (ChannelJson.encodeServer (ServerMessage.Welcome(1, "n1"))) (ChannelJson.encodeClient (ClientMessage.Unsubscribe(2u, "c")))
              Expect.equal (writer.WrittenSpan.ToArray()) both "appended one after the other"
          }

          test "data comes back byte for byte, whitespace and escapes included, as a slice of the input" {
              let payload = " { \"a\" : [ 1 , 2.50e+1 ,\n\"\\u00e9\\\"\" ] , \"b\":null } "
              let input = utf8 ("""{"type":"publish","id":3,"channel":"c","key":"k","data":""" + payload + "}")
              match ok "publish" (ChannelJson.decodeClient (ReadOnlyMemory input)) with
              | ClientMessage.Publish(_, _, _, decoded) ->
                  Expect.equal (Encoding.UTF8.GetString decoded.Json.Span) (payload.Trim()) "the value's text, without the space around it"
                  match MemoryMarshal.TryGetArray decoded.Json with
                  | true, segment -> Expect.isTrue (Object.ReferenceEquals(segment.Array, input)) "a slice of the input, not a copy"
                  | _ -> failtest "not array-backed"
              | other -> failtestf "got %A" other
              for scalar in [ "-12.5e+3"; "\"a\\nb\""; "true"; "0" ] do
                  match ok scalar (jsonClient (publishWith "" |> fun s -> s.Replace("\"data\":1", "\"data\":" + scalar))) with
                  | ClientMessage.Publish(_, _, _, decoded) -> Expect.equal (Encoding.UTF8.GetString decoded.Json.Span) scalar "scalar"
                  | other -> failtestf "got %A" other
          }

          test "fields may come in any order, and unknown fields (any value) are ignored" {
              let line = """{"future":{"x":[1,{"y":2}]},"channel":"c","data":[1],"key":"k","id":9,"also":null,"type":"publish"}"""
              Expect.equal (ok "reordered" (jsonClient line)) (ClientMessage.Publish(9u, "c", "k", data "[1]")) "publish"
              let pub = """{"offset":2,"data":"x","epoch":"e","type":"pub","channel":"c","presence":5}"""
              Expect.equal (ok "pub" (jsonServer pub)) (ServerMessage.Publication("c", position "e" 2UL, data "\"x\"")) "a client-only field in a server message is unknown there"
              let nearMisses = """{"ib":"x","kez":1,"tipe":2,"datum":3,"methox":4,"channe1":5,"presents":6,"sinse":7,"members":8,"type":"unsubscribe","id":2,"channel":"c"}"""
              Expect.equal (ok "near misses" (jsonClient nearMisses)) (ClientMessage.Unsubscribe(2u, "c")) "names one letter off a field's are unknown fields"
          }

          test "optional fields take their defaults: since absent or null, presence false, data null, id 0 where allowed" {
              Expect.equal (ok "no since" (jsonClient """{"type":"subscribe","id":1,"channel":"c"}""")) (ClientMessage.Subscribe(1u, "c", ValueNone, false)) "absent"
              Expect.equal (ok "null since" (jsonClient """{"type":"subscribe","id":1,"channel":"c","since":null,"presence":false}""")) (ClientMessage.Subscribe(1u, "c", ValueNone, false)) "null"
              Expect.equal (ok "request" (jsonClient """{"type":"request","id":5,"method":"m"}""")) (ClientMessage.Request(5u, "m", data "null")) "request data"
              Expect.equal (ok "response" (jsonServer """{"type":"response","id":5}""")) (ServerMessage.Response(5u, data "null")) "response data"
              Expect.equal (ok "unsubscribed" (jsonServer """{"type":"unsubscribed","channel":"c"}""")) (ServerMessage.Unsubscribed(0u, "c")) "no id: 0"
              Expect.equal (ok "unsubscribed 0" (jsonServer """{"type":"unsubscribed","id":0,"channel":"c"}""")) (ServerMessage.Unsubscribed(0u, "c")) "id 0"
              Expect.equal (ok "error" (jsonServer """{"type":"error","code":"bad-message","message":"?"}""")) (ServerMessage.Error(0u, ChannelErrorCode.BadMessage, "?")) "error without id"
              Expect.equal (ok "member" (jsonServer """{"type":"join","channel":"c","member":{"client":"n"}}""")) (ServerMessage.Join("c", memberOf "n" "null")) "info"
              Expect.equal (Encoding.UTF8.GetString(ChannelJson.encodeServer (ServerMessage.Unsubscribed(0u, "c")))) """{"type":"unsubscribed","id":0,"channel":"c"}""" "id 0 is written"
          }

          test "empty data is written as null; a lone surrogate as U+FFFD" {
              let empty = ChannelData.OfBytes ReadOnlyMemory.Empty
              Expect.equal (Encoding.UTF8.GetString(ChannelJson.encodeServer (ServerMessage.Response(1u, empty)))) """{"type":"response","id":1,"data":null}""" "null"
              let lone = ChannelJson.encodeClient (ClientMessage.Unsubscribe(1u, "a\ud800b"))
              Expect.equal (ok "lone" (ChannelJson.decodeClient (ReadOnlyMemory lone))) (ClientMessage.Unsubscribe(1u, "a\ufffdb")) "replaced"
          }

          test "required fields are required" {
              let cases =
                  [ """{"id":1,"channel":"c"}""", "type"
                    """{"type":"subscribe","channel":"c"}""", "id"
                    """{"type":"subscribe","id":1}""", "channel"
                    """{"type":"publish","id":3,"channel":"c","data":1}""", "key"
                    """{"type":"publish","id":3,"channel":"c","key":"k"}""", "data"
                    """{"type":"request","id":3,"data":1}""", "method"
                    """{"type":"subscribe","id":1,"channel":"c","since":{"offset":1}}""", "since.epoch"
                    """{"type":"subscribe","id":1,"channel":"c","since":{"epoch":"e"}}""", "since.offset" ]
              for line, field in cases do
                  Expect.equal (refused line (jsonClient line)) (ChannelCodecError.MissingField field) line
              let serverCases =
                  [ """{"type":"pub","channel":"c","epoch":"e","offset":1}""", "data"
                    """{"type":"pub","channel":"c","epoch":"e","data":1}""", "offset"
                    """{"type":"ack","id":1,"channel":"c","offset":1}""", "epoch"
                    """{"type":"subscribed","id":1,"channel":"c","epoch":"e","offset":1}""", "recovery"
                    """{"type":"welcome","client":"n"}""", "version"
                    """{"type":"presence","id":1,"channel":"c"}""", "members"
                    """{"type":"join","channel":"c","member":{"info":1}}""", "member.client"
                    """{"type":"leave","channel":"c"}""", "member"
                    """{"type":"error","id":1,"message":"m"}""", "code"
                    """{"type":"response","data":1}""", "id" ]
              for line, field in serverCases do
                  Expect.equal (refused line (jsonServer line)) (ChannelCodecError.MissingField field) line
          }

          test "wrong types are refused, naming the field" {
              let cases =
                  [ """[1]""", "message"
                    """"subscribe" """, "message"
                    """{"type":1,"id":1,"channel":"c"}""", "type"
                    """{"type":"subscribe","id":"1","channel":"c"}""", "id"
                    """{"type":"subscribe","id":1,"channel":7}""", "channel"
                    """{"type":"subscribe","id":1,"channel":"c","since":5}""", "since"
                    """{"type":"subscribe","id":1,"channel":"c","since":{"epoch":1,"offset":1}}""", "since.epoch"
                    """{"type":"subscribe","id":1,"channel":"c","presence":"yes"}""", "presence"
                    """{"type":"publish","id":1,"channel":"c","key":null,"data":1}""", "key" ]
              for line, field in cases do
                  Expect.equal (refused line (jsonClient line)) (ChannelCodecError.WrongType field) line
              Expect.equal (refused "members" (jsonServer """{"type":"presence","id":1,"channel":"c","members":{}}""")) (ChannelCodecError.WrongType "members") "members"
              Expect.equal (refused "member" (jsonServer """{"type":"presence","id":1,"channel":"c","members":[1]}""")) (ChannelCodecError.WrongType "member") "member"
          }

          test "ids, names and keys outside their ranges are refused" {
              let sized bytes = String.replicate bytes "a"
              let subscribe (id: string) (channel: string) = $"""{{"type":"subscribe","id":{id},"channel":"{channel}"}}"""
              for id in [ "0"; "4294967296"; "-1"; "1.5"; "1e3"; "18446744073709551616" ] do
                  Expect.equal (refused id (jsonClient (subscribe id "c"))) (ChannelCodecError.OutOfRange "id") $"id {id}"
              Expect.equal (ok "largest id" (jsonClient (subscribe "4294967295" "c"))) (ClientMessage.Subscribe(UInt32.MaxValue, "c", ValueNone, false)) "2^32-1"
              Expect.equal (refused "empty" (jsonClient (subscribe "1" ""))) (ChannelCodecError.OutOfRange "channel") "empty channel"
              Expect.equal (refused "257" (jsonClient (subscribe "1" (sized 257)))) (ChannelCodecError.OutOfRange "channel") "257 bytes"
              Expect.isOk (jsonClient (subscribe "1" (sized 256))) "256 bytes"
              Expect.isOk (jsonClient (subscribe "1" (String.replicate 128 "é"))) "128 two-byte characters"
              Expect.equal (refused "escaped" (jsonClient (subscribe "1" (String.replicate 128 "\\u00e9" + "a")))) (ChannelCodecError.OutOfRange "channel") "counted after unescaping: 257 bytes"
              let publish key = $"""{{"type":"publish","id":1,"channel":"c","key":"{key}","data":1}}"""
              Expect.equal (refused "key" (jsonClient (publish ""))) (ChannelCodecError.OutOfRange "key") "empty key"
              Expect.equal (refused "key" (jsonClient (publish (sized 65)))) (ChannelCodecError.OutOfRange "key") "65-byte key"
              Expect.isOk (jsonClient (publish (sized 64))) "64-byte key"
              Expect.equal (refused "offset" (jsonClient """{"type":"subscribe","id":1,"channel":"c","since":{"epoch":"e","offset":-1}}""")) (ChannelCodecError.OutOfRange "since.offset") "negative offset"
              Expect.equal (refused "ack 0" (jsonServer """{"type":"ack","id":0,"channel":"c","epoch":"e","offset":1}""")) (ChannelCodecError.OutOfRange "id") "a reply's id is not 0"
              Expect.equal (refused "recovery" (jsonServer """{"type":"subscribed","id":1,"channel":"c","epoch":"e","offset":1,"recovery":"maybe"}""")) (ChannelCodecError.OutOfRange "recovery") "recovery"
              Expect.equal (refused "code" (jsonServer """{"type":"error","id":1,"code":"teapot","message":""}""")) (ChannelCodecError.OutOfRange "code") "code"
              Expect.equal (refused "version" (jsonServer """{"type":"welcome","version":0,"client":"n"}""")) (ChannelCodecError.OutOfRange "version") "version 0"
          }

          test "a known field twice is refused, however its name is spelled; unknown fields may repeat" {
              Expect.equal (refused "type" (jsonClient """{"type":"subscribe","type":"subscribe","id":1,"channel":"c"}""")) (ChannelCodecError.DuplicateField "type") "type"
              Expect.equal (refused "escaped" (jsonClient """{"type":"subscribe","id":1,"channel":"c","chann\u0065l":"d"}""")) (ChannelCodecError.DuplicateField "channel") "escaped name"
              Expect.equal (refused "since" (jsonClient """{"type":"subscribe","id":1,"channel":"c","since":{"epoch":"e","offset":1,"offset":2}}""")) (ChannelCodecError.DuplicateField "since.offset") "nested"
              Expect.isOk (jsonClient """{"type":"subscribe","x":1,"x":2,"id":1,"channel":"c"}""") "unknown twice"
          }

          test "unknown types, and the other direction's types, are refused" {
              Expect.equal (refused "nope" (jsonClient """{"type":"nope","id":1,"channel":"c"}""")) ChannelCodecError.UnknownType "nope"
              Expect.equal (refused "pub" (jsonClient """{"type":"pub","channel":"c","epoch":"e","offset":1,"data":1}""")) ChannelCodecError.UnknownType "a server type sent by a client"
              Expect.equal (refused "publish" (jsonServer """{"type":"publish","id":3,"channel":"c","key":"k","data":1}""")) ChannelCodecError.UnknownType "a client type sent by a server"
          }

          test "invalid JSON, invalid UTF-8, lone surrogates and trailing bytes are refused" {
              for text in [ ""; "   "; "{"; """{"type":"subscribe","id":1,"channel":"c"""; """{"type":"subscribe",}"""; "{'type':1}"; "nope"; """{"type":"publish","id":1,"channel":"c","key":"k","data":01}""" ] do
                  Expect.equal (refused text (jsonClient text)).Code "invalid-json" $"{text}"
              let badUtf8 = Array.concat [ utf8 "{\"type\":\"subscribe\",\"id\":1,\"channel\":\""; [| 0xC3uy; 0x28uy |]; utf8 "\"}" ]
              Expect.equal (refused "utf8" (ChannelJson.decodeClient (ReadOnlyMemory badUtf8))) (ChannelCodecError.InvalidUtf8 "message") "invalid UTF-8"
              Expect.equal (refused "surrogate" (jsonClient """{"type":"subscribe","id":1,"channel":"\ud800"}""")) (ChannelCodecError.InvalidUtf8 "channel") "lone surrogate"
              let line = """{"type":"unsubscribe","id":2,"channel":"c"}"""
              for extra in [ "x"; "}"; "{}"; "1"; " ,"; "\u0000" ] do
                  Expect.equal (refused extra (jsonClient (line + extra))) ChannelCodecError.TrailingBytes $"{extra}"
              Expect.isOk (jsonClient (" \r\n" + line + " \t\n")) "whitespace around the object is JSON's"
          }

          test "data and info nest at most 64 deep" {
              Expect.isOk (jsonClient (publishWith "" |> fun s -> s.Replace("\"data\":1", "\"data\":" + nested 64))) "64"
              Expect.equal (refused "65" (jsonClient (publishWith "" |> fun s -> s.Replace("\"data\":1", "\"data\":" + nested 65)))).Code "invalid-json" "65"
              let presence info = $"""{{"type":"presence","id":1,"channel":"c","members":[{{"client":"n","info":{info}}}]}}"""
              Expect.isOk (jsonServer (presence (nested 64))) "info 64"
              Expect.equal (refused "info 65" (jsonServer (presence (nested 65)))).Code "invalid-json" "info 65"
              Expect.isTrue (ChannelJson.isValue (ReadOnlySpan(utf8 (nested 64)))) "isValue 64"
              Expect.isFalse (ChannelJson.isValue (ReadOnlySpan(utf8 (nested 65)))) "isValue 65"
          }

          test "isValue accepts exactly one JSON value" {
              for text in [ "null"; "1"; "-0.5e3"; "\"é\""; "[]"; """{"a":[1,{"b":null}]}""" ] do
                  Expect.isTrue (ChannelJson.isValue (ReadOnlySpan(utf8 text))) text
              for text in [ ""; " 1"; "1 "; "1 2"; "[1"; "{}}"; "nul"; "'a'"; "\"\u0001\"" ] do
                  Expect.isFalse (ChannelJson.isValue (ReadOnlySpan(utf8 text))) text
              Expect.isFalse (ChannelJson.isValue (ReadOnlySpan [| 0x22uy; 0xFFuy; 0x22uy |])) "invalid UTF-8"
          }

          property "every client message round-trips"
          <| Prop.forAll arbClient (fun message ->
              Expect.equal (ok "client" (ChannelJson.decodeClient (ReadOnlyMemory(ChannelJson.encodeClient message)))) message "round trip")

          property "every server message round-trips"
          <| Prop.forAll arbServer (fun message ->
              Expect.equal (ok "server" (ChannelJson.decodeServer (ReadOnlyMemory(ChannelJson.encodeServer message)))) message "round trip")

          property "the size functions and the buffer writer agree with the arrays"
          <| Prop.forAll (Arb.fromGen (Gen.zip genClientMessage genServerMessage)) (fun (client, server) ->
              let writer = ArrayBufferWriter<byte>(1)
              ChannelJson.writeClient (client, writer)
              ChannelJson.writeServer (server, writer)
              let expected = Array.append (ChannelJson.encodeClient client) (ChannelJson.encodeServer server)
              Expect.equal (writer.WrittenSpan.ToArray()) expected "written"
              Expect.equal (ChannelJson.clientSize client + ChannelJson.serverSize server) expected.Length "sizes")

          property "a pub written from its parts, into an exact or a roomy span, is the message's encoding"
          <| Prop.forAll (Arb.fromGen (Gen.zip3 genChannel genPosition genData)) (fun (channel, at, payload) ->
              let expected = ChannelJson.encodeServer (ServerMessage.Publication(channel, at, payload))
              Expect.equal (ChannelJson.encodePublication (channel, at, payload.Json.Span)) expected "array"
              Expect.equal (ChannelJson.publicationSize (channel, at, payload.Json.Span)) expected.Length "size"
              for room in [ expected.Length; 1 <<< 16 ] do
                  let destination = Array.zeroCreate room
                  Expect.equal (ChannelJson.writePublication (channel, at, payload.Json.Span, Span destination)) expected.Length $"written into {room}"
                  Expect.equal destination[.. expected.Length - 1] expected $"bytes in {room}")

          property "arbitrary bytes never throw, and what decodes re-encodes to the same message"
          <| Prop.forAll
              (Arb.fromGen (Gen.oneof [ genBytes; genJsonish; mutated ChannelJson.encodeClient genClientMessage; mutated ChannelJson.encodeServer genServerMessage ]))
              (fun bytes ->
                  match ChannelJson.decodeClient (ReadOnlyMemory bytes) with
                  | Ok message -> Expect.equal (ok "again" (ChannelJson.decodeClient (ReadOnlyMemory(ChannelJson.encodeClient message)))) message "client"
                  | Error e -> Expect.isNotEmpty e.Code "a code"
                  match ChannelJson.decodeServer (ReadOnlyMemory bytes) with
                  | Ok message -> Expect.equal (ok "again" (ChannelJson.decodeServer (ReadOnlyMemory(ChannelJson.encodeServer message)))) message "server"
                  | Error e -> Expect.isNotEmpty e.Code "a code")

          property "no strict prefix of an encoding decodes (let alone as the same message)"
          <| Prop.forAll (Arb.fromGen (Gen.zip genClientMessage genServerMessage)) (fun (client, server) ->
              let clientBytes = ChannelJson.encodeClient client
              for cut in 0 .. clientBytes.Length - 1 do
                  Expect.isError (ChannelJson.decodeClient (ReadOnlyMemory(clientBytes, 0, cut))) $"client prefix {cut}"
              let serverBytes = ChannelJson.encodeServer server
              for cut in 0 .. serverBytes.Length - 1 do
                  Expect.isError (ChannelJson.decodeServer (ReadOnlyMemory(serverBytes, 0, cut))) $"server prefix {cut}")

          property "a byte after an encoding is refused unless it is whitespace"
          <| Prop.forAll (Arb.fromGen (Gen.zip genServerMessage (ArbMap.defaults |> ArbMap.generate<byte>))) (fun (message, extra) ->
              let bytes = Array.append (ChannelJson.encodeServer message) [| extra |]
              match ChannelJson.decodeServer (ReadOnlyMemory bytes) with
              | Ok decoded ->
                  Expect.contains [ 0x20uy; 0x09uy; 0x0Auy; 0x0Duy ] extra "only whitespace may follow"
                  Expect.equal decoded message "same message"
              | Error e -> Expect.contains [ "trailing-bytes"; "invalid-utf8" ] e.Code "refused as trailing (or, for a stray byte over 0x7F, as invalid UTF-8)") ]

// ---------------------------------------------------------------------------------------------

let private binaryClient (bytes: byte[]) = ChannelBinary.decodeClient (ReadOnlyMemory bytes)
let private binaryServer (bytes: byte[]) = ChannelBinary.decodeServer (ReadOnlyMemory bytes)

/// A varint, written out by hand.
let rec private varint (value: uint64) : byte list =
    if value < 0x80UL then [ byte value ] else (byte (value &&& 0x7FUL) ||| 0x80uy) :: varint (value >>> 7)

/// A length-prefixed string.
let private lp (text: string) = Array.append (Array.ofList (varint (uint64 (Encoding.UTF8.GetByteCount text)))) (utf8 text)

let private subscribeBytes (id: byte[]) (channel: byte[]) (flags: byte) (rest: byte[]) = Array.concat [ [| 1uy |]; id; channel; [| flags |]; rest ]

[<Tests>]
let binaryForm =
    testList
        "Channels protocol: binary form"
        [ test "a pub is kind 67, channel, epoch, offset, data" {
              let bytes = ChannelBinary.encodeServer (ServerMessage.Publication("room:lobby", position "k3J9" 300UL, data """{"text":"hi"}"""))
              let expected = Array.concat [ [| 67uy |]; lp "room:lobby"; lp "k3J9"; [| 0xACuy; 0x02uy |]; lp """{"text":"hi"}""" ]
              Expect.equal bytes expected "the contract's table, offset 300 as a two-byte varint"
          }

          test "a subscribe carries flags, and the position only when bit 0 is set" {
              let withSince = ChannelBinary.encodeClient (ClientMessage.Subscribe(1u, "room:lobby", ValueSome(position "k3J9" 41UL), true))
              Expect.equal withSince (subscribeBytes [| 1uy |] (lp "room:lobby") 3uy (Array.append (lp "k3J9") [| 41uy |])) "since and presence"
              let plain = ChannelBinary.encodeClient (ClientMessage.Subscribe(128u, "c", ValueNone, false))
              Expect.equal plain (subscribeBytes [| 0x80uy; 0x01uy |] (lp "c") 0uy [||]) "neither; id 128 as two bytes"
          }

          test "the other kinds follow the table" {
              let cases: (ServerMessage * byte[]) list =
                  [ ServerMessage.Welcome(1, "n1"), Array.concat [ [| 64uy; 1uy |]; lp "n1" ]
                    ServerMessage.Subscribed(1u, "c", position "e" 5UL, Recovery.NotRecovered), Array.concat [ [| 65uy; 1uy |]; lp "c"; lp "e"; [| 5uy; 2uy |] ]
                    ServerMessage.Unsubscribed(0u, "c"), Array.concat [ [| 66uy; 0uy |]; lp "c" ]
                    ServerMessage.Ack(3u, "c", position "e" 6UL), Array.concat [ [| 68uy; 3uy |]; lp "c"; lp "e"; [| 6uy |] ]
                    ServerMessage.Presence(4u, "c", [ memberOf "a" "1"; memberOf "b" "null" ]),
                    Array.concat [ [| 69uy; 4uy |]; lp "c"; [| 2uy |]; lp "a"; lp "1"; lp "b"; lp "null" ]
                    ServerMessage.Join("c", memberOf "a" "{}"), Array.concat [ [| 70uy |]; lp "c"; lp "a"; lp "{}" ]
                    ServerMessage.Leave("c", memberOf "a" "{}"), Array.concat [ [| 71uy |]; lp "c"; lp "a"; lp "{}" ]
                    ServerMessage.Response(5u, data "[]"), Array.concat [ [| 72uy; 5uy |]; lp "[]" ]
                    ServerMessage.Error(3u, ChannelErrorCode.Forbidden, "no"), Array.concat [ [| 73uy; 3uy |]; lp "forbidden"; lp "no" ] ]
              for message, expected in cases do
                  Expect.equal (ChannelBinary.encodeServer message) expected $"{message}"
                  Expect.equal (ok "back" (binaryServer expected)) message "decodes back"
              let clientCases: (ClientMessage * byte[]) list =
                  [ ClientMessage.Unsubscribe(2u, "c"), Array.concat [ [| 2uy; 2uy |]; lp "c" ]
                    ClientMessage.Publish(3u, "c", "k", data "1"), Array.concat [ [| 3uy; 3uy |]; lp "c"; lp "k"; lp "1" ]
                    ClientMessage.PresenceQuery(4u, "c"), Array.concat [ [| 4uy; 4uy |]; lp "c" ]
                    ClientMessage.Request(5u, "whoami", data "null"), Array.concat [ [| 5uy; 5uy |]; lp "whoami"; lp "null" ] ]
              for message, expected in clientCases do
                  Expect.equal (ChannelBinary.encodeClient message) expected $"{message}"
                  Expect.equal (ok "back" (binaryClient expected)) message "decodes back"
          }

          test "a pub written from its parts is the pub message's encoding" {
              let at = position "k3J9" 46UL
              let payload = utf8 "[1,2]"
              let expected = ChannelBinary.encodeServer (ServerMessage.Publication("room", at, data "[1,2]"))
              Expect.equal (ChannelBinary.encodePublication ("room", at, ReadOnlySpan payload)) expected "array"
              let size = ChannelBinary.publicationSize ("room", at, ReadOnlySpan payload)
              let destination = Array.zeroCreate size
              Expect.equal (ChannelBinary.writePublication ("room", at, ReadOnlySpan payload, Span destination)) size "written"
              Expect.equal destination expected "span"
              Expect.equal (ChannelBinary.writePublication ("room", at, ReadOnlySpan payload, Span(Array.zeroCreate (size - 1)))) 0 "too short: nothing"
          }

          test "data is a slice of the input" {
              let input = ChannelBinary.encodeClient (ClientMessage.Publish(1u, "c", "k", data """{"a": [1, "é"]}"""))
              match ok "publish" (ChannelBinary.decodeClient (ReadOnlyMemory input)) with
              | ClientMessage.Publish(_, _, _, decoded) ->
                  Expect.equal (Encoding.UTF8.GetString decoded.Json.Span) """{"a": [1, "é"]}""" "same text"
                  match MemoryMarshal.TryGetArray decoded.Json with
                  | true, segment -> Expect.isTrue (Object.ReferenceEquals(segment.Array, input)) "a slice of the input"
                  | _ -> failtest "not array-backed"
              | other -> failtestf "got %A" other
          }

          test "kinds of the other direction and unknown kinds are refused; no bytes is truncated" {
              Expect.equal (refused "empty" (binaryClient [||])) ChannelCodecError.Truncated "client"
              Expect.equal (refused "empty" (binaryServer [||])) ChannelCodecError.Truncated "server"
              for kind in [ 0uy; 6uy; 63uy; 64uy; 67uy; 255uy ] do
                  Expect.equal (refused $"{kind}" (binaryClient (Array.append [| kind; 1uy |] (lp "c")))) ChannelCodecError.UnknownType $"client kind {kind}"
              for kind in [ 0uy; 1uy; 3uy; 63uy; 74uy; 255uy ] do
                  Expect.equal (refused $"{kind}" (binaryServer (Array.append [| kind; 1uy |] (lp "c")))) ChannelCodecError.UnknownType $"server kind {kind}"
          }

          test "fields outside their ranges are refused" {
              let c = lp "c"
              Expect.equal (refused "id 0" (binaryClient (Array.append [| 2uy; 0uy |] c))) (ChannelCodecError.OutOfRange "id") "id 0"
              Expect.equal (refused "id 2^32" (binaryClient (Array.append [| 2uy; 0x80uy; 0x80uy; 0x80uy; 0x80uy; 0x10uy |] c))) (ChannelCodecError.OutOfRange "id") "id 2^32"
              Expect.equal (ok "id 2^32-1" (binaryClient (Array.append [| 2uy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0x0Fuy |] c))) (ClientMessage.Unsubscribe(UInt32.MaxValue, "c")) "2^32-1"
              Expect.equal (refused "empty channel" (binaryClient [| 2uy; 1uy; 0uy |])) (ChannelCodecError.OutOfRange "channel") "empty channel"
              let long = Array.concat [ [| 2uy; 1uy; 0x81uy; 0x02uy |]; Array.create 257 (byte 'a') ]
              Expect.equal (refused "257" (binaryClient long)) (ChannelCodecError.OutOfRange "channel") "257-byte channel"
              Expect.equal (refused "key" (binaryClient (Array.concat [ [| 3uy; 1uy |]; c; lp (String.replicate 65 "k"); lp "1" ]))) (ChannelCodecError.OutOfRange "key") "65-byte key"
              Expect.equal (refused "key" (binaryClient (Array.concat [ [| 3uy; 1uy |]; c; lp ""; lp "1" ]))) (ChannelCodecError.OutOfRange "key") "empty key"
              Expect.equal (refused "flags" (binaryClient (subscribeBytes [| 1uy |] c 4uy [||]))) (ChannelCodecError.BadFlags 4uy) "reserved flag bit"
              Expect.equal (refused "recovery" (binaryServer (Array.concat [ [| 65uy; 1uy |]; c; lp "e"; [| 5uy; 3uy |] ]))) (ChannelCodecError.OutOfRange "recovery") "recovery 3"
              Expect.equal (refused "code" (binaryServer (Array.concat [ [| 73uy; 1uy |]; lp "teapot"; lp "" ]))) (ChannelCodecError.OutOfRange "code") "unknown code"
              Expect.equal (refused "version" (binaryServer (Array.append [| 64uy; 0uy |] (lp "n")))) (ChannelCodecError.OutOfRange "version") "version 0"
              Expect.equal (refused "ack id 0" (binaryServer (Array.concat [ [| 68uy; 0uy |]; c; lp "e"; [| 1uy |] ]))) (ChannelCodecError.OutOfRange "id") "a reply's id is not 0"
          }

          test "strings must be UTF-8 and data one JSON value" {
              Expect.equal (refused "utf8" (binaryClient [| 2uy; 1uy; 1uy; 0xFFuy |])) (ChannelCodecError.InvalidUtf8 "channel") "channel"
              for text in [ ""; " 1"; "1 "; "nul"; "{"; "[1]]"; "'a'"; nested 65 ] do
                  Expect.equal (refused text (binaryClient (Array.concat [ [| 3uy; 1uy |]; lp "c"; lp "k"; lp text ]))) (ChannelCodecError.InvalidJson "data") $"data {text}"
              let badUtf8 = Array.concat [ [| 3uy; 1uy |]; lp "c"; lp "k"; [| 3uy; 0x22uy; 0xC3uy; 0x22uy |] ]
              Expect.equal (refused "utf8 data" (binaryClient badUtf8)) (ChannelCodecError.InvalidUtf8 "data") "data"
              Expect.equal (refused "info" (binaryServer (Array.concat [ [| 70uy |]; lp "c"; lp "a"; lp "{x}" ]))) (ChannelCodecError.InvalidJson "member.info") "info"
              Expect.isOk (binaryClient (Array.concat [ [| 3uy; 1uy |]; lp "c"; lp "k"; lp (nested 64) ])) "data 64 deep"
          }

          test "varints past 64 bits, lengths and counts past the end are refused" {
              Expect.equal (refused "varint" (binaryClient (Array.concat [ [| 2uy |]; Array.create 10 0xFFuy; [| 1uy |] ]))) ChannelCodecError.BadVarint "eleven bytes"
              Expect.equal (refused "length" (binaryClient [| 2uy; 1uy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0x0Fuy; 65uy |])) ChannelCodecError.Truncated "length 2^32-1"
              let count = Array.concat [ [| 69uy; 1uy |]; lp "c"; [| 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0xFFuy; 0x01uy |]; lp "a"; lp "1" ]
              Expect.equal (refused "count" (binaryServer count)) ChannelCodecError.Truncated "2^64-1 members, one present"
          }

          property "every client message round-trips"
          <| Prop.forAll arbClient (fun message ->
              Expect.equal (ok "client" (binaryClient (ChannelBinary.encodeClient message))) message "round trip")

          property "every server message round-trips"
          <| Prop.forAll arbServer (fun message ->
              Expect.equal (ok "server" (binaryServer (ChannelBinary.encodeServer message))) message "round trip")

          property "the size functions and the buffer writer agree with the arrays"
          <| Prop.forAll (Arb.fromGen (Gen.zip genClientMessage genServerMessage)) (fun (client, server) ->
              let writer = ArrayBufferWriter<byte>(1)
              ChannelBinary.writeClient (client, writer)
              ChannelBinary.writeServer (server, writer)
              let expected = Array.append (ChannelBinary.encodeClient client) (ChannelBinary.encodeServer server)
              Expect.equal (writer.WrittenSpan.ToArray()) expected "written"
              Expect.equal (ChannelBinary.clientSize client + ChannelBinary.serverSize server) expected.Length "sizes")

          property "a pub written from its parts, into an exact or a roomy span, is the message's encoding"
          <| Prop.forAll (Arb.fromGen (Gen.zip3 genChannel genPosition genData)) (fun (channel, at, payload) ->
              let expected = ChannelBinary.encodeServer (ServerMessage.Publication(channel, at, payload))
              Expect.equal (ChannelBinary.encodePublication (channel, at, payload.Json.Span)) expected "array"
              Expect.equal (ChannelBinary.publicationSize (channel, at, payload.Json.Span)) expected.Length "size"
              for room in [ expected.Length; 1 <<< 16 ] do
                  let destination = Array.zeroCreate room
                  Expect.equal (ChannelBinary.writePublication (channel, at, payload.Json.Span, Span destination)) expected.Length $"written into {room}"
                  Expect.equal destination[.. expected.Length - 1] expected $"bytes in {room}")

          property "arbitrary bytes never throw, and what decodes re-encodes to the same message"
          <| Prop.forAll
              (Arb.fromGen (Gen.oneof [ genBytes; mutated ChannelBinary.encodeClient genClientMessage; mutated ChannelBinary.encodeServer genServerMessage ]))
              (fun bytes ->
                  match binaryClient bytes with
                  | Ok message -> Expect.equal (ok "again" (binaryClient (ChannelBinary.encodeClient message))) message "client"
                  | Error e -> Expect.isNotEmpty e.Code "a code"
                  match binaryServer bytes with
                  | Ok message -> Expect.equal (ok "again" (binaryServer (ChannelBinary.encodeServer message))) message "server"
                  | Error e -> Expect.isNotEmpty e.Code "a code")

          property "every strict prefix of an encoding is truncated"
          <| Prop.forAll (Arb.fromGen (Gen.zip genClientMessage genServerMessage)) (fun (client, server) ->
              let clientBytes = ChannelBinary.encodeClient client
              for cut in 0 .. clientBytes.Length - 1 do
                  Expect.equal (refused $"client prefix {cut}" (ChannelBinary.decodeClient (ReadOnlyMemory(clientBytes, 0, cut)))) ChannelCodecError.Truncated "client"
              let serverBytes = ChannelBinary.encodeServer server
              for cut in 0 .. serverBytes.Length - 1 do
                  Expect.equal (refused $"server prefix {cut}" (ChannelBinary.decodeServer (ReadOnlyMemory(serverBytes, 0, cut)))) ChannelCodecError.Truncated "server")

          property "any byte after an encoding is refused as trailing"
          <| Prop.forAll (Arb.fromGen (Gen.zip3 genClientMessage genServerMessage (ArbMap.defaults |> ArbMap.generate<byte>))) (fun (client, server, extra) ->
              Expect.equal (refused "client" (binaryClient (Array.append (ChannelBinary.encodeClient client) [| extra |]))) ChannelCodecError.TrailingBytes "client"
              Expect.equal (refused "server" (binaryServer (Array.append (ChannelBinary.encodeServer server) [| extra |]))) ChannelCodecError.TrailingBytes "server")

          test "the contract's JSON lines read the same through the binary form" {
              for line, message in contractClientLines do
                  let fromJson = ok line (jsonClient line)
                  Expect.equal (ok "binary" (binaryClient (ChannelBinary.encodeClient fromJson))) message line
              for line, message in contractServerLines do
                  let fromJson = ok line (jsonServer line)
                  Expect.equal (ok "binary" (binaryServer (ChannelBinary.encodeServer fromJson))) message line
          }

          property "the forms agree: decode JSON, encode binary, decode binary gives the same message, and back"
          <| Prop.forAll (Arb.fromGen (Gen.zip genClientMessage genServerMessage)) (fun (client, server) ->
              let fromJson = ok "json" (ChannelJson.decodeClient (ReadOnlyMemory(ChannelJson.encodeClient client)))
              let viaBinary = ok "binary" (binaryClient (ChannelBinary.encodeClient fromJson))
              Expect.equal viaBinary fromJson "client, JSON to binary"
              Expect.equal (ok "json again" (ChannelJson.decodeClient (ReadOnlyMemory(ChannelJson.encodeClient viaBinary)))) client "client, binary to JSON"
              let fromJson = ok "json" (ChannelJson.decodeServer (ReadOnlyMemory(ChannelJson.encodeServer server)))
              let viaBinary = ok "binary" (binaryServer (ChannelBinary.encodeServer fromJson))
              Expect.equal viaBinary fromJson "server, JSON to binary"
              Expect.equal (ok "json again" (ChannelJson.decodeServer (ReadOnlyMemory(ChannelJson.encodeServer viaBinary)))) server "server, binary to JSON")

          property "whatever the JSON form accepts from arbitrary bytes, the binary form carries unchanged"
          <| Prop.forAll
              (Arb.fromGen (Gen.oneof [ genJsonish; mutated ChannelJson.encodeClient genClientMessage; mutated ChannelJson.encodeServer genServerMessage ]))
              (fun bytes ->
                  match ChannelJson.decodeClient (ReadOnlyMemory bytes) with
                  | Ok message -> Expect.equal (ok "binary" (binaryClient (ChannelBinary.encodeClient message))) message "client"
                  | Error _ -> ()
                  match ChannelJson.decodeServer (ReadOnlyMemory bytes) with
                  | Ok message -> Expect.equal (ok "binary" (binaryServer (ChannelBinary.encodeServer message))) message "server"
                  | Error _ -> ()) ]

module Realtime.Protocol.Tests.DevServerMessagesTests

open System
open System.Buffers
open System.Text
open System.Text.Encodings.Web
open System.Text.Json
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.DevServerMessages
open Realtime.Protocol.Tests.Properties

let private encoded message =
    match encode message with
    | Ok text -> text
    | Error e -> failtestf "encode failed: %s" e.Message

let private encodeError message =
    match encode message with
    | Ok text -> failtestf "expected an error, got %s" text
    | Error e -> e

let private decodeError text =
    match decode text with
    | Ok m -> failtestf "expected an error, got %A" m
    | Error e -> e

let private browserError text =
    match decodeBrowser text with
    | Ok m -> failtestf "expected an error, got %A" m
    | Error e -> e

[<Tests>]
let examples =
    testList
        "Dev-server messages"
        [ test "an import encodes with its arguments as JSON values" {
              Expect.equal
                  (encoded (Import("/foo.js", [| "1"; "\"a\""; "{\"x\":[true,null]}" |])))
                  """{"type":"import","data":{"importPath":"/foo.js","args":[1,"a",{"x":[true,null]}]}}"""
                  "exact text"
          }

          test "an import without arguments encodes an empty array" {
              Expect.equal
                  (encoded (Import("/foo.js", [||])))
                  """{"type":"import","data":{"importPath":"/foo.js","args":[]}}"""
                  "exact text"
          }

          test "raw JSON arguments are canonicalised" {
              Expect.equal
                  (encoded (Import("/a.js", [| " { \"x\" : [ 1 , 2.50 ] } "; "\"\\u0041\\/\"" |])))
                  """{"type":"import","data":{"importPath":"/a.js","args":[{"x":[1,2.50]},"A/"]}}"""
                  "minified, strings re-escaped, numbers as written"
          }

          test "a console log escapes quotes, backslashes and control characters" {
              Expect.equal
                  (encoded (ConsoleLog "say \"hi\"\\\n\t\u0001 caf\u00e9 \U0001F600 <b>&"))
                  "{\"type\":\"console-log\",\"data\":{\"text\":\"say \\\"hi\\\"\\\\\\n\\t\\u0001 caf\u00e9 \\uD83D\\uDE00 <b>&\"}}"
                  "exact text"
          }

          test "a response echoes a numeric or string id" {
              Expect.equal
                  (encoded (Response(NumberId 3L, "{\"ok\": true}")))
                  """{"type":"message-response","id":3,"response":{"ok":true}}"""
                  "number"

              Expect.equal
                  (encoded (Response(StringId "a\"b", "null")))
                  """{"type":"message-response","id":"a\"b","response":null}"""
                  "string"
          }

          test "a custom message is written as its canonical object" {
              Expect.equal
                  (encoded (Custom "{ \"type\": \"hmr\", \"path\": \"/a.js\" }"))
                  """{"type":"hmr","path":"/a.js"}"""
                  "exact text"
          }

          test "encoding bad parts gives errors, not exceptions" {
              Expect.equal (encodeError (Custom "{\"type\":\"import\"}")) (ReservedType "import") "reserved"
              Expect.equal (encodeError (Custom "{\"type\":\"message-response\"}")).Code "reserved-type" "reserved"
              Expect.equal (encodeError (Custom "nope")).Code "not-json" "custom not JSON"
              Expect.equal (encodeError (Custom "[]")) NotAnObject "custom not an object"
              Expect.equal (encodeError (Custom "{}")) MissingType "custom without type"
              Expect.equal (encodeError (Custom "{\"type\":2}")) TypeNotString "custom type not a string"
              Expect.equal (encodeError (Custom null)).Code "not-json" "null custom"
              Expect.equal (encodeError (Import(null, [||]))).Code "invalid-import" "null path"
              Expect.equal (encodeError (Import("/a.js", null))).Code "invalid-import" "null args"
              Expect.equal (encodeError (Import("/a.js", [| "1"; "{" |]))).Code "invalid-import" "bad arg"
              Expect.equal (encodeError (Import("/a.js", [| "1 2" |]))).Code "invalid-import" "two values"
              Expect.equal (encodeError (Import("/a.js", [| null |]))).Code "invalid-import" "null arg"
              Expect.equal (encodeError (ConsoleLog null)).Code "invalid-console-log" "null text"
              Expect.equal (encodeError (Response(NumberId 1L, "undefined"))).Code "invalid-response" "bad response"
              Expect.equal (encodeError (Response(NumberId 1L, null))).Code "invalid-response" "null response"
              Expect.equal (encodeError (Response(StringId null, "1"))).Code "invalid-response" "null string id"
              Expect.equal (encodeError (Response(Unchecked.defaultof<RequestId>, "1"))).Code "invalid-response" "null id"
              Expect.equal (encodeError Unchecked.defaultof<ServerMessage>).Code "not-json" "null message"
          }

          test "unpaired surrogates are written as U+FFFD" {
              Expect.equal
                  (encoded (ConsoleLog "a\ud800b"))
                  "{\"type\":\"console-log\",\"data\":{\"text\":\"a\ufffdb\"}}"
                  "replaced"
          }

          test "decoding each server message kind" {
              Expect.equal
                  (decode """{"type":"import","data":{"importPath":"/foo.js","args":[1, "a", {"x" : null}]}}""")
                  (Ok(Import("/foo.js", [| "1"; "\"a\""; "{\"x\":null}" |])))
                  "import"

              Expect.equal
                  (decode """{"type":"import","data":{"importPath":"/foo.js"}}""")
                  (Ok(Import("/foo.js", [||])))
                  "import without args"

              Expect.equal
                  (decode """{"type":"console-log","data":{"text":"a\"\u00e9\n"}}""")
                  (Ok(ConsoleLog "a\"\u00e9\n"))
                  "console-log"

              Expect.equal
                  (decode """{"type":"message-response","id":7,"response":[1, 2]}""")
                  (Ok(Response(NumberId 7L, "[1,2]")))
                  "response, number id"

              Expect.equal
                  (decode """{"type":"message-response","id":"r1","response":"x"}""")
                  (Ok(Response(StringId "r1", "\"x\"")))
                  "response, string id"

              Expect.equal
                  (decode """{"type":"message-response","id":7}""")
                  (Ok(Response(NumberId 7L, "null")))
                  "missing response reads as null"

              Expect.equal
                  (decode """ {"type": "hmr", "changed": ["/a.js"]} """)
                  (Ok(Custom """{"type":"hmr","changed":["/a.js"]}"""))
                  "custom"
          }

          test "decoding errors carry stable codes" {
              let cases =
                  [ "not json", "not-json"
                    "", "not-json"
                    "{\"type\":\"x\"} trailing", "not-json"
                    "{\"type\":\"x\",}", "not-json"
                    "{\"type\":\"\\ud800\"}", "not-json"
                    String.replicate 100 "[" + String.replicate 100 "]", "not-json"
                    "[1]", "not-an-object"
                    "\"type\"", "not-an-object"
                    "null", "not-an-object"
                    "{}", "missing-type"
                    "{\"Type\":\"x\"}", "missing-type"
                    "{\"type\":1}", "type-not-string"
                    "{\"type\":null}", "type-not-string"
                    "{\"type\":\"import\"}", "invalid-import"
                    "{\"type\":\"import\",\"data\":[]}", "invalid-import"
                    "{\"type\":\"import\",\"data\":{}}", "invalid-import"
                    "{\"type\":\"import\",\"data\":{\"importPath\":1}}", "invalid-import"
                    "{\"type\":\"import\",\"data\":{\"importPath\":\"/a\",\"args\":{}}}", "invalid-import"
                    "{\"type\":\"import\",\"data\":{\"importPath\":\"/a\",\"args\":null}}", "invalid-import"
                    "{\"type\":\"console-log\"}", "invalid-console-log"
                    "{\"type\":\"console-log\",\"data\":{\"text\":5}}", "invalid-console-log"
                    "{\"type\":\"message-response\",\"response\":1}", "invalid-response"
                    "{\"type\":\"message-response\",\"id\":null}", "invalid-response"
                    "{\"type\":\"message-response\",\"id\":true}", "invalid-id"
                    "{\"type\":\"message-response\",\"id\":1.5}", "invalid-id"
                    "{\"type\":\"message-response\",\"id\":1e3}", "invalid-id"
                    "{\"type\":\"message-response\",\"id\":99999999999999999999}", "invalid-id" ]

              for text, code in cases do
                  let e = decodeError text
                  Expect.equal e.Code code text
                  Expect.isNotEmpty e.Message text

              Expect.equal (decodeError null) (NotJson "The text is null.") "null"
          }

          test "a NotJson error carries the parser's detail" {
              match decodeError "{\"type\":" with
              | NotJson detail -> Expect.isNotEmpty detail "detail"
              | e -> failtestf "unexpected %A" e
          }

          test "every error has a code and a message" {
              let errors =
                  [ NotJson "d"
                    NotAnObject
                    MissingType
                    TypeNotString
                    InvalidId
                    InvalidImport "d"
                    InvalidConsoleLog "d"
                    InvalidResponse "d"
                    ReservedType "import"
                    UnsafeImportPath "//evil.example/x.js" ]

              Expect.equal
                  (errors |> List.map (fun e -> e.Code))
                  [ "not-json"
                    "not-an-object"
                    "missing-type"
                    "type-not-string"
                    "invalid-id"
                    "invalid-import"
                    "invalid-console-log"
                    "invalid-response"
                    "reserved-type"
                    "unsafe-import-path" ]
                  "codes"

              for e in errors do
                  Expect.isNotEmpty e.Message e.Code
          }

          test "a browser message keeps its type, id and raw text" {
              let text = """{ "type": "run-test", "id": 7, "args": {"a": "\u00e9"} }"""

              Expect.equal
                  (decodeBrowser text)
                  (Ok
                      { Type = "run-test"
                        Id = ValueSome(NumberId 7L)
                        Json = text })
                  "request"

              Expect.equal
                  (decodeBrowser """{"type":"ping","id":"x-1"}""")
                  (Ok
                      { Type = "ping"
                        Id = ValueSome(StringId "x-1")
                        Json = """{"type":"ping","id":"x-1"}""" })
                  "string id"

              Expect.equal
                  (decodeBrowser """{"type":"hello"}""")
                  (Ok
                      { Type = "hello"
                        Id = ValueNone
                        Json = """{"type":"hello"}""" })
                  "notification"

              Expect.equal
                  (decodeBrowser """{"type":"hello","id":null}""" |> Result.map (fun m -> m.Id))
                  (Ok ValueNone)
                  "null id is no id"
          }

          test "browser message errors" {
              Expect.equal (browserError "x").Code "not-json" "not json"
              Expect.equal (browserError null).Code "not-json" "null"
              Expect.equal (browserError "1") NotAnObject "number"
              Expect.equal (browserError "{\"id\":1}") MissingType "no type"
              Expect.equal (browserError "{\"type\":[]}") TypeNotString "array type"
              Expect.equal (browserError "{\"type\":\"x\",\"id\":{}}") InvalidId "object id"
              Expect.equal (browserError "{\"type\":\"x\",\"id\":2.5}") InvalidId "fractional id"
          }

          test "a browser cannot send the built-in types: only the server's API sends them" {
              Expect.equal
                  (browserError """{"type":"import","data":{"importPath":"https://evil.example/x.js","args":[]}}""")
                  (ReservedType "import")
                  "import"

              Expect.equal (browserError """{"type":"console-log","data":{"text":"hi"}}""") (ReservedType "console-log") "console-log"
              Expect.equal (browserError """{"type":"message-response","id":1,"response":2}""") (ReservedType "message-response") "message-response"
              Expect.isTrue (decodeBrowser """{"type":"Import"}""" |> Result.isOk) "types are case-sensitive, as the client's switch is"
              Expect.isTrue (decodeBrowser """{"type":"import-map"}""" |> Result.isOk) "only the exact built-in names"

              for t in [ "import"; "console-log"; "message-response" ] do
                  Expect.isTrue (isBuiltInType t) t

              for t in [ ""; "Import"; "imports"; "hello"; "message-response-text" ] do
                  Expect.isFalse (isBuiltInType t) t

              Expect.isFalse (isBuiltInType null) "null"
          }

          test "import paths: same-origin paths and data: URLs only" {
              for path in
                  [ "/"
                    "/foo.js"
                    "/a/b/c.js?v=1#x"
                    "/__realtime__/reload.js"
                    "/caf\u00e9.js"
                    "/a//b.js"
                    "/%2F%2Fevil.example/x.js"
                    "data:text/javascript,window.location.reload()"
                    "DATA:text/javascript,export default () => 1"
                    "data:text/javascript;base64,ZXhwb3J0IGRlZmF1bHQgMQ==" ] do
                  Expect.isTrue (isAllowedImportPath path) path
                  Expect.isOk (encode (Import(path, [||]))) path

              for path in
                  [ "//evil.example/x.js"
                    "/\\evil.example/x.js"
                    "/\t/evil.example/x.js"
                    "/\n/evil.example/x.js"
                    "/a\\b.js"
                    "/a\u0000.js"
                    "/a\u007f.js"
                    "http://evil.example/x.js"
                    "https://evil.example/x.js"
                    "HTTPS://evil.example/x.js"
                    "javascript:alert(1)"
                    "blob:http://127.0.0.1/x"
                    "foo.js"
                    "./foo.js"
                    "../foo.js"
                    " /foo.js"
                    " data:text/javascript,1"
                    "" ] do
                  Expect.isFalse (isAllowedImportPath path) path
                  Expect.equal (encodeError (Import(path, [||]))) (UnsafeImportPath path) path

              Expect.isFalse (isAllowedImportPath null) "null"
              Expect.equal (encodeError (Import(null, [||]))).Code "invalid-import" "null path is an invalid import"
          }

          test "decoding an import of a path the rule refuses is an error" {
              Expect.equal
                  (decodeError """{"type":"import","data":{"importPath":"//evil.example/x.js","args":[]}}""")
                  (UnsafeImportPath "//evil.example/x.js")
                  "protocol-relative"

              Expect.equal
                  (decodeError """{"type":"import","data":{"importPath":"javascript:alert(1)"}}""").Code
                  "unsafe-import-path"
                  "javascript: URL"
          } ]

// ---- properties --------------------------------------------------------------------------------

type private Json =
    | JNull
    | JBool of bool
    | JInt of int64
    | JText of string
    | JArray of Json list
    | JObject of (string * Json) list

/// Replaces unpaired surrogates with U+FFFD, as the encoder does.
let private sanitize (s: string) =
    let sb = StringBuilder()
    let mutable i = 0

    while i < s.Length do
        let c = s[i]

        if Char.IsHighSurrogate c && i + 1 < s.Length && Char.IsLowSurrogate s[i + 1] then
            sb.Append(c).Append(s[i + 1]) |> ignore
            i <- i + 2
        else
            sb.Append(if Char.IsSurrogate c then '\ufffd' else c) |> ignore
            i <- i + 1

    sb.ToString()

let private anyString =
    ArbMap.defaults |> ArbMap.generate<string> |> Gen.map (fun s -> if isNull s then "" else s)

let private genText =
    Gen.frequency
        [ 3, Gen.map sanitize anyString
          1,
          Gen.elements
              [ ""
                "\""
                "\\"
                "\u0000\u001f\u007f"
                "\n\r\t\b\f"
                "caf\u00e9"
                "\U0001F600"
                "\u2028\u2029"
                "</script>"
                "a'b&c+d" ] ]

let rec private genJson depth =
    let leaf =
        Gen.oneof
            [ Gen.constant JNull
              Gen.map JBool (Gen.elements [ false; true ])
              Gen.map JInt (ArbMap.defaults |> ArbMap.generate<int64>)
              Gen.map JText genText ]

    if depth = 0 then
        leaf
    else
        Gen.frequency
            [ 4, leaf
              1, Gen.map JArray (Gen.resize 4 (Gen.listOf (genJson (depth - 1))))
              1, Gen.map JObject (Gen.resize 4 (Gen.listOf (Gen.zip genText (genJson (depth - 1))))) ]

let rec private writeJson (w: Utf8JsonWriter) json =
    match json with
    | JNull -> w.WriteNullValue()
    | JBool b -> w.WriteBooleanValue b
    | JInt n -> w.WriteNumberValue n
    | JText s -> w.WriteStringValue s
    | JArray items ->
        w.WriteStartArray()

        for item in items do
            writeJson w item

        w.WriteEndArray()
    | JObject properties ->
        w.WriteStartObject()

        for name, value in properties do
            w.WritePropertyName name
            writeJson w value

        w.WriteEndObject()

/// The canonical text of a generated value: minified, with the same escaping as the encoder.
let private render json =
    let buffer = ArrayBufferWriter<byte>()

    using (new Utf8JsonWriter(buffer, JsonWriterOptions(Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping))) (fun w ->
        writeJson w json
        w.Flush())

    Encoding.UTF8.GetString(buffer.WrittenSpan)

let private reserved = set [ "import"; "console-log"; "message-response" ]

/// Import paths the rule accepts: "/" then text without slashes at its start, backslashes or
/// control characters, or a data: URL with any text.
let private genImportPath =
    let clean (s: string) =
        String(s |> Seq.filter (fun c -> c <> '\\' && c >= ' ' && c <> '\u007f') |> Array.ofSeq).TrimStart('/')

    Gen.oneof
        [ Gen.map (fun s -> "/" + clean s) genText
          Gen.map (fun s -> "data:text/javascript," + s) genText ]

/// Import paths the rule refuses: another origin in the forms a URL parser reads as one, schemes,
/// relative paths, and control characters spliced into a good path.
let private genUnsafeImportPath =
    gen {
        let! host = Gen.elements [ "evil.example"; "127.0.0.2:8000"; "[::1]"; "" ]
        let! rest = Gen.map (fun (s: string) -> s.Replace("\\", "")) genText
        let! control = Gen.elements [ '\t'; '\n'; '\r'; '\u0000'; '\u001f'; '\u007f'; '\\' ]
        let! chosen = Gen.choose (0, rest.Length)
        // Never between the two halves of a surrogate pair: a lone surrogate is not text JSON can carry.
        let at = if chosen < rest.Length && Char.IsLowSurrogate rest[chosen] then chosen - 1 else chosen

        return!
            Gen.elements
                [ "//" + host + "/" + rest
                  "/\\" + host + "/" + rest
                  "\\\\" + host + "/" + rest
                  "http://" + host + "/" + rest
                  "https://" + host + "/" + rest
                  "javascript:" + rest
                  "ws://" + host
                  "x" + rest
                  "./" + rest
                  "/" + rest.Insert(at, string control) ]
    }

let private genRequestId =
    Gen.oneof
        [ Gen.map NumberId (ArbMap.defaults |> ArbMap.generate<int64>)
          Gen.map StringId genText ]

let private genMessage =
    let value = genJson 3

    Gen.oneof
        [ Gen.map2 (fun path args -> Import(path, args |> List.map render |> Array.ofList)) genImportPath (Gen.resize 5 (Gen.listOf value))
          Gen.map ConsoleLog genText
          Gen.map2 (fun id response -> Response(id, render response)) genRequestId value
          Gen.map2
              (fun messageType fields ->
                  let messageType = if reserved.Contains messageType then "x-" + messageType else messageType
                  let fields = fields |> List.filter (fun (name, _) -> name <> "type")
                  Custom(render (JObject(("type", JText messageType) :: fields))))
              genText
              (Gen.resize 4 (Gen.listOf (Gen.zip genText value))) ]

/// Strings that are often nearly messages: encodings cut short or with one character changed.
let private genNearlyJson =
    gen {
        let! message = genMessage
        let text = encoded message
        let! cut = Gen.choose (0, text.Length)
        let! at = Gen.choose (0, max 0 (text.Length - 1))
        let! c = Gen.elements [ '"'; '\\'; '{'; '}'; '['; ']'; ','; ':'; 'x'; '1'; '\u0000'; '\ud800' ]
        let! mutate = Gen.elements [ false; true ]

        return
            if mutate && text.Length > 0 then
                text.Substring(0, at) + string c + text.Substring(at + 1)
            else
                text.Substring(0, cut)
    }

[<Tests>]
let properties =
    testList
        "Dev-server messages: properties"
        [ property "decode (encode message) gives the message back"
          <| Prop.forAll (Arb.fromGen genMessage) (fun message ->
              Expect.equal (decode (encoded message)) (Ok message) "round trip")

          property "encoding canonicalises: encode is stable across a decode"
          <| Prop.forAll (Arb.fromGen (genJson 3)) (fun json ->
              let text = encoded (Import("/x.js", [| render json |]))

              match decode text with
              | Ok message -> Expect.equal (encoded message) text "same text"
              | Error e -> failtestf "%s" e.Message)

          property "a browser message decodes its type and id"
          <| Prop.forAll (Arb.fromGen (Gen.zip genText (Gen.optionOf genRequestId))) (fun (messageType, id) ->
              let fields =
                  match id with
                  | Some(NumberId n) -> [ "id", JInt n ]
                  | Some(StringId s) -> [ "id", JText s ]
                  | None -> []

              let messageType = if reserved.Contains messageType then "x-" + messageType else messageType
              let text = render (JObject(("type", JText messageType) :: fields))

              Expect.equal
                  (decodeBrowser text)
                  (Ok
                      { Type = messageType
                        Id = ValueOption.ofOption id
                        Json = text })
                  "decoded")

          property "strings with unpaired surrogates encode with U+FFFD"
          <| Prop.forAll (Arb.fromGen anyString) (fun text ->
              Expect.equal (decode (encoded (ConsoleLog text))) (Ok(ConsoleLog(sanitize text))) "sanitized")

          property "decode never throws on arbitrary strings"
          <| Prop.forAll (Arb.fromGen (ArbMap.defaults |> ArbMap.generate<string>)) (fun text ->
              decode text |> ignore
              decodeBrowser text |> ignore)

          property "decode never throws on nearly valid messages"
          <| Prop.forAll (Arb.fromGen genNearlyJson) (fun text ->
              match decode text, decodeBrowser text with
              | Error e, _ -> Expect.isNotEmpty e.Code "a code"
              | Ok(Custom _), Ok _ -> ()
              | Ok(Import _ | ConsoleLog _ | Response _), Error(ReservedType _) -> ()
              | Ok m, result -> failtestf "a custom server message is a browser message, a built-in one is refused: %A, %A" m result)

          property "a browser message of a built-in type is refused whatever it carries"
          <| Prop.forAll (Arb.fromGen (Gen.zip (Gen.elements (List.ofSeq reserved)) (Gen.resize 4 (Gen.listOf (Gen.zip genText (genJson 2)))))) (fun (messageType, fields) ->
              let fields = fields |> List.filter (fun (name, _) -> name <> "type")
              let text = render (JObject(("type", JText messageType) :: fields))
              Expect.equal (decodeBrowser text) (Error(ReservedType messageType)) text)

          property "an import of an unsafe path is refused by encode and decode"
          <| Prop.forAll (Arb.fromGen genUnsafeImportPath) (fun path ->
              Expect.isFalse (isAllowedImportPath path) path
              Expect.equal (encode (Import(path, [| "1" |]))) (Error(UnsafeImportPath path)) "encode"
              let text = render (JObject [ "type", JText "import"; "data", JObject [ "importPath", JText path; "args", JArray [] ] ])
              Expect.equal (decode text) (Error(UnsafeImportPath path)) "decode")

          property "an import of a same-origin path or data: URL round-trips"
          <| Prop.forAll (Arb.fromGen genImportPath) (fun path ->
              Expect.isTrue (isAllowedImportPath path) path
              Expect.equal (decode (encoded (Import(path, [||])))) (Ok(Import(path, [||]))) "round trip")

          property "encode never throws on arbitrary parts"
          <| Prop.forAll (Arb.fromGen (Gen.zip3 (ArbMap.defaults |> ArbMap.generate<string>) (ArbMap.defaults |> ArbMap.generate<string[]>) (ArbMap.defaults |> ArbMap.generate<int64>))) (fun (s, parts, n) ->
              for message in [ Import(s, parts); ConsoleLog s; Custom s; Response(NumberId n, s); Response(StringId s, s) ] do
                  match encode message with
                  | Ok text -> Expect.isOk (decode text) "an encoding decodes"
                  | Error e -> Expect.isNotEmpty e.Code "a code") ]

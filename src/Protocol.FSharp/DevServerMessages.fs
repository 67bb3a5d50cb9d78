/// The JSON text messages exchanged between a dev server and the client script it injects into
/// the browser: imports, console logs, custom messages and responses to browser requests.
/// Arbitrary JSON values (import arguments, responses, custom messages) are carried as JSON text
/// in canonical form (minified, strings re-escaped, numbers as written), so equal values compare
/// equal. Decoding and encoding never throw: problems come back as MessageError values.
module Realtime.Protocol.DevServerMessages

open System
open System.Buffers
open System.Text
open System.Text.Encodings.Web
open System.Text.Json

/// The id of a browser request, echoed back in the response.
type RequestId =
    /// A numeric id (an integer written without fraction or exponent).
    | NumberId of number: int64
    /// A string id.
    | StringId of text: string

/// A message from the dev server to the browser.
type ServerMessage =
    /// {"type":"import","data":{"importPath":...,"args":[...]}}: the browser imports the module
    /// and calls its default export with the arguments (each one JSON text).
    | Import of importPath: string * args: string[]
    /// {"type":"console-log","data":{"text":...}}: the browser logs the text.
    | ConsoleLog of text: string
    /// Any other message: a JSON object (as JSON text) whose "type" is a string other than the built-in ones.
    | Custom of json: string
    /// {"type":"message-response","id":...,"response":...}: the answer to a browser request
    /// (the response is JSON text).
    | Response of id: RequestId * response: string

/// A message from the browser: a JSON object with a string "type".
type BrowserMessage =
    {
        /// The "type" property.
        Type: string
        /// The "id" property when present and not null: the message is a request expecting a Response.
        Id: RequestId voption
        /// The whole message, exactly as received.
        Json: string
    }

/// Why a text is not a valid message (or a message cannot be encoded).
type MessageError =
    /// The text is not JSON (or is null, or escapes an unpaired surrogate); carries the parser's detail.
    | NotJson of detail: string
    /// The JSON value is not an object.
    | NotAnObject
    /// The object has no "type" property.
    | MissingType
    /// The "type" property is not a string.
    | TypeNotString
    /// The "id" property is neither null, an integer, nor a string.
    | InvalidId
    /// An import without an object "data", a string "importPath", or with non-array "args".
    | InvalidImport of detail: string
    /// A console-log without an object "data" or a string "text".
    | InvalidConsoleLog of detail: string
    /// A message-response without an id, or whose response is not JSON.
    | InvalidResponse of detail: string
    /// A Custom message, or a message from the browser, whose type is a built-in one ("import",
    /// "console-log", "message-response"): only the server sends those, through its own API.
    | ReservedType of messageType: string
    /// An import whose path is neither a same-origin absolute path ("/...") nor a data: URL.
    | UnsafeImportPath of importPath: string

    /// A stable code: "not-json", "not-an-object", "missing-type", "type-not-string", "invalid-id",
    /// "invalid-import", "invalid-console-log", "invalid-response", "reserved-type", "unsafe-import-path".
    member e.Code: string =
        match e with
        | NotJson _ -> "not-json"
        | NotAnObject -> "not-an-object"
        | MissingType -> "missing-type"
        | TypeNotString -> "type-not-string"
        | InvalidId -> "invalid-id"
        | InvalidImport _ -> "invalid-import"
        | InvalidConsoleLog _ -> "invalid-console-log"
        | InvalidResponse _ -> "invalid-response"
        | ReservedType _ -> "reserved-type"
        | UnsafeImportPath _ -> "unsafe-import-path"

    /// A human-readable explanation.
    member e.Message: string =
        match e with
        | NotJson detail -> "The text is not JSON: " + detail
        | NotAnObject -> "The message is not a JSON object."
        | MissingType -> "The message has no \"type\" property."
        | TypeNotString -> "The message's \"type\" property is not a string."
        | InvalidId -> "The message's \"id\" property must be an integer or a string."
        | InvalidImport detail -> "Invalid import message: " + detail
        | InvalidConsoleLog detail -> "Invalid console-log message: " + detail
        | InvalidResponse detail -> "Invalid message-response: " + detail
        | ReservedType t -> "Only the server sends the built-in type \"" + t + "\", through its own API."
        | UnsafeImportPath path ->
            let shown = if isNull path || path.Length <= 100 then path else path.Substring(0, 100) + "..."
            "An import path must be a same-origin path starting with a single \"/\" or a data: URL, not \"" + shown + "\"."

[<Literal>]
let private ImportType = "import"

[<Literal>]
let private ConsoleLogType = "console-log"

[<Literal>]
let private ResponseType = "message-response"

/// True for the types only the server sends ("import", "console-log", "message-response"): a
/// browser's message never has one, so relaying what a page sent cannot make other pages import
/// a module, log, or resolve their requests.
let isBuiltInType (messageType: string) : bool =
    match messageType with
    | ImportType
    | ConsoleLogType
    | ResponseType -> true
    | _ -> false

/// True when a page may be told to import `importPath`: a data: URL, or a path on the dev server's
/// own origin, starting with one "/" and followed by neither "/" nor a backslash (the URL parser
/// reads both "//host" and "/\host" as another host: WHATWG URL, special authority slashes), without
/// backslashes or control characters anywhere (the parser drops tabs and newlines, so "/\t/host"
/// would become "//host").
let isAllowedImportPath (importPath: string) : bool =
    if isNull importPath then
        false
    elif importPath.StartsWith("data:", StringComparison.OrdinalIgnoreCase) then
        true
    else
        importPath.StartsWith '/'
        && not (importPath.Length > 1 && (importPath[1] = '/' || importPath[1] = '\\'))
        && importPath |> Seq.forall (fun c -> c <> '\\' && c >= ' ' && c <> '\u007f')

// The relaxed encoder still escapes quotes, backslashes and control characters; it leaves
// non-ASCII text readable because these messages go to JSON.parse, never into HTML.
let private writerOptions =
    JsonWriterOptions(Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping)

let private documentOptions = JsonDocumentOptions()

let private write (body: Utf8JsonWriter -> unit) : string =
    let buffer = ArrayBufferWriter<byte>(256)
    use writer = new Utf8JsonWriter(buffer, writerOptions)
    body writer
    writer.Flush()
    Encoding.UTF8.GetString(buffer.WrittenSpan)

let private canonicalOf (element: JsonElement) : string = write element.WriteTo

/// Parses `text` and hands its root to `read`; every parser exception becomes NotJson.
let private parse (text: string) (read: JsonElement -> Result<'T, MessageError>) : Result<'T, MessageError> =
    if isNull text then
        Error(NotJson "The text is null.")
    else
        try
            use document = JsonDocument.Parse(text, documentOptions)
            read document.RootElement
        with
        | :? JsonException as e -> Error(NotJson e.Message)
        | :? InvalidOperationException as e -> Error(NotJson e.Message)
        | :? ArgumentException as e -> Error(NotJson e.Message)

/// The "type" of a message object, or the error for a value that is not one.
let private typeOf (root: JsonElement) : Result<string, MessageError> =
    if root.ValueKind <> JsonValueKind.Object then
        Error NotAnObject
    else
        match root.TryGetProperty "type" with
        | false, _ -> Error MissingType
        | true, t when t.ValueKind <> JsonValueKind.String -> Error TypeNotString
        | true, t -> Ok(t.GetString())

let private readId (root: JsonElement) : Result<RequestId voption, MessageError> =
    match root.TryGetProperty "id" with
    | false, _ -> Ok ValueNone
    | true, id ->
        match id.ValueKind with
        | JsonValueKind.Null -> Ok ValueNone
        | JsonValueKind.String -> Ok(ValueSome(StringId(id.GetString())))
        | JsonValueKind.Number ->
            match id.TryGetInt64() with
            | true, n -> Ok(ValueSome(NumberId n))
            | false, _ -> Error InvalidId
        | _ -> Error InvalidId

/// The canonical text of one raw JSON value, or the parser's complaint.
let private canonicalText (text: string) : Result<string, string> =
    match parse text (canonicalOf >> Ok) with
    | Ok canonical -> Ok canonical
    | Error e -> Error e.Message

let private readImport (root: JsonElement) : Result<ServerMessage, MessageError> =
    match root.TryGetProperty "data" with
    | true, data when data.ValueKind = JsonValueKind.Object ->
        match data.TryGetProperty "importPath" with
        | true, path when path.ValueKind = JsonValueKind.String && not (isAllowedImportPath (path.GetString())) ->
            Error(UnsafeImportPath(path.GetString()))
        | true, path when path.ValueKind = JsonValueKind.String ->
            match data.TryGetProperty "args" with
            | false, _ -> Ok(Import(path.GetString(), [||]))
            | true, args when args.ValueKind = JsonValueKind.Array ->
                let values = [| for arg in args.EnumerateArray() -> canonicalOf arg |]
                Ok(Import(path.GetString(), values))
            | true, _ -> Error(InvalidImport "\"args\" is not an array.")
        | _ -> Error(InvalidImport "\"data.importPath\" is missing or not a string.")
    | _ -> Error(InvalidImport "\"data\" is missing or not an object.")

let private readConsoleLog (root: JsonElement) : Result<ServerMessage, MessageError> =
    match root.TryGetProperty "data" with
    | true, data when data.ValueKind = JsonValueKind.Object ->
        match data.TryGetProperty "text" with
        | true, text when text.ValueKind = JsonValueKind.String -> Ok(ConsoleLog(text.GetString()))
        | _ -> Error(InvalidConsoleLog "\"data.text\" is missing or not a string.")
    | _ -> Error(InvalidConsoleLog "\"data\" is missing or not an object.")

let private readResponse (root: JsonElement) : Result<ServerMessage, MessageError> =
    match readId root with
    | Error e -> Error e
    | Ok ValueNone -> Error(InvalidResponse "\"id\" is missing.")
    | Ok(ValueSome id) ->
        match root.TryGetProperty "response" with
        // JSON.stringify drops an undefined response, so a missing one reads as null.
        | false, _ -> Ok(Response(id, "null"))
        | true, response -> Ok(Response(id, canonicalOf response))

let private readServerMessage (root: JsonElement) : Result<ServerMessage, MessageError> =
    match typeOf root with
    | Error e -> Error e
    | Ok ImportType -> readImport root
    | Ok ConsoleLogType -> readConsoleLog root
    | Ok ResponseType -> readResponse root
    | Ok _ -> Ok(Custom(canonicalOf root))

/// Decodes a message sent by the dev server (what the browser client receives). An import of a
/// path isAllowedImportPath refuses is UnsafeImportPath. Raw JSON values
/// come back in canonical form; a missing import "args" reads as no arguments and a missing
/// "response" as null; any other string type gives Custom. Nesting deeper than 64 levels is
/// NotJson; of duplicate properties the last one counts (as in JSON.parse). Never throws.
let decode (text: string) : Result<ServerMessage, MessageError> = parse text readServerMessage

/// Decodes a message sent by the browser: a JSON object with a string "type" that is not a built-in
/// one (isBuiltInType: ReservedType) and an optional "id" (null counts as absent). Json is the input
/// text itself. Never throws.
let decodeBrowser (text: string) : Result<BrowserMessage, MessageError> =
    parse text (fun root ->
        match typeOf root with
        | Error e -> Error e
        | Ok messageType when isBuiltInType messageType -> Error(ReservedType messageType)
        | Ok messageType ->
            match readId root with
            | Error e -> Error e
            | Ok id ->
                Ok
                    { Type = messageType
                      Id = id
                      Json = text })

let private writeId (writer: Utf8JsonWriter) (id: RequestId) =
    match id with
    | NumberId n -> writer.WriteNumberValue n
    | StringId s -> writer.WriteStringValue s

let private encodeImport (importPath: string) (args: string[]) : Result<string, MessageError> =
    if isNull importPath then
        Error(InvalidImport "\"importPath\" is null.")
    elif not (isAllowedImportPath importPath) then
        Error(UnsafeImportPath importPath)
    elif isNull args then
        Error(InvalidImport "\"args\" is null.")
    else
        let canonical = Array.map canonicalText args

        match Array.tryFindIndex Result.isError canonical with
        | Some i ->
            let detail =
                match canonical[i] with
                | Error d -> d
                | Ok _ -> ""

            Error(InvalidImport(sprintf "args[%d] is not a JSON value: %s" i detail))
        | None ->
            Ok(
                write (fun w ->
                    w.WriteStartObject()
                    w.WriteString("type", ImportType)
                    w.WriteStartObject "data"
                    w.WriteString("importPath", importPath)
                    w.WriteStartArray "args"

                    for arg in canonical do
                        match arg with
                        | Ok json -> w.WriteRawValue(json, true)
                        | Error _ -> ()

                    w.WriteEndArray()
                    w.WriteEndObject()
                    w.WriteEndObject())
            )

let private encodeConsoleLog (text: string) : Result<string, MessageError> =
    if isNull text then
        Error(InvalidConsoleLog "\"text\" is null.")
    else
        Ok(
            write (fun w ->
                w.WriteStartObject()
                w.WriteString("type", ConsoleLogType)
                w.WriteStartObject "data"
                w.WriteString("text", text)
                w.WriteEndObject()
                w.WriteEndObject())
        )

let private encodeResponse (id: RequestId) (response: string) : Result<string, MessageError> =
    match id with
    | _ when isNull (box id) -> Error(InvalidResponse "\"id\" is null.")
    | StringId null -> Error(InvalidResponse "The string id is null.")
    | _ ->
        match canonicalText response with
        | Error detail -> Error(InvalidResponse("\"response\" is not a JSON value: " + detail))
        | Ok json ->
            Ok(
                write (fun w ->
                    w.WriteStartObject()
                    w.WriteString("type", ResponseType)
                    w.WritePropertyName "id"
                    writeId w id
                    w.WritePropertyName "response"
                    w.WriteRawValue(json, true)
                    w.WriteEndObject())
            )

let private encodeCustom (json: string) : Result<string, MessageError> =
    parse json (fun root ->
        match typeOf root with
        | Error e -> Error e
        | Ok(ImportType | ConsoleLogType | ResponseType as t) -> Error(ReservedType t)
        | Ok _ -> Ok(canonicalOf root))

/// Encodes a dev-server message as JSON text (an import only of a path isAllowedImportPath accepts;
/// minified; quotes, backslashes and control characters
/// escaped; unpaired surrogates written as U+FFFD). Raw JSON parts are checked and canonicalised,
/// so decode (encode m) gives m back when m's JSON parts are canonical. Null or invalid parts give
/// an error instead of an exception.
let encode (message: ServerMessage) : Result<string, MessageError> =
    if isNull (box message) then
        Error(NotJson "The message is null.")
    else
        match message with
        | Import(importPath, args) -> encodeImport importPath args
        | ConsoleLog text -> encodeConsoleLog text
        | Custom json -> encodeCustom json
        | Response(id, response) -> encodeResponse id response

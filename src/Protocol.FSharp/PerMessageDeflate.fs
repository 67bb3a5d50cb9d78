/// RFC 7692 permessage-deflate negotiation: parsing `Sec-WebSocket-Extensions` offers, choosing the
/// parameters the server accepts and rendering its response. Compressing is left to the host.
module Realtime.Protocol.PerMessageDeflate

open System
open System.Text

/// One `name [= value]` parameter of an extension in a `Sec-WebSocket-Extensions` header.
type ExtensionParameter =
    {
        /// The parameter name, lower-cased (names are case-insensitive).
        Name: string
        /// The value with any quoted-string quoting removed; None when the parameter has no value.
        Value: string option
    }

/// One extension offered in a `Sec-WebSocket-Extensions` header: a name and its parameters.
type ExtensionOffer =
    {
        /// The extension name, lower-cased (names are case-insensitive).
        Name: string
        /// The parameters in the order they were written.
        Parameters: ExtensionParameter array
    }

/// Why a `Sec-WebSocket-Extensions` header value could not be parsed.
type ParseError =
    {
        /// A stable code: "expected-token", "unterminated-quoted-string", "invalid-quoted-value",
        /// "invalid-character" or "unexpected-character".
        Code: string
        /// A human readable explanation.
        Reason: string
        /// The zero-based index in the header text (header lines joined with ", ") where parsing stopped.
        Position: int
    }

/// What the server is willing to negotiate.
type Config =
    {
        /// False turns permessage-deflate off: every offer is declined.
        Enabled: bool
        /// The server resets its compressor after every message (always sends server_no_context_takeover).
        ServerNoContextTakeover: bool
        /// The server asks the client to reset its compressor after every message.
        ClientNoContextTakeover: bool
        /// The largest LZ77 window (as a power of two, 9..15) the server compresses with; values outside are clamped.
        ServerMaxWindowBits: int
        /// The largest window (9..15, 15 = no limit) the server wants the client to compress with; values
        /// outside are clamped. It can only be asked for when the client's offer names client_max_window_bits.
        ClientMaxWindowBits: int
    }

/// Enabled, context takeover allowed both ways, 15-bit windows both ways.
let defaults =
    { Enabled = true
      ServerNoContextTakeover = false
      ClientNoContextTakeover = false
      ServerMaxWindowBits = 15
      ClientMaxWindowBits = 15 }

/// The parameters both ends agreed on; the host configures its compressor and decompressor from them.
type Parameters =
    {
        /// The server must reset its compressor after every message it sends.
        ServerNoContextTakeover: bool
        /// The client resets its compressor after every message, so the server may reset its decompressor.
        ClientNoContextTakeover: bool
        /// The largest window (8..15) the server may compress with; never 8 when produced by `negotiate`.
        ServerMaxWindowBits: int
        /// The largest window (8..15) the client compresses with; a decompressor with a window of
        /// 15 bits always decodes it.
        ClientMaxWindowBits: int
    }

/// An offer of permessage-deflate the server did not accept, and why.
type DeclinedOffer =
    {
        /// The offer as parsed.
        Offer: ExtensionOffer
        /// A stable code: "disabled", "duplicate-parameter", "unknown-parameter", "invalid-value"
        /// or "unsupported-window".
        Code: string
        /// A human readable explanation.
        Reason: string
    }

/// The outcome of `negotiate`.
type Negotiation =
    {
        /// The accepted parameters, or None when no offer was acceptable.
        Accepted: Parameters option
        /// Each permessage-deflate offer looked at and declined, in offer order (offers after the accepted
        /// one are not looked at; other extensions are ignored, not declined).
        Declined: DeclinedOffer array
    }

/// The registered name of the extension (RFC 7692 §7).
[<Literal>]
let ExtensionName = "permessage-deflate"

// RFC 7230 §3.2.6: tchar.
let private isTChar (c: char) =
    (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || "!#$%&'*+-.^_`|~".IndexOf c >= 0

/// True when the text is a non-empty RFC 7230 token.
let internal isToken (text: string) =
    not (String.IsNullOrEmpty text) && Seq.forall isTChar text

let private orEmpty (text: string) = if isNull text then "" else text

let private fail code reason position : Result<'a, ParseError> =
    Error { Code = code; Reason = reason; Position = position }

let private skipSpace (text: string) (start: int) =
    let mutable i = start
    while i < text.Length && (text[i] = ' ' || text[i] = '\t') do
        i <- i + 1
    i

let private readToken (text: string) (start: int) =
    let mutable i = start
    while i < text.Length && isTChar text[i] do
        i <- i + 1
    text.Substring(start, i - start), i

// RFC 7230 §3.2.6 quoted-string, starting at the opening quote: the unescaped content and the index after it.
let private readQuoted (text: string) (start: int) =
    let content = StringBuilder()
    let rec go i =
        if i >= text.Length || (text[i] = '\\' && i + 1 >= text.Length) then
            fail "unterminated-quoted-string" "a quoted-string has no closing quote" start
        else
            match text[i] with
            | '"' -> Ok(content.ToString(), i + 1)
            | '\\' ->
                content.Append text[i + 1] |> ignore
                go (i + 2)
            | c when c = '\t' || (c >= ' ' && c <> '\x7f') ->
                content.Append c |> ignore
                go (i + 1)
            | _ -> fail "invalid-character" "a control character inside a quoted-string" i
    go (start + 1)

// RFC 6455 §9.1: a value is a token, or a quoted-string that is a token once unescaped.
let private readValue (text: string) (start: int) =
    if start < text.Length && text[start] = '"' then
        match readQuoted text start with
        | Ok(value, next) when isToken value -> Ok(value, next)
        | Ok _ -> fail "invalid-quoted-value" "a quoted value must be a token once unquoted (RFC 6455 §9.1)" start
        | Error e -> Error e
    else
        match readToken text start with
        | "", _ -> fail "expected-token" "expected a parameter value after '='" start
        | value, next -> Ok(value, next)

let private readParameters (text: string) (start: int) =
    let rec go i (acc: ExtensionParameter list) =
        let i = skipSpace text i
        if i >= text.Length || text[i] <> ';' then
            Ok(List.rev acc, i)
        else
            match readToken text (skipSpace text (i + 1)) with
            | "", at -> fail "expected-token" "expected a parameter name after ';'" at
            | name, afterName ->
                let name = name.ToLowerInvariant()
                let i = skipSpace text afterName
                if i < text.Length && text[i] = '=' then
                    match readValue text (skipSpace text (i + 1)) with
                    | Ok(value, next) -> go next ({ Name = name; Value = Some value } :: acc)
                    | Error e -> Error e
                else
                    go afterName ({ Name = name; Value = None } :: acc)
    go start []

let private parseText (text: string) : Result<ExtensionOffer array, ParseError> =
    let rec elements i (acc: ExtensionOffer list) =
        let i = skipSpace text i
        if i >= text.Length then
            Ok(acc |> List.rev |> List.toArray)
        // RFC 7230 §7: recipients accept empty list elements such as "a, , b".
        elif text[i] = ',' then
            elements (i + 1) acc
        else
            match readToken text i with
            | "", _ -> fail "expected-token" "expected an extension name" i
            | name, afterName ->
                match readParameters text afterName with
                | Error e -> Error e
                | Ok(parameters, next) ->
                    let acc = { Name = name.ToLowerInvariant(); Parameters = List.toArray parameters } :: acc
                    if next >= text.Length then elements next acc
                    elif text[next] = ',' then elements (next + 1) acc
                    else fail "unexpected-character" $"unexpected '{text[next]}'" next
    elements 0 []

/// Parses one `Sec-WebSocket-Extensions` header value (RFC 6455 §9.1) into offers, in order.
/// Empty text is an empty list. Never throws: malformed text gives an Error.
let parseHeaderValue (value: string) : Result<ExtensionOffer array, ParseError> = parseText (orEmpty value)

/// Parses every `Sec-WebSocket-Extensions` header line of a request as one list (RFC 7230 §3.2.2).
let parseHeaderValues (values: string array) : Result<ExtensionOffer array, ParseError> =
    let lines = if isNull values then [||] else values |> Array.map orEmpty
    parseText (String.Join(", ", lines))

/// Renders offers as a `Sec-WebSocket-Extensions` value, quoting values that are not tokens.
let formatOffers (offers: ExtensionOffer array) : string =
    let quote (value: string) =
        if isToken value then value
        else "\"" + value.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\""
    let parameter (p: ExtensionParameter) =
        match p.Value with
        | Some value -> $"; {p.Name}={quote (orEmpty value)}"
        | None -> $"; {p.Name}"
    let offer (o: ExtensionOffer) =
        orEmpty o.Name + String.Join("", (if isNull o.Parameters then [||] else o.Parameters) |> Array.map parameter)
    String.Join(", ", (if isNull offers then [||] else offers) |> Array.map offer)

// RFC 7692 §7.1.2.1: window bits are a decimal integer 8..15 without leading zeroes.
let private windowBits (value: string) =
    match value with
    | "8" -> Some 8
    | "9" -> Some 9
    | "10" -> Some 10
    | "11" -> Some 11
    | "12" -> Some 12
    | "13" -> Some 13
    | "14" -> Some 14
    | "15" -> Some 15
    | _ -> None

// client_max_window_bits in an offer: absent, present without a value, or present with one (§7.1.2.2).
type private ClientWindow =
    | NotOffered
    | AnyValue
    | AtMost of int

type private Request =
    { ServerNoContextTakeover: bool
      ClientNoContextTakeover: bool
      ServerMaxWindowBits: int option
      ClientMaxWindowBits: ClientWindow }

let private emptyRequest =
    { ServerNoContextTakeover = false
      ClientNoContextTakeover = false
      ServerMaxWindowBits = None
      ClientMaxWindowBits = NotOffered }

// RFC 7692 §7: an offer with a repeated or unknown parameter or an invalid value is declined.
let private readRequest (offer: ExtensionOffer) : Result<Request, string * string> =
    let step state (p: ExtensionParameter) =
        match state with
        | Error _ -> state
        | Ok(request: Request, seen: Set<string>) ->
            let name = (orEmpty p.Name).ToLowerInvariant()
            let invalid why = Error("invalid-value", $"{name}: {why}")
            let next (request: Request) = Ok(request, seen.Add name)
            if seen.Contains name then
                Error("duplicate-parameter", $"{name} appears more than once")
            else
                match name, p.Value with
                | "server_no_context_takeover", None -> next { request with ServerNoContextTakeover = true }
                | "client_no_context_takeover", None -> next { request with ClientNoContextTakeover = true }
                | ("server_no_context_takeover" | "client_no_context_takeover"), Some _ ->
                    invalid "takes no value (RFC 7692 §7.1.1)"
                | "server_max_window_bits", Some value ->
                    match windowBits value with
                    | Some bits -> next { request with ServerMaxWindowBits = Some bits }
                    | None -> invalid $"'{value}' is not 8..15 without leading zeroes (RFC 7692 §7.1.2.1)"
                | "server_max_window_bits", None -> invalid "needs a value (RFC 7692 §7.1.2.1)"
                | "client_max_window_bits", None -> next { request with ClientMaxWindowBits = AnyValue }
                | "client_max_window_bits", Some value ->
                    match windowBits value with
                    | Some bits -> next { request with ClientMaxWindowBits = AtMost bits }
                    | None -> invalid $"'{value}' is not 8..15 without leading zeroes (RFC 7692 §7.1.2.2)"
                | _ -> Error("unknown-parameter", $"'{name}' is not a permessage-deflate parameter")
    (if isNull offer.Parameters then [||] else offer.Parameters)
    |> Array.fold step (Ok(emptyRequest, Set.empty))
    |> Result.map fst

let private clampWindow (bits: int) = max 9 (min 15 bits)

let private accept (config: Config) (request: Request) : Result<Parameters, string * string> =
    match request.ServerMaxWindowBits with
    // RFC 7692 §7.1.2.1: the server must not compress with a larger window than requested, and zlib
    // (which the host compresses with) cannot produce raw deflate with an 8-bit window: it silently
    // uses 9. Answering 9 would exceed the request, so such an offer is declined.
    | Some 8 -> Error("unsupported-window", "server_max_window_bits=8 cannot be honoured by zlib")
    | requested ->
        let serverWindow = min (clampWindow config.ServerMaxWindowBits) (defaultArg requested 15)
        // RFC 7692 §7.1.2.2: the server may limit the client's window only when the offer names
        // client_max_window_bits, and never above the value offered.
        let clientWindow =
            match request.ClientMaxWindowBits with
            | NotOffered -> 15
            | AnyValue -> clampWindow config.ClientMaxWindowBits
            | AtMost bits -> min bits (clampWindow config.ClientMaxWindowBits)
        Ok(
            { ServerNoContextTakeover = request.ServerNoContextTakeover || config.ServerNoContextTakeover
              ClientNoContextTakeover = request.ClientNoContextTakeover || config.ClientNoContextTakeover
              ServerMaxWindowBits = serverWindow
              ClientMaxWindowBits = clientWindow }
            : Parameters
        )

/// Picks the first permessage-deflate offer the server can accept (RFC 7692 §5, §7.1), in the client's
/// order of preference. Offers of other extensions are ignored. Never throws.
let negotiate (config: Config) (offers: ExtensionOffer array) : Negotiation =
    let isDeflate (offer: ExtensionOffer) =
        not (isNull (box offer)) && String.Equals(offer.Name, ExtensionName, StringComparison.OrdinalIgnoreCase)
    let rec go (remaining: ExtensionOffer list) (declined: DeclinedOffer list) =
        match remaining with
        | [] -> { Accepted = None; Declined = declined |> List.rev |> List.toArray }
        | offer :: rest ->
            let outcome =
                if config.Enabled then readRequest offer |> Result.bind (accept config)
                else Error("disabled", "permessage-deflate is disabled on this server")
            match outcome with
            | Ok parameters -> { Accepted = Some parameters; Declined = declined |> List.rev |> List.toArray }
            | Error(code, reason) -> go rest ({ Offer = offer; Code = code; Reason = reason } :: declined)
    let offers = if isNull offers then [||] else offers
    go (offers |> Array.filter isDeflate |> Array.toList) []

/// The `Sec-WebSocket-Extensions` response value for accepted parameters, e.g.
/// `permessage-deflate; server_no_context_takeover; client_max_window_bits=10`. A window of 15 bits is
/// the protocol's default and is left out.
let responseHeaderValue (parameters: Parameters) : string =
    let window (bits: int) = max 8 (min 15 bits)
    [ ExtensionName
      if parameters.ServerNoContextTakeover then "server_no_context_takeover"
      if parameters.ClientNoContextTakeover then "client_no_context_takeover"
      if window parameters.ServerMaxWindowBits < 15 then
          $"server_max_window_bits={window parameters.ServerMaxWindowBits}"
      if window parameters.ClientMaxWindowBits < 15 then
          $"client_max_window_bits={window parameters.ClientMaxWindowBits}" ]
    |> String.concat "; "

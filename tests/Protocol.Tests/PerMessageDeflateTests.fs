module Realtime.Protocol.Tests.PerMessageDeflateTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol
open Realtime.Protocol.PerMessageDeflate
open Realtime.Protocol.Tests.Properties

let private offersOf (header: string) =
    match parseHeaderValue header with
    | Ok offers -> offers
    | Error e -> failtestf "'%s' should parse, got %A" header e

let private negotiateText config (header: string) = negotiate config (offersOf header)

let private acceptedText config header =
    match (negotiateText config header).Accepted with
    | Some parameters -> parameters
    | None -> failtestf "'%s' should be accepted, declined: %A" header (negotiateText config header).Declined

let private noContext =
    { ServerNoContextTakeover = false
      ClientNoContextTakeover = false
      ServerMaxWindowBits = 15
      ClientMaxWindowBits = 15 }

let private declineCode header =
    let negotiation = negotiateText defaults header
    Expect.isNone negotiation.Accepted $"'{header}' is declined"
    Expect.hasLength negotiation.Declined 1 "one declined offer"
    negotiation.Declined[0].Code

let private parameter name value : ExtensionParameter = { Name = name; Value = value }

[<Tests>]
let parsing =
    testList "RFC 6455 §9.1 Sec-WebSocket-Extensions grammar" [
        test "an extension list with parameters, quoted values and odd whitespace" {
            let offers = offersOf "  Foo ;A=1;\tb = \"x\" , bar,,  baz;c  "
            let expected: ExtensionOffer array =
                [| { Name = "foo"; Parameters = [| parameter "a" (Some "1"); parameter "b" (Some "x") |] }
                   { Name = "bar"; Parameters = [||] }
                   { Name = "baz"; Parameters = [| parameter "c" None |] } |]
            Expect.equal offers expected "names lower-cased, values unquoted, empty elements skipped"
        }

        test "several header lines are one list" {
            let parsed = parseHeaderValues [| "permessage-deflate; client_max_window_bits"; "x-webkit-deflate-frame" |]
            let names = parsed |> Result.map (Array.map (fun o -> o.Name))
            Expect.equal names (Ok [| "permessage-deflate"; "x-webkit-deflate-frame" |]) "both lines"
        }

        test "empty text and null are empty lists" {
            Expect.equal (parseHeaderValue "") (Ok [||]) "empty"
            Expect.equal (parseHeaderValue " , ") (Ok [||]) "only separators"
            Expect.equal (parseHeaderValue null) (Ok [||]) "null"
            Expect.equal (parseHeaderValues null) (Ok [||]) "null lines"
        }

        test "a quoted-string with an escape is unescaped" {
            let offers = offersOf "e; p=\"1\\2\""
            Expect.equal offers[0].Parameters [| parameter "p" (Some "12") |] "quoted-pair"
        }

        test "malformed text gives a parse error with a code" {
            let code text =
                match parseHeaderValue text with
                | Error e -> e.Code
                | Ok offers -> failtestf "'%s' should not parse, got %A" text offers
            Expect.equal (code "permessage-deflate;") "expected-token" "dangling ';'"
            Expect.equal (code "; x") "expected-token" "no extension name"
            Expect.equal (code "permessage-deflate; a=") "expected-token" "missing value"
            Expect.equal (code "permessage-deflate; a=\"15") "unterminated-quoted-string" "open quote"
            Expect.equal (code "permessage-deflate; a=\"1 5\"") "invalid-quoted-value" "quoted value not a token"
            Expect.equal (code "permessage-deflate x") "unexpected-character" "two tokens"
            Expect.equal (code "permessage-deflate; a=1=2") "unexpected-character" "two '='"
            Expect.equal (code "per/message") "unexpected-character" "separator in a name"
            Expect.equal (code "a; b=\"\x01\"") "invalid-character" "control character"
        }

        test "the position of a parse error points at the problem" {
            match parseHeaderValue "permessage-deflate; =1" with
            | Error e -> Expect.equal e.Position 20 "after '; '"
            | Ok _ -> failtest "should not parse"
        }

        test "very long input parses without exhausting the stack" {
            let text = String.replicate 200000 "a;b=1;c," + "permessage-deflate"
            match parseHeaderValue text with
            | Ok offers -> Expect.hasLength offers 200001 "every element"
            | Error e -> failtestf "%A" e
        }

        test "formatOffers renders what parseHeaderValue reads" {
            let offers: ExtensionOffer array =
                [| { Name = "permessage-deflate"; Parameters = [| parameter "client_max_window_bits" None |] }
                   { Name = "x"; Parameters = [| parameter "q" (Some "a b\"c") |] } |]
            let text = formatOffers offers
            Expect.equal text "permessage-deflate; client_max_window_bits, x; q=\"a b\\\"c\"" "text"
            // The quoted value is not a token, so reading it back is a grammar error (RFC 6455 §9.1).
            Expect.isError (parseHeaderValue text) "non-token quoted values are rejected"
        }
    ]

[<Tests>]
let negotiation =
    testList "RFC 7692 §7 permessage-deflate negotiation" [
        test "a plain offer is accepted with the defaults" {
            let parameters = acceptedText defaults "permessage-deflate"
            Expect.equal parameters noContext "nothing limited"
            Expect.equal (responseHeaderValue parameters) "permessage-deflate" "bare response"
        }

        test "both no_context_takeover parameters are honoured and echoed (§7.1.1)" {
            let parameters = acceptedText defaults "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            Expect.equal parameters { noContext with ServerNoContextTakeover = true; ClientNoContextTakeover = true } "both"
            Expect.equal
                (responseHeaderValue parameters)
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                "response"
        }

        test "the server's own no_context_takeover settings are sent unasked (§7.1.1)" {
            let config = { defaults with ServerNoContextTakeover = true; ClientNoContextTakeover = true }
            let parameters = acceptedText config "permessage-deflate"
            Expect.isTrue (parameters.ServerNoContextTakeover && parameters.ClientNoContextTakeover) "both set"
        }

        test "server_max_window_bits is honoured, never above the request (§7.1.2.1)" {
            Expect.equal (acceptedText defaults "permessage-deflate; server_max_window_bits=10").ServerMaxWindowBits 10 "as asked"
            let config = { defaults with ServerMaxWindowBits = 12 }
            Expect.equal (acceptedText config "permessage-deflate; server_max_window_bits=10").ServerMaxWindowBits 10 "smaller asked"
            Expect.equal (acceptedText config "permessage-deflate; server_max_window_bits=14").ServerMaxWindowBits 12 "server's smaller limit"
            Expect.equal (acceptedText config "permessage-deflate").ServerMaxWindowBits 12 "limit sent unasked"
            Expect.equal
                (responseHeaderValue (acceptedText defaults "permessage-deflate; server_max_window_bits=10"))
                "permessage-deflate; server_max_window_bits=10"
                "response"
        }

        test "server_max_window_bits=8 is declined: zlib cannot compress with an 8-bit window" {
            Expect.equal (declineCode "permessage-deflate; server_max_window_bits=8") "unsupported-window" "code"
        }

        test "client_max_window_bits with a value limits the client's window (§7.1.2.2)" {
            Expect.equal (acceptedText defaults "permessage-deflate; client_max_window_bits=10").ClientMaxWindowBits 10 "as declared"
            let config = { defaults with ClientMaxWindowBits = 9 }
            Expect.equal (acceptedText config "permessage-deflate; client_max_window_bits=12").ClientMaxWindowBits 9 "server's smaller wish"
            Expect.equal (acceptedText config "permessage-deflate; client_max_window_bits=8").ClientMaxWindowBits 8 "never above the offer"
        }

        test "client_max_window_bits without a value lets the server pick (§7.1.2.2)" {
            Expect.equal (acceptedText defaults "permessage-deflate; client_max_window_bits").ClientMaxWindowBits 15 "no wish"
            let config = { defaults with ClientMaxWindowBits = 10; ServerNoContextTakeover = true }
            let parameters = acceptedText config "permessage-deflate; client_max_window_bits"
            Expect.equal parameters.ClientMaxWindowBits 10 "server's wish"
            Expect.equal
                (responseHeaderValue parameters)
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
                "response"
        }

        test "client_max_window_bits is never sent when the client did not offer it (§7.1.2.2)" {
            let config = { defaults with ClientMaxWindowBits = 10 }
            let parameters = acceptedText config "permessage-deflate"
            Expect.equal parameters.ClientMaxWindowBits 15 "client keeps its window"
            Expect.equal (responseHeaderValue parameters) "permessage-deflate" "not in the response"
        }

        test "the first acceptable offer wins; earlier ones are declined with reasons (§5)" {
            let negotiation =
                negotiateText
                    defaults
                    "permessage-deflate; server_max_window_bits=16, permessage-deflate; client_max_window_bits, permessage-deflate"
            Expect.equal negotiation.Accepted (Some noContext) "second offer"
            Expect.equal (negotiation.Declined |> Array.map (fun d -> d.Code)) [| "invalid-value" |] "first declined"
            Expect.stringContains negotiation.Declined[0].Reason "server_max_window_bits" "reason names the parameter"
        }

        test "a repeated parameter declines the offer" {
            Expect.equal (declineCode "permessage-deflate; server_no_context_takeover; server_no_context_takeover") "duplicate-parameter" "repeat"
            Expect.equal (declineCode "permessage-deflate; client_max_window_bits=10; Client_Max_Window_Bits") "duplicate-parameter" "case-insensitive repeat"
        }

        test "an unknown parameter declines the offer" {
            Expect.equal (declineCode "permessage-deflate; max_window_bits=10") "unknown-parameter" "unknown"
        }

        test "bad window values decline the offer (§7.1.2)" {
            for value in [ "0"; "7"; "16"; "08"; "015"; "abc"; "1.5"; "-9" ] do
                Expect.equal (declineCode $"permessage-deflate; server_max_window_bits={value}") "invalid-value" $"server {value}"
                Expect.equal (declineCode $"permessage-deflate; client_max_window_bits={value}") "invalid-value" $"client {value}"
            Expect.equal (declineCode "permessage-deflate; server_max_window_bits") "invalid-value" "server needs a value"
            Expect.equal (declineCode "permessage-deflate; server_no_context_takeover=1") "invalid-value" "no value allowed"
            Expect.equal (declineCode "permessage-deflate; client_no_context_takeover=\"\x74\"") "invalid-value" "no value allowed, quoted"
        }

        test "quoted-string values are read like tokens (RFC 6455 §9.1)" {
            let parameters = acceptedText defaults "permessage-deflate; server_max_window_bits=\"10\"; client_max_window_bits=\"9\""
            Expect.equal (parameters.ServerMaxWindowBits, parameters.ClientMaxWindowBits) (10, 9) "both values"
        }

        test "names are case-insensitive" {
            let parameters = acceptedText defaults "PerMessage-Deflate; SERVER_NO_CONTEXT_TAKEOVER; Server_Max_Window_Bits=11"
            Expect.equal parameters { noContext with ServerNoContextTakeover = true; ServerMaxWindowBits = 11 } "read"
        }

        test "other extensions are ignored, not declined" {
            let negotiation = negotiateText defaults "x-webkit-deflate-frame; max_window_bits=10, foo, permessage-deflate"
            Expect.equal negotiation.Accepted (Some noContext) "permessage-deflate found"
            Expect.isEmpty negotiation.Declined "others are not offers of ours"
            Expect.equal (negotiateText defaults "foo, bar; baz").Accepted None "nothing to accept"
        }

        test "a disabled config declines every offer" {
            let negotiation = negotiateText { defaults with Enabled = false } "permessage-deflate, permessage-deflate"
            Expect.isNone negotiation.Accepted "nothing accepted"
            Expect.equal (negotiation.Declined |> Array.map (fun d -> d.Code)) [| "disabled"; "disabled" |] "both declined"
        }

        test "out-of-range config windows are clamped to 9..15" {
            let parameters = acceptedText { defaults with ServerMaxWindowBits = 3; ClientMaxWindowBits = 99 } "permessage-deflate; client_max_window_bits"
            Expect.equal (parameters.ServerMaxWindowBits, parameters.ClientMaxWindowBits) (9, 15) "clamped"
        }

        test "null offers, parameters and names never throw" {
            Expect.equal (negotiate defaults null).Accepted None "null array"
            let odd: ExtensionOffer array =
                [| Unchecked.defaultof<ExtensionOffer>
                   { Name = null; Parameters = null }
                   { Name = "permessage-deflate"; Parameters = [| { Name = null; Value = None } |] }
                   { Name = "permessage-deflate"; Parameters = null } |]
            let negotiation = negotiate defaults odd
            Expect.equal negotiation.Accepted (Some noContext) "last one accepted"
            Expect.equal (negotiation.Declined |> Array.map (fun d -> d.Code)) [| "unknown-parameter" |] "null name is unknown"
        }
    ]

// Generators for offers the server must understand.

let private randomCase (text: string) =
    gen {
        let! upper = Gen.arrayOfLength text.Length (Gen.elements [ true; false ])
        return String(text.ToCharArray() |> Array.mapi (fun i c -> if upper[i] then Char.ToUpperInvariant c else c))
    }

let private space = Gen.elements [ ""; " "; "\t"; "  " ]

let private windowValue =
    gen {
        let! bits = Gen.choose (8, 15)
        let! quoted = Gen.elements [ true; false ]
        return bits, (if quoted then $"\"{bits}\"" else string bits)
    }

/// A valid permessage-deflate offer: a random subset of the four parameters, in random order, random case.
type private ValidOffer =
    { ServerNoContext: bool
      ClientNoContext: bool
      ServerBits: int option
      ClientBits: int option option
      Text: string }

let private validOffer =
    gen {
        let! serverNoContext = Gen.elements [ true; false ]
        let! clientNoContext = Gen.elements [ true; false ]
        let! serverBits = Gen.optionOf windowValue
        let! clientBits = Gen.optionOf (Gen.optionOf windowValue)
        let parameters =
            [ if serverNoContext then "server_no_context_takeover"
              if clientNoContext then "client_no_context_takeover"
              match serverBits with
              | Some(_, text) -> $"server_max_window_bits={text}"
              | None -> ()
              match clientBits with
              | Some(Some(_, text)) -> $"client_max_window_bits={text}"
              | Some None -> "client_max_window_bits"
              | None -> () ]
        let! order = Gen.shuffle parameters
        let! named = order |> Array.map randomCase |> Gen.sequenceToArray
        let! name = randomCase ExtensionName
        let! separators = Gen.arrayOfLength named.Length (Gen.zip space space)
        let text = name + String.Join("", Array.map2 (fun p (a, b) -> $"{a};{b}{p}") named separators)
        return
            { ServerNoContext = serverNoContext
              ClientNoContext = clientNoContext
              ServerBits = serverBits |> Option.map fst
              ClientBits = clientBits |> Option.map (Option.map fst)
              Text = text }
    }

let private config =
    gen {
        let! serverNoContext = Gen.elements [ true; false ]
        let! clientNoContext = Gen.elements [ true; false ]
        let! serverBits = Gen.choose (9, 15)
        let! clientBits = Gen.choose (9, 15)
        return
            { Enabled = true
              ServerNoContextTakeover = serverNoContext
              ClientNoContextTakeover = clientNoContext
              ServerMaxWindowBits = serverBits
              ClientMaxWindowBits = clientBits }
    }

let private headerish =
    let pieces =
        [ "permessage-deflate"; "server_max_window_bits"; "client_max_window_bits"; "server_no_context_takeover"
          ";"; ","; "="; "\""; "\\"; " "; "\t"; "8"; "15"; "x"; "\x00"; "é"; "\r\n" ]
    Gen.oneof
        [ ArbMap.defaults |> ArbMap.generate<string>
          Gen.listOf (Gen.elements pieces) |> Gen.map (String.concat "") ]

[<Tests>]
let properties =
    testList "RFC 7692 §7 permessage-deflate properties" [
        property "parsing and negotiating arbitrary text never throws"
        <| Prop.forAll (Arb.fromGen headerish) (fun text ->
            match parseHeaderValue text with
            | Ok offers -> negotiate defaults offers |> ignore
            | Error e -> Expect.isTrue (e.Position >= 0 && e.Position <= text.Length) "position inside the text")

        property "a valid offer is accepted consistently with what was offered"
        <| Prop.forAll (Arb.fromGen (Gen.zip config validOffer)) (fun (config, offer) ->
            let negotiation = negotiateText config offer.Text
            match offer.ServerBits, negotiation.Accepted with
            | Some 8, accepted -> Expect.isNone accepted "an 8-bit server window is declined"
            | _, None -> failtestf "declined: %A" negotiation.Declined
            | requested, Some p ->
                Expect.isTrue (p.ServerMaxWindowBits <= defaultArg requested 15) "server window within the request"
                Expect.isTrue (p.ServerMaxWindowBits <= config.ServerMaxWindowBits) "server window within the config"
                Expect.equal p.ServerNoContextTakeover (offer.ServerNoContext || config.ServerNoContextTakeover) "server context"
                Expect.equal p.ClientNoContextTakeover (offer.ClientNoContext || config.ClientNoContextTakeover) "client context"
                match offer.ClientBits with
                | None -> Expect.equal p.ClientMaxWindowBits 15 "client window untouched when not offered"
                | Some bits -> Expect.equal p.ClientMaxWindowBits (min config.ClientMaxWindowBits (defaultArg bits 15)) "client window"
                let response = responseHeaderValue p
                if offer.ClientBits.IsNone then
                    Expect.isFalse (response.Contains "client_max_window_bits") "client window only when offered")

        property "the response value parses back as an offer that negotiates to the same parameters"
        <| Prop.forAll (Arb.fromGen (Gen.zip config validOffer)) (fun (config, offer) ->
            match (negotiateText config offer.Text).Accepted with
            | None -> ()
            | Some p ->
                let back = negotiateText defaults (responseHeaderValue p)
                Expect.isEmpty back.Declined "the response is a valid offer"
                Expect.equal back.Accepted (Some p) "same parameters")

        property "formatOffers and parseHeaderValue agree on token offers"
        <| Prop.forAll (Arb.fromGen (Gen.listOf validOffer)) (fun offers ->
            let parsed = offersOf (offers |> List.map (fun o -> o.Text) |> String.concat ", ")
            Expect.equal (parseHeaderValue (formatOffers parsed)) (Ok parsed) "round trip")
    ]

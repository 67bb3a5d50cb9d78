module Realtime.Protocol.Tests.CloseCodeTests

open Expecto
open Realtime.Protocol

/// Autobahn 7.9.x: close codes a receiver must reject.
let autobahnInvalidCodes = [ 0us; 999us; 1004us; 1005us; 1006us; 1012us; 1013us; 1014us; 1015us; 1016us; 1100us; 2000us; 2999us ]

/// Autobahn 7.7.x: close codes a receiver must accept.
let autobahnValidCodes = [ 1000us; 1001us; 1002us; 1003us; 1007us; 1008us; 1009us; 1010us; 1011us; 3000us; 3999us; 4000us; 4999us ]

/// RFC 6455 §7.4.1/§7.4.2 as a table, independently of the implementation.
let private specValid (code: int) =
    (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) || (code >= 3000 && code <= 4999)

/// Every ProtocolError case with its close code and code string.
let protocolErrors: (ProtocolError * uint16 * string) list =
    [ UnmaskedFrame, 1002us, "unmasked-frame"
      MaskedFrame, 1002us, "masked-frame"
      ReservedBitsSet, 1002us, "reserved-bits"
      CompressedBitMisplaced, 1002us, "compressed-bit-misplaced"
      ReservedOpcode 3uy, 1002us, "reserved-opcode"
      ControlFrameTooLong, 1002us, "control-frame-too-long"
      FragmentedControlFrame, 1002us, "fragmented-control-frame"
      UnexpectedContinuation, 1002us, "unexpected-continuation"
      ExpectedContinuation, 1002us, "expected-continuation"
      InvalidClosePayload, 1002us, "invalid-close-payload"
      InvalidCloseCode 1004us, 1002us, "invalid-close-code"
      InvalidUtf8, 1007us, "invalid-utf8"
      MessageTooBig 1024L, 1009us, "message-too-big"
      InvalidCompressedData, 1007us, "invalid-compressed-data" ]

[<Tests>]
let tests =
    testList "RFC 6455 §7.4 close codes" [
        testList "codes a receiver accepts (Autobahn 7.7.x)" [
            for code in autobahnValidCodes do
                testCase (sprintf "%d is valid" code) <| fun () ->
                    Expect.isTrue (CloseCode.isValidReceived code) "valid"
                    Expect.isTrue (CloseCode.isSendable code) "sendable"
        ]

        testList "codes a receiver rejects (Autobahn 7.9.x)" [
            for code in autobahnInvalidCodes do
                testCase (sprintf "%d is invalid" code) <| fun () ->
                    Expect.isFalse (CloseCode.isValidReceived code) "invalid"
                    Expect.isFalse (CloseCode.isSendable code) "not sendable"
        ]

        testCase "every 16-bit code is classified as RFC 6455 §7.4 says" <| fun () ->
            for code in 0..65535 do
                Expect.equal (CloseCode.isValidReceived (uint16 code)) (specValid code) (sprintf "code %d" code)

        testCase "the sendable codes are exactly the valid received ones" <| fun () ->
            for code in 0..65535 do
                Expect.equal (CloseCode.isSendable (uint16 code)) (CloseCode.isValidReceived (uint16 code)) (sprintf "code %d" code)

        testCase "1005 and 1006 are reported locally but never sent" <| fun () ->
            Expect.isFalse (CloseCode.isSendable CloseCode.NoStatusReceived) "1005"
            Expect.isFalse (CloseCode.isSendable CloseCode.AbnormalClosure) "1006"

        testCase "the named codes have their RFC 6455 §7.4.1 values" <| fun () ->
            Expect.equal
                [ CloseCode.NormalClosure; CloseCode.GoingAway; CloseCode.ProtocolError; CloseCode.UnsupportedData
                  CloseCode.NoStatusReceived; CloseCode.AbnormalClosure; CloseCode.InvalidPayload; CloseCode.PolicyViolation
                  CloseCode.MessageTooBig; CloseCode.MandatoryExtension; CloseCode.InternalError ]
                [ 1000us; 1001us; 1002us; 1003us; 1005us; 1006us; 1007us; 1008us; 1009us; 1010us; 1011us ]
                "values"

        testList "each protocol error's close code and stable code string" [
            for error, closeCode, code in protocolErrors do
                testCase (sprintf "%s → %d" code closeCode) <| fun () ->
                    Expect.equal error.CloseCode closeCode "close code"
                    Expect.equal error.Code code "code string"
                    Expect.isTrue (CloseCode.isSendable error.CloseCode) "the close code can be sent"
                    Expect.isNotEmpty error.Message "message"
                    Expect.isLessThanOrEqual (System.Text.Encoding.UTF8.GetByteCount error.Message) Frame.MaxCloseReasonBytes "message fits a close frame"
        ]

        testCase "the table above covers every ProtocolError case" <| fun () ->
            let cases = Microsoft.FSharp.Reflection.FSharpType.GetUnionCases(typeof<ProtocolError>) |> Array.map (fun c -> c.Name) |> Set.ofArray
            let covered =
                protocolErrors
                |> List.map (fun (e, _, _) -> (Microsoft.FSharp.Reflection.FSharpValue.GetUnionFields(e, typeof<ProtocolError>) |> fst).Name)
                |> Set.ofList
            Expect.equal covered cases "every case"

        testCase "the code strings are distinct" <| fun () ->
            let codes = protocolErrors |> List.map (fun (e, _, _) -> e.Code)
            Expect.equal (List.distinct codes |> List.length) codes.Length "distinct"

        testCase "messages name the offending value" <| fun () ->
            Expect.stringContains (ReservedOpcode 11uy).Message "11" "opcode"
            Expect.stringContains (InvalidCloseCode 1004us).Message "1004" "close code"
            Expect.stringContains (MessageTooBig 1024L).Message "1024" "limit"
    ]

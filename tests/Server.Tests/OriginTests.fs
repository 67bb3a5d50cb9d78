/// The Origin allow-list refuses other sites' pages before the upgrade (cross-site WebSocket
/// hijacking).
module Realtime.Server.Tests.OriginTests

open System
open System.Net
open System.Net.WebSockets
open System.Threading
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.UpgradeAttempts

/// /echo counting its Attach calls, under the given allow-list.
let private originServer (allowed: string list) (attached: int ref) =
    start
        (fun options -> for origin in allowed do options.AllowedOrigins.Add origin)
        (fun app ->
            app.MapRealtime(
                "/echo",
                RealtimeHandlers<obj>(
                    Attach = (fun _ -> Interlocked.Increment(&attached.contents) |> ignore; Attachment<obj>.Accept null),
                    Message = (fun ws message -> ws.Send(message) |> ignore)))
            |> ignore)

let private origin (value: string) = $"Origin: {value}\r\n"

[<Tests>]
let originTests =
    testList "Defence: the Origin allow-list refuses other sites' pages before the upgrade (cross-site WebSocket hijacking)" [
        testCaseTask "an allowed origin is upgraded with 101, compared case-insensitively and with a trailing slash tolerated on either side" (fun () -> task {
            let attached = ref 0
            let! server = originServer [ "https://app.example.com"; "http://localhost:5173/" ] attached
            use _ = server
            for value in [ "https://app.example.com"; "HTTPS://App.Example.COM"; "https://app.example.com/"; "http://localhost:5173"; "http://LOCALHOST:5173/" ] do
                let! tcp, stream, head = attemptFrom IPAddress.Loopback server.Port (RawClient.upgradeRequest "/echo" (origin value))
                Expect.equal (statusOf head) 101 $"Origin {value} is upgraded: {head}"
                use raw = new RawClient.RawConnection(tcp, stream, head)
                do! expectEcho raw value
            Expect.equal attached.Value 5 "Attach ran for each"
        })

        testCaseTask "a disallowed origin gets 403 before the upgrade: no accept key, Attach not run, no connection" (fun () -> task {
            let attached = ref 0
            let! server = originServer [ "https://app.example.com" ] attached
            use _ = server
            let hostile =
                [ "https://evil.example"
                  "https://app.example.com.evil.example" // suffix trick
                  "https://evil.example/https://app.example.com"
                  "http://app.example.com" // another scheme is another origin
                  "https://app.example.com:8443" // so is another port
                  "null" // sandboxed frames and file: pages
                  "" ]
            for value in hostile do
                let! head = headFor server.Port (RawClient.upgradeRequest "/echo" (origin value))
                Expect.equal (statusOf head) 403 $"Origin '{value}' gets 403: {head}"
                Expect.isFalse (head.Contains "Sec-WebSocket-Accept") "no accept key"
                Expect.isFalse (head.Contains "Upgrade: websocket") "no upgrade"
            Expect.equal attached.Value 0 "Attach never ran"
            Expect.equal server.Realtime.ConnectionCount 0 "no connection was opened"
        })

        testCaseTask "a request without Origin (a non-browser client) is allowed" (fun () -> task {
            let attached = ref 0
            let! server = originServer [ "https://app.example.com" ] attached
            use _ = server
            use! raw = RawClient.connect server.Port "/echo"
            do! expectEcho raw "no origin"
            let! client = connect (server.WsUrl + "/echo")
            use _ = client
            do! sendText client "ClientWebSocket sends no Origin"
            let! echo = receiveText client
            Expect.equal echo "ClientWebSocket sends no Origin" "a ClientWebSocket without Origin is served"
        })

        testCaseTask "two Origin headers get 403, even when both are allowed" (fun () -> task {
            let attached = ref 0
            let! server = originServer [ "https://app.example.com"; "https://other.example.com" ] attached
            use _ = server
            let! both = statusFor server.Port "/echo" (origin "https://app.example.com" + origin "https://other.example.com")
            Expect.equal both 403 "two different allowed origins"
            let! twice = statusFor server.Port "/echo" (origin "https://app.example.com" + origin "https://app.example.com")
            Expect.equal twice 403 "the same allowed origin twice"
            let! mixed = statusFor server.Port "/echo" (origin "https://evil.example" + origin "https://app.example.com")
            Expect.equal mixed 403 "a disallowed origin followed by an allowed one"
            Expect.equal attached.Value 0 "Attach never ran"
        })

        testCaseTask "an empty allow-list (the default) allows every origin" (fun () -> task {
            let attached = ref 0
            let! server = originServer [] attached
            use _ = server
            for value in [ "https://evil.example"; "null"; "http://localhost:1234" ] do
                let! status = statusFor server.Port "/echo" (origin value)
                Expect.equal status 101 $"Origin {value} is upgraded"
        })

        testCaseTask "a browser-like ClientWebSocket sending a disallowed Origin fails with 403; an allowed one is served" (fun () -> task {
            let attached = ref 0
            let! server = originServer [ "https://app.example.com" ] attached
            use _ = server
            use hijacker = new ClientWebSocket()
            hijacker.Options.CollectHttpResponseDetails <- true
            hijacker.Options.SetRequestHeader("Origin", "https://evil.example")
            use cancel = new CancellationTokenSource(seconds 10.0)
            let! failed =
                task {
                    try
                        do! hijacker.ConnectAsync(Uri(server.WsUrl + "/echo"), cancel.Token)
                        return false
                    with :? WebSocketException -> return true
                }
            Expect.isTrue failed "the connect failed"
            Expect.equal hijacker.HttpStatusCode HttpStatusCode.Forbidden "403 Forbidden"
            use page = new ClientWebSocket()
            page.Options.SetRequestHeader("Origin", "https://app.example.com")
            do! page.ConnectAsync(Uri(server.WsUrl + "/echo"), cancel.Token)
            do! sendText page "same site"
            let! echo = receiveText page
            Expect.equal echo "same site" "the site's own page is served"
        })

        testCaseTask "MapRealtime's configure overrides the allow-list for one endpoint and leaves the defaults alone" (fun () -> task {
            let! server =
                start
                    (fun options -> options.AllowedOrigins.Add "https://a.example")
                    (fun app ->
                        let strict (options: RealtimeOptions) =
                            options.AllowedOrigins.Clear()
                            options.AllowedOrigins.Add "https://b.example"
                        let opened (options: RealtimeOptions) = options.AllowedOrigins.Clear()
                        let extra (options: RealtimeOptions) = options.AllowedOrigins.Add "https://c.example"
                        // /strict is mapped first: its changes must not reach the defaults /default uses.
                        app.MapRealtime("/strict", echoHandlers (), Action<RealtimeOptions> strict) |> ignore
                        app.MapRealtime("/open", echoHandlers (), Action<RealtimeOptions> opened) |> ignore
                        app.MapRealtime("/extra", echoHandlers (), Action<RealtimeOptions> extra) |> ignore
                        app.MapRealtime("/default", echoHandlers ()) |> ignore)
            use _ = server
            let expectations =
                [ "/default", "https://a.example", 101
                  "/default", "https://b.example", 403
                  "/default", "https://c.example", 403
                  "/strict", "https://a.example", 403
                  "/strict", "https://b.example", 101
                  "/open", "https://evil.example", 101
                  "/extra", "https://a.example", 101
                  "/extra", "https://c.example", 101
                  "/extra", "https://b.example", 403 ]
            for path, value, expected in expectations do
                let! status = statusFor server.Port path (origin value)
                Expect.equal status expected $"{path} with Origin {value}"
        })
    ]

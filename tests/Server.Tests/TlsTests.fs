/// The host over TLS (wss://): Kestrel's HTTPS with a self-signed certificate made in memory, clients
/// that trust exactly that certificate (or not), compression over TLS, and the real samples/Echo
/// started with --tls.
module Realtime.Server.Tests.TlsTests

open System
open System.Collections.Concurrent
open System.Net
open System.Net.Security
open System.Net.WebSockets
open System.Security.Authentication
open System.Security.Cryptography
open System.Security.Cryptography.X509Certificates
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Realtime
open Realtime.Server.Tests.TestHost

/// A self-signed server certificate for 127.0.0.1 (ECDSA P-256), made in memory.
let createCertificate (subject: string) : X509Certificate2 =
    use key = ECDsa.Create(ECCurve.NamedCurves.nistP256)
    let request = CertificateRequest($"CN={subject}", key, HashAlgorithmName.SHA256)
    let names = SubjectAlternativeNameBuilder()
    names.AddIpAddress IPAddress.Loopback
    request.CertificateExtensions.Add(names.Build())
    let serverAuthentication = OidCollection()
    serverAuthentication.Add(Oid "1.3.6.1.5.5.7.3.1") |> ignore
    request.CertificateExtensions.Add(X509EnhancedKeyUsageExtension(serverAuthentication, false))
    use certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes -5.0, DateTimeOffset.UtcNow.AddDays 1.0)
    // Through PKCS#12 so that SslStream can use the private key on every platform.
    X509CertificateLoader.LoadPkcs12(certificate.Export X509ContentType.Pfx, null)

/// One certificate for the run.
let certificate = lazy (createCertificate "Realtime TLS test")

let thumbprint (certificate: X509Certificate) = certificate.GetCertHashString HashAlgorithmName.SHA256

/// Starts a server serving HTTPS only, on 127.0.0.1:0, with the certificate.
let private startHttps (certificate: X509Certificate2) (configureOptions: RealtimeOptions -> unit) (mapRoutes: WebApplication -> unit) =
    startOn OwnTransport
        (fun builder ->
            builder.WebHost.UseUrls("https://127.0.0.1:0") |> ignore
            builder.WebHost.ConfigureKestrel(fun kestrel -> kestrel.ConfigureHttpsDefaults(fun https -> https.ServerCertificate <- certificate))
            |> ignore)
        configureOptions
        mapRoutes

/// A client that accepts the server's certificate only when it is exactly `trusted` (by SHA-256 thumbprint).
let clientTrusting (trusted: X509Certificate2) : ClientWebSocket =
    let client = new ClientWebSocket()
    let expected = thumbprint trusted
    client.Options.RemoteCertificateValidationCallback <-
        RemoteCertificateValidationCallback(fun _ presented _ _ -> not (isNull presented) && thumbprint presented = expected)
    client

let private connectClient (client: ClientWebSocket) (url: string) : Task =
    task {
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        do! client.ConnectAsync(Uri url, cancel.Token)
    }

let private send (client: ClientWebSocket) (kind: WebSocketMessageType) (data: byte[]) : Task =
    task {
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        do! client.SendAsync(ArraySegment data, kind, true, cancel.Token)
    }

let private closeClient (client: ClientWebSocket) : Task =
    task {
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        do! client.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cancel.Token)
        Expect.equal client.State WebSocketState.Closed "closed"
        Expect.equal client.CloseStatus (Nullable WebSocketCloseStatus.NormalClosure) "the server answered 1000"
    }

/// Echo text and binary of a few sizes and expects each back unchanged.
let private expectEchoes (client: ClientWebSocket) : Task<unit> =
    task {
        for size in [ 1; 1000; 100_000 ] do
            let text = Encoding.UTF8.GetBytes(String.replicate (size / 10 + 1) "tls κόσμε " |> fun s -> s.Substring(0, size))
            do! send client WebSocketMessageType.Text text
            let! kind, echoed = receive client
            Expect.equal kind WebSocketMessageType.Text $"text of {size}"
            Expect.equal echoed text $"text of {size} echoed"
            let binary = Array.init size (fun i -> byte (i % 251))
            do! send client WebSocketMessageType.Binary binary
            let! kind, echoed = receive client
            Expect.equal kind WebSocketMessageType.Binary $"binary of {size}"
            Expect.equal echoed binary $"binary of {size} echoed"
    }

/// /echo is samples/Echo's (records whether each message came compressed); /room subscribes to
/// "news" on open and publishes what it gets to the others.
let private routes (compressedFlags: ConcurrentQueue<bool>) (app: WebApplication) =
    app.MapRealtime(
        "/echo",
        RealtimeHandlers<obj>(
            Message =
                fun ws message ->
                    compressedFlags.Enqueue message.Compressed
                    ws.Send(message) |> ignore
        )
    )
    |> ignore
    app.MapRealtime(
        "/room",
        RealtimeHandlers<obj>(
            Open = (fun ws -> ws.Subscribe "news" |> ignore),
            Message = (fun ws message -> ws.Publish("news", message.Text) |> ignore)
        )
    )
    |> ignore

let private deflate (options: RealtimeOptions) = options.PerMessageDeflate <- true

/// True when the exception or one inside it is a TLS authentication failure.
let rec private isAuthenticationFailure (error: exn) =
    match error with
    | null -> false
    | :? AuthenticationException -> true
    | :? AggregateException as many -> many.InnerExceptions |> Seq.exists isAuthenticationFailure
    | _ -> isAuthenticationFailure error.InnerException

[<Tests>]
let tlsTests =
    testList "TLS: wss:// with a self-signed certificate" [
        testCaseTask "a client trusting exactly the server's certificate exchanges text and binary, gets publishes, and closes cleanly" (fun () -> task {
            let flags = ConcurrentQueue<bool>()
            let! server = startHttps certificate.Value deflate (routes flags)
            use _ = server
            Expect.stringStarts server.WsUrl "wss://127.0.0.1:" "served over TLS"
            use echo = clientTrusting certificate.Value
            do! connectClient echo (server.WsUrl + "/echo")
            do! expectEchoes echo
            Expect.allEqual flags false "a client without deflate options sent nothing compressed"

            use alice = clientTrusting certificate.Value
            use bob = clientTrusting certificate.Value
            do! connectClient alice (server.WsUrl + "/room")
            do! connectClient bob (server.WsUrl + "/room")
            let! subscribed = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.SubscriberCount "news" = 2)
            Expect.isTrue subscribed "both subscribed"
            Expect.equal (server.Realtime.Publish("news", "breaking over TLS")) 2 "published to both"
            let! toAlice = receiveText alice
            let! toBob = receiveText bob
            Expect.equal (toAlice, toBob) ("breaking over TLS", "breaking over TLS") "both got the publish"
            do! sendText alice "hello from alice"
            let! fromAlice = receiveText bob
            Expect.equal fromAlice "hello from alice" "a client's publish reaches the other"

            for client in [ echo; alice; bob ] do
                do! closeClient client
            let! ended = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.ConnectionCount = 0)
            Expect.isTrue ended "every connection ended on the server"
        })

        testCaseTask "a client that does not trust the certificate fails the TLS handshake and no connection opens" (fun () -> task {
            let flags = ConcurrentQueue<bool>()
            let! server = startHttps certificate.Value ignore (routes flags)
            use _ = server
            // The platform's default validation: a self-signed certificate is not trusted.
            use defaultClient = new ClientWebSocket()
            // A client that trusts another certificate, of the same subject alternative name.
            use other = createCertificate "Realtime TLS test"
            use otherClient = clientTrusting other
            for label, client in [ "default validation", defaultClient; "trusting another certificate", otherClient ] do
                let! failure =
                    task {
                        try
                            do! connectClient client (server.WsUrl + "/echo")
                            return None
                        with error ->
                            return Some error
                    }
                match failure with
                | None -> failtestf "%s: the handshake succeeded" label
                | Some error -> Expect.isTrue (isAuthenticationFailure error) $"{label}: failed on the certificate ({error.GetType().Name}: {error.Message})"
                Expect.notEqual client.State WebSocketState.Open $"{label}: not open"
            do! Task.Delay 100
            Expect.equal server.Realtime.ConnectionCount 0 "no connection reached the server"
        })

        testCaseTask "compression works over TLS: a ClientWebSocket with deflate options sends and gets compressed messages" (fun () -> task {
            let flags = ConcurrentQueue<bool>()
            let! server = startHttps certificate.Value deflate (routes flags)
            use _ = server
            use client = clientTrusting certificate.Value
            client.Options.DangerousDeflateOptions <- WebSocketDeflateOptions(ClientContextTakeover = false)
            client.Options.CollectHttpResponseDetails <- true
            do! connectClient client (server.WsUrl + "/echo")
            Expect.equal
                (client.HttpResponseHeaders["Sec-WebSocket-Extensions"] |> Seq.toList)
                [ "permessage-deflate; server_no_context_takeover; client_no_context_takeover" ]
                "negotiated"
            do! expectEchoes client
            Expect.equal flags.Count 6 "six messages"
            Expect.allEqual flags true "every message arrived compressed"
            do! closeClient client
        })
    ]

[<Tests>]
let sampleTlsTests =
    testSequenced <| testList "TLS: the real samples/Echo with --tls" [
        testCaseTask "samples/Echo --tls --urls http://127.0.0.1:PORT serves wss:// only, with its own certificate, and echoes (compressed too)" (fun () -> task {
            match! ensureEchoSampleBuilt () with
            | Some problem -> failtest problem
            | None -> ()
            let port = freePort ()
            let! sample, output = startEchoSample port $"--tls --urls http://127.0.0.1:{port}"
            use _ = sample
            try
                let presented = ConcurrentQueue<string>()
                use client = new ClientWebSocket()
                // Any certificate of that process: it makes a new one at every start.
                client.Options.RemoteCertificateValidationCallback <-
                    RemoteCertificateValidationCallback(fun _ certificate _ _ ->
                        presented.Enqueue certificate.Subject
                        true)
                client.Options.DangerousDeflateOptions <- WebSocketDeflateOptions()
                client.Options.CollectHttpResponseDetails <- true
                do! connectClient client $"wss://127.0.0.1:{port}/echo"
                Expect.contains presented "CN=Realtime Echo" "the sample's own certificate"
                Expect.isNonEmpty (client.HttpResponseHeaders["Sec-WebSocket-Extensions"] |> Seq.toList) "the sample accepts the deflate offer"
                do! expectEchoes client
                do! closeClient client

                // --tls: the address given as http:// speaks TLS, so a plain ws:// handshake fails
                // (Kestrel may wait for the rest of what it reads as a TLS record: 2 s is enough).
                use plain = new ClientWebSocket()
                let! plainOpened =
                    task {
                        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 2.0)
                        try
                            do! plain.ConnectAsync(Uri $"ws://127.0.0.1:{port}/echo", cancel.Token)
                            return true
                        with _ ->
                            return false
                    }
                Expect.isFalse plainOpened $"no plain WebSocket on the TLS port\n{output}"
            finally
                stopProcess sample
        })
    ]

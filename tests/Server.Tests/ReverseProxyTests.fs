/// samples/Chat behind a real nginx (the README's Deployment block, TLS ended at nginx) as a user
/// deploys it: clients connect from their own loopback addresses (127.0.0.2, 127.0.0.3, ...), and
/// the app must see those addresses, not nginx's, in what it reports and in what it limits.
module Realtime.Server.Tests.ReverseProxyTests

open System
open System.Collections.Concurrent
open System.IO
open System.Net
open System.Net.Http
open System.Net.Security
open System.Net.Sockets
open System.Net.WebSockets
open System.Security.Cryptography
open System.Security.Cryptography.X509Certificates
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Realtime.Server.Tests.TestHost
open Realtime.TestSupport.SuiteTransport

/// The build configuration of these tests (Debug or Release): samples/Chat was built with it.
let private configuration = DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent.Name

/// Starts the built samples/Chat on 127.0.0.1:`port` with `arguments`, on the run's transport (`--native`
/// in the native run), and waits (at most 30 s) until it listens.
let private startChat (port: int) (arguments: string) : Task<Diagnostics.Process * StringBuilder> =
    task {
        let folder = Path.Combine(repositoryRoot, "samples", "Chat")
        let dll = Path.Combine(folder, "bin", configuration, "net10.0", "Chat.dll")
        if not (File.Exists dll) then failtestf "samples/Chat is not built (%s)" dll
        let chat, output = startDotnet $"exec \"{dll}\" --contentRoot \"{folder}\" --urls http://127.0.0.1:{port} {arguments} {sampleTransportArguments}"
        let deadline = DateTime.UtcNow.AddSeconds 30.0
        let mutable listening = false
        while not listening && DateTime.UtcNow < deadline && not chat.HasExited do
            try
                use probe = new TcpClient()
                do! probe.ConnectAsync(IPAddress.Loopback, port)
                listening <- true
            with _ ->
                do! Task.Delay 100
        if not listening then
            stopProcess chat
            chat.Dispose()
            failtestf "samples/Chat did not listen on %d within 30 s:\n%O" port output
        if runsNativeEventLoops chat.Id <> nativeTransport then
            stopProcess chat
            chat.Dispose()
            failtestf "samples/Chat should run the native transport's event loops exactly in the native run (native: %b)" nativeTransport
        return chat, output
    }

/// A running Chat and the nginx in front of it.
type private Deployment = { Nginx: Nginx.NginxInstance; AppPort: int }

/// Starts Chat with `chatArguments` and nginx in front of it (the README's block, changed by
/// `adjust`), runs `body`, and stops both whatever happens; a failure carries both their logs.
let private behindNginxWith (adjust: Nginx.Site -> Nginx.Site) (chatArguments: string) (body: Deployment -> Task<unit>) : Task<unit> =
    task {
        let appPort = freePort ()
        let! chat, chatOutput = startChat appPort chatArguments
        try
            let! nginx = Nginx.start (adjust { Port = freePort (); AppPort = appPort; Timeout = None; Without = [] })
            try
                try
                    do! body { Nginx = nginx; AppPort = appPort }
                with error ->
                    failtestf "%s\n\n%s\nChat's output:\n%O" error.Message nginx.Diagnostics chatOutput
            finally
                nginx.Stop()
        finally
            stopProcess chat
            chat.Dispose()
    }

/// Chat behind nginx configured exactly as the README says.
let private behindNginx = behindNginxWith id

/// Opens a TCP connection from `source` (any address of 127.0.0.0/8 on Linux's loopback) to the target.
let private connectFrom (source: IPAddress) (target: DnsEndPoint) (cancel: CancellationToken) : Task<Stream> =
    task {
        let socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
        let mutable connected = false
        try
            socket.NoDelay <- true
            socket.Bind(IPEndPoint(source, 0))
            do! socket.ConnectAsync(IPEndPoint(IPAddress.Parse target.Host, target.Port), cancel)
            connected <- true
            return new NetworkStream(socket, true) :> Stream
        finally
            if not connected then socket.Dispose()
    }

/// An HTTP handler whose connections come from `source` and that accepts exactly nginx's certificate.
let private handlerFrom (source: IPAddress) (trusted: X509Certificate2) =
    let handler = new SocketsHttpHandler()
    handler.ConnectCallback <- fun context cancel -> ValueTask<Stream>(connectFrom source context.DnsEndPoint cancel)
    let expected = trusted.GetCertHashString HashAlgorithmName.SHA256
    handler.SslOptions.RemoteCertificateValidationCallback <-
        RemoteCertificateValidationCallback(fun _ presented _ _ -> not (isNull presented) && presented.GetCertHashString HashAlgorithmName.SHA256 = expected)
    handler

/// A chat socket whose every received text message is kept, read by a loop that runs until the
/// socket closes (so that the client also answers the server's pings while the test waits).
type private ChatClient(socket: ClientWebSocket, invoker: HttpMessageInvoker) =
    let received = ConcurrentQueue<string>()
    let receiving =
        task {
            let buffer = Array.zeroCreate 65536
            use message = new MemoryStream()
            try
                while socket.State = WebSocketState.Open do
                    let! result = socket.ReceiveAsync(ArraySegment buffer, CancellationToken.None)
                    if result.MessageType <> WebSocketMessageType.Close then
                        message.Write(buffer, 0, result.Count)
                        if result.EndOfMessage then
                            received.Enqueue(Encoding.UTF8.GetString(message.ToArray()))
                            message.SetLength 0L
            with _ -> ()
        }

    member _.Socket = socket

    /// The messages received so far, in order.
    member _.Received = received |> Seq.toList

    member _.Send(text: string) : Task = sendText socket text

    /// Waits (at most 15 s) until exactly `text` has been received.
    member this.WaitFor(text: string) : Task<unit> =
        task {
            let! arrived = eventually (TimeSpan.FromSeconds 15.0) (fun () -> Seq.contains text received)
            if not arrived then failtestf "expected %A, received %A (socket %A)" text this.Received socket.State
        }

    /// Closes with 1000 and waits (at most 10 s) for the server's close.
    member _.Close() : Task<unit> =
        task {
            use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
            do! socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", cancel.Token)
            let! ended = Task.WhenAny(receiving, Task.Delay(TimeSpan.FromSeconds 10.0))
            if not (Object.ReferenceEquals(ended, receiving)) then failtest "the server did not answer the close within 10 s"
        }

    interface IDisposable with
        member _.Dispose() =
            socket.Abort()
            socket.Dispose()
            invoker.Dispose()

/// Opens a chat socket from `source` to `url` (wss through nginx, or ws straight to the app) with
/// extra request headers; the socket, or the HTTP status it was refused with.
let private openFrom (source: string) (deployment: Deployment) (url: string) (headers: (string * string) list) : Task<Result<ChatClient, int>> =
    task {
        let invoker = new HttpMessageInvoker(handlerFrom (IPAddress.Parse source) deployment.Nginx.Certificate)
        let socket = new ClientWebSocket()
        socket.Options.CollectHttpResponseDetails <- true
        // No unsolicited pongs: only the app's pings cross nginx while a socket is idle.
        socket.Options.KeepAliveInterval <- TimeSpan.Zero
        for name, value in headers do socket.Options.SetRequestHeader(name, value)
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 15.0)
        try
            do! socket.ConnectAsync(Uri url, invoker, cancel.Token)
            return Ok(new ChatClient(socket, invoker))
        with :? WebSocketException when int socket.HttpStatusCode <> 0 ->
            let status = int socket.HttpStatusCode
            socket.Dispose()
            invoker.Dispose()
            return Error status
    }

/// The chat URL through nginx.
let private throughNginx (deployment: Deployment) (name: string) (room: string) =
    $"wss://127.0.0.1:{deployment.Nginx.Port}/chat?name={name}&room={room}"

/// Joins `room` as `name` from `source` through nginx; fails unless the socket opens and greets.
let private join (source: string) (deployment: Deployment) (name: string) (room: string) : Task<ChatClient> =
    task {
        match! openFrom source deployment (throughNginx deployment name room) [] with
        | Ok client ->
            do! client.WaitFor "connected to WebSocket server over HTTP/1.1"
            return client
        | Error status -> return failtestf "%s from %s was refused with %d" name source status
    }

/// Expects the socket to be refused with `expected` (an HTTP status).
let private expectRefused (expected: int) (attempt: Task<Result<ChatClient, int>>) : Task<unit> =
    task {
        match! attempt with
        | Ok client ->
            (client :> IDisposable).Dispose()
            failtestf "expected %d, the socket opened" expected
        | Error status -> Expect.equal status expected $"refused with {expected}"
    }

/// What Chat's "whoami" answers.
let private whoami (name: string) (room: string) (address: string) (scheme: string) =
    $"you are {name} in {room}, connected from {address} over {scheme}"

[<Tests>]
let tests =
    testSequenced <| testList "Behind nginx: samples/Chat behind the README's nginx block, TLS at nginx" [

        testCaseTask "two clients chat through nginx; the app sees each one's own address over wss, and ordinary requests pass too" (fun () ->
            behindNginx "--behind-proxy 127.0.0.1" (fun deployment -> task {
                use! alice = join "127.0.0.2" deployment "alice" "proxied"
                use! bob = join "127.0.0.3" deployment "bob" "proxied"
                do! alice.WaitFor "bob joined proxied"
                do! alice.Send "Hello Bob, through nginx."
                do! bob.WaitFor "alice: Hello Bob, through nginx."
                do! alice.WaitFor "alice: Hello Bob, through nginx."
                do! bob.Send "Hi Alice!"
                do! alice.WaitFor "bob: Hi Alice!"

                do! alice.Send "whoami"
                do! alice.WaitFor(whoami "alice" "proxied" "127.0.0.2" "wss")
                do! bob.Send "whoami"
                do! bob.WaitFor(whoami "bob" "proxied" "127.0.0.3" "wss")
                Expect.isFalse (bob.Received |> List.exists (fun text -> text.StartsWith "you are alice")) "whoami answers its sender only"

                do! alice.Close()
                do! bob.WaitFor "alice left proxied"

                use http = new HttpClient(handlerFrom (IPAddress.Parse "127.0.0.2") deployment.Nginx.Certificate, true)
                http.Timeout <- TimeSpan.FromSeconds 15.0
                let! greeting = http.GetStringAsync $"https://127.0.0.1:{deployment.Nginx.Port}/greet"
                Expect.equal greeting "Hello World!" "/greet through nginx"
                let! page = http.GetStringAsync $"https://127.0.0.1:{deployment.Nginx.Port}/"
                Expect.stringContains page "<title>Realtime chat</title>" "the chat page through nginx"
            }))

        testCaseTask "without the block's Upgrade and Connection lines the upgrade reaches the app as a plain GET and is refused with 400" (fun () ->
            let withoutUpgrade (site: Nginx.Site) =
                { site with Without = [ "proxy_set_header Upgrade"; "proxy_set_header Connection" ] }
            behindNginxWith withoutUpgrade "--behind-proxy 127.0.0.1" (fun deployment -> task {
                do! expectRefused 400 (openFrom "127.0.0.2" deployment (throughNginx deployment "alice" "plain") [])
            }))

        testCaseTask "MaxConnectionsPerAddress counts real clients: a third socket from 127.0.0.2 gets 503 while 127.0.0.3 still connects, and a freed slot is taken again" (fun () ->
            behindNginx "--behind-proxy 127.0.0.1 --Realtime:MaxConnectionsPerAddress 2" (fun deployment -> task {
                use! alice = join "127.0.0.2" deployment "alice" "limits"
                use! alice2 = join "127.0.0.2" deployment "alice2" "limits"
                do! expectRefused 503 (openFrom "127.0.0.2" deployment (throughNginx deployment "alice3" "limits") [])
                use! bob = join "127.0.0.3" deployment "bob" "limits"
                use! bob2 = join "127.0.0.3" deployment "bob2" "limits"
                do! expectRefused 503 (openFrom "127.0.0.3" deployment (throughNginx deployment "bob3" "limits") [])
                do! bob2.Send "still here"
                do! alice.WaitFor "bob2: still here"

                do! alice2.Close()
                // The slot is given back when the app has ended the connection: retry for a bounded time.
                let deadline = DateTime.UtcNow.AddSeconds 15.0
                let mutable again = None
                while again.IsNone && DateTime.UtcNow < deadline do
                    match! openFrom "127.0.0.2" deployment (throughNginx deployment "alice3" "limits") [] with
                    | Ok client -> again <- Some client
                    | Error 503 -> do! Task.Delay 100
                    | Error status -> failtestf "refused with %d, expected 503 or a socket" status
                match again with
                | Some client ->
                    use _ = client
                    do! client.WaitFor "connected to WebSocket server over HTTP/1.1"
                | None -> failtest "the slot alice2 freed was not given back within 15 s"
            }))

        testCaseTask "a forged X-Forwarded-For or X-Forwarded-Proto changes nothing: through nginx, or straight to the app from an address that is not the proxy" (fun () ->
            behindNginx "--behind-proxy 127.0.0.1" (fun deployment -> task {
                let forged = [ "X-Forwarded-For", "203.0.113.7"; "X-Forwarded-Proto", "https" ]
                match! openFrom "127.0.0.2" deployment (throughNginx deployment "mallory" "forged") forged with
                | Error status -> failtestf "refused with %d" status
                | Ok viaNginx ->
                    use _ = viaNginx
                    do! viaNginx.Send "whoami"
                    do! viaNginx.WaitFor(whoami "mallory" "forged" "127.0.0.2" "wss")
                match! openFrom "127.0.0.2" deployment $"ws://127.0.0.1:{deployment.AppPort}/chat?name=mallory&room=forged" forged with
                | Error status -> failtestf "refused with %d" status
                | Ok direct ->
                    use _ = direct
                    do! direct.Send "whoami"
                    do! direct.WaitFor(whoami "mallory" "forged" "127.0.0.2" "ws")
            }))

        testCaseTask "an idle socket stays open through nginx past proxy_read_timeout when the app pings within it, and is cut when the app does not ping" (fun () ->
            // proxy_read_timeout 5 s: Chat pinging every 2 s of silence keeps it; with pings off nginx cuts it.
            let idleFor (chatArguments: string) (expectOpen: bool) =
                behindNginxWith (fun site -> { site with Timeout = Some 5 }) ("--behind-proxy 127.0.0.1 " + chatArguments) (fun deployment -> task {
                    use! alice = join "127.0.0.2" deployment "alice" "idle"
                    let! closed = eventually (TimeSpan.FromSeconds 12.0) (fun () -> alice.Socket.State <> WebSocketState.Open)
                    if expectOpen then
                        Expect.isFalse closed $"still open after 12 s of silence (state {alice.Socket.State})"
                        do! alice.Send "whoami"
                        do! alice.WaitFor(whoami "alice" "idle" "127.0.0.2" "wss")
                    else
                        Expect.isTrue closed "nginx closed the silent socket within 12 s"
                })
            task {
                let! both = Task.WhenAll(idleFor "--Realtime:IdleTimeout 00:00:02" true, idleFor "--Realtime:IdleTimeout 00:00:00" false)
                ignore both
            })

        testCaseTask "without --behind-proxy Chat reads no forwarded header: through nginx every client is nginx's 127.0.0.1 and they share one MaxConnectionsPerAddress" (fun () ->
            behindNginx "--Realtime:MaxConnectionsPerAddress 2" (fun deployment -> task {
                use! alice = join "127.0.0.2" deployment "alice" "unproxied"
                use! bob = join "127.0.0.3" deployment "bob" "unproxied"
                do! alice.Send "whoami"
                do! alice.WaitFor(whoami "alice" "unproxied" "127.0.0.1" "ws")
                do! bob.Send "whoami"
                do! bob.WaitFor(whoami "bob" "unproxied" "127.0.0.1" "ws")
                do! expectRefused 503 (openFrom "127.0.0.4" deployment (throughNginx deployment "carol" "unproxied") [])
            }))
    ]

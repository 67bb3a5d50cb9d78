/// The upgrade request is bounded in size (431) and in time (Kestrel's header timeout).
module Realtime.Server.Tests.HandshakeLimitTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.Logging
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.TestLogs
open Realtime.Server.Tests.Timing
open Realtime.Server.Tests.UpgradeAttempts
open Realtime.TestSupport.SuiteTransport

/// Waits (bounded) until the server closes the TCP connection; returns whether it did and what it sent.
let private waitForServerClose (stream: NetworkStream) (timeout: TimeSpan) : Task<bool * string> =
    task {
        use cancel = new CancellationTokenSource(timeout)
        let received = StringBuilder()
        let buffer = Array.zeroCreate<byte> 1024
        let mutable closed = false
        let mutable finished = false
        while not finished do
            let! read =
                task {
                    try return! stream.ReadAsync(buffer, 0, buffer.Length, cancel.Token)
                    with
                    | :? OperationCanceledException -> return -1
                    | :? IOException -> return 0
                }
            if read > 0 then received.Append(Encoding.ASCII.GetString(buffer, 0, read)) |> ignore
            else
                closed <- read = 0
                finished <- true
        return closed, received.ToString()
    }

[<Tests>]
let handshakeLimitTests =
    testList "Defence: the upgrade request is bounded in size (431) and in time (Kestrel's header timeout)" [
        testCaseTask "header lines over MaxHandshakeHeaderBytes get 431 before the upgrade, one long line or many short ones; under it is upgraded" (fun () -> task {
            let attached = ref 0
            let! server =
                start
                    (fun options -> options.MaxHandshakeHeaderBytes <- 2048)
                    (fun app ->
                        let handlers () =
                            RealtimeHandlers<obj>(Attach = (fun _ -> Interlocked.Increment(&attached.contents) |> ignore; Attachment<obj>.Accept null))
                        app.MapRealtime("/echo", handlers ()) |> ignore
                        app.MapRealtime("/roomy", handlers (), fun options -> options.MaxHandshakeHeaderBytes <- 8192) |> ignore)
            use _ = server
            let longLine = $"X-Padding: {String('a', 2100)}\r\n"
            let manyLines = String.Join("", [ for i in 1..60 -> $"X-Filler-{i:D2}: {String('b', 40)}\r\n" ])
            let! head = headFor server.Port (RawClient.upgradeRequest "/echo" longLine)
            Expect.equal (statusOf head) 431 $"one long header line gets 431: {head}"
            Expect.isFalse (head.Contains "Sec-WebSocket-Accept") "no accept key"
            let! many = statusFor server.Port "/echo" manyLines
            Expect.equal many 431 "many short header lines adding up get 431"
            let! cookie = statusFor server.Port "/echo" $"Cookie: {String('c', 1500)}\r\nCookie: {String('d', 1500)}\r\n"
            Expect.equal cookie 431 "a header repeated adds up too"
            Expect.equal attached.Value 0 "Attach never ran"
            let! under = statusFor server.Port "/echo" $"X-Padding: {String('a', 1000)}\r\n"
            Expect.equal under 101 "1000 bytes of padding is under the limit"
            let! roomy = statusFor server.Port "/roomy" longLine
            Expect.equal roomy 101 "an endpoint may raise the limit"
        })

        testCaseTask ("a client that resets its connection in the middle of the request head is no error: nothing at Error level, " + suiteTransportName + " or directly") (fun () -> task {
            for direct in [ false; true ] do
                let mutable logs = Unchecked.defaultof<CapturedLogs>
                let! server =
                    startIn direct ignore (fun app ->
                        logs <- captureLogs LogLevel.Error app
                        app.MapRealtime("/echo", echoHandlers ()) |> ignore)
                use _ = server
                for _ in 1..5 do
                    let tcp = new TcpClient()
                    do! tcp.ConnectAsync(IPAddress.Loopback, server.Port)
                    let half = Encoding.ASCII.GetBytes "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr"
                    do! tcp.GetStream().WriteAsync(half, 0, half.Length)
                    do! Task.Delay 50
                    // Linger 0: close sends a TCP reset instead of a FIN.
                    tcp.Client.LingerState <- LingerOption(true, 0)
                    tcp.Client.Close()
                // The server is still fine, and said nothing at Error level about the resets.
                use! client = connect (server.WsUrl + "/echo")
                do! sendText client "still here"
                let! back = receiveText client
                Expect.equal back "still here" "served afterwards"
                do! Task.Delay 300
                Expect.isEmpty logs.Lines $"no Error log (direct = {direct})"
        })

        testCaseTask "HandshakeTimeout: a client that sends half a request line and stalls is disconnected by Kestrel in bounded time" (fun () -> task {
            let! server = start (fun options -> options.HandshakeTimeout <- Nullable(seconds 1.0)) (fun app -> app.MapRealtime("/echo", echoHandlers ()) |> ignore)
            use _ = server
            use tcp = new TcpClient()
            do! tcp.ConnectAsync(IPAddress.Loopback, server.Port)
            let stream = tcp.GetStream()
            let half = Encoding.ASCII.GetBytes "GET /echo HT"
            do! stream.WriteAsync(half, 0, half.Length)
            let clock = Stopwatch.StartNew()
            let! closed, received = waitForServerClose stream (seconds 10.0)
            let elapsed = clock.Elapsed
            Expect.isTrue closed $"the server closed the stalled connection (after {elapsed})"
            Expect.isGreaterThanOrEqual elapsed (TimeSpan.FromMilliseconds 900.0) "not before the timeout"
            Expect.isLessThan elapsed (seconds 5.0) "within a few seconds (Kestrel checks about once a second)"
            Expect.isTrue (received = "" || received.StartsWith "HTTP/1.1 408") $"nothing or 408 before closing, got: {received}"
        })

        testCaseTask "HandshakeTimeout: headers trickled one byte at a time are cut off by the same total time" (fun () -> task {
            let! server = start (fun options -> options.HandshakeTimeout <- Nullable(seconds 1.0)) (fun app -> app.MapRealtime("/echo", echoHandlers ()) |> ignore)
            use _ = server
            use tcp = new TcpClient()
            do! tcp.ConnectAsync(IPAddress.Loopback, server.Port)
            tcp.NoDelay <- true
            let stream = tcp.GetStream()
            let request = Encoding.ASCII.GetBytes(RawClient.upgradeRequest "/echo" "")
            use stop = new CancellationTokenSource()
            let clock = Stopwatch.StartNew()
            let trickle =
                task {
                    try
                        // 150 ms per byte: the whole request would take over 20 s.
                        for index in 0 .. request.Length - 1 do
                            if not stop.IsCancellationRequested then
                                do! stream.WriteAsync(request, index, 1)
                                do! Task.Delay(150, stop.Token)
                    with _ -> ()
                }
            let! closed, received = waitForServerClose stream (seconds 10.0)
            let elapsed = clock.Elapsed
            stop.Cancel()
            do! trickle
            Expect.isTrue closed $"the server closed the trickling connection (after {elapsed})"
            Expect.isLessThan elapsed (seconds 5.0) "within a few seconds"
            Expect.isFalse (received.StartsWith "HTTP/1.1 101") "it was never upgraded"
            Expect.equal server.Realtime.ConnectionCount 0 "no connection"
        })

        testCaseTask "HandshakeTimeout does not cut an upgraded connection that stays open longer" (fun () -> task {
            let! server = start (fun options -> options.HandshakeTimeout <- Nullable(seconds 1.0)) (fun app -> app.MapRealtime("/echo", echoHandlers ()) |> ignore)
            use _ = server
            use! raw = RawClient.connect server.Port "/echo"
            do! Task.Delay 2500
            do! expectEcho raw "still open after 2.5 s"
            Expect.isFalse raw.TransportClosed "not closed"
        })
    ]

/// Connection limits answer 503 before the upgrade and always give their slots back.
module Realtime.Server.Tests.ConnectionLimitTests

open System
open System.Diagnostics
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

/// A second loopback address: Linux routes all of 127.0.0.0/8 to lo, so a client bound to it
/// reaches the server on 127.0.0.1 from a different remote address.
let private otherLoopback = IPAddress.Parse "127.0.0.2"

/// Opens a WebSocket from `local`; fails unless the server answers 101.
let private openFrom (local: IPAddress) (port: int) (path: string) : Task<RawClient.RawConnection> =
    task {
        let! tcp, stream, head = attemptFrom local port (RawClient.upgradeRequest path "")
        if statusOf head <> 101 then
            tcp.Dispose()
            failtestf "expected 101 for %s from %O, got: %s" path local head
        return new RawClient.RawConnection(tcp, stream, head)
    }

/// Opens a WebSocket from `local`, trying again while the answer is 503, for up to `within`: the
/// slot of a connection that just ended is given back once it has finished (after its Close
/// handler), a moment after the client saw the end. Any other answer fails.
let private openWithin (within: TimeSpan) (local: IPAddress) (port: int) (path: string) : Task<RawClient.RawConnection> =
    task {
        let deadline = DateTime.UtcNow + within
        let mutable result = None
        while result.IsNone do
            let! tcp, stream, head = attemptFrom local port (RawClient.upgradeRequest path "")
            match statusOf head with
            | 101 -> result <- Some(new RawClient.RawConnection(tcp, stream, head))
            | 503 when DateTime.UtcNow < deadline ->
                tcp.Dispose()
                do! Task.Delay 10
            | _ ->
                tcp.Dispose()
                failtestf "expected 101 for %s from %O within %O, got: %s" path local within head
        return result.Value
    }

/// The closing handshake from the client's side, then the end of the TCP connection.
let private closeCleanly (raw: RawClient.RawConnection) : Task =
    task {
        do! raw.SendClose(1000us, "bye")
        let! code = raw.ReceiveClose(seconds 10.0)
        Expect.equal code (Some 1000us) "the server answers the close"
        let! ended = raw.WaitForTransportClose(seconds 10.0)
        Expect.isTrue ended "the server ends the TCP connection after the closing handshake"
        (raw :> IDisposable).Dispose()
    }

[<Tests>]
let connectionLimitTests =
    testList "Defence: connection limits answer 503 before the upgrade and always give their slots back" [
        testCaseTask "MaxConnections counts every endpoint together: the next upgrade gets 503, and once one closes a new one is admitted" (fun () -> task {
            let! server =
                start
                    (fun options -> options.MaxConnections <- 3)
                    (fun app ->
                        app.MapRealtime("/a", echoHandlers ()) |> ignore
                        app.MapRealtime("/b", echoHandlers ()) |> ignore)
            use _ = server
            let! a1 = openFrom IPAddress.Loopback server.Port "/a"
            use! a2 = openFrom IPAddress.Loopback server.Port "/a"
            use! b1 = openFrom IPAddress.Loopback server.Port "/b"
            // A connection is registered just after its 101 is written, so the client may read the 101 first.
            do! expectEventually (seconds 10.0) "three open" (fun () -> server.Realtime.ConnectionCount = 3)
            let! head = headFor server.Port (RawClient.upgradeRequest "/a" "")
            Expect.equal (statusOf head) 503 $"a fourth on /a gets 503: {head}"
            Expect.isFalse (head.Contains "Sec-WebSocket-Accept") "no accept key"
            let! onB = statusFor server.Port "/b" ""
            Expect.equal onB 503 "a fourth on /b gets 503 too"
            let! fromOther = statusFor server.Port "/b" ""
            Expect.equal fromOther 503 "and again"
            do! expectEcho a2 "the open ones keep working"
            do! closeCleanly a1
            use! replacement = openWithin (seconds 5.0) IPAddress.Loopback server.Port "/b"
            do! expectEcho replacement "admitted after one closed"
            let! full = statusFor server.Port "/a" ""
            Expect.equal full 503 "full again"
            do! expectEcho b1 "unaffected"
        })

        testCaseTask "200 open/close cycles (clean close, dropped TCP, protocol error, half a frame) leave the count at zero and the whole limit available" (fun () -> task {
            let limit = 4
            let! server =
                start
                    (fun options ->
                        options.MaxConnections <- limit
                        options.MaxConnectionsPerAddress <- limit)
                    (fun app -> app.MapRealtime("/echo", echoHandlers ()) |> ignore)
            use _ = server
            let clock = Stopwatch.StartNew()
            let endings = [| 0; 0; 0; 0 |]
            for cycle in 0 .. 200 / limit - 1 do
                let! batch = Task.WhenAll [ for _ in 1..limit -> openWithin (seconds 5.0) IPAddress.Loopback server.Port "/echo" ]
                let! full = statusFor server.Port "/echo" ""
                Expect.equal full 503 $"cycle {cycle}: the limit holds"
                let closing =
                    batch
                    |> Array.mapi (fun index raw ->
                        task {
                            let way = (cycle + index) % 4
                            endings[way] <- endings[way] + 1
                            match way with
                            | 0 -> do! closeCleanly raw
                            | 1 -> (raw :> IDisposable).Dispose()
                            | 2 ->
                                do! raw.SendRaw [| 0x83uy; 0x80uy; 1uy; 2uy; 3uy; 4uy |] // reserved opcode
                                let! code = raw.ReceiveClose(seconds 10.0)
                                Expect.equal code (Some 1002us) "a protocol error closes with 1002"
                                (raw :> IDisposable).Dispose()
                            | _ ->
                                do! raw.SendRaw [| 0x82uy; 0xFEuy; 0x01uy |] // half a header
                                (raw :> IDisposable).Dispose()
                        }
                        :> Task)
                do! Task.WhenAll closing
            do! expectEventually (seconds 10.0) "every connection ended" (fun () -> server.Realtime.ConnectionCount = 0)
            let! again = Task.WhenAll [ for _ in 1..limit -> openWithin (seconds 5.0) IPAddress.Loopback server.Port "/echo" ]
            Expect.equal server.Realtime.ConnectionCount limit "the whole limit is available again"
            let! over = statusFor server.Port "/echo" ""
            Expect.equal over 503 "and no more"
            for raw in again do
                do! expectEcho raw "still serving"
                do! closeCleanly raw
            do! expectEventually (seconds 10.0) "the count returns to zero" (fun () -> server.Realtime.ConnectionCount = 0)
            printfn "connection limits: 200 open/close cycles (%A by ending) in %O" endings clock.Elapsed
        })

        testCaseTask "MaxConnectionsPerAddress gives the extra connection from 127.0.0.1 a 503 while 127.0.0.2 is still admitted" (fun () -> task {
            let! server =
                start
                    (fun options -> options.MaxConnectionsPerAddress <- 2)
                    (fun app -> app.MapRealtime("/echo", echoHandlers ()) |> ignore)
            use _ = server
            let! first = openFrom IPAddress.Loopback server.Port "/echo"
            use! second = openFrom IPAddress.Loopback server.Port "/echo"
            let! third = statusFor server.Port "/echo" ""
            Expect.equal third 503 "the third from 127.0.0.1 gets 503"
            use! other1 = openFrom otherLoopback server.Port "/echo"
            use! other2 = openFrom otherLoopback server.Port "/echo"
            do! expectEcho other2 "another address has its own count"
            let! otherThird, _, otherHead = attemptFrom otherLoopback server.Port (RawClient.upgradeRequest "/echo" "")
            otherThird.Dispose()
            Expect.equal (statusOf otherHead) 503 "the third from 127.0.0.2 gets 503 too"
            let addresses = server.Realtime.Connections |> Seq.map (fun c -> string c.RemoteAddress) |> Seq.sort |> List.ofSeq
            Expect.equal addresses [ "127.0.0.1"; "127.0.0.1"; "127.0.0.2"; "127.0.0.2" ] "the server saw both addresses"
            do! closeCleanly first
            use! replacement = openWithin (seconds 5.0) IPAddress.Loopback server.Port "/echo"
            do! expectEcho replacement "127.0.0.1 is admitted again after one of its connections closed"
            do! expectEcho second "unaffected"
            do! expectEcho other1 "unaffected"
        })

        testCaseTask "rejected Attach, throwing Attach, failed handshakes and clients gone during AttachAsync do not leak a slot" (fun () -> task {
            let mutable logs = Unchecked.defaultof<CapturedLogs>
            let attached = ref 0
            let! server =
                start
                    (fun options ->
                        options.MaxConnections <- 2
                        options.MaxConnectionsPerAddress <- 2
                        options.AllowedOrigins.Add "https://ok.example"
                        options.MaxHandshakeHeaderBytes <- 1024)
                    (fun app ->
                        logs <- captureLogs LogLevel.Error app
                        app.MapRealtime(
                            "/guarded",
                            RealtimeHandlers<obj>(
                                Attach =
                                    (fun http ->
                                        Interlocked.Increment(&attached.contents) |> ignore
                                        match http.Request.Query["mode"].ToString() with
                                        | "reject" -> Attachment<obj>.Reject(401, "no")
                                        | "throw" -> raise (InvalidOperationException "Attach fails on purpose")
                                        | _ -> Attachment<obj>.Accept null),
                                Message = (fun ws message -> ws.Send(message) |> ignore)))
                        |> ignore
                        app.MapRealtime(
                            "/slow-attach",
                            RealtimeHandlers<obj>(
                                AttachAsync =
                                    (fun _ ->
                                        ValueTask<Attachment<obj>>(
                                            task {
                                                do! Task.Delay 150
                                                return Attachment<obj>.Accept null
                                            }))))
                        |> ignore)
            use _ = server
            for _ in 1..20 do
                let! status = statusFor server.Port "/guarded?mode=reject" ""
                Expect.equal status 401 "Attach rejects with 401"
            for _ in 1..5 do
                let! status = statusFor server.Port "/guarded?mode=throw" ""
                Expect.equal status 500 "a throwing Attach answers 500"
            for _ in 1..5 do
                let! status = statusFor server.Port "/guarded" "Origin: https://evil.example\r\n"
                Expect.equal status 403 "a disallowed origin"
                let! bigHeaders = statusFor server.Port "/guarded" $"X-Padding: {String('x', 1100)}\r\n"
                Expect.equal bigHeaders 431 "headers too large"
                let! version = headFor server.Port ((RawClient.upgradeRequest "/guarded" "").Replace("Version: 13", "Version: 8"))
                Expect.equal (statusOf version) 426 "an unsupported version"
                let! noKey = headFor server.Port ((RawClient.upgradeRequest "/guarded" "").Replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""))
                Expect.equal (statusOf noKey) 400 "no key"
            // Clients that hang up while AttachAsync is still working.
            for _ in 1..5 do
                let tcp = new TcpClient()
                do! tcp.ConnectAsync(IPAddress.Loopback, server.Port)
                let request = Encoding.ASCII.GetBytes(RawClient.upgradeRequest "/slow-attach" "")
                do! tcp.GetStream().WriteAsync(request, 0, request.Length)
                do! Task.Delay 20
                tcp.Dispose()
            do! Task.Delay 400
            use! one = openWithin (seconds 5.0) IPAddress.Loopback server.Port "/guarded"
            use! two = openWithin (seconds 5.0) IPAddress.Loopback server.Port "/guarded"
            let! three = statusFor server.Port "/guarded" ""
            Expect.equal three 503 "both slots were free, and the limit still holds"
            do! expectEcho one "served"
            do! expectEcho two "served"
            Expect.equal server.Realtime.ConnectionCount 2 "two connections"
            let unexpected = logs.Lines |> Array.filter (fun entry -> not (entry.Contains "Attach fails on purpose"))
            Expect.isEmpty unexpected "no errors but the throwing Attach's"
            Expect.equal (logs.Lines.Length) 5 "each throwing Attach is logged once"
        })
    ]

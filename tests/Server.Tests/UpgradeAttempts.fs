/// Upgrade requests sent over plain TCP from a chosen loopback address, with the status each gets,
/// and the echo endpoint the defence tests open when a request is let through.
module Realtime.Server.Tests.UpgradeAttempts

open System.Net
open System.Net.Sockets
open System.Text
open System.Threading.Tasks
open Expecto
open Realtime
open Realtime.Protocol

/// Handlers that send every message back unchanged.
let echoHandlers () =
    RealtimeHandlers<obj>(Message = (fun ws message -> ws.Send(message) |> ignore))

/// The status code of a response head; 0 when the server closed without answering.
let statusOf (head: string) =
    if head.StartsWith "HTTP/1.1 " && head.Length >= 12 then int (head.Substring(9, 3)) else 0

/// Sends a request from a socket bound to `local` and reads the response head; the TCP
/// connection stays open and belongs to the caller.
let attemptFrom (local: IPAddress) (port: int) (request: string) : Task<TcpClient * NetworkStream * string> =
    task {
        let tcp = new TcpClient(IPEndPoint(local, 0))
        do! tcp.ConnectAsync(IPAddress.Loopback, port)
        tcp.NoDelay <- true
        let stream = tcp.GetStream()
        let bytes = Encoding.ASCII.GetBytes request
        do! stream.WriteAsync(bytes, 0, bytes.Length)
        let! head = RawClient.readResponseHead stream
        return tcp, stream, head
    }

/// The response head a request from 127.0.0.1 gets; the connection is dropped afterwards.
let headFor (port: int) (request: string) : Task<string> =
    task {
        let! tcp, _, head = attemptFrom IPAddress.Loopback port request
        tcp.Dispose()
        return head
    }

/// The status an upgrade of `path` with extra header lines gets from 127.0.0.1.
let statusFor (port: int) (path: string) (extraHeaders: string) : Task<int> =
    task {
        let! head = headFor port (RawClient.upgradeRequest path extraHeaders)
        return statusOf head
    }

/// Sends a text message on a raw connection and expects it back.
let expectEcho (raw: RawClient.RawConnection) (text: string) : Task =
    task {
        do! raw.SendText text
        let! kind, bytes = raw.ReceiveMessage()
        Expect.equal kind Opcode.Text "a text message comes back"
        Expect.equal (Encoding.UTF8.GetString bytes) text "the same text comes back"
    }

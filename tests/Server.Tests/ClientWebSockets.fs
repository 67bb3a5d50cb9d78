/// The .NET ClientWebSocket side of the host tests: connections that learn their id from the
/// server's Open handler, the closing handshake, and proving a client received nothing else.
module Realtime.Server.Tests.ClientWebSockets

open System
open System.Net.WebSockets
open System.Threading
open System.Threading.Tasks
open Expecto
open Realtime
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing

/// An endpoint handler set whose Open announces the connection id to the client.
let announcing () =
    RealtimeHandlers<obj>(Open = (fun ws -> ws.Send($"id:{ws.Id}") |> ignore))

/// Connects a ClientWebSocket whose server-side Open handler sends "id:N"; returns it and N.
let connectWithId (url: string) : Task<ClientWebSocket * int64> =
    task {
        let! client = connect url
        let! first = receiveText client
        if not (first.StartsWith "id:") then failtestf "expected the id message first, got %s" first
        return client, int64 (first.Substring 3)
    }

/// The server-side socket of a connection id.
let socketOf (server: RunningServer) (id: int64) : RealtimeSocket =
    match server.Realtime.TryGetConnection id with
    | true, socket -> socket
    | _ -> failtestf "connection %d is not registered" id

/// Closes a ClientWebSocket with a code and reason and waits for the server's answer.
let closeClient (client: ClientWebSocket) (code: int) (reason: string) : Task =
    task {
        use cancel = new CancellationTokenSource(seconds 10.0)
        do! client.CloseAsync(enum<WebSocketCloseStatus> code, reason, cancel.Token)
    }

/// Receives until a close frame arrives (data messages are skipped); returns its code and reason.
let receiveClose (client: ClientWebSocket) : Task<int * string> =
    task {
        use cancel = new CancellationTokenSource(seconds 10.0)
        let buffer = Array.zeroCreate<byte> 65536
        let mutable finished = false
        while not finished do
            let! result = client.ReceiveAsync(ArraySegment buffer, cancel.Token)
            finished <- result.MessageType = WebSocketMessageType.Close
        return int client.CloseStatus.Value, client.CloseStatusDescription
    }

/// Proves a client received nothing else: a marker sent directly must be its next message.
let expectNothingBefore (server: RunningServer) (client: ClientWebSocket, id: int64) : Task =
    task {
        (socketOf server id).Send "marker" |> ignore
        let! next = receiveText client
        Expect.equal next "marker" $"connection {id} received nothing else"
    }

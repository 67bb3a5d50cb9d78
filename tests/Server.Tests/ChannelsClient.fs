/// A test client of the channels subprotocol's JSON form over a .NET ClientWebSocket: it reads every
/// message in the background, and the test takes them one at a time (with a bounded wait) or waits for
/// the next of a type.
module Realtime.Server.Tests.ChannelsClient

open System
open System.Net.WebSockets
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Expecto
open Realtime.Protocol

/// How long a test waits for one message before failing.
let messageTimeout = TimeSpan.FromSeconds 15.0

/// A connected JSON-form client.
type ChannelClient(socket: ClientWebSocket) =
    let inbox = Channels.Channel.CreateUnbounded<JsonElement>()
    let stop = new CancellationTokenSource()
    let reader =
        task {
            let buffer = Array.zeroCreate<byte> 65536
            use stream = new IO.MemoryStream()
            try
                try
                    while socket.State = WebSocketState.Open do
                        let! result = socket.ReceiveAsync(ArraySegment buffer, stop.Token)
                        if result.MessageType = WebSocketMessageType.Close then
                            do! socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
                        else
                            stream.Write(buffer, 0, result.Count)
                            if result.EndOfMessage then
                                use document = JsonDocument.Parse(stream.ToArray())
                                inbox.Writer.TryWrite(document.RootElement.Clone()) |> ignore
                                stream.SetLength 0L
                with _ -> ()
            finally
                inbox.Writer.TryComplete() |> ignore
        }

    /// The WebSocket underneath.
    member _.Socket = socket

    /// The next message; fails the test when none arrives in time or the connection ended.
    member _.Next() : Task<JsonElement> =
        task {
            use cancel = new CancellationTokenSource(messageTimeout)
            try
                return! inbox.Reader.ReadAsync(cancel.Token)
            with
            | :? OperationCanceledException -> return failtest "no message arrived in time"
            | :? Channels.ChannelClosedException -> return failtest "the connection ended before the message arrived"
        }

    /// The next message, or None once the connection ended and every message before its end was read
    /// (fails the test when neither happens in time).
    member _.NextOrEnd() : Task<JsonElement option> =
        task {
            use cancel = new CancellationTokenSource(messageTimeout)
            try
                let! more = inbox.Reader.WaitToReadAsync(cancel.Token)
                match more, inbox.Reader.TryRead() with
                | true, (true, message) -> return Some message
                | _ -> return None
            with :? OperationCanceledException -> return failtest "no message and no end arrived in time"
        }

    /// The next message, which must be of this type.
    member client.Expect(messageType: string) : Task<JsonElement> =
        task {
            let! message = client.Next()
            Expect.equal (message.GetProperty("type").GetString()) messageType $"expected a {messageType} message, got {message}"
            return message
        }

    /// Messages until one of this type (returned with the ones skipped before it).
    member client.Until(messageType: string) : Task<JsonElement * JsonElement list> =
        task {
            let skipped = Collections.Generic.List<JsonElement>()
            let mutable found = None
            while found.IsNone do
                let! message = client.Next()
                let kind = message.GetProperty("type").GetString()
                if kind = messageType then found <- Some message
                elif kind = "error" then failtest $"expected a {messageType} message, got {message}"
                else skipped.Add message
            return found.Value, List.ofSeq skipped
        }

    /// True when a message is waiting.
    member _.HasPending = inbox.Reader.Count > 0

    /// Sends one JSON text message.
    member _.Send(json: string) : Task =
        socket.SendAsync(ArraySegment(Text.Encoding.UTF8.GetBytes json), WebSocketMessageType.Text, true, CancellationToken.None)

    /// Ends the connection without a closing handshake (as a dropped network would).
    member _.Abort() =
        stop.Cancel()
        socket.Abort()

    /// Closes the connection with a normal closing handshake (bounded wait).
    member _.CloseAsync() : Task =
        task {
            use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
            try do! socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", cancel.Token) with _ -> ()
            try do! reader.WaitAsync(TimeSpan.FromSeconds 10.0) with _ -> ()
        }

    interface IDisposable with
        member client.Dispose() =
            client.Abort()
            socket.Dispose()
            stop.Dispose()

/// Connects offering `subprotocols`; returns the socket (the handshake failed if this throws).
let connectOffering (url: string) (subprotocols: string list) : Task<ClientWebSocket> =
    task {
        let socket = new ClientWebSocket()
        for p in subprotocols do socket.Options.AddSubProtocol p
        socket.Options.CollectHttpResponseDetails <- true
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        do! socket.ConnectAsync(Uri url, cancel.Token)
        return socket
    }

/// Connects with the JSON form and takes the welcome; returns the client and its client id.
let connectJson (url: string) : Task<ChannelClient * string> =
    task {
        let! socket = connectOffering url [ ChannelSubprotocol.Json ]
        let client = new ChannelClient(socket)
        let! welcome = client.Expect "welcome"
        return client, welcome.GetProperty("client").GetString()
    }

/// A string as a JSON string literal.
let quote (text: string) = JsonSerializer.Serialize text

/// The position of a pub, ack or subscribed message.
let offsetOf (message: JsonElement) = message.GetProperty("offset").GetUInt64()

/// The epoch of a pub, ack or subscribed message.
let epochOf (message: JsonElement) = message.GetProperty("epoch").GetString()

/// Subscribes and waits for `subscribed` (failing on an error); returns it with the pubs that came before it.
let subscribe (client: ChannelClient) (id: int) (channel: string) (extra: string) : Task<JsonElement * JsonElement list> =
    task {
        do! client.Send $"""{{"type":"subscribe","id":{id},"channel":{quote channel}{extra}}}"""
        let! subscribed, before = client.Until "subscribed"
        Expect.equal (subscribed.GetProperty("id").GetInt32()) id "the reply carries the request's id"
        for m in before do
            Expect.equal (m.GetProperty("type").GetString()) "pub" $"only publications come before subscribed, got {m}"
        return subscribed, before
    }

/// Publishes and waits for its ack (failing on an error; pubs before the ack are skipped).
let publish (client: ChannelClient) (id: int) (channel: string) (key: string) (data: string) : Task<JsonElement> =
    task {
        do! client.Send $"""{{"type":"publish","id":{id},"channel":{quote channel},"key":{quote key},"data":{data}}}"""
        let! ack, skipped = client.Until "ack"
        for m in skipped do
            Expect.equal (m.GetProperty("type").GetString()) "pub" $"only publications come before the ack, got {m}"
        Expect.equal (ack.GetProperty("id").GetInt32()) id "the ack carries the request's id"
        return ack
    }

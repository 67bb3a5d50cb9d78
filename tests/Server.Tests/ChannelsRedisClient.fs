/// A channels client for the cluster tests that follows the delivery rule of docs/channels-protocol.md
/// as the browser client does: it keeps a position per channel, delivers a publication only when its
/// offset is the next one, drops lower offsets as duplicates, holds higher ones and resubscribes with
/// its position to fill the gap; it resubscribes with its positions and retries unacknowledged
/// publishes (same key) when it connects again, to the same node or another.
module Realtime.Server.Tests.ChannelsRedisClient

open System
open System.Collections.Generic
open System.Net.WebSockets
open System.Text
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Expecto

/// One channel as the client sees it.
type ChannelView() =
    member val Epoch = "" with get, set
    member val Offset = 0UL with get, set
    member val Pending = SortedDictionary<uint64, string>()
    /// Publications that arrived before the first subscribed reply told the epoch: (epoch, offset, data).
    member val Early = ResizeArray<string * uint64 * string>()
    member val Recovering = false with get, set
    member val WantsPresence = false with get, set
    /// What the app got: (offset, data), in delivery order.
    member val Delivered = ResizeArray<uint64 * string>()
    member val Duplicates = 0 with get, set
    member val GapRecoveries = 0 with get, set
    member val NotRecovered = 0 with get, set
    member val OtherEpochs = 0 with get, set

type private Publish = { Channel: string; Key: string; Data: string; Acked: TaskCompletionSource<uint64> }

/// A client named `name` (its publish keys start with it).
type RecoveringClient(name: string) =
    let gate = obj ()
    let sendLock = new SemaphoreSlim(1, 1)
    let channels = Dictionary<string, ChannelView>()
    let unacked = Dictionary<string, Publish>()
    let requests = Dictionary<uint32, Choice<Publish, TaskCompletionSource<JsonElement>>>()
    let events = ResizeArray<string * string * string>()
    let errors = ResizeArray<string>()
    let mutable socket: ClientWebSocket = null
    let mutable nextId = 0u
    let mutable nextKey = 0
    let mutable clientId = ""

    let send (ws: ClientWebSocket) (message: string) =
        task {
            do! sendLock.WaitAsync()
            try
                if ws.State = WebSocketState.Open then
                    do! ws.SendAsync(ArraySegment(Encoding.UTF8.GetBytes message), WebSocketMessageType.Text, true, CancellationToken.None)
            finally
                sendLock.Release() |> ignore
        }

    let newId () = lock gate (fun () -> nextId <- nextId + 1u; nextId)

    let subscribeMessage (id: uint32) (channel: string) (view: ChannelView) =
        let since =
            if view.Epoch = "" then ""
            else $""","since":{{"epoch":{JsonSerializer.Serialize view.Epoch},"offset":{view.Offset}}}"""
        let presence = if view.WantsPresence then "true" else "false"
        $"""{{"type":"subscribe","id":{id},"channel":{JsonSerializer.Serialize channel}{since},"presence":{presence}}}"""

    let publishMessage (id: uint32) (p: Publish) =
        $"""{{"type":"publish","id":{id},"channel":{JsonSerializer.Serialize p.Channel},"key":{JsonSerializer.Serialize p.Key},"data":{p.Data}}}"""

    /// Delivers what follows the position without a gap. Under `gate`.
    let drain (view: ChannelView) =
        let mutable go = true
        while go && view.Pending.Count > 0 do
            let first = Seq.head view.Pending
            if first.Key <= view.Offset then
                view.Pending.Remove first.Key |> ignore
                view.Duplicates <- view.Duplicates + 1
            elif first.Key = view.Offset + 1UL then
                view.Pending.Remove first.Key |> ignore
                view.Delivered.Add(first.Key, first.Value)
                view.Offset <- first.Key
            else go <- false

    /// A resubscribe with the position, to fill a gap, unless one is on its way. Under `gate`.
    let recover (ws: ClientWebSocket) (channel: string) (view: ChannelView) : (unit -> Task) option =
        if view.Recovering then None
        else
            view.Recovering <- true
            view.GapRecoveries <- view.GapRecoveries + 1
            let id = newId ()
            let message = subscribeMessage id channel view
            Some(fun () -> send ws message :> Task)

    let handle (ws: ClientWebSocket) (message: JsonElement) : Task =
        let kind = message.GetProperty("type").GetString()
        let mutable after: (unit -> Task) option = None
        lock gate (fun () ->
            match kind with
            | "welcome" -> clientId <- message.GetProperty("client").GetString()
            | "pub" ->
                let channel = message.GetProperty("channel").GetString()
                let epoch = message.GetProperty("epoch").GetString()
                let offset = message.GetProperty("offset").GetUInt64()
                let data = message.GetProperty("data").GetRawText()
                match channels.TryGetValue channel with
                | true, view when view.Epoch = "" -> view.Early.Add(epoch, offset, data)
                | true, view when epoch = view.Epoch ->
                    if offset <= view.Offset then view.Duplicates <- view.Duplicates + 1
                    else
                        view.Pending[offset] <- data
                        drain view
                        if view.Pending.Count > 0 then after <- recover ws channel view
                | true, view -> view.OtherEpochs <- view.OtherEpochs + 1
                | _ -> ()
            | "subscribed" ->
                let channel = message.GetProperty("channel").GetString()
                let epoch = message.GetProperty("epoch").GetString()
                let offset = message.GetProperty("offset").GetUInt64()
                let recovery = message.GetProperty("recovery").GetString()
                let view = channels[channel]
                view.Recovering <- false
                if view.Epoch = "" then
                    view.Epoch <- epoch
                    view.Offset <- offset
                    for e, o, d in view.Early do
                        if e = epoch && o > offset then view.Pending[o] <- d
                    view.Early.Clear()
                elif recovery = "not-recovered" then
                    view.NotRecovered <- view.NotRecovered + 1
                    // What is lost is lost: go on from the oldest publication the history still had, or from now.
                    if view.Epoch <> epoch then
                        view.Epoch <- epoch
                        view.Pending.Clear()
                        view.Offset <- offset
                    elif view.Pending.Count > 0 then view.Offset <- max view.Offset ((Seq.head view.Pending).Key - 1UL)
                    else view.Offset <- max view.Offset offset
                drain view
                if view.Pending.Count > 0 then after <- recover ws channel view
                match requests.TryGetValue(message.GetProperty("id").GetUInt32()) with
                | true, Choice2Of2 reply -> reply.TrySetResult message |> ignore
                | _ -> ()
            | "ack" ->
                match requests.TryGetValue(message.GetProperty("id").GetUInt32()) with
                | true, Choice1Of2 p ->
                    unacked.Remove p.Key |> ignore
                    p.Acked.TrySetResult(message.GetProperty("offset").GetUInt64()) |> ignore
                | _ -> ()
            | "join" | "leave" ->
                let channel = message.GetProperty("channel").GetString()
                let client = message.GetProperty("member").GetProperty("client").GetString()
                events.Add(kind, channel, client)
            | "presence" ->
                match requests.TryGetValue(message.GetProperty("id").GetUInt32()) with
                | true, Choice2Of2 reply -> reply.TrySetResult message |> ignore
                | _ -> ()
            | _ -> errors.Add(message.GetRawText()))
        match after with
        | Some act -> act ()
        | None -> Task.CompletedTask

    let readLoop (ws: ClientWebSocket) =
        task {
            let buffer = Array.zeroCreate<byte> 65536
            use stream = new IO.MemoryStream()
            try
                while ws.State = WebSocketState.Open do
                    let! result = ws.ReceiveAsync(ArraySegment buffer, CancellationToken.None)
                    if result.MessageType = WebSocketMessageType.Close then ws.Abort()
                    else
                        stream.Write(buffer, 0, result.Count)
                        if result.EndOfMessage then
                            use document = JsonDocument.Parse(stream.ToArray())
                            stream.SetLength 0L
                            do! handle ws (document.RootElement.Clone())
            with _ -> ()
        }

    member _.Name = name
    member _.ClientId = lock gate (fun () -> clientId)

    /// Connects to a node's /channels (JSON form), resubscribes every channel with its position and
    /// sends again every publish not yet acknowledged, with its key.
    member _.ConnectAsync(url: string) : Task =
        task {
            let ws = new ClientWebSocket()
            ws.Options.AddSubProtocol "realtime.channels.v1.json"
            use timeout = new CancellationTokenSource(TimeSpan.FromSeconds 15.0)
            do! ws.ConnectAsync(Uri(url + "/channels?name=" + name), timeout.Token)
            let resend =
                lock gate (fun () ->
                    socket <- ws
                    clientId <- ""
                    [ for KeyValue(channel, view) in channels do
                          view.Recovering <- true
                          view.Pending.Clear()
                          yield subscribeMessage (newId ()) channel view
                      for KeyValue(_, p) in unacked do
                          let id = newId ()
                          requests[id] <- Choice1Of2 p
                          yield publishMessage id p ])
            readLoop ws |> ignore
            for message in resend do
                do! send ws message
        }

    /// Ends the connection at once, without a close handshake (as a network failure would).
    member _.Drop() = lock gate (fun () -> if not (isNull socket) then socket.Abort())

    /// Subscribes from now (presence: also join and leave events), waiting for the reply.
    member _.SubscribeAsync(channel: string, presence: bool) : Task =
        task {
            let id = newId ()
            let reply = TaskCompletionSource<JsonElement>(TaskCreationOptions.RunContinuationsAsynchronously)
            let ws, message =
                lock gate (fun () ->
                    let view = ChannelView(WantsPresence = presence, Recovering = true)
                    channels[channel] <- view
                    requests[id] <- Choice2Of2 reply
                    socket, subscribeMessage id channel view)
            do! send ws message
            let! _ = reply.Task.WaitAsync(TimeSpan.FromSeconds 15.0)
            ()
        }

    /// Publishes `data` (a JSON value) with a new key; the task ends with its offset once acknowledged,
    /// which may be after a reconnect (the publish is sent again then).
    member _.Publish(channel: string, data: string) : Task<uint64> =
        let id = newId ()
        let ws, p =
            lock gate (fun () ->
                nextKey <- nextKey + 1
                let p = { Channel = channel; Key = $"{name}:{nextKey}"; Data = data; Acked = TaskCompletionSource<uint64>(TaskCreationOptions.RunContinuationsAsynchronously) }
                unacked[p.Key] <- p
                requests[id] <- Choice1Of2 p
                socket, p)
        task {
            do! send ws (publishMessage id p)
            return! p.Acked.Task
        }

    /// Asks a node who is in a channel: the members' client ids, sorted.
    member _.MembersAsync(channel: string) : Task<string list> =
        task {
            let id = newId ()
            let reply = TaskCompletionSource<JsonElement>(TaskCreationOptions.RunContinuationsAsynchronously)
            let ws = lock gate (fun () -> requests[id] <- Choice2Of2 reply; socket)
            do! send ws $"""{{"type":"presence","id":{id},"channel":{JsonSerializer.Serialize channel}}}"""
            let! message = reply.Task.WaitAsync(TimeSpan.FromSeconds 15.0)
            return [ for m in message.GetProperty("members").EnumerateArray() -> m.GetProperty("client").GetString() ] |> List.sort
        }

    /// The channel as the client sees it (read it under `Read`).
    member _.Read<'T>(channel: string, f: ChannelView -> 'T) : 'T = lock gate (fun () -> f channels[channel])

    /// The data delivered to the app, in order.
    member client.DeliveredData(channel: string) = client.Read(channel, fun v -> v.Delivered |> Seq.map snd |> List.ofSeq)

    /// How many publications were delivered to the app.
    member client.DeliveredCount(channel: string) = client.Read(channel, fun v -> v.Delivered.Count)

    /// Join and leave events received: (kind, channel, client).
    member _.PresenceEvents = lock gate (fun () -> List.ofSeq events)

    /// Messages the client did not expect (errors).
    member _.Errors = lock gate (fun () -> List.ofSeq errors)

    interface IDisposable with
        member client.Dispose() = client.Drop()

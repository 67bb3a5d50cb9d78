/// The Redis gap filler serves the binary form too: a binary-form subscriber on a node whose pub/sub
/// delivery never came gets the missing publication from history, as a binary frame.
module Realtime.Server.Tests.ChannelsRedisBinaryFillTests

open System
open System.Net.WebSockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.Extensions.DependencyInjection
open Realtime.Channels
open Realtime.Channels.Redis
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.ChannelsClient
open Realtime.Server.Tests.ChannelsRedisTests

let private startNode (prefix: string) (name: string) =
    startWith
        (fun builder -> ChannelsRedisNode.configure (channelsRedis ()).Endpoint prefix name ignore builder.Services)
        ignore
        ChannelsRedisNode.mapRoutes

/// A binary-form client: each message decoded by the core (fails on a text frame or undecodable bytes).
type private BinaryClient(socket: ClientWebSocket) =
    member _.Send(message: ClientMessage) : Task =
        socket.SendAsync(ArraySegment(ChannelBinary.encodeClient message), WebSocketMessageType.Binary, true, CancellationToken.None)

    member _.Next() : Task<ServerMessage> =
        task {
            let! kind, bytes = receive socket
            Expect.equal kind WebSocketMessageType.Binary "a binary frame"
            match ChannelBinary.decodeServer (ReadOnlyMemory bytes) with
            | Ok message -> return message
            | Error e -> return failtest $"undecodable binary message: {e}"
        }

let private publicationOf (message: ServerMessage) =
    match message with
    | ServerMessage.Publication(channel, position, data) -> channel, position.Offset, Encoding.UTF8.GetString data.Json.Span
    | other -> failtest $"expected a publication, got {other}"

[<Tests>]
let tests =
    testList "Channels on Redis: binary form" [
        testCaseTask "a publication whose live delivery never came reaches a binary-form subscriber from history, as a binary frame" (fun () -> task {
            let prefix = newPrefix ()
            use! publisherNode = startNode prefix "a"
            use! subscriberNode = startNode prefix "b"
            use! socket = connectOffering $"{subscriberNode.WsUrl}/channels?name=bin" [ ChannelSubprotocol.Binary ]
            let client = BinaryClient socket
            let! welcome = client.Next()
            Expect.isTrue welcome.IsWelcome $"welcome first, got {welcome}"
            do! client.Send(ClientMessage.Subscribe(1u, "room", ValueNone, false))
            let! subscribed = client.Next()
            Expect.isTrue subscribed.IsSubscribed $"subscribed, got {subscribed}"
            let channels = publisherNode.App.Services.GetRequiredService<IRealtimeChannels>()
            let! _ = channels.PublishJsonAsync("room", ReadOnlyMemory "\"live-1\""B)
            let! live = client.Next()
            Expect.equal (publicationOf live) ("room", 1UL, "\"live-1\"") "the live publication, through pub/sub"
            // Appended in Redis without any node publishing it: what the subscriber node's pub/sub lost.
            let store = publisherNode.App.Services.GetRequiredService<IChannelStore>()
            let! lost = store.AppendAsync("room", ReadOnlyMemory "\"lost-2\""B, null)
            Expect.equal lost.Position.Offset 2UL "the second publication"
            let! filled = client.Next()
            Expect.equal (publicationOf filled) ("room", 2UL, "\"lost-2\"") "the lost publication, filled from history in the binary form"
            let filler = subscriberNode.App.Services.GetRequiredService<PublicationGapFiller>()
            Expect.equal filler.FilledCount 1L "the subscriber's node filled the one publication"
        })
    ]

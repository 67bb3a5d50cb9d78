/// A channels server whose every answer the test writes: a raw ASP.NET Core WebSocket endpoint that
/// negotiates realtime.channels.v1.json, greets each connection with a welcome, records what the
/// client sends and sends the JSON lines the test chooses (positions, duplicates, gaps, epochs,
/// acknowledgements, errors). It also serves the client module (as Realtime.Channels does) and an
/// empty page.
module Realtime.Browser.Tests.ChannelsScriptedServer

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Net.WebSockets
open System.Text
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Hosting.Server
open Microsoft.AspNetCore.Hosting.Server.Features
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Expecto
open Realtime.Browser.Tests.Infrastructure
open Realtime.TestSupport.SuiteTransport

/// The client module in the repository (what the npm package ships and the server embeds).
let clientModulePath = Path.Combine(repositoryRoot, "clients", "channels", "src", "channels.js")

/// The client's declarations.
let clientDeclarationsPath = Path.Combine(repositoryRoot, "clients", "channels", "src", "channels.d.ts")

/// One accepted connection: what the client sent, in order, and a way to answer.
type ScriptedConnection(socket: WebSocket, number: int, requested: string list) =
    let received = ConcurrentQueue<JsonElement>()
    let sending = new SemaphoreSlim(1, 1)
    let mutable closed = false

    /// 1 for the first connection of the server, 2 for the next, ...
    member _.Number = number

    /// The subprotocols the client offered.
    member _.Requested = requested

    /// The client id this connection's welcome gave.
    member _.ClientId = $"c{number}"

    /// True once the connection ended.
    member _.Closed = closed

    /// Every message the client sent on this connection, in order.
    member _.Received = List.ofSeq received

    /// The messages of one type.
    member c.OfType(kind: string) = c.Received |> List.filter (fun m -> m.GetProperty("type").GetString() = kind)

    /// Waits (bounded) for the `index`-th (0-based) message of type `kind` and returns it.
    member c.WaitFor(kind: string, ?index: int, ?timeoutMs: int) : Task<JsonElement> =
        task {
            let index = defaultArg index 0
            do! waitUntil $"message {index} of type {kind} on connection {number} (received {c.Received |> List.map string})" (defaultArg timeoutMs 10000) (fun () -> (c.OfType kind).Length > index)
            return (c.OfType kind)[index]
        }

    /// Sends JSON lines, one text frame each, in order.
    member _.Send(lines: string list) : Task =
        task {
            do! sending.WaitAsync()
            try
                for line in lines do
                    if not closed then
                        try do! socket.SendAsync(ReadOnlyMemory(Encoding.UTF8.GetBytes line), WebSocketMessageType.Text, true, CancellationToken.None)
                        with _ -> closed <- true
            finally
                sending.Release() |> ignore
        }

    /// Drops the TCP connection without a close frame (as a crashed server would).
    member _.Abort() =
        closed <- true
        socket.Abort()

    member internal _.Receive(message: JsonElement) = received.Enqueue message
    member internal _.MarkClosed() = closed <- true

/// A scripted channels server on 127.0.0.1.
type ScriptedServer(app: WebApplication, url: string, connections: ConcurrentQueue<ScriptedConnection>, refused: ConcurrentQueue<TimeSpan>, clock: Stopwatch) =
    /// The page URL (an empty page on the server's origin).
    member _.Url = url

    /// The socket URL of the channels endpoint.
    member _.SocketUrl = url.Replace("http://", "ws://") + "/channels"

    /// Every connection accepted so far, in order.
    member _.Connections = List.ofSeq connections

    /// When (since start) each refused upgrade came.
    member _.Refused = List.ofSeq refused

    /// While true, upgrades are answered 503 (a server that is down).
    member val Refuse = false with get, set

    /// Answers the server gives by itself to each client message (none by default).
    member val Respond: ScriptedConnection -> JsonElement -> string list = (fun _ _ -> []) with get, set

    member internal _.Clock = clock

    /// Waits (bounded) for the `number`-th connection (1-based).
    member s.WaitForConnection(number: int, ?timeoutMs: int) : Task<ScriptedConnection> =
        task {
            do! waitUntil $"connection {number} (have {connections.Count})" (defaultArg timeoutMs 10000) (fun () -> connections.Count >= number)
            return s.Connections[number - 1]
        }

    interface IAsyncDisposable with
        member _.DisposeAsync() =
            ValueTask(
                task {
                    for c in connections do c.Abort()
                    use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
                    try do! app.StopAsync(cancel.Token) with _ -> ()
                    do! app.DisposeAsync()
                })

let private subprotocol = "realtime.channels.v1.json"

let private serve (server: ScriptedServer ref) (connections: ConcurrentQueue<ScriptedConnection>) (refused: ConcurrentQueue<TimeSpan>) (context: HttpContext) : Task =
    task {
        let s = server.Value
        if not context.WebSockets.IsWebSocketRequest then
            context.Response.StatusCode <- 400
        elif s.Refuse then
            refused.Enqueue s.Clock.Elapsed
            context.Response.StatusCode <- 503
        else
            let requested = List.ofSeq context.WebSockets.WebSocketRequestedProtocols
            if not (List.contains subprotocol requested) then
                context.Response.StatusCode <- 400
            else
                use! socket = context.WebSockets.AcceptWebSocketAsync(subprotocol)
                let connection = ScriptedConnection(socket, connections.Count + 1, requested)
                connections.Enqueue connection
                do! connection.Send [ $"""{{"type":"welcome","version":1,"client":"{connection.ClientId}"}}""" ]
                let buffer = Array.zeroCreate<byte> 65536
                let message = new MemoryStream()
                let mutable reading = true
                while reading do
                    try
                        let! result = socket.ReceiveAsync(ArraySegment buffer, CancellationToken.None)
                        if result.MessageType = WebSocketMessageType.Close then
                            reading <- false
                        else
                            message.Write(buffer, 0, result.Count)
                            if result.EndOfMessage then
                                let json = JsonDocument.Parse(message.ToArray()).RootElement.Clone()
                                message.SetLength 0L
                                connection.Receive json
                                let answers = s.Respond connection json
                                if not answers.IsEmpty then do! connection.Send answers
                    with _ -> reading <- false
                connection.MarkClosed()
    }

/// Starts a scripted server on 127.0.0.1 (an ephemeral port).
let startScripted () : Task<ScriptedServer> =
    task {
        let builder = WebApplication.CreateBuilder([||])
        builder.WebHost.UseUrls("http://127.0.0.1:0") |> ignore
        useSuiteTransport builder.WebHost
        builder.Logging.ClearProviders() |> ignore
        let app = builder.Build()
        let connections = ConcurrentQueue<ScriptedConnection>()
        let refused = ConcurrentQueue<TimeSpan>()
        let server = ref Unchecked.defaultof<ScriptedServer>
        app.UseWebSockets() |> ignore
        app.Map("/channels", RequestDelegate(serve server connections refused)) |> ignore
        // The client as Realtime.Channels serves it (the embedded copy of clients/channels/src).
        app.MapRealtimeChannelsClient() |> ignore
        app.MapGet("/", Func<IResult>(fun () -> Results.Content(page "channels" "<p>channels</p>", "text/html"))) |> ignore
        do! app.StartAsync()
        let url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>().Addresses |> Seq.head
        server.Value <- ScriptedServer(app, url, connections, refused, Stopwatch.StartNew())
        return server.Value
    }

/// A JSON string literal.
let jsonString (text: string) = JsonSerializer.Serialize text

/// `subscribed` answering the subscribe `request`.
let subscribed (request: JsonElement) (epoch: string) (offset: int) (recovery: string) =
    $"""{{"type":"subscribed","id":{request.GetProperty("id").GetUInt32()},"channel":{jsonString (request.GetProperty("channel").GetString())},"epoch":{jsonString epoch},"offset":{offset},"recovery":{jsonString recovery}}}"""

/// A publication of `{"n": offset}` (data that names its own offset, so the page's list shows order).
let pub (channel: string) (epoch: string) (offset: int) =
    $"""{{"type":"pub","channel":{jsonString channel},"epoch":{jsonString epoch},"offset":{offset},"data":{{"n":{offset},"epoch":{jsonString epoch}}}}}"""

/// `ack` of the publish `request` at a position.
let ack (request: JsonElement) (epoch: string) (offset: int) =
    $"""{{"type":"ack","id":{request.GetProperty("id").GetUInt32()},"channel":{jsonString (request.GetProperty("channel").GetString())},"epoch":{jsonString epoch},"offset":{offset}}}"""

/// `error` answering `request`.
let error (request: JsonElement) (code: string) (message: string) =
    $"""{{"type":"error","id":{request.GetProperty("id").GetUInt32()},"code":{jsonString code},"message":{jsonString message}}}"""

/// The `since` of a subscribe as "epoch:offset", or "none".
let sinceOf (request: JsonElement) =
    match request.TryGetProperty "since" with
    | true, since -> $"""{since.GetProperty("epoch").GetString()}:{since.GetProperty("offset").GetUInt64()}"""
    | _ -> "none"

/// The channels browser client against the real server (Realtime.Channels, MapRealtimeChannels) in
/// Chromium: pages that subscribe and publish keep every publication exactly once and in order across
/// a restart of their server, while a .NET client publishes during the outage.
module Realtime.Browser.Tests.ChannelsServerRestartTests

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
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Expecto
open Realtime
open Realtime.Channels
open Realtime.Browser.Tests.Infrastructure
open Realtime.TestSupport.SuiteTransport

/// While false, the channels endpoint refuses pages (query who=page) with 503: a server still starting
/// for them, so the test knows they reconnect after the .NET client's publishes.
type private Gate() =
    member val Open = true with get, set

/// A channels server on 127.0.0.1:`port` with an empty page at "/"; `store` is the channel history
/// (shared between hosts: a durable history such as Redis), or None for a fresh in-memory one.
let private startChannelsHost (port: int) (store: IChannelStore option) (gate: Gate) : Task<WebApplication> =
    task {
        let build () =
            let builder = WebApplication.CreateBuilder([||])
            builder.WebHost.UseUrls($"http://127.0.0.1:{port}") |> ignore
            useSuiteTransport builder.WebHost
            builder.Logging.ClearProviders() |> ignore
            store |> Option.iter (fun s -> builder.Services.AddSingleton<IChannelStore>(s) |> ignore)
            builder.Services.AddRealtime().AddRealtimeChannels() |> ignore
            let app = builder.Build()
            app.MapGet("/", Func<IResult>(fun () -> Results.Content(page "channels" "<p>channels</p>", "text/html"))) |> ignore
            app.MapRealtimeChannels<string>(
                "/channels",
                fun handlers ->
                    handlers.Attach <-
                        fun http ->
                            let who = http.Request.Query["who"].ToString()
                            if who = "page" && not gate.Open then Attachment<string>.Reject(503, "starting")
                            else Attachment<string>.Accept(who)
                    handlers.PresenceInfo <- fun connection -> box {| who = connection.Data |})
            |> ignore
            app
        // The port was just released by the previous host: retried for 5 s.
        let clock = Stopwatch.StartNew()
        let mutable started = None
        while started.IsNone do
            let app = build ()
            try
                do! app.StartAsync()
                started <- Some app
            with :? IOException when clock.Elapsed < TimeSpan.FromSeconds 5.0 ->
                do! app.DisposeAsync()
                do! Task.Delay 100
        return started.Value
    }

let private stopHost (app: WebApplication) : Task =
    task {
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        try do! app.StopAsync(cancel.Token) with _ -> ()
        do! app.DisposeAsync()
    }

/// A .NET client speaking the JSON form with ClientWebSocket: publishes and waits for each ack.
type private DotnetPublisher(socket: ClientWebSocket) =
    let answers = ConcurrentDictionary<uint32, JsonElement>()
    let mutable nextId = 0u

    let receiving =
        task {
            let buffer = Array.zeroCreate<byte> 65536
            let message = new MemoryStream()
            try
                while socket.State = WebSocketState.Open do
                    let! result = socket.ReceiveAsync(ArraySegment buffer, CancellationToken.None)
                    if result.MessageType <> WebSocketMessageType.Close then
                        message.Write(buffer, 0, result.Count)
                        if result.EndOfMessage then
                            let json = JsonDocument.Parse(message.ToArray()).RootElement.Clone()
                            message.SetLength 0L
                            match json.TryGetProperty "id" with
                            | true, id when id.GetUInt32() <> 0u -> answers[id.GetUInt32()] <- json
                            | _ -> ()
            with _ -> ()
        }

    static member Connect(url: string) : Task<DotnetPublisher> =
        task {
            let socket = new ClientWebSocket()
            socket.Options.AddSubProtocol "realtime.channels.v1.json"
            use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
            do! socket.ConnectAsync(Uri url, cancel.Token)
            return DotnetPublisher(socket)
        }

    /// Publishes `data` with a fresh key; returns the ack's offset.
    member _.Publish(channel: string, data: string) : Task<uint64> =
        task {
            let id = Interlocked.Increment &nextId
            let line = $"""{{"type":"publish","id":{id},"channel":{JsonSerializer.Serialize channel},"key":"{Guid.NewGuid():N}","data":{data}}}"""
            do! socket.SendAsync(ReadOnlyMemory(Encoding.UTF8.GetBytes line), WebSocketMessageType.Text, true, CancellationToken.None)
            do! waitUntil $"the answer to publish {id}" 10000 (fun () -> answers.ContainsKey id)
            let answer = answers[id]
            if answer.GetProperty("type").GetString() <> "ack" then failtestf "publish %d answered %O" id answer
            return answer.GetProperty("offset").GetUInt64()
        }

    interface IAsyncDisposable with
        member _.DisposeAsync() =
            ValueTask(
                task {
                    try
                        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 5.0)
                        do! socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cancel.Token)
                    with _ -> ()
                    do! receiving
                    socket.Dispose()
                })

/// A page on the server with a client (window.client) in channel "room:lobby" (window.room) that
/// records delivered messages' data.text in window.texts and every event kind in window.kinds.
let private openChannelsPage (url: string) (name: string) : Task<BrowserPage> =
    task {
        let! p = openPage url
        do! p.Run(
                $$"""async () => {
                       const { connect } = await import('/_realtime/channels.js');
                       window.texts = [];
                       window.kinds = [];
                       window.client = connect('/channels?who=page&name={{name}}', { minReconnectDelay: 100, maxReconnectDelay: 500 });
                       for (const kind of ['connecting', 'connected', 'disconnected']) window.client.on(kind, () => window.kinds.push(kind));
                       window.room = window.client.channel('room:lobby', { presence: true });
                       window.room.on('message', e => window.texts.push(e.data.text));
                       for (const kind of ['recovered', 'not-recovered', 'gap', 'join', 'leave'])
                         window.room.on(kind, () => window.kinds.push(kind));
                       await window.room.subscribe();
                     }""")
        return p
    }

let private texts (p: BrowserPage) = p.Eval<string[]> "() => window.texts"
let private pageKinds (p: BrowserPage) = p.Eval<string[]> "() => window.kinds"

let private waitForTexts (p: BrowserPage) (count: int) =
    waitUntilAsync $"{count} messages in the page" 15000 (fun () -> task { let! t = texts p in return t.Length >= count })

let private pagePublish (p: BrowserPage) (text: string) =
    p.Eval<float>($"async () => (await window.room.publish({{ text: {JsonSerializer.Serialize text} }})).offset")

/// The restart: pages see the server go; while they are refused, a .NET client publishes three
/// messages on the new server; then pages are let in and recover.
let private restartScenario (store: IChannelStore option) (expectRecovered: bool) =
    task {
        let port = freePort ()
        let gate = Gate()
        let! first = startChannelsHost port store gate
        let mutable current = first
        try
            let url = $"http://127.0.0.1:{port}/"
            let! reader = openChannelsPage url "reader"
            use _ = reader
            let! writer = openChannelsPage url "writer"
            use _ = writer
            for text in [ "one"; "two" ] do
                let! _ = pagePublish writer text
                ()
            do! waitForTexts reader 2

            do! stopHost first
            gate.Open <- false
            let! second = startChannelsHost port store gate
            current <- second
            do! waitUntilAsync "the reader is refused while the server starts" 10000 (fun () -> task { let! k = pageKinds reader in return (k |> Array.filter ((=) "disconnected")).Length >= 2 })
            do! (task {
                    use! publisher = DotnetPublisher.Connect $"ws://127.0.0.1:{port}/channels?who=dotnet"
                    for text in [ "three"; "four"; "five" ] do
                        let! _ = publisher.Publish("room:lobby", $"""{{"text":"{text}"}}""")
                        ()
                 } : Task)
            gate.Open <- true
            do! waitForTexts reader 5
            let! _ = pagePublish writer "six"
            do! waitForTexts reader 6
            do! waitForTexts writer 6
            do! Task.Delay 300
            let expected = [| "one"; "two"; "three"; "four"; "five"; "six" |]
            let! seenByReader = texts reader
            let! seenByWriter = texts writer
            Expect.equal seenByReader expected "the reader: every message once, in order"
            Expect.equal seenByWriter expected "the writer (a subscriber too): every message once, in order"
            let! kinds = pageKinds reader
            if expectRecovered then
                Expect.contains kinds "recovered" "recovered from the durable history"
                Expect.isFalse (Array.contains "not-recovered" kinds) "nothing reported lost"
            else
                Expect.contains kinds "not-recovered" "the memory history died with the server: the page is told"
            let! members = reader.Eval<string> "async () => JSON.stringify((await window.room.presence()).map(m => m.info.who).sort())"
            Expect.equal members """["page","page"]""" "both pages are present again"
        finally
            gate.Open <- true
            (stopHost current).Wait(TimeSpan.FromSeconds 15.0) |> ignore
    }

[<Tests>]
let tests =
    testSequenced <| testList "Channels client with Realtime.Channels" [

        browserTest "across a server restart with a durable history, pages receive every message exactly once and in order, those a .NET client published while they were away included ('recovered')" (fun () ->
            restartScenario (Some(InMemoryChannelStore(ChannelRetention()) :> IChannelStore)) true)

        browserTest "across a restart that loses the memory history, pages are told (not-recovered) and still receive every message published after it exactly once and in order" (fun () ->
            restartScenario None false)

        browserTest "a publication whose delivery the page never got is found by the next one's offset (gap) and recovered from the server's history, once and in order" (fun () ->
            task {
                let port = freePort ()
                let! host = startChannelsHost port None (Gate())
                try
                    let! pageOnServer = openChannelsPage $"http://127.0.0.1:{port}/" "reader"
                    use _ = pageOnServer
                    let! _ = pagePublish pageOnServer "one"
                    do! waitForTexts pageOnServer 1
                    // Appended to the history without being sent to anyone: a delivery the page lost.
                    let store = host.Services.GetRequiredService<IChannelStore>()
                    let! hidden = store.AppendAsync("room:lobby", ReadOnlyMemory(Encoding.UTF8.GetBytes """{"text":"hidden"}"""), null)
                    Expect.equal hidden.Position.Offset 2UL "the second publication"
                    let! after = pagePublish pageOnServer "after"
                    Expect.equal after 3.0 "the third publication"
                    do! waitForTexts pageOnServer 3
                    do! Task.Delay 300
                    let! seen = texts pageOnServer
                    Expect.equal seen [| "one"; "hidden"; "after" |] "every message once, in order, the lost one recovered"
                    let! kinds = pageKinds pageOnServer
                    Expect.contains kinds "gap" "the page saw the gap"
                    Expect.isFalse (Array.contains "not-recovered" kinds) "nothing reported lost"
                finally
                    (stopHost host).Wait(TimeSpan.FromSeconds 15.0) |> ignore
            })
    ]

/// Starts real Kestrel servers on 127.0.0.1 with ephemeral ports, and finds the repository's files.
module Realtime.Server.Tests.TestHost

open System
open System.IO
open System.Net.WebSockets
open System.Threading
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Hosting.Server
open Microsoft.AspNetCore.Hosting.Server.Features
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Realtime

/// A running server: its base address and services. Disposing stops it.
type RunningServer =
    {
        /// The application.
        App: WebApplication
        /// For example http://127.0.0.1:41234
        HttpUrl: string
        /// For example ws://127.0.0.1:41234
        WsUrl: string
        /// The Realtime server from DI.
        Realtime: IRealtimeServer
    }

    /// The port Kestrel bound.
    member server.Port = Uri(server.HttpUrl).Port

    /// Stops the server (bounded by 10 s) and releases it.
    member server.StopAsync() : Task =
        task {
            use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
            try do! server.App.StopAsync(cancel.Token) with _ -> ()
            do! server.App.DisposeAsync()
        }

    interface IDisposable with
        member server.Dispose() = server.StopAsync().Wait()

/// Starts a server on 127.0.0.1:0 with extra services (`configureServices`), Realtime added
/// (options set by `configureOptions`) and the app's routes mapped by `mapRoutes`.
let startWith (configureServices: IServiceCollection -> unit) (configureOptions: RealtimeOptions -> unit) (mapRoutes: WebApplication -> unit) : Task<RunningServer> =
    task {
        let builder = WebApplication.CreateBuilder([||])
        builder.WebHost.UseUrls("http://127.0.0.1:0") |> ignore
        builder.Logging.ClearProviders().SetMinimumLevel(LogLevel.Warning) |> ignore
        configureServices builder.Services
        builder.Services.AddRealtime(Action<RealtimeOptions> configureOptions) |> ignore
        let app = builder.Build()
        mapRoutes app
        do! app.StartAsync()
        let addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>().Addresses
        let url = Seq.head addresses
        return
            { App = app
              HttpUrl = url
              WsUrl = url.Replace("http://", "ws://")
              Realtime = app.Services.GetRequiredService<IRealtimeServer>() }
    }

/// Starts a server on 127.0.0.1:0 with Realtime added (options set by `configureOptions`)
/// and the app's routes mapped by `mapRoutes`.
let start (configureOptions: RealtimeOptions -> unit) (mapRoutes: WebApplication -> unit) : Task<RunningServer> =
    startWith ignore configureOptions mapRoutes

/// The repository's root folder (where Realtime.sln is).
let repositoryRoot =
    let rec up (dir: DirectoryInfo) =
        if isNull dir then failwith "Realtime.sln not found above the test binaries"
        elif File.Exists(Path.Combine(dir.FullName, "Realtime.sln")) then dir.FullName
        else up dir.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

/// A connected .NET ClientWebSocket.
let connect (url: string) : Task<ClientWebSocket> =
    task {
        let client = new ClientWebSocket()
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        do! client.ConnectAsync(Uri url, cancel.Token)
        return client
    }

/// Receives one whole message (text or binary) with a timeout; fails the test on timeout.
let receive (client: ClientWebSocket) : Task<WebSocketMessageType * byte[]> =
    task {
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        use stream = new MemoryStream()
        let buffer = Array.zeroCreate 65536
        let mutable finished = false
        let mutable kind = WebSocketMessageType.Text
        while not finished do
            let! result = client.ReceiveAsync(ArraySegment buffer, cancel.Token)
            kind <- result.MessageType
            stream.Write(buffer, 0, result.Count)
            finished <- result.EndOfMessage
        return kind, stream.ToArray()
    }

/// Receives one text message.
let receiveText (client: ClientWebSocket) : Task<string> =
    task {
        let! kind, bytes = receive client
        if kind <> WebSocketMessageType.Text then failwithf "expected text, got %A" kind
        return Text.Encoding.UTF8.GetString bytes
    }

/// Sends a text message.
let sendText (client: ClientWebSocket) (text: string) : Task =
    client.SendAsync(ArraySegment(Text.Encoding.UTF8.GetBytes text), WebSocketMessageType.Text, true, CancellationToken.None)

/// Waits until `condition` holds, polling, for at most `timeout`; returns whether it held.
let eventually (timeout: TimeSpan) (condition: unit -> bool) : Task<bool> =
    task {
        let deadline = DateTime.UtcNow + timeout
        let mutable ok = condition ()
        while not ok && DateTime.UtcNow < deadline do
            do! Task.Delay 10
            ok <- condition ()
        return ok
    }

/// A channels node on Redis as the cluster tests run it: Redis history and presence, the Redis backplane
/// (added by AddRedis), one endpoint /channels (Attach takes ?name=, presence shows it). The same setup
/// runs in the test process (several Kestrel hosts) and as a child process of its own, which the tests
/// kill with SIGKILL: `Server.Tests.dll --channels-redis-node PORT REDIS PREFIX NODE`.
module Realtime.Server.Tests.ChannelsRedisNode

open System
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Hosting
open Microsoft.Extensions.Logging
open Realtime
open Realtime.Channels
open Realtime.Channels.Redis
open Realtime.TestSupport.SuiteTransport

/// Short heartbeat and gap-check times, so that the tests see a dead node and a quiet gap quickly.
let heartbeatTimeout = TimeSpan.FromSeconds 2.0
let sweepInterval = TimeSpan.FromMilliseconds 250.0
let gapCheckInterval = TimeSpan.FromMilliseconds 250.0

/// The channels services of a node.
let configure (redis: string) (prefix: string) (node: string) (retention: ChannelRetention -> unit) (services: IServiceCollection) =
    let realtime = { new IRealtimeBuilder with member _.Services = services }
    realtime
        .AddRealtimeChannels(fun o ->
            o.NodeId <- node
            retention o.Retention)
        .AddRedis(redis + ",connectTimeout=2000", fun o ->
            o.KeyPrefix <- prefix
            o.HeartbeatTimeout <- heartbeatTimeout
            o.HeartbeatInterval <- TimeSpan.FromMilliseconds 250.0
            o.SweepInterval <- sweepInterval
            o.GapCheckInterval <- gapCheckInterval)
    |> ignore

/// The node's one endpoint.
let mapRoutes (app: WebApplication) =
    app.MapRealtimeChannels<string>(
        "/channels",
        fun c ->
            c.Attach <- fun http -> Attachment<string>.Accept(string http.Request.Query["name"])
            c.PresenceInfo <- fun connection -> box {| name = connection.Data |})
    |> ignore

/// Runs a node in this process until it is killed.
let run (port: int) (redis: string) (prefix: string) (node: string) : int =
    let builder = WebApplication.CreateBuilder([||])
    builder.WebHost.UseUrls($"http://127.0.0.1:{port}") |> ignore
    // A child process of the test run: REALTIME_TEST_TRANSPORT is inherited.
    useSuiteTransport builder.WebHost
    builder.Logging.ClearProviders().AddSimpleConsole().SetMinimumLevel(LogLevel.Warning) |> ignore
    builder.Services.AddRealtime() |> ignore
    configure redis prefix node ignore builder.Services
    let app = builder.Build()
    mapRoutes app
    app.Start()
    Console.WriteLine $"channels node {node} listening on {port}"
    app.WaitForShutdown()
    0

/// The server the hostile soak (SoakTests) attacks, run as its own process
/// (`Server.Tests.dll --soak-server PORT`) so that its memory can be read from /proc/PID/status
/// without the test's clients in it. Its settings are the values the soak's bounds are computed from.
module Realtime.Server.Tests.SoakServer

open System
open System.Collections.Concurrent
open System.Threading
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Microsoft.Extensions.Logging.Console
open Realtime
open Realtime.TestSupport.SuiteTransport

/// The largest message, summed over its fragments (bigger closes with 1009).
let maxPayloadLength = 1 <<< 20

/// Buffered outgoing bytes above which a send reports backpressure.
let backpressureLimit = 64L * 1024L

/// Buffered outgoing bytes a connection may hold; a publish past it is dropped for that connection.
let maxBufferedAmount = 1L <<< 20

/// Silence before a ping; as long again without an answer closes with 1001.
let idleTimeout = TimeSpan.FromSeconds 3.0

/// How long the server waits for the client's close frame after sending its own.
let closeTimeout = TimeSpan.FromSeconds 2.0

/// The longest time a client may take to send its request head (Kestrel's RequestHeadersTimeout).
let handshakeTimeout = TimeSpan.FromSeconds 3.0

/// Most connections open at once.
let maxConnections = 4000

/// The longest room name (topic), in UTF-8 bytes, Attach accepts; longer gets 400. It is also the
/// server's MaxTopicLength, past which Subscribe would throw: the app checks before it subscribes.
let maxRoomLength = 64

/// The server-wide budget (RealtimeOptions.MaxServerBufferedBytes) for the bytes the server holds
/// for its clients: outgoing buffers (a published frame once), unfinished and inflating messages,
/// zlib state. Below what the per-connection limits would let these attackers make it hold, so the
/// budget, not luck, is what bounds the soak.
let budgetBytes = 16L <<< 20

/// The endpoint that takes direct connections (the listener reads the head itself and the socket
/// runs on the connection's pipes after the 101).
let directPath = "/chat"

/// The same endpoint with direct connections off: Kestrel's HTTP/1.1 upgrade.
let routePath = "/chat-route"

/// Connection data: the room it joined and the name it gave.
type Chatter = { Room: string; Name: string }

/// What the server saw, for /stats (`/stats?room=R` also counts R's subscribers, `collect=1` runs a full compacting GC first).
type private Counters() =
    member val Opened = 0 with get, set
    member val Rejected = 0 with get, set
    member val Closes = ConcurrentDictionary<int, int>()

let private handlers (counters: Counters) =
    RealtimeHandlers<Chatter>(
        Attach =
            (fun http ->
                let room = http.Request.Query["room"].ToString()
                if room.Length = 0 || Text.Encoding.UTF8.GetByteCount room > maxRoomLength then
                    lock counters (fun () -> counters.Rejected <- counters.Rejected + 1)
                    Attachment<Chatter>.Reject(400, $"room must be 1 to {maxRoomLength} characters")
                else
                    Attachment<Chatter>.Accept { Room = room; Name = http.Request.Query["name"].ToString() }),
        Open =
            (fun ws ->
                lock counters (fun () -> counters.Opened <- counters.Opened + 1)
                ws.Subscribe ws.Data.Room |> ignore),
        // A message goes to everyone else in the room, same kind, same bytes.
        Message = (fun ws message -> ws.Publish(ws.Data.Room, message.Data.Span, message.Kind) |> ignore),
        Close = (fun _ code _ -> counters.Closes.AddOrUpdate(code, 1, fun _ n -> n + 1) |> ignore))

/// Runs the soak server on 127.0.0.1:`port` until the process is stopped; returns its exit code.
let run (port: int) : int =
    let builder = WebApplication.CreateBuilder([||])
    builder.WebHost.UseUrls($"http://127.0.0.1:{port}") |> ignore
    builder.WebHost.UseRealtimeDirectConnections() |> ignore
    // A child process of the test run: REALTIME_TEST_TRANSPORT is inherited.
    useSuiteTransport builder.WebHost
    // Warnings and above, one plain line each: the soak counts the "fail:" and "crit:" prefixes.
    builder.Logging.ClearProviders().SetMinimumLevel(LogLevel.Warning) |> ignore
    builder.Logging.AddSimpleConsole(fun console -> console.ColorBehavior <- LoggerColorBehavior.Disabled; console.SingleLine <- true)
    |> ignore
    builder.Services.AddRealtime(fun options ->
        options.PerMessageDeflate <- true
        options.MaxPayloadLength <- maxPayloadLength
        options.BackpressureLimit <- backpressureLimit
        options.MaxBufferedAmount <- maxBufferedAmount
        options.IdleTimeout <- idleTimeout
        options.CloseTimeout <- closeTimeout
        options.HandshakeTimeout <- Nullable handshakeTimeout
        options.MaxConnections <- Nullable maxConnections
        options.MaxServerBufferedBytes <- budgetBytes
        options.MaxTopicLength <- maxRoomLength
        // Every connection joins one room.
        options.MaxTopicsPerConnection <- 1)
    |> ignore
    let app = builder.Build()
    let counters = Counters()
    // The most the server's budget figure held, sampled every 5 ms.
    let realtimeServer = app.Services.GetRequiredService<IRealtimeServer>()
    let peakBuffered = ref 0L
    use _sampler =
        new Timer(
            (fun _ ->
                let now = realtimeServer.BufferedBytes
                if now > Volatile.Read &peakBuffered.contents then Volatile.Write(&peakBuffered.contents, now)),
            null, 5, 5)
    app.MapRealtime(directPath, handlers counters) |> ignore
    app.MapRealtime(routePath, handlers counters, fun options -> options.DirectConnections <- false) |> ignore
    app.MapGet(
        "/stats",
        RequestDelegate(fun http ->
            let realtime = http.RequestServices.GetRequiredService<IRealtimeServer>()
            // `collect=1` first compacts the whole heap (large objects too), so that what is left is what is still referenced.
            if http.Request.Query["collect"].ToString() = "1" then
                Runtime.GCSettings.LargeObjectHeapCompactionMode <- Runtime.GCLargeObjectHeapCompactionMode.CompactOnce
                GC.Collect(2, GCCollectionMode.Forced, true, true)
                GC.WaitForPendingFinalizers()
            let memory = GC.GetGCMemoryInfo()
            let opened, rejected = lock counters (fun () -> counters.Opened, counters.Rejected)
            http.Response.WriteAsJsonAsync(
                {| connectionCount = realtime.ConnectionCount
                   bufferedBytes = realtime.BufferedBytes
                   peakBufferedBytes = Volatile.Read &peakBuffered.contents
                   subscribers = realtime.SubscriberCount(http.Request.Query["room"].ToString())
                   opened = opened
                   rejected = rejected
                   closes = counters.Closes |> Seq.map (fun pair -> string pair.Key, pair.Value) |> dict
                   managedHeapBytes = GC.GetTotalMemory false
                   committedAtLastGcBytes = memory.TotalCommittedBytes
                   gcCollections = GC.CollectionCount 0
                   threads = ThreadPool.ThreadCount |})))
    |> ignore
    app.Run()
    0

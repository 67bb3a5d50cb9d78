/// The transport a test run puts its hosts on, shared by Server.Tests and Browser.Tests (linked into
/// both): chosen for the whole run by the environment variable REALTIME_TEST_TRANSPORT, unset or
/// "kestrel" for Kestrel's socket transport, "native" for Realtime's native transport
/// (UseRealtimeNativeTransport). scripts/test runs both suites once with each.
module Realtime.TestSupport.SuiteTransport

open System
open System.IO
open Microsoft.AspNetCore.Hosting
open Realtime

/// Which transport the run's hosts use.
type SuiteTransport =
    | KestrelSockets
    | Native

/// The transport of this run (REALTIME_TEST_TRANSPORT); any other value stops the run.
let suiteTransport =
    match Environment.GetEnvironmentVariable "REALTIME_TEST_TRANSPORT" with
    | null | "" | "kestrel" -> KestrelSockets
    | "native" -> Native
    | other -> failwithf "REALTIME_TEST_TRANSPORT=%s: expected kestrel or native" other

/// Whether this is the native run.
let nativeTransport = suiteTransport = Native

/// Puts an in-process host on the run's transport: the native transport when the run asks for it.
let useSuiteTransport (host: IWebHostBuilder) =
    if nativeTransport then host.UseRealtimeNativeTransport() |> ignore

/// How the run's transport is named in test names: "through the route" or "on the native transport".
let suiteTransportName = if nativeTransport then "on the native transport" else "through the route"

/// The command-line flag that puts a sample started as its own process (samples/Chat,
/// samples/DevServer) on the run's transport: "--native" in the native run, nothing otherwise.
let sampleTransportArguments = if nativeTransport then "--native" else ""

/// The native transport names its connections "native-…" (NativeConnectionContext); Kestrel's do not.
let isNativeConnectionId (id: string) = id.StartsWith "native-"

/// Whether the process `pid` runs the native transport's event loops now: its threads are named
/// "Realtime epoll N" (Linux keeps the first 15 bytes of a thread's name in /proc/PID/task/TID/comm).
let private hasNativeEventLoops (pid: int) =
    Directory.GetDirectories $"/proc/{pid}/task"
    |> Array.exists (fun task ->
        try File.ReadAllText(Path.Combine(task, "comm")).StartsWith "Realtime epoll" with _ -> false)

/// Whether the process `pid`, already listening, runs the native transport's event loops. The loops
/// start just after the transport's first listen(), so a process can accept a connection a moment
/// before they exist: in the native run this waits for them (at most 10 s); otherwise it looks once.
let runsNativeEventLoops (pid: int) =
    let deadline = DateTime.UtcNow.AddSeconds 10.0
    let mutable seen = hasNativeEventLoops pid
    while nativeTransport && not seen && DateTime.UtcNow < deadline do
        Threading.Thread.Sleep 20
        seen <- hasNativeEventLoops pid
    seen

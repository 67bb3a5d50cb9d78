/// Handlers of one connection take turns without spinning: a Drain handler that blocks, run by a
/// writer on another thread, costs the receive loop that waits for it no CPU, and the messages that
/// arrived meanwhile are handled afterwards, in order.
module Realtime.Server.Tests.DrainTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Runtime.InteropServices
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Server.Tests.TestHost

/// What the kernel counted for one thread: CPU time (user + system) and voluntary context
/// switches (each time it blocked or slept).
type private ThreadUse = { Cpu: TimeSpan; Switches: int64 }

/// The use of every thread of this process, by thread id, from /proc (Linux).
let private threadUse () : Map<int, ThreadUse> =
    let tick = 1.0 / 100.0 // USER_HZ
    [ for task in Directory.GetDirectories "/proc/self/task" do
          try
              let stat = File.ReadAllText(Path.Combine(task, "stat"))
              // Fields after the command name, which is in parentheses and may contain spaces.
              let fields = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
              let cpu = TimeSpan.FromSeconds(float (int64 fields[11] + int64 fields[12]) * tick)
              let switches =
                  File.ReadAllLines(Path.Combine(task, "status"))
                  |> Array.pick (fun line -> if line.StartsWith "voluntary_ctxt_switches:" then Some(int64 ((line.Split(':')[1]).Trim())) else None)
              yield int (Path.GetFileName task), { Cpu = cpu; Switches = switches }
          with :? IOException -> () ]
    |> Map.ofList

/// The kernel's id of the calling thread (gettid, syscall 186 on x86-64, 178 on arm64).
[<DllImport("libc", SetLastError = true)>]
extern int64 syscall(int64 number)

let private currentThreadId () =
    int (syscall (if RuntimeInformation.ProcessArchitecture = Architecture.Arm64 then 178L else 186L))

[<Tests>]
let drainTests =
    testSequenced <| testList "Drain: a running Drain handler never makes another thread spin" [
        testCaseTask "a Drain that blocks for 1 s while the client keeps sending: the receive loop waits without CPU, and every message is handled afterwards, in order" (fun () -> task {
            let received = ConcurrentQueue<string>()
            // The kernel thread that ran the first Message handler after the Drain: a receive loop
            // that spun or slept while waiting for the gate is that thread.
            let mutable firstMessageThread = 0
            let drainStarted = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            let drainEnded = TaskCompletionSource<TimeSpan * Map<int, ThreadUse> * Map<int, ThreadUse> * int>(TaskCreationOptions.RunContinuationsAsynchronously)
            let mutable drains = 0
            let handlers =
                RealtimeHandlers<obj>(
                    Message =
                        (fun _ message ->
                            if received.IsEmpty then firstMessageThread <- currentThreadId ()
                            received.Enqueue message.Text),
                    Drain =
                        fun _ ->
                            if Interlocked.Increment(&drains) = 1 then
                                let processBefore = Process.GetCurrentProcess().TotalProcessorTime
                                let threadsBefore = threadUse ()
                                drainStarted.TrySetResult() |> ignore
                                Thread.Sleep 1000
                                let processUsed = Process.GetCurrentProcess().TotalProcessorTime - processBefore
                                drainEnded.TrySetResult((processUsed, threadsBefore, threadUse (), received.Count)) |> ignore
                )
            let! server = start (fun options -> options.BackpressureLimit <- 16L * 1024L) (fun app -> app.MapRealtime("/drain", handlers) |> ignore)
            use _ = server
            use! client = connect (server.WsUrl + "/drain")
            let! registered = eventually (TimeSpan.FromSeconds 10.0) (fun () -> server.Realtime.ConnectionCount = 1)
            Expect.isTrue registered "connected"
            let socket = server.Realtime.Connections[0]
            // A send from outside the handlers, over the limit: its writer runs on the thread pool
            // and reports Drain there once the transport has taken the bytes.
            let status = socket.Send(Array.zeroCreate<byte> (32 * 1024)).Status
            Expect.equal status SendStatus.Backpressure "32 KiB over a 16 KiB limit"
            do! drainStarted.Task.WaitAsync(TimeSpan.FromSeconds 10.0)
            let count = 50
            for i in 1..count do
                do! sendText client $"m{i}"
            let! processUsed, threadsBefore, threadsAfter, handledDuringDrain = drainEnded.Task.WaitAsync(TimeSpan.FromSeconds 10.0)
            Expect.equal handledDuringDrain 0 "no Message handler ran while Drain ran"
            let! all = eventually (TimeSpan.FromSeconds 10.0) (fun () -> received.Count = count)
            Expect.isTrue all "every message was handled after Drain"
            let used (threads: Map<int, ThreadUse>) = threads |> Map.tryFind firstMessageThread |> Option.defaultValue { Cpu = TimeSpan.Zero; Switches = 0L }
            let before, after = used threadsBefore, used threadsAfter
            let waiterCpu, waiterSwitches = after.Cpu - before.Cpu, after.Switches - before.Switches
            printfn
                "Drain blocked 1 s: process CPU %.0f ms; the thread that then delivered the first message: CPU %.0f ms, %d voluntary context switches"
                processUsed.TotalMilliseconds waiterCpu.TotalMilliseconds waiterSwitches
            // A receive loop that polls the gate (SpinWait: yields and 1 ms sleeps) wakes about a
            // thousand times in that second; one that awaits the Drain is not on any thread meanwhile.
            Expect.isLessThan waiterSwitches 200L "the receive loop did not poll while Drain blocked"
            Expect.isLessThan waiterCpu (TimeSpan.FromMilliseconds 250.0) "nor burn CPU"
            Expect.sequenceEqual (received.ToArray()) [ for i in 1..count -> $"m{i}" ] "in the order sent"
        })
    ]

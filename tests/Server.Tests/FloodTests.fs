/// A client flooding a slow asynchronous handler is held back by TCP, not by server memory.
module Realtime.Server.Tests.FloodTests

open System
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost
open Realtime.Server.Tests.Timing

[<Tests>]
let floodTests =
    testSequenced
    <| testList "Host: a client flooding a slow handler is held back by TCP, not by server memory" [
        testCaseTask "messages are handled one at a time in order and memory stays bounded while far more is offered than handled" (fun () -> task {
            let running = ref 0
            let maxRunning = ref 0
            let processed = ref 0
            let outOfOrder = ref 0
            let routes (app: WebApplication) =
                app.MapRealtime(
                    "/slow-handler",
                    RealtimeHandlers<obj>(
                        MessageAsync =
                            (fun _ message ->
                                task {
                                    let now = Interlocked.Increment running
                                    let mutable seen = maxRunning.Value
                                    while now > seen && Interlocked.CompareExchange(maxRunning, now, seen) <> seen do
                                        seen <- maxRunning.Value
                                    let sequence = BitConverter.ToInt32(message.Data.Span.Slice(0, 4))
                                    if sequence <> processed.Value then Interlocked.Increment outOfOrder |> ignore
                                    do! Task.Delay 20
                                    Interlocked.Increment processed |> ignore
                                    Interlocked.Decrement running |> ignore
                                }
                                :> Task)
                    )
                )
                |> ignore
            let! server = start ignore routes
            use _ = server
            use! raw = RawClient.connect server.Port "/slow-handler"
            let stream = raw.Tcp.GetStream()
            let size = 64 * 1024
            // Mask key 0 leaves the payload as it is, so one frame buffer serves every message.
            let header = Frame.encodeHeader { Frame.header Opcode.Binary (int64 size) with Masked = true; MaskKey = 0u }
            let frame = Array.zeroCreate<byte> (header.Length + size)
            header.CopyTo(frame, 0)
            GC.Collect()
            GC.WaitForPendingFinalizers()
            let before = GC.GetTotalMemory true
            let offered = 1024L * 1024L * 1024L
            let mutable written = 0L
            let mutable sequence = 0
            let mutable heldBack = false
            use stop = new CancellationTokenSource(seconds 3.0)
            while not heldBack && written < offered do
                BitConverter.TryWriteBytes(frame.AsSpan(header.Length, 4), sequence) |> ignore
                try
                    do! stream.WriteAsync(ReadOnlyMemory frame, stop.Token)
                    written <- written + int64 frame.Length
                    sequence <- sequence + 1
                    heldBack <- stop.IsCancellationRequested
                with :? OperationCanceledException | :? IO.IOException ->
                    heldBack <- true
            let after = GC.GetTotalMemory true
            let handled = processed.Value
            let handledBytes = int64 handled * int64 size
            let growth = after - before
            raw.Tcp.Client.Close()
            Expect.isTrue heldBack "the time ran out before the client could write its gigabyte"
            let summary = $"{written} bytes written in 3 s, {handled} of {sequence} messages handled"
            Expect.isLessThan written (64L * 1024L * 1024L) $"TCP let the client write only a little of the gigabyte it offered ({summary})"
            Expect.isGreaterThan sequence handled $"the client got ahead of the handler ({summary})"
            Expect.isLessThan (written - handledBytes) (32L * 1024L * 1024L) $"what was written and not handled fits in the TCP buffers ({summary})"
            Expect.isLessThan growth (64L * 1024L * 1024L) $"managed memory grew by {growth / 1024L / 1024L} MiB"
            Expect.equal maxRunning.Value 1 "never two handlers at once"
            Expect.equal outOfOrder.Value 0 "messages were handled in order"
            Expect.isGreaterThan handled 10 "the handler made progress"
        })
    ]

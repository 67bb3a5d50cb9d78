/// The native transport's read and write paths: what one read of the loop brings is processed
/// message by message (whole messages for a handler that completes at once without an async step,
/// anything else through the general path), and the replies made meanwhile go out together, in order.
module Realtime.Server.Tests.NativeReadWriteTests

open System
open System.Collections.Concurrent
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost

let private startNative (configureOptions: RealtimeOptions -> unit) (handlers: RealtimeHandlers<obj>) =
    startWith
        (fun builder -> builder.WebHost.UseRealtimeNativeTransport(fun native -> native.EventLoops <- 2) |> ignore)
        configureOptions
        (fun app -> app.MapRealtime("/echo", handlers) |> ignore)

let private echo () =
    RealtimeHandlers<obj>(Message = fun ws message -> ws.Send(message) |> ignore)

/// Receives `count` data messages (pongs and other control frames are collected apart).
let private receiveMessages (raw: RawClient.RawConnection) (count: int) =
    task {
        let messages = ResizeArray<Opcode * byte[]>()
        let controls = ResizeArray<Opcode>()
        let mutable assembling = None
        while messages.Count < count do
            match! raw.ReceiveFrame(TimeSpan.FromSeconds 30.0) with
            | None -> failwithf "the server closed the connection after %d of %d messages" messages.Count count
            | Some frame when Frame.isControl frame.Opcode -> controls.Add frame.Opcode
            | Some frame ->
                let kind, soFar = defaultArg assembling (frame.Opcode, [||])
                let whole = Array.append soFar frame.Payload
                if frame.Fin then
                    messages.Add((kind, whole))
                    assembling <- None
                else assembling <- Some(kind, whole)
        return messages.ToArray(), controls.ToArray()
    }

let private text (s: string) = Encoding.UTF8.GetBytes s

[<Tests>]
let nativeReadWriteTests =
    testList "Native read and write paths" [
        testCaseTask "500 messages sent in one write, with pings and a fragmented message among them, are answered completely and in order" (fun () -> task {
            use! server = startNative ignore (echo ())
            use! raw = RawClient.connect server.Port "/echo"
            let expected = ResizeArray<Opcode * byte[]>()
            let batch = ResizeArray<byte>()
            for i in 1..500 do
                if i % 50 = 0 then batch.AddRange(RawClient.clientFrame Opcode.Ping true false (text $"p{i}"))
                if i = 250 then
                    batch.AddRange(RawClient.clientFrame Opcode.Text false false (text "frag"))
                    batch.AddRange(RawClient.clientFrame Opcode.Continuation true false (text "ment"))
                    expected.Add((Opcode.Text, text "fragment"))
                elif i % 3 = 0 then
                    let bytes = Array.init (i % 200) (fun j -> byte (i + j))
                    batch.AddRange(RawClient.clientFrame Opcode.Binary true false bytes)
                    expected.Add((Opcode.Binary, bytes))
                else
                    batch.AddRange(RawClient.clientFrame Opcode.Text true false (text $"message {i}"))
                    expected.Add((Opcode.Text, text $"message {i}"))
            do! raw.SendRaw(batch.ToArray())
            let! messages, controls = receiveMessages raw expected.Count
            Expect.equal messages.Length expected.Count "every message was answered"
            for i in 0 .. expected.Count - 1 do
                Expect.equal messages[i] expected[i] $"reply {i + 1} is the message sent in that place"
            Expect.all controls (fun opcode -> opcode = Opcode.Pong) "the only control frames are pongs"
        })

        testCaseTask "messages of 0 bytes to 1 MiB come back whole however their bytes are split across writes" (fun () -> task {
            let configure (options: RealtimeOptions) =
                options.MaxPayloadLength <- 2 * 1024 * 1024
                options.MaxBufferedAmount <- 16L * 1024L * 1024L
            use! server = startNative configure (echo ())
            use! raw = RawClient.connect server.Port "/echo"
            raw.Tcp.NoDelay <- true
            for size in [ 0; 1; 2; 125; 126; 127; 65535; 65536; 65537; 1024 * 1024 ] do
                let payload = Array.init size (fun i -> byte (i * 31 + size))
                let frame = RawClient.clientFrame Opcode.Binary true false payload
                let headerEnd = frame.Length - size
                // Every boundary of a small frame; for a large one every boundary in and just after
                // the header, in the middle and before the last byte.
                let splits =
                    if frame.Length <= 140 then [ 1 .. frame.Length - 1 ]
                    else [ yield! [ 1 .. headerEnd + 2 ]; frame.Length / 2; frame.Length - 1 ]
                for split in splits do
                    do! raw.SendRaw(frame[.. split - 1])
                    do! raw.SendRaw(frame[split ..])
                    let! kind, back = raw.ReceiveMessage()
                    Expect.equal kind Opcode.Binary $"{size} bytes split at {split}: binary stays binary"
                    Expect.isTrue (back = payload) $"{size} bytes split at {split}: the same bytes came back"
        })

        testCaseTask "a MessageAsync handler that awaits on some messages of one read: every later message of that read waits for it, in order" (fun () -> task {
            let handlers =
                RealtimeHandlers<obj>(
                    MessageAsync = fun ws message ->
                        let reply = message.ToArray()
                        if reply.Length % 3 = 0 then
                            task {
                                do! Task.Yield()
                                ws.Send(ReadOnlySpan reply) |> ignore
                            } :> Task
                        else
                            ws.Send(ReadOnlySpan reply) |> ignore
                            Task.CompletedTask)
            use! server = startNative ignore handlers
            use! raw = RawClient.connect server.Port "/echo"
            let payloads = [| for i in 1..120 -> Array.init i (fun j -> byte (i + j)) |]
            do! raw.SendRaw(payloads |> Array.collect (RawClient.clientFrame Opcode.Binary true false))
            let! messages, _ = receiveMessages raw payloads.Length
            for i in 0 .. payloads.Length - 1 do
                Expect.isTrue (snd messages[i] = payloads[i]) $"reply {i + 1} is message {i + 1}"
        })

        testCaseTask "a handler that throws on one message of a read: the replies before it arrive, then the close with 1011" (fun () -> task {
            let handlers =
                RealtimeHandlers<obj>(Message = fun ws message ->
                    if message.Text = "boom" then failwith "the handler failed on purpose"
                    ws.Send(message) |> ignore)
            use! server = startNative ignore handlers
            use! raw = RawClient.connect server.Port "/echo"
            let frames = [ "one"; "two"; "boom"; "after" ] |> List.map (text >> RawClient.clientFrame Opcode.Text true false)
            do! raw.SendRaw(Array.concat frames)
            let! messages, _ = receiveMessages raw 2
            Expect.equal (messages |> Array.map (snd >> Encoding.UTF8.GetString)) [| "one"; "two" |] "the replies before the failure"
            let! code = raw.ReceiveClose()
            Expect.equal code (Some 1011us) "then the close with 1011"
        })

        testCaseTask "a publish to neighbours on the same loop is written by that loop's thread, completely and in order" (fun () -> task {
            // One loop holds every connection. Each publish puts a subscriber over its backpressure
            // limit, so the write that takes it fires Drain on the writer's thread: the loop's own.
            let drainThreads = ConcurrentQueue<string>()
            let handlers =
                RealtimeHandlers<obj>(
                    Open = (fun ws -> if ws.HttpContext.Request.Query.ContainsKey "subscribe" then ws.Subscribe "room" |> ignore),
                    Message = (fun ws message -> ws.Publish("room", message.Text) |> ignore),
                    Drain = fun _ -> drainThreads.Enqueue(string Thread.CurrentThread.Name))
            let configure (options: RealtimeOptions) = options.BackpressureLimit <- 16
            use! server =
                startWith
                    (fun builder -> builder.WebHost.UseRealtimeNativeTransport(fun native -> native.EventLoops <- 1) |> ignore)
                    configure
                    (fun app -> app.MapRealtime("/room", handlers) |> ignore)
            let! subscribers = Task.WhenAll [ for _ in 1..3 -> connect (server.WsUrl + "/room?subscribe") ]
            use! publisher = RawClient.connect server.Port "/room"
            let sent = [ for i in 1..100 -> $"publication {i} of the room, long enough to pass the limit" ]
            do! publisher.SendRaw(sent |> List.map (text >> RawClient.clientFrame Opcode.Text true false) |> Array.concat)
            for subscriber in subscribers do
                let received = ResizeArray<string>()
                for _ in sent do
                    let! message = receiveText subscriber
                    received.Add message
                Expect.equal (List.ofSeq received) sent "every publication arrived, in order"
            Expect.isNonEmpty drainThreads "Drain fired"
            Expect.all (drainThreads.ToArray()) (fun name -> name = "Realtime epoll 0") $"every write ran on the loop's thread: {Seq.distinct drainThreads |> List.ofSeq}"
            for subscriber in subscribers do subscriber.Dispose()
        })
    ]

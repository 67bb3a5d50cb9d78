/// Shared helpers: an independent reference frame builder (so the tests do not trust the
/// encoder they check), byte-stream splitting, and drivers that run `FrameDecoder.step` and
/// `Connection.receive` in a loop the way a shell would, collecting what comes out.
module Realtime.Protocol.Tests.ClientFrames

open System
open System.Text
open FsCheck
open FsCheck.FSharp
open Realtime.Protocol

/// Bytes from hex, spaces allowed: "81 05 48".
let hex (text: string) : byte[] = Convert.FromHexString(text.Replace(" ", ""))

/// Lower-case hex with a space between bytes, for readable failures.
let toHex (bytes: byte[]) : string =
    bytes |> Array.map (fun b -> b.ToString("x2")) |> String.concat " "

/// UTF-8 bytes of a string.
let utf8 (text: string) : byte[] = Encoding.UTF8.GetBytes text

/// The four key bytes in wire order of a key held as `Masking.readKey` holds it.
let keyBytes (key: uint32) : byte[] = [| byte key; byte (key >>> 8); byte (key >>> 16); byte (key >>> 24) |]

/// A key from its four wire-order bytes.
let keyOf (b0: byte) (b1: byte) (b2: byte) (b3: byte) : uint32 =
    uint32 b0 ||| (uint32 b1 <<< 8) ||| (uint32 b2 <<< 16) ||| (uint32 b3 <<< 24)

/// The RFC 6455 §5.7 example key 37 fa 21 3d.
let rfcKey = keyOf 0x37uy 0xfauy 0x21uy 0x3duy

/// Per-byte reference masking: octet i XOR key octet ((offset + i) MOD 4).
let naiveMask (key: uint32) (offset: int64) (data: byte[]) : byte[] =
    let kb = keyBytes key
    data |> Array.mapi (fun i b -> b ^^^ kb[int ((offset + int64 i) % 4L)])

/// The first header byte from its fields.
let firstByte (fin: bool) (rsv: byte) (opcode: byte) : byte =
    (if fin then 0x80uy else 0uy) ||| ((rsv &&& 7uy) <<< 4) ||| (opcode &&& 0x0Fuy)

/// A frame written byte by byte from RFC 6455 §5.2, independently of `Frame`: minimal length
/// encoding, the key (if any) after the length, the payload masked per byte.
let rawFrame (b0: byte) (maskKey: uint32 voption) (payload: byte[]) : byte[] =
    let bytes = ResizeArray<byte>()
    bytes.Add b0
    let maskBit = if maskKey.IsSome then 0x80uy else 0uy
    let length = payload.Length
    if length <= 125 then
        bytes.Add(maskBit ||| byte length)
    elif length <= 0xFFFF then
        bytes.Add(maskBit ||| 126uy)
        bytes.Add(byte (length >>> 8))
        bytes.Add(byte length)
    else
        bytes.Add(maskBit ||| 127uy)
        for i in 7 .. -1 .. 0 do
            bytes.Add(byte (int64 length >>> (i * 8)))
    match maskKey with
    | ValueSome key ->
        bytes.AddRange(keyBytes key)
        bytes.AddRange(naiveMask key 0L payload)
    | ValueNone -> bytes.AddRange payload
    bytes.ToArray()

/// A masked client frame.
let clientFrame (fin: bool) (opcode: Opcode) (key: uint32) (payload: byte[]) : byte[] =
    rawFrame (firstByte fin 0uy (byte opcode)) (ValueSome key) payload

/// A masked client frame with reserved bits `rsv` (RSV1 = 4, RSV2 = 2, RSV3 = 1).
let clientFrameRsv (fin: bool) (rsv: byte) (opcode: byte) (key: uint32) (payload: byte[]) : byte[] =
    rawFrame (firstByte fin rsv opcode) (ValueSome key) payload

/// An unmasked (server) frame.
let serverFrame (fin: bool) (opcode: Opcode) (payload: byte[]) : byte[] =
    rawFrame (firstByte fin 0uy (byte opcode)) ValueNone payload

/// The key most tests use.
let key = 0x5a3c96e1u

/// A whole masked text message.
let text (message: string) : byte[] = clientFrame true Opcode.Text key (utf8 message)

/// A whole masked binary message.
let binary (payload: byte[]) : byte[] = clientFrame true Opcode.Binary key payload

/// A masked ping.
let ping (payload: byte[]) : byte[] = clientFrame true Opcode.Ping key payload

/// A masked pong.
let pong (payload: byte[]) : byte[] = clientFrame true Opcode.Pong key payload

/// A close payload written by hand: the big-endian code then the reason bytes.
let closeBody (code: uint16) (reason: byte[]) : byte[] =
    Array.append [| byte (code >>> 8); byte code |] reason

/// A masked close frame with a code and reason.
let close (code: uint16) (reason: string) : byte[] = clientFrame true Opcode.Close key (closeBody code (utf8 reason))

/// An unmasked server close frame as the core should write it.
let expectedClose (code: uint16) (reason: string) : byte[] =
    serverFrame true Opcode.Close (closeBody code (utf8 reason))

/// Random bytes of a given length: drawn one by one when short (so FsCheck can shrink them),
/// from a seeded generator when long (drawing 64 KiB one byte at a time is slow).
let bytesOfLength (length: int) : Gen<byte[]> =
    if length <= 1024 then
        Gen.arrayOfLength length (Gen.choose (0, 255) |> Gen.map byte)
    else
        Gen.choose (0, Int32.MaxValue)
        |> Gen.map (fun seed ->
            let bytes = Array.zeroCreate length
            Random(seed).NextBytes bytes
            bytes)

/// Cuts `bytes` at the given positions (any order, duplicates and out-of-range ones allowed).
let splitAt (cuts: int list) (bytes: byte[]) : byte[] list =
    let points =
        cuts |> List.map (fun c -> max 0 (min bytes.Length c)) |> List.append [ 0; bytes.Length ] |> List.distinct |> List.sort
    points |> List.pairwise |> List.map (fun (a, b) -> bytes[a .. b - 1])

/// Cuts `bytes` into chunks of `size` bytes (the last one shorter).
let chunksOf (size: int) (bytes: byte[]) : byte[] list =
    if bytes.Length = 0 then [] else bytes |> Array.chunkBySize size |> List.ofArray

/// What the decoder driver collects: headers, payload bytes (as they were on the wire) and a failure.
type Decoded =
    | DHeader of FrameHeader
    | DPayload of payload: byte[] * payloadOffset: int64 * frameEnd: bool
    | DFailed of ProtocolError

/// Runs `FrameDecoder.step` over each chunk in turn, until `NeedMore` (or `Failed`, after
/// which nothing more is fed), as a shell would, and returns the decoder and every event.
let decodeChunks (role: Role) (allowRsv1: bool) (chunks: byte[] list) : FrameDecoder * Decoded list =
    let events = ResizeArray<Decoded>()
    let mutable decoder = FrameDecoder.initial
    let mutable failed = false
    for chunk in chunks do
        let mutable position = 0
        let mutable go = not failed
        let mutable guard = 0
        while go do
            guard <- guard + 1
            if guard > 4 * chunk.Length + 16 then failwith "decoder made no progress"
            let struct (next, consumed, event) = FrameDecoder.step (role, allowRsv1, decoder, ReadOnlySpan(chunk, position, chunk.Length - position))
            if consumed < 0 || consumed > chunk.Length - position then failwithf "consumed %d of %d" consumed (chunk.Length - position)
            decoder <- next
            match event with
            | NeedMore ->
                if position + consumed <> chunk.Length then failwith "NeedMore without consuming every byte"
                go <- false
            | Header header -> events.Add(DHeader header)
            | Payload(length, offset, frameEnd) ->
                if length <> consumed then failwithf "payload of %d but consumed %d" length consumed
                events.Add(DPayload(chunk[position .. position + length - 1], offset, frameEnd))
            | Failed error ->
                events.Add(DFailed error)
                failed <- true
                go <- false
            position <- position + consumed
    decoder, List.ofSeq events

/// Groups decoder events into frames: each header with its payload (as on the wire, all chunks
/// concatenated), and the failure if any. Fails on any event out of place.
let framesOf (events: Decoded list) : (FrameHeader * byte[]) list * ProtocolError option =
    let frames = ResizeArray<FrameHeader * byte[]>()
    let mutable current: (FrameHeader * ResizeArray<byte> * int64) option = None
    let mutable failure = None
    for event in events do
        if failure.IsSome then failwith "event after Failed"
        match event, current with
        | DHeader header, None -> current <- Some(header, ResizeArray(), 0L)
        | DHeader _, Some _ -> failwith "header inside a frame"
        | DPayload(bytes, offset, frameEnd), Some(header, buffer, expected) ->
            if offset <> expected then failwithf "payload offset %d, expected %d" offset expected
            buffer.AddRange bytes
            let next = expected + int64 bytes.Length
            if frameEnd then
                if next <> header.PayloadLength then failwith "frame ended early"
                frames.Add(header, buffer.ToArray())
                current <- None
            else
                current <- Some(header, buffer, next)
        | DPayload _, None -> failwith "payload outside a frame"
        | DFailed error, _ -> failure <- Some error
    List.ofSeq frames, failure

/// What the connection driver collects, as the application would see it.
type Received =
    /// A whole data message, unmasked and reassembled.
    | Message of kind: MessageKind * payload: byte[]
    /// A ping and the pong the core asked to write.
    | Pinged of payload: byte[] * pong: byte[]
    /// A pong.
    | Ponged of payload: byte[]
    /// The peer's close and the reply the core asked to write.
    | Closed of code: uint16 * reason: string * reply: byte[]
    /// A protocol violation and the close frame the core asked to write.
    | Violation of error: ProtocolError * closeFrame: byte[]

/// Drives a `Connection` the way the shell does: `receive` in a loop over each chunk until
/// `NeedMoreData`, unmasking data payloads from the chunk and reassembling messages. Checks the
/// loop's contract on every call (consumed within the input, NeedMoreData consumes everything,
/// data ranges inside the consumed bytes).
type Driver(options: ConnectionOptions, start: int64) =
    let mutable connection = Connection.create (options, start)
    let partial = ResizeArray<byte>()
    let received = ResizeArray<Received>()
    let dataEvents = ResizeArray<MessageKind * int * bool * bool>()
    let mutable calls = 0

    /// A driver with the default options at time 0.
    new() = Driver(Connection.defaultOptions, 0L)

    /// The connection as it stands.
    member _.Connection = connection

    /// Everything received so far, in order.
    member _.Received = List.ofSeq received

    /// Every MessageData event so far: kind, length, messageEnd, compressed.
    member _.DataEvents = List.ofSeq dataEvents

    /// The bytes of the message being reassembled.
    member _.Partial = partial.ToArray()

    /// How many times `receive` was called.
    member _.Calls = calls

    /// Replaces the connection (after `close` or `tick`).
    member _.Set(next: Connection) = connection <- next

    /// A second driver continuing from this one's state (the same connection value, a copy of
    /// what was received and of the message being reassembled).
    member driver.Fork() : Driver =
        let fork = Driver(options, start)
        fork.Load(connection, partial.ToArray(), List.ofSeq received)
        fork

    /// Replaces the whole state (used by `Fork`).
    member _.Load(next: Connection, partialBytes: byte[], receivedSoFar: Received list) =
        connection <- next
        partial.Clear()
        partial.AddRange partialBytes
        received.Clear()
        received.AddRange receivedSoFar

    /// Feeds one chunk received at `now`.
    member _.Feed(chunk: byte[], now: int64) =
        let mutable position = 0
        let mutable go = true
        let mutable guard = 0
        while go do
            guard <- guard + 1
            if guard > 4 * chunk.Length + 16 then failwith "connection made no progress"
            calls <- calls + 1
            let remaining = chunk.Length - position
            let struct (next, consumed, event) = Connection.receive (connection, ReadOnlySpan(chunk, position, remaining), now)
            if consumed < 0 || consumed > remaining then failwithf "consumed %d of %d" consumed remaining
            connection <- next
            match event with
            | NeedMoreData ->
                if consumed <> remaining then failwithf "NeedMoreData after consuming %d of %d" consumed remaining
                go <- false
            | MessageData(kind, payloadStart, length, maskKey, maskOffset, messageEnd, compressed) ->
                if payloadStart < 0 || length < 0 || payloadStart + length > consumed then
                    failwithf "data [%d, %d) outside the %d bytes consumed" payloadStart (payloadStart + length) consumed
                let bytes = Array.zeroCreate length
                Masking.apply (maskKey, maskOffset, ReadOnlySpan(chunk, position + payloadStart, length), bytes.AsSpan())
                partial.AddRange bytes
                dataEvents.Add(kind, length, messageEnd, compressed)
                if messageEnd then
                    received.Add(Message(kind, partial.ToArray()))
                    partial.Clear()
            | PingReceived(payload, pongFrame) -> received.Add(Pinged(payload, pongFrame))
            | PongReceived payload -> received.Add(Ponged payload)
            | CloseReceived(code, reason, reply) -> received.Add(Closed(code, reason, reply))
            | ProtocolViolation(error, closeFrame) -> received.Add(Violation(error, closeFrame))
            position <- position + consumed

    /// Feeds every chunk at `now`.
    member driver.FeedAll(chunks: byte[] list, now: int64) =
        for chunk in chunks do
            driver.Feed(chunk, now)

/// Feeds `chunks` to a new connection with `options` and returns the driver.
let runWith (options: ConnectionOptions) (chunks: byte[] list) : Driver =
    let driver = Driver(options, 0L)
    driver.FeedAll(chunks, 0L)
    driver

/// Feeds `chunks` to a new connection with the default options and returns what was received.
let run (chunks: byte[] list) : Received list = (runWith Connection.defaultOptions chunks).Received

/// Feeds one stream to a new connection with the default options.
let runBytes (bytes: byte[]) : Received list = run [ bytes ]

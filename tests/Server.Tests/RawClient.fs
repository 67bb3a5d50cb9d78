/// A WebSocket client over a raw TCP socket that sends exactly the bytes a test asks for, built on
/// the core's own frame encoder (client role, masked) and decoder (client role) - for conformance
/// and hostile-input tests that a well-behaved client library would refuse to produce.
module Realtime.Server.Tests.RawClient

open System
open System.Buffers.Binary
open System.IO
open System.Net.Sockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Realtime.Protocol

/// A frame received from the server, payload unmasked and whole.
type ReceivedFrame =
    { Fin: bool
      Rsv1: bool
      Opcode: Opcode
      Payload: byte[] }

    /// The payload as UTF-8 text.
    member frame.Text = Encoding.UTF8.GetString frame.Payload

    /// The close code of a close frame (1005 when it has none).
    member frame.CloseCode =
        if frame.Payload.Length >= 2 then BinaryPrimitives.ReadUInt16BigEndian(ReadOnlySpan frame.Payload)
        else CloseCode.NoStatusReceived

/// A connected raw client after a successful opening handshake.
type RawConnection(tcp: TcpClient, stream: NetworkStream, handshakeResponse: string) =
    let mutable decoder = FrameDecoder.initial
    let pending = Collections.Generic.Queue<ReceivedFrame>()
    let buffer = Array.zeroCreate<byte> 65536
    let mutable current: FrameHeader voption = ValueNone
    let payload = new MemoryStream()
    let mutable closedByServer = false

    /// The server's handshake response text.
    member _.HandshakeResponse = handshakeResponse

    /// The underlying TCP client.
    member _.Tcp = tcp

    /// True once the server closed the TCP connection.
    member _.TransportClosed = closedByServer

    /// Writes bytes exactly as given.
    member _.SendRaw(bytes: byte[]) : Task =
        task {
            do! stream.WriteAsync(bytes, 0, bytes.Length)
            do! stream.FlushAsync()
        }

    /// Sends one masked frame with the given header fields.
    member this.SendFrame(opcode: Opcode, payload: byte[], ?fin: bool, ?rsv1: bool, ?rsv2: bool, ?rsv3: bool, ?mask: uint32) : Task =
        let header =
            { Fin = defaultArg fin true
              Rsv1 = defaultArg rsv1 false
              Rsv2 = defaultArg rsv2 false
              Rsv3 = defaultArg rsv3 false
              Opcode = opcode
              Masked = true
              MaskKey = defaultArg mask 0x12345678u
              PayloadLength = int64 payload.Length }
        this.SendRaw((Frame.encode header (ReadOnlyMemory payload)).ToArray())

    /// Sends a text message in one frame.
    member this.SendText(text: string) = this.SendFrame(Opcode.Text, Encoding.UTF8.GetBytes text)

    /// Sends a close frame with a code and reason.
    member this.SendClose(code: uint16, reason: string) = this.SendFrame(Opcode.Close, Frame.closePayload code reason)

    /// Receives the next whole frame, or None if the server closed the TCP connection first.
    member this.ReceiveFrame(?timeout: TimeSpan) : Task<ReceivedFrame option> =
        task {
            use cancel = new CancellationTokenSource(defaultArg timeout (TimeSpan.FromSeconds 10.0))
            let mutable result = None
            let mutable finished = false
            while not finished do
                if pending.Count > 0 then
                    result <- Some(pending.Dequeue())
                    finished <- true
                elif closedByServer then
                    finished <- true
                else
                    let! read =
                        task {
                            try return! stream.ReadAsync(buffer, 0, buffer.Length, cancel.Token)
                            with
                            | :? OperationCanceledException -> return raise (TimeoutException "no frame from the server in time")
                            | :? IOException -> return 0
                        }
                    if read = 0 then closedByServer <- true
                    else this.Feed(buffer, read)
            return result
        }

    member private _.Feed(bytes: byte[], count: int) =
        let mutable position = 0
        let mutable go = true
        while go do
            let struct (next, consumed, event) = FrameDecoder.step (Role.Client, true, decoder, ReadOnlySpan(bytes, position, count - position))
            decoder <- next
            match event with
            | NeedMore -> go <- false
            | Failed error -> failwithf "the server sent an invalid frame: %s" error.Code
            | Header header ->
                current <- ValueSome header
                payload.SetLength 0L
            | Payload(length, _, frameEnd) ->
                payload.Write(bytes, position, length)
                if frameEnd then
                    let header = current.Value
                    pending.Enqueue { Fin = header.Fin; Rsv1 = header.Rsv1; Opcode = header.Opcode; Payload = payload.ToArray() }
                    current <- ValueNone
            position <- position + consumed
            if position >= count && event <> NeedMore then
                // Zero-length frame ends are reported without consuming: keep stepping.
                go <- (match event with Payload(0, _, _) | Header _ -> true | _ -> false)

    /// Receives frames until a data message completes (control frames are skipped, pings answered
    /// automatically by nobody: they are returned by ReceiveFrame only).
    member this.ReceiveMessage() : Task<Opcode * byte[]> =
        task {
            let parts = new MemoryStream()
            let mutable kind = Opcode.Continuation
            let mutable finished = false
            while not finished do
                match! this.ReceiveFrame() with
                | None -> failwith "the server closed the connection before a message arrived"
                | Some frame when Frame.isControl frame.Opcode -> ()
                | Some frame ->
                    if frame.Opcode <> Opcode.Continuation then kind <- frame.Opcode
                    parts.Write(frame.Payload, 0, frame.Payload.Length)
                    finished <- frame.Fin
            return kind, parts.ToArray()
        }

    /// Receives frames until a close frame arrives; returns its code (None if the TCP connection
    /// ended without one).
    member this.ReceiveClose(?timeout: TimeSpan) : Task<uint16 option> =
        task {
            let mutable code = None
            let mutable finished = false
            while not finished do
                match! this.ReceiveFrame(defaultArg timeout (TimeSpan.FromSeconds 10.0)) with
                | None -> finished <- true
                | Some frame when frame.Opcode = Opcode.Close ->
                    code <- Some frame.CloseCode
                    finished <- true
                | Some _ -> ()
            return code
        }

    /// Waits until the server closes the TCP connection; true if it did within the timeout.
    member this.WaitForTransportClose(timeout: TimeSpan) : Task<bool> =
        task {
            let deadline = DateTime.UtcNow + timeout
            while not closedByServer && DateTime.UtcNow < deadline do
                try
                    let! _ = this.ReceiveFrame(deadline - DateTime.UtcNow)
                    ()
                with :? TimeoutException -> ()
            return closedByServer
        }

    interface IDisposable with
        member _.Dispose() =
            stream.Dispose()
            tcp.Dispose()

/// Reads a response head byte by byte, up to and including the blank line, so that no frame bytes
/// after it are swallowed; returns what arrived before the server closed (or reset), if it did first.
/// At most 10 s.
let readResponseHead (stream: NetworkStream) : Task<string> =
    task {
        let head = StringBuilder()
        let one = Array.zeroCreate<byte> 1
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        let mutable finished = false
        while not finished do
            let! read =
                task {
                    try return! stream.ReadAsync(one, 0, 1, cancel.Token)
                    with :? IO.IOException -> return 0
                }
            if read = 0 then finished <- true
            else
                head.Append(char one[0]) |> ignore
                if head.Length >= 4 && head.ToString(head.Length - 4, 4) = "\r\n\r\n" then finished <- true
        return head.ToString()
    }

/// Like `handshakeRaw`, with `configure` applied to the socket before it connects (for example a
/// small receive buffer, which must be set before the connection exists).
let handshakeRawWith (configure: TcpClient -> unit) (port: int) (requestText: string) : Task<TcpClient * NetworkStream * string> =
    task {
        let tcp = new TcpClient()
        configure tcp
        do! tcp.ConnectAsync("127.0.0.1", port)
        tcp.NoDelay <- true
        let stream = tcp.GetStream()
        let bytes = Encoding.ASCII.GetBytes(requestText: string)
        do! stream.WriteAsync(bytes, 0, bytes.Length)
        let! head = readResponseHead stream
        return tcp, stream, head
    }

/// Writes an opening handshake (the request text as given) and returns the raw response head
/// (status line and headers) plus the connected stream.
let handshakeRaw (port: int) (requestText: string) : Task<TcpClient * NetworkStream * string> =
    handshakeRawWith ignore port requestText

/// A client's masked frame as bytes, with no checks, so that malformed frames can be built too
/// (RSV1 on any opcode, control frames unfinished).
let clientFrame (opcode: Opcode) (fin: bool) (rsv1: bool) (payload: byte[]) : byte[] =
    let header: FrameHeader =
        { Fin = fin
          Rsv1 = rsv1
          Rsv2 = false
          Rsv3 = false
          Opcode = opcode
          Masked = true
          MaskKey = 0x5A17C3E9u
          PayloadLength = int64 payload.Length }
    (Frame.encode header (ReadOnlyMemory payload)).ToArray()

/// A standard upgrade request for `path` with optional extra header lines (each ending in CRLF).
let upgradeRequest (path: string) (extraHeaders: string) =
    $"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extraHeaders}\r\n"

/// Connects and completes the opening handshake; fails if the server does not answer 101.
let connect (port: int) (path: string) : Task<RawConnection> =
    task {
        let! tcp, stream, head = handshakeRaw port (upgradeRequest path "")
        if not (head.StartsWith "HTTP/1.1 101") then failwithf "expected 101, got: %s" head
        return new RawConnection(tcp, stream, head)
    }

namespace Realtime.Protocol

open System
open System.Buffers.Binary
open System.Text

/// The kind of a data message (RFC 6455 §5.6); the values are the opcodes that start them.
type MessageKind =
    /// UTF-8 text.
    | Text = 1
    /// Arbitrary bytes.
    | Binary = 2

/// Settings of a server-side connection; time values are milliseconds on the caller's clock.
type ConnectionOptions =
    {
        /// The largest message accepted, in bytes, summed over its fragments (larger → 1009).
        MaxMessageSize: int64
        /// True when permessage-deflate was negotiated, so RSV1 may mark a compressed message.
        PerMessageDeflate: bool
        /// Silence after which a ping is sent, and after which, if the silence goes on, the
        /// connection is closed with 1001. 0 turns keep-alive off.
        IdleTimeout: int64
        /// How long to wait for the peer's close frame after sending ours before dropping the
        /// transport (RFC 6455 §7.1.1 lets the server close the TCP connection first).
        CloseTimeout: int64
    }

/// What one receive step found, with what the shell must do about it.
[<Struct>]
type ConnectionEvent =
    /// Every byte given was consumed; call again when more arrive.
    | NeedMoreData
    /// Input bytes [payloadStart, payloadStart + length) are payload of the current message,
    /// still masked: unmask them with `Masking.apply (maskKey, maskOffset, ...)`, where maskOffset
    /// is their position in their frame's payload. `messageEnd` when the message is complete;
    /// `compressed` when the message was sent compressed (RFC 7692): the shell inflates the payload
    /// and hands what it inflated to `Connection.inflated`, which applies the size limit and the
    /// UTF-8 rule to it. A message can end with an event of length 0.
    | MessageData of kind: MessageKind * payloadStart: int * length: int * maskKey: uint32 * maskOffset: int64 * messageEnd: bool * compressed: bool
    /// A ping arrived (payload unmasked); write the `pong` frame (RFC 6455 §5.5.2). While the
    /// closing handshake is under way no pong is owed, and `pong` is empty.
    | PingReceived of pingPayload: byte[] * pong: byte[]
    /// A pong arrived (payload unmasked); nothing is owed.
    | PongReceived of pongPayload: byte[]
    /// The peer's close frame arrived (code 1005 when it carried none). Write `reply` (the echo,
    /// RFC 6455 §5.5.1; empty when our close went first) and then close the transport: the
    /// closing handshake is complete and nothing more is read.
    | CloseReceived of closeCode: uint16 * reason: string * reply: byte[]
    /// The peer broke the protocol (RFC 6455 §7.1.7, "Fail the WebSocket Connection"): write
    /// `closeFrame` (empty when our close was already sent) and close the transport.
    | ProtocolViolation of error: ProtocolError * closeFrame: byte[]

/// What a local close request produced.
[<Struct>]
type CloseRequest =
    /// Write this close frame; then wait for the peer's close (or the close timeout).
    | SendCloseFrame of closeFrame: byte[]
    /// A close frame was already sent or received: nothing more to write.
    | AlreadyClosing
    /// The code may not be sent on the wire (RFC 6455 §7.4); nothing changed.
    | CodeNotSendable of rejectedCode: uint16

/// What the core found in a piece of an inflated message (see `Connection.inflated`).
[<Struct>]
type InflatedVerdict =
    /// The bytes keep to the message rules; at the message's end the message is whole and valid.
    | InflatedAccepted
    /// The inflated message broke a rule (RFC 6455 §7.1.7): write `closeFrame` (empty when our
    /// close was already sent) and close the transport, as for `ProtocolViolation`.
    | InflatedRefused of error: ProtocolError * closeFrame: byte[]
    /// The connection is already closed: drop the bytes; nothing is delivered or written.
    | InflatedIgnored

/// What the passing of time asks the shell to do.
[<Struct>]
type TickAction =
    /// Nothing is due.
    | NoAction
    /// The peer has been silent for the idle timeout: write this ping.
    | SendPing of pingFrame: byte[]
    /// The peer stayed silent after the ping: write this close frame (1001) and close the transport.
    | IdleTimedOut of idleCloseFrame: byte[]
    /// Our close frame got no answer within the close timeout: close the transport.
    | CloseHandshakeTimedOut

/// The parts of a connection that change a few times in its life, not at every frame: the
/// settings, the closing handshake and the transport's end. Kept apart, behind a reference, so
/// that the per-frame state the receive loop rebuilds stays small; a close, a failure or the
/// transport's end makes a new one.
[<NoComparison>]
type internal Lifecycle =
    {
        Options: ConnectionOptions
        CloseSent: bool
        CloseSentAt: int64
        CloseReceived: bool
        Failed: bool
        TimedOut: bool
        ReceivedCode: uint16
        ReceivedReason: string
        /// The code of the close we started (our close, the idle close) or failed with; 0 until
        /// then, and never changed once set. Not set by the echo of the peer's close.
        SentCode: uint16
        SentReason: string
        /// The shell stopped running the connection: nothing more is queued, read or closed.
        TransportEnded: bool
        /// The transport takes no more bytes (a write failed, or it ended with no write under way).
        WritesStopped: bool
    }

    /// The closing handshake completed, the connection failed or timed out, or its transport ended.
    member life.IsClosed = life.CloseReceived || life.Failed || life.TimedOut || life.TransportEnded

    /// The lifecycle after we sent a close frame with `code` and `reason` at `now` (the first code stays).
    member life.Closing(code: uint16, reason: string, now: int64) : Lifecycle =
        if life.SentCode <> 0us then { life with CloseSent = true; CloseSentAt = now }
        else { life with CloseSent = true; CloseSentAt = now; SentCode = code; SentReason = reason }

    /// The lifecycle after the connection failed with `error` (RFC 6455 §7.1.7; the first code stays).
    member life.FailedWith(error: ProtocolError) : Lifecycle =
        if life.SentCode <> 0us then { life with Failed = true; CloseSent = true }
        else { life with Failed = true; CloseSent = true; SentCode = error.CloseCode; SentReason = error.Message }

/// The per-frame part of a connection: the decoder and the message being received. It holds
/// no references, so the receive loop updates a copy of it in place (or, in `receiveInPlace`, the
/// host's connection itself).
[<Struct; NoComparison>]
type internal Receiver =
    {
        mutable Decoder: FrameDecoder
        mutable MessageLength: int64
        mutable Utf8: Utf8Validator.Utf8State
        mutable Kind: MessageKind
        mutable InMessage: bool
        mutable Compressed: bool
        /// Inflated bytes of the compressed message so far (its UTF-8 state is `Utf8`).
        mutable InflatedLength: int64
    }

/// Where the receive loop stopped, and the data event it found (`Data`), if any.
[<Struct; NoEquality; NoComparison>]
type internal Stop =
    {
        mutable Position: int
        mutable Data: bool
        mutable Start: int
        mutable Length: int
        mutable MaskKey: uint32
        mutable Offset: int64
        mutable MessageEnd: bool
    }

/// A server-side WebSocket connection as an immutable value (RFC 6455 §5-§7).
///
/// Theory of operation: the shell feeds received bytes with `receive` in a loop; each call
/// consumes some bytes and returns at most one event, until `NeedMoreData`. Data payloads are not
/// copied: events say where they are in the input. Control frames (at most 125 bytes) are
/// collected into a small array of their own. Ping answers and close echoes are produced here, as
/// bytes to write. Time enters only as the `now` argument; `tick` and `nextDeadline` drive the
/// keep-alive and the closing-handshake timeout. Sending is decided here too: `send` writes each
/// data frame's header and judges it against the bytes the connection has queued, which
/// `flushed` reduces as the transport writes them. The send half is updated in place, through a
/// byref to the caller's connection (the host's, under its lock): a send is the hot path, and a
/// copy of the whole connection per send would cost more than the decision itself; the host's
/// receive step does the same with `receiveInPlace`. A copy of the connection held elsewhere is
/// never changed by either.
[<Struct>]
type Connection =
    private
        {
            // Per-frame state: the decoder and the message being received; changed in place by
            // `receiveInPlace` only (see there).
            mutable Receiver: Receiver
            mutable Control: byte[]
            mutable LastActivity: int64
            mutable PingSentAt: int64
            // The outgoing bytes queued and not yet written, and the backpressure episode; changed
            // in place by `send`, `settle` and `flushed` (see above).
            mutable Sending: Backpressure.State
            // Settings and the closing handshake (rarely changes).
            mutable Life: Lifecycle
        }

    /// False once a close frame was sent (RFC 6455 §5.5.1: no data frames after a close), the
    /// transport ended (`Connection.transportEnded`) or it takes no more bytes
    /// (`Connection.writingStopped`): a send then would never reach the peer, so it is dropped.
    member connection.CanSend =
        let life = connection.Life
        not (life.CloseSent || life.TransportEnded || life.WritesStopped)

    /// False once the transport takes no more bytes (`Connection.writingStopped`): what is still
    /// queued is dropped rather than written.
    member connection.CanWrite = not connection.Life.WritesStopped

    /// True once the shell stopped running the connection (`Connection.transportEnded`).
    member connection.HasEnded = connection.Life.TransportEnded

    /// True while the receive loop should read on: the connection is not closed and its transport
    /// still takes bytes.
    member connection.ShouldRead =
        let life = connection.Life
        not (life.IsClosed || life.WritesStopped)

    /// True once a close frame was sent or the connection failed.
    member connection.IsClosing =
        let life = connection.Life
        life.CloseSent || life.CloseReceived || life.Failed

    /// True when the closing handshake completed, the connection failed or timed out, or its
    /// transport ended: the transport should be closed and nothing more is read.
    member connection.IsClosed = connection.Life.IsClosed

    /// The settings the connection was created with.
    member connection.Settings = connection.Life.Options

    /// Bytes of data frames queued by `send` and not yet reported written by `flushed`.
    member connection.Buffered = connection.Sending.Buffered

    /// True between a send that reported Backpressure and the Drain that ends the episode.
    member connection.InBackpressure = connection.Sending.InBackpressure

    /// The send half of the connection (bytes queued, backpressure episode), as a value: what
    /// `Connection.restoreSendState` puts back when the shell could not queue what `send` admitted.
    member connection.SendState = connection.Sending

/// Functions over `Connection`.
module Connection =

    open System.Runtime.CompilerServices

    /// Sensible defaults: 16 MiB messages, no compression, 120 s idle timeout, 5 s close timeout.
    let defaultOptions: ConnectionOptions =
        { MaxMessageSize = 16L * 1024L * 1024L; PerMessageDeflate = false; IdleTimeout = 120_000L; CloseTimeout = 5_000L }

    let private initialLife (options: ConnectionOptions) : Lifecycle =
        { Options = options
          CloseSent = false
          CloseSentAt = 0L
          CloseReceived = false
          Failed = false
          TimedOut = false
          ReceivedCode = CloseCode.AbnormalClosure
          ReceivedReason = ""
          SentCode = 0us
          SentReason = ""
          TransportEnded = false
          WritesStopped = false }

    let private opened (life: Lifecycle, now: int64) : Connection =
        { Receiver =
            { Decoder = FrameDecoder.initial
              InMessage = false
              Kind = MessageKind.Binary
              Compressed = false
              MessageLength = 0L
              Utf8 = Utf8Validator.initial
              InflatedLength = 0L }
          Control = null
          LastActivity = now
          PingSentAt = -1L
          Sending = Backpressure.initial
          Life = life }

    /// A connection just after the opening handshake, at time `now`.
    let create (options: ConnectionOptions, now: int64) : Connection = opened (initialLife options, now)

    /// A connection just after the opening handshake, at time `now`, with the settings of `template`
    /// (a connection made by `create`). It shares the template's lifecycle part, an immutable value
    /// that only a close, a failure or the transport's end replaces, so a host that keeps one template
    /// per setting makes no allocation per connection here. A template that has closed since is not
    /// shared: the result starts open all the same.
    let createLike (template: Connection, now: int64) : Connection =
        let life = template.Life
        let untouched =
            not (life.CloseSent || life.CloseReceived || life.Failed || life.TimedOut || life.TransportEnded || life.WritesStopped)
            && life.SentCode = 0us && life.ReceivedCode = CloseCode.AbnormalClosure
        opened ((if untouched then life else initialLife life.Options), now)

    /// Writes the header of a whole data message of `payloadLength` bytes into `destination`
    /// (at least `Frame.MaxHeaderSize` bytes) and returns its length: FIN set, unmasked (RFC 6455
    /// §5.1: a server never masks), RSV1 set when the payload is compressed (RFC 7692 §6). A frame
    /// made once for many connections is framed here; each connection's `send` still judges it.
    /// A negative length is written as 0; a destination too short gets nothing and 0 is returned.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let writeDataHeader (kind: MessageKind, payloadLength: int, compressed: bool, destination: Span<byte>) : int =
        // RFC 6455 §5.2: FIN, RSV1 for a compressed message (RFC 7692 §6), the opcode; no mask from a
        // server; the minimal length encoding. Written directly: the send path's one header.
        let length = max 0 payloadLength
        let size = if length <= 125 then 2 elif length <= 0xFFFF then 4 else 10
        if destination.Length < size then 0
        else
            let opcode = if kind = MessageKind.Text then Opcode.Text else Opcode.Binary
            destination[0] <- 0x80uy ||| (if compressed then 0x40uy else 0uy) ||| byte opcode
            if size = 2 then destination[1] <- byte length
            elif size = 4 then
                destination[1] <- 126uy
                BinaryPrimitives.WriteUInt16BigEndian(destination.Slice 2, uint16 length)
            else
                destination[1] <- 127uy
                BinaryPrimitives.WriteUInt64BigEndian(destination.Slice 2, uint64 length)
            size

    /// The bytes a whole data message takes on the wire, header included, saturating at Int32.MaxValue
    /// (a frame that large is over every hard limit anyway).
    let private frameLength (payloadLength: int) : int =
        let headerLength = if payloadLength <= 125 then 2 elif payloadLength <= 0xFFFF then 4 else 10
        int (min (int64 Int32.MaxValue) (int64 headerLength + int64 payloadLength))

    /// The send step for a frame already made, shared by many recipients (framed once with
    /// `writeDataHeader`): decides and records it, `frameLength` bytes on the wire, as `send` does,
    /// without writing a header. No allocation, no copy of the connection.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let sendFramed (connection: byref<Connection>, limits: Backpressure.Limits, frameLength: int) : Backpressure.SendResult =
        if not connection.CanSend then
            Backpressure.Dropped Backpressure.ConnectionClosed
        elif frameLength < 0 then
            Backpressure.Dropped Backpressure.InvalidLength
        else
            let struct (sending, verdict) = Backpressure.offer limits connection.Sending frameLength
            if Backpressure.isQueued verdict then connection.Sending <- sending
            verdict

    /// The send step: decides whether a data message of `payloadLength` bytes (after compression,
    /// when `compressed`) is queued, by the connection's closing state and the bytes it has queued
    /// (see `Backpressure.offer`; they count the whole frame, header included), and when it is,
    /// records it in the connection's send half (in place) and writes its header into `header` (at
    /// least `Frame.MaxHeaderSize` bytes). Returns the verdict and the header's length (0 when not
    /// queued). After a close frame was sent nothing more is (RFC 6455 §5.5.1: Dropped
    /// ConnectionClosed). CloseForLimit leaves the connection as it was: the host then closes it
    /// with 1008. No allocation, no copy of the connection.
    let send
        (connection: byref<Connection>, limits: Backpressure.Limits, kind: MessageKind, payloadLength: int, compressed: bool, header: Span<byte>)
        : struct (Backpressure.SendResult * int) =
        if payloadLength < 0 || header.Length < Frame.MaxHeaderSize then
            struct ((if connection.CanSend then Backpressure.Dropped Backpressure.InvalidLength else Backpressure.Dropped Backpressure.ConnectionClosed), 0)
        else
            let verdict = sendFramed (&connection, limits, frameLength payloadLength)
            if Backpressure.isQueued verdict then struct (verdict, writeDataHeader (kind, payloadLength, compressed, header))
            else struct (verdict, 0)

    /// The shell could not queue a message `send` admitted (the server-wide memory budget, which
    /// only the shell knows, had no room): puts back the send half as it was before, from
    /// `connection.SendState` read just before the `send`.
    let restoreSendState (connection: byref<Connection>, before: Backpressure.State) : unit =
        connection.Sending <- before

    /// After a `send` that queued a compressed message at a bound of its size (`boundLength`: a
    /// compressor with context takeover may only see messages that go out, so it runs once the
    /// message is queued), the message turned out `payloadLength` bytes: writes its real header into
    /// `header` and corrects the queued bytes (in place). Returns the frame's length and the
    /// header's length. The verdict `send` gave stands: a backpressure episode it began ends with the
    /// Drain of a later `flushed`. No allocation.
    let settle
        (connection: byref<Connection>, kind: MessageKind, boundLength: int, payloadLength: int, header: Span<byte>)
        : struct (int * int) =
        let payloadLength = max 0 payloadLength
        let actual = frameLength payloadLength
        let headerLength = writeDataHeader (kind, payloadLength, true, header)
        connection.Sending <- Backpressure.resize connection.Sending (frameLength (max 0 boundLength)) actual
        struct (actual, headerLength)

    /// Records (in place) that the transport wrote `bytes` bytes of data frames (see
    /// `Backpressure.flushed`). No Drain once a close frame was sent: nothing more may be sent to a
    /// closing connection.
    let flushed (connection: byref<Connection>, limits: Backpressure.Limits, bytes: int) : Backpressure.FlushResult =
        let struct (sending, result) = Backpressure.flushed limits connection.Sending bytes
        connection.Sending <- sending
        if connection.CanSend then result else Backpressure.NoDrain

    /// The close frame a failure writes: none when our close frame was already sent.
    let private failureFrame (life: Lifecycle) (error: ProtocolError) : byte[] =
        if life.CloseSent then Array.Empty<byte>() else Frame.close error.CloseCode error.Message

    /// RFC 6455 §7.1.7: the peer broke the protocol; the receive loop stops with this event.
    /// Kept out of the loop (no inlining): a rare path with a frame of its own.
    [<MethodImpl(MethodImplOptions.NoInlining)>]
    let private fail (life: byref<Lifecycle>, control: byref<byte[]>, event: byref<ConnectionEvent>, error: ProtocolError) : unit =
        let closeFrame = failureFrame life error
        life <- life.FailedWith error
        control <- null
        event <- ProtocolViolation(error, closeFrame)

    /// RFC 6455 §5.5.1: a close body is empty, or a 2-byte code then a UTF-8 reason.
    let private readClose (payload: byte[]) : Result<struct (uint16 * string), ProtocolError> =
        if payload.Length = 0 then Ok(struct (CloseCode.NoStatusReceived, ""))
        elif payload.Length = 1 then Error InvalidClosePayload
        else
            let code = BinaryPrimitives.ReadUInt16BigEndian(ReadOnlySpan payload)
            let reason = ReadOnlySpan(payload, 2, payload.Length - 2)
            if not (CloseCode.isValidReceived code) then Error(InvalidCloseCode code)
            elif not (Utf8Validator.isValid reason) then Error InvalidUtf8
            else Ok(struct (code, Encoding.UTF8.GetString reason))

    /// A complete control frame arrived: answer it. Returns true when the loop stops with `event`.
    let private controlComplete (life: byref<Lifecycle>, control: byref<byte[]>, event: byref<ConnectionEvent>, opcode: Opcode) : bool =
        let payload = control
        control <- null
        match opcode with
        | Opcode.Ping ->
            let pong = if life.CloseSent then Array.Empty<byte>() else Frame.control Opcode.Pong (ReadOnlySpan payload)
            event <- PingReceived(payload, pong)
            true
        | Opcode.Pong ->
            event <- PongReceived payload
            true
        | _ ->
            match readClose payload with
            | Error error ->
                fail (&life, &control, &event, error)
                true
            | Ok(struct (code, reason)) ->
                // RFC 6455 §5.5.1: answer a close with a close, echoing the code it carried.
                let reply =
                    if life.CloseSent then Array.Empty<byte>()
                    elif code = CloseCode.NoStatusReceived then Frame.closeWithoutCode ()
                    else Frame.control Opcode.Close (ReadOnlySpan(payload, 0, 2))
                life <- { life with CloseReceived = true; CloseSent = true; ReceivedCode = code; ReceivedReason = reason }
                event <- CloseReceived(code, reason, reply)
                true

    /// Payload bytes of a control frame arrived: unmask them into the frame's array, and answer
    /// the frame once it is complete. Returns true when the loop stops with `event`. Kept out of
    /// the loop (no inlining): control frames are rare next to data frames.
    [<MethodImpl(MethodImplOptions.NoInlining)>]
    let private controlPayload
        (life: byref<Lifecycle>, control: byref<byte[]>, event: byref<ConnectionEvent>, header: FrameHeader, chunk: ReadOnlySpan<byte>, offset: int64, frameEnd: bool)
        : bool =
        // Copy on write: the array may belong to an earlier connection value (the header or the
        // first payload bytes came in an earlier call), and writing into it would change that
        // value, and the payload of a ping or pong event already handed out from it. Control
        // payloads are at most 125 bytes.
        if chunk.Length > 0 then
            let copy = Array.copy control
            Masking.apply (header.MaskKey, offset, chunk, copy.AsSpan(int offset, chunk.Length))
            control <- copy
        if frameEnd then controlComplete (&life, &control, &event, header.Opcode) else false

    /// The receive loop: decodes from the front of `input` until an event is due, updating the
    /// caller's copies of the per-frame state, the control frame and the lifecycle in place.
    /// Control frames and failures write their event into `event`; a data event is described in
    /// `stop` for `receive` to build. Kept out of `receive` (no inlining) so that its frame holds
    /// no structs with references, which the runtime would have to clear at every call.
    [<MethodImpl(MethodImplOptions.NoInlining); SkipLocalsInit>]
    let private scan
        (
            receiver: byref<Receiver>,
            control: byref<byte[]>,
            life: byref<Lifecycle>,
            event: byref<ConnectionEvent>,
            input: ReadOnlySpan<byte>,
            stop: byref<Stop>
        ) : unit =
        let options = life.Options
        let allowRsv1 = options.PerMessageDeflate
        let mutable position = 0
        let mutable searching = true
        while searching do
            let start = position
            let mutable consumed = 0
            let found = FrameDecoder.advance (Role.Server, allowRsv1, &receiver.Decoder, input.Slice start, &consumed)
            position <- start + consumed
            match found with
            | FrameDecoder.FoundNothing -> searching <- false
            | FrameDecoder.FoundFailure ->
                fail (&life, &control, &event, FrameDecoder.failure receiver.Decoder)
                searching <- false
            | FrameDecoder.FoundHeader ->
                let header = receiver.Decoder.CurrentHeader
                // The message-level rules (RFC 6455 §5.4) and the size limit.
                if Frame.isControl header.Opcode then
                    control <- if header.PayloadLength = 0L then Array.Empty<byte>() else Array.zeroCreate (int header.PayloadLength)
                elif header.Opcode = Opcode.Continuation && not receiver.InMessage then
                    fail (&life, &control, &event, UnexpectedContinuation)
                    searching <- false
                elif header.Opcode <> Opcode.Continuation && receiver.InMessage then
                    fail (&life, &control, &event, ExpectedContinuation)
                    searching <- false
                else
                    let soFar = if header.Opcode = Opcode.Continuation then receiver.MessageLength else 0L
                    // RFC 6455 §10.4: refuse at the header, before reading any of an oversized payload.
                    if header.PayloadLength > options.MaxMessageSize - soFar then
                        fail (&life, &control, &event, MessageTooBig options.MaxMessageSize)
                        searching <- false
                    elif header.Opcode <> Opcode.Continuation then
                        receiver.InMessage <- true
                        receiver.Kind <- if header.Opcode = Opcode.Text then MessageKind.Text else MessageKind.Binary
                        receiver.Compressed <- header.Rsv1
                        receiver.MessageLength <- 0L
                        receiver.InflatedLength <- 0L
                        receiver.Utf8 <- Utf8Validator.initial
            | _ ->
                // Payload: the `consumed` bytes from `start`, `offset` bytes into the frame's payload.
                let decoder = &receiver.Decoder
                let length = consumed
                let offset = decoder.ChunkOffset length
                let frameEnd = decoder.FrameComplete
                let header = decoder.CurrentHeader
                if Frame.isControl header.Opcode then
                    if controlPayload (&life, &control, &event, header, input.Slice(start, length), offset, frameEnd) then
                        searching <- false
                else
                    let messageEnd = frameEnd && header.Fin
                    let checkText = receiver.Kind = MessageKind.Text && not receiver.Compressed
                    let mutable valid = true
                    let mutable utf8 = receiver.Utf8
                    if checkText && length > 0 then
                        match Utf8Validator.advanceMasked (utf8, header.MaskKey, offset, input.Slice(start, length)) with
                        | Utf8Validator.Valid after -> utf8 <- after
                        | Utf8Validator.InvalidAt _ -> valid <- false
                    // RFC 6455 §8.1: the message must not end inside a UTF-8 sequence.
                    if not valid || (messageEnd && checkText && not utf8.IsComplete) then
                        fail (&life, &control, &event, InvalidUtf8)
                        searching <- false
                    else
                        receiver.Utf8 <- utf8
                        receiver.MessageLength <- receiver.MessageLength + int64 length
                        receiver.InMessage <- not messageEnd
                        if length > 0 || messageEnd then
                            stop.Data <- true
                            stop.Start <- start
                            stop.Length <- length
                            stop.MaskKey <- header.MaskKey
                            stop.Offset <- offset
                            stop.MessageEnd <- messageEnd
                            searching <- false
        stop.Position <- position

    /// Consumes bytes from the front of `input` (received at time `now`) and returns the next
    /// connection, how many bytes were consumed, and at most one event. Call it again with the
    /// rest of the input until it returns `NeedMoreData`. Never throws: bad bytes give
    /// `ProtocolViolation` with the close code to send.
    let receive (connection: Connection, input: ReadOnlySpan<byte>, now: int64) : struct (Connection * int * ConnectionEvent) =
        if connection.Life.IsClosed then
            // RFC 6455 §5.5.1: after the close frame nothing more is processed.
            struct (connection, input.Length, NeedMoreData)
        else
            // Copies of the connection's parts, updated in place by the loop and put together
            // once at the end: the value given is never changed.
            let mutable receiver = connection.Receiver
            let mutable control = connection.Control
            let mutable life = connection.Life
            let mutable event = NeedMoreData
            let mutable stop = Unchecked.defaultof<Stop>
            scan (&receiver, &control, &life, &event, input, &stop)
            let active = not input.IsEmpty
            let next =
                { Receiver = receiver
                  Control = control
                  LastActivity = (if active then now else connection.LastActivity)
                  PingSentAt = (if active then -1L else connection.PingSentAt)
                  Sending = connection.Sending
                  Life = life }
            if stop.Data then
                let event = MessageData(receiver.Kind, stop.Start, stop.Length, stop.MaskKey, stop.Offset, stop.MessageEnd, receiver.Compressed)
                struct (next, stop.Position, event)
            else
                struct (next, stop.Position, event)

    /// `receive` for the host's hot path: the caller's connection (the host's, under its lock) is
    /// updated in place through a byref, as `send` does, and `consumed` says how many bytes were
    /// consumed. Same events, same bytes consumed and the same next connection as `receive`, without
    /// copying the whole connection in, out and back into the host's field (a struct with references,
    /// so every copy into the heap also pays the runtime's write barriers) at every event.
    let receiveInPlace (connection: byref<Connection>, input: ReadOnlySpan<byte>, now: int64, consumed: outref<int>) : ConnectionEvent =
        if connection.Life.IsClosed then
            // RFC 6455 §5.5.1: after the close frame nothing more is processed.
            consumed <- input.Length
            NeedMoreData
        else
            let mutable event = NeedMoreData
            let mutable stop = Unchecked.defaultof<Stop>
            scan (&connection.Receiver, &connection.Control, &connection.Life, &event, input, &stop)
            if not input.IsEmpty then
                connection.LastActivity <- now
                connection.PingSentAt <- -1L
            consumed <- stop.Position
            if stop.Data then
                let receiver = &connection.Receiver
                MessageData(receiver.Kind, stop.Start, stop.Length, stop.MaskKey, stop.Offset, stop.MessageEnd, receiver.Compressed)
            else
                event

    /// Fails the connection for a message the shell found bad with what only the shell knows: a
    /// compressed message whose DEFLATE data is corrupt (1007), or one that does not fit the
    /// server's memory budget (1009). Returns the close frame to write (empty when a close was
    /// already sent) before closing the transport, as for `ProtocolViolation`.
    let failMessage (connection: Connection, error: ProtocolError) : struct (Connection * byte[]) =
        let life = connection.Life
        if life.IsClosed then struct (connection, Array.Empty<byte>())
        else
            let closeFrame = failureFrame life error
            struct ({ connection with Control = null; Life = life.FailedWith error }, closeFrame)

    /// Asks to close with `code` and `reason` (cut to 123 UTF-8 bytes) at time `now`.
    let close (connection: Connection, code: uint16, reason: string, now: int64) : struct (Connection * CloseRequest) =
        let life = connection.Life
        if life.CloseSent || life.IsClosed then struct (connection, AlreadyClosing)
        elif not (CloseCode.isSendable code) then struct (connection, CodeNotSendable code)
        else struct ({ connection with Life = life.Closing(code, reason, now) }, SendCloseFrame(Frame.close code reason))

    /// The peer's side of the closing handshake: its close code and reason when its close frame
    /// arrived, else 1006 (RFC 6455 §7.1.5). See `closeOutcome` for what the application is told.
    let closeStatus (connection: Connection) : struct (uint16 * string) =
        let life = connection.Life
        if life.CloseReceived then struct (life.ReceivedCode, life.ReceivedReason)
        else struct (CloseCode.AbnormalClosure, "")

    /// The code and reason to report to the application once the transport has ended: ours when
    /// we started the closing handshake (a close, the idle close) or failed the connection, as
    /// the client's answer to it (often a plain 1000) does not say why the connection ended;
    /// else the peer's; else 1006, the connection ended without a close frame (RFC 6455 §7.1.5).
    /// The reason is the one asked for, before the close frame cut it to 123 bytes.
    let closeOutcome (connection: Connection) : struct (uint16 * string) =
        let life = connection.Life
        if life.SentCode <> 0us then struct (life.SentCode, life.SentReason)
        else closeStatus connection

    /// `time + timeout`, saturating at Int64.MaxValue ("never") instead of wrapping around: a
    /// huge timeout (say Int64.MaxValue for "practically off") must not overflow into a deadline
    /// in the past, which would fire at once.
    let private after (time: int64) (timeout: int64) : int64 =
        if time > 0L && timeout > Int64.MaxValue - time then Int64.MaxValue else time + timeout

    /// The time at which `tick` next has something to do (Int64.MaxValue when never).
    let nextDeadline (connection: Connection) : int64 =
        let life = connection.Life
        let options = life.Options
        if life.IsClosed then Int64.MaxValue
        elif life.CloseSent then after life.CloseSentAt options.CloseTimeout
        elif options.IdleTimeout <= 0L then Int64.MaxValue
        elif connection.PingSentAt >= 0L then after connection.PingSentAt options.IdleTimeout
        else after connection.LastActivity options.IdleTimeout

    /// The reason of the idle close (1001).
    let private idleReason = "idle timeout"

    /// Lets time pass: returns what is due at `now` (a keep-alive ping, an idle close, or the end
    /// of a closing handshake the peer never finished).
    let tick (connection: Connection, now: int64) : struct (Connection * TickAction) =
        let deadline = nextDeadline connection
        let life = connection.Life
        // Int64.MaxValue means "never", even when `now` is Int64.MaxValue itself: otherwise a
        // closed connection, or one with keep-alive off, would act at the end of time.
        if deadline = Int64.MaxValue || now < deadline then
            struct (connection, NoAction)
        elif life.CloseSent then
            struct ({ connection with Life = { life with TimedOut = true } }, CloseHandshakeTimedOut)
        elif connection.PingSentAt >= 0L then
            let next = { connection with Life = { life.Closing(CloseCode.GoingAway, idleReason, now) with TimedOut = true } }
            struct (next, IdleTimedOut(Frame.close CloseCode.GoingAway idleReason))
        else
            struct ({ connection with PingSentAt = now }, SendPing(Frame.control Opcode.Ping ReadOnlySpan.Empty))

    /// The shell stopped running the connection (its receive loop ended, with or without a
    /// closing handshake): from now on nothing more is queued, read, closed or timed; what is
    /// already queued may still be written until `writingStopped`.
    let transportEnded (connection: Connection) : Connection =
        let life = connection.Life
        if life.TransportEnded then connection else { connection with Life = { life with TransportEnded = true } }

    /// The transport takes no more bytes: a write failed, or the connection ended with no write
    /// under way. Nothing more is written or read; what is still queued is dropped.
    let writingStopped (connection: Connection) : Connection =
        let life = connection.Life
        if life.WritesStopped then connection else { connection with Life = { life with WritesStopped = true } }

    /// Applies the message rules to inflated bytes of a compressed message (RFC 7692 §6: the
    /// extension sits below the message layer, so its inflated data is what the rules see): the
    /// size limit summed over the inflated message (RFC 6455 §10.4, 1009; RFC 7692 §8.1 warns of
    /// messages that expand enormously), and for text incremental UTF-8 validation, the message
    /// not ending inside a sequence (RFC 6455 §8.1, 1007). Call it after a `MessageData` event of a
    /// compressed message, with what its payload inflated to (any number of pieces, in order), and
    /// `messageEnd` with the last piece of the message. The checks run in the order they run for
    /// an uncompressed message, so the verdict is that of the same bytes sent uncompressed in
    /// fragments cut where the pieces are.
    let inflated (connection: Connection, inflatedBytes: ReadOnlySpan<byte>, messageEnd: bool) : struct (Connection * InflatedVerdict) =
        let life = connection.Life
        if life.IsClosed then struct (connection, InflatedIgnored)
        else
            let mutable receiver = connection.Receiver
            let maxSize = life.Options.MaxMessageSize
            let mutable error = ValueNone
            if int64 inflatedBytes.Length > maxSize - receiver.InflatedLength then
                error <- ValueSome(MessageTooBig maxSize)
            elif receiver.Kind = MessageKind.Text then
                match Utf8Validator.advance (receiver.Utf8, inflatedBytes) with
                | Utf8Validator.Valid after when not messageEnd || after.IsComplete -> receiver.Utf8 <- after
                | _ -> error <- ValueSome InvalidUtf8
            match error with
            | ValueSome error ->
                let closeFrame = failureFrame life error
                struct ({ connection with Control = null; Life = life.FailedWith error }, InflatedRefused(error, closeFrame))
            | ValueNone ->
                receiver.InflatedLength <- receiver.InflatedLength + int64 inflatedBytes.Length
                struct ({ connection with Receiver = receiver }, InflatedAccepted)

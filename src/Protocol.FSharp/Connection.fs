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
    /// `compressed` when the message was sent compressed (RFC 7692), in which case its text, if
    /// any, is validated after inflating. A message can end with an event of length 0.
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

/// A server-side WebSocket connection as an immutable value (RFC 6455 §5-§7).
///
/// Theory of operation: the shell feeds received bytes with `receive` in a loop; each call
/// consumes some bytes and returns at most one event, until `NeedMoreData`. Data payloads are not
/// copied: events say where they are in the input. Control frames (at most 125 bytes) are
/// collected into a small array of their own. Ping answers and close echoes are produced here, as
/// bytes to write. Time enters only as the `now` argument; `tick` and `nextDeadline` drive the
/// keep-alive and the closing-handshake timeout.
[<Struct>]
type Connection =
    private
        {
            Options: ConnectionOptions
            Decoder: FrameDecoder
            InMessage: bool
            Kind: MessageKind
            Compressed: bool
            MessageLength: int64
            Utf8: Utf8Validator.Utf8State
            Control: byte[]
            CloseSent: bool
            CloseSentAt: int64
            CloseReceived: bool
            Failed: bool
            TimedOut: bool
            ReceivedCode: uint16
            ReceivedReason: string
            LastActivity: int64
            PingSentAt: int64
        }

    /// False once a close frame was sent (RFC 6455 §5.5.1: no data frames after a close).
    member connection.CanSend = not connection.CloseSent

    /// True once a close frame was sent or the connection failed.
    member connection.IsClosing = connection.CloseSent || connection.CloseReceived || connection.Failed

    /// True when the closing handshake completed or the connection failed or timed out: the
    /// transport should be closed and nothing more is read.
    member connection.IsClosed = connection.CloseReceived || connection.Failed || connection.TimedOut

    /// The settings the connection was created with.
    member connection.Settings = connection.Options

/// Functions over `Connection`.
module Connection =

    /// Sensible defaults: 16 MiB messages, no compression, 120 s idle timeout, 5 s close timeout.
    let defaultOptions: ConnectionOptions =
        { MaxMessageSize = 16L * 1024L * 1024L; PerMessageDeflate = false; IdleTimeout = 120_000L; CloseTimeout = 5_000L }

    /// A connection just after the opening handshake, at time `now`.
    let create (options: ConnectionOptions, now: int64) : Connection =
        { Options = options
          Decoder = FrameDecoder.initial
          InMessage = false
          Kind = MessageKind.Binary
          Compressed = false
          MessageLength = 0L
          Utf8 = Utf8Validator.initial
          Control = null
          CloseSent = false
          CloseSentAt = 0L
          CloseReceived = false
          Failed = false
          TimedOut = false
          ReceivedCode = CloseCode.AbnormalClosure
          ReceivedReason = ""
          LastActivity = now
          PingSentAt = -1L }

    let private failWith (connection: Connection) (error: ProtocolError) (consumed: int) =
        let closeFrame = if connection.CloseSent then Array.Empty<byte>() else Frame.close error.CloseCode error.Message
        let next = { connection with Failed = true; CloseSent = true; Control = null }
        struct (next, consumed, ProtocolViolation(error, closeFrame))

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

    /// A complete control frame arrived: answer it.
    let private controlComplete (connection: Connection) (opcode: Opcode) (consumed: int) =
        let payload = connection.Control
        let connection = { connection with Control = null }
        match opcode with
        | Opcode.Ping ->
            let pong = if connection.CloseSent then Array.Empty<byte>() else Frame.control Opcode.Pong (ReadOnlySpan payload)
            struct (connection, consumed, ValueSome(PingReceived(payload, pong)))
        | Opcode.Pong -> struct (connection, consumed, ValueSome(PongReceived payload))
        | _ ->
            match readClose payload with
            | Error error ->
                let struct (failed, consumed, event) = failWith connection error consumed
                struct (failed, consumed, ValueSome event)
            | Ok(struct (code, reason)) ->
                // RFC 6455 §5.5.1: answer a close with a close, echoing the code it carried.
                let reply =
                    if connection.CloseSent then Array.Empty<byte>()
                    elif code = CloseCode.NoStatusReceived then Frame.closeWithoutCode ()
                    else Frame.control Opcode.Close (ReadOnlySpan(payload, 0, 2))
                let next = { connection with CloseReceived = true; CloseSent = true; ReceivedCode = code; ReceivedReason = reason }
                struct (next, consumed, ValueSome(CloseReceived(code, reason, reply)))

    /// A header arrived: apply the message-level rules (RFC 6455 §5.4) and the size limit.
    let private startFrame (connection: Connection) (header: FrameHeader) : Result<Connection, ProtocolError> =
        if Frame.isControl header.Opcode then
            Ok { connection with Control = if header.PayloadLength = 0L then Array.Empty<byte>() else Array.zeroCreate (int header.PayloadLength) }
        elif header.Opcode = Opcode.Continuation && not connection.InMessage then
            Error UnexpectedContinuation
        elif header.Opcode <> Opcode.Continuation && connection.InMessage then
            Error ExpectedContinuation
        else
            let soFar = if header.Opcode = Opcode.Continuation then connection.MessageLength else 0L
            // RFC 6455 §10.4: refuse at the header, before reading any of an oversized payload.
            if header.PayloadLength > connection.Options.MaxMessageSize - soFar then
                Error(MessageTooBig connection.Options.MaxMessageSize)
            elif header.Opcode = Opcode.Continuation then
                Ok connection
            else
                Ok
                    { connection with
                        InMessage = true
                        Kind = (if header.Opcode = Opcode.Text then MessageKind.Text else MessageKind.Binary)
                        Compressed = header.Rsv1
                        MessageLength = 0L
                        Utf8 = Utf8Validator.initial }

    /// Consumes bytes from the front of `input` (received at time `now`) and returns the next
    /// connection, how many bytes were consumed, and at most one event. Call it again with the
    /// rest of the input until it returns `NeedMoreData`. Never throws: bad bytes give
    /// `ProtocolViolation` with the close code to send.
    let receive (connection: Connection, input: ReadOnlySpan<byte>, now: int64) : struct (Connection * int * ConnectionEvent) =
        if connection.IsClosed then
            // RFC 6455 §5.5.1: after the close frame nothing more is processed.
            struct (connection, input.Length, NeedMoreData)
        else
            let mutable current =
                if input.IsEmpty then connection else { connection with LastActivity = now; PingSentAt = -1L }
            let mutable position = 0
            let mutable result = ValueNone
            while result.IsNone do
                let struct (decoder, consumed, event) =
                    FrameDecoder.step (Role.Server, current.Options.PerMessageDeflate, current.Decoder, input.Slice position)
                let start = position
                position <- position + consumed
                current <- { current with Decoder = decoder }
                match event with
                | NeedMore -> result <- ValueSome(struct (current, position, NeedMoreData))
                | Failed error -> result <- ValueSome(failWith current error position)
                | Header header ->
                    match startFrame current header with
                    | Ok next -> current <- next
                    | Error error -> result <- ValueSome(failWith current error position)
                | Payload(length, offset, frameEnd) ->
                    let header = decoder.CurrentHeader
                    if Frame.isControl header.Opcode then
                        // Copy on write: the array may belong to an earlier connection value (the
                        // header or the first payload bytes came in an earlier call), and writing
                        // into it would change that value, and the payload of a ping or pong event
                        // already handed out from it. Control payloads are at most 125 bytes.
                        let control = if length = 0 then current.Control else Array.copy current.Control
                        Masking.apply (header.MaskKey, offset, input.Slice(start, length), control.AsSpan(int offset, length))
                        current <- { current with Control = control }
                        if frameEnd then
                            let struct (next, consumed, answer) = controlComplete current header.Opcode position
                            current <- next
                            position <- consumed
                            match answer with
                            | ValueSome event -> result <- ValueSome(struct (next, consumed, event))
                            | ValueNone -> ()
                    else
                        let messageEnd = frameEnd && header.Fin
                        let checkText = current.Kind = MessageKind.Text && not current.Compressed
                        let utf8 =
                            if checkText && length > 0 then
                                Utf8Validator.advanceMasked (current.Utf8, header.MaskKey, offset, input.Slice(start, length))
                            else
                                Utf8Validator.Valid current.Utf8
                        match utf8 with
                        | Utf8Validator.InvalidAt _ -> result <- ValueSome(failWith current InvalidUtf8 position)
                        | Utf8Validator.Valid state when messageEnd && checkText && not state.IsComplete ->
                            // RFC 6455 §8.1: the message ended inside a UTF-8 sequence.
                            result <- ValueSome(failWith current InvalidUtf8 position)
                        | Utf8Validator.Valid state ->
                            current <-
                                { current with
                                    Utf8 = state
                                    MessageLength = current.MessageLength + int64 length
                                    InMessage = not messageEnd }
                            if length > 0 || messageEnd then
                                let event = MessageData(current.Kind, start, length, header.MaskKey, offset, messageEnd, current.Compressed)
                                result <- ValueSome(struct (current, position, event))
            result.Value

    /// Fails the connection for a message the shell found bad after the core passed it on: a
    /// compressed message whose inflated size passes the limit (1009), whose text is not UTF-8 or
    /// whose DEFLATE data is corrupt (1007). Returns the close frame to write (empty when a close
    /// was already sent) before closing the transport, as for `ProtocolViolation`.
    let failMessage (connection: Connection, error: ProtocolError) : struct (Connection * byte[]) =
        if connection.IsClosed then struct (connection, Array.Empty<byte>())
        else
            let struct (failed, _, _) = failWith connection error 0
            let closeFrame = if connection.CloseSent then Array.Empty<byte>() else Frame.close error.CloseCode error.Message
            struct (failed, closeFrame)

    /// Asks to close with `code` and `reason` (cut to 123 UTF-8 bytes) at time `now`.
    let close (connection: Connection, code: uint16, reason: string, now: int64) : struct (Connection * CloseRequest) =
        if connection.CloseSent || connection.IsClosed then struct (connection, AlreadyClosing)
        elif not (CloseCode.isSendable code) then struct (connection, CodeNotSendable code)
        else struct ({ connection with CloseSent = true; CloseSentAt = now }, SendCloseFrame(Frame.close code reason))

    /// The code and reason to report to the application once the transport has ended: the
    /// peer's close code when its close frame arrived, else 1006 (RFC 6455 §7.1.5).
    let closeStatus (connection: Connection) : struct (uint16 * string) =
        if connection.CloseReceived then struct (connection.ReceivedCode, connection.ReceivedReason)
        else struct (CloseCode.AbnormalClosure, "")

    /// `time + timeout`, saturating at Int64.MaxValue ("never") instead of wrapping around: a
    /// huge timeout (say Int64.MaxValue for "practically off") must not overflow into a deadline
    /// in the past, which would fire at once.
    let private after (time: int64) (timeout: int64) : int64 =
        if time > 0L && timeout > Int64.MaxValue - time then Int64.MaxValue else time + timeout

    /// The time at which `tick` next has something to do (Int64.MaxValue when never).
    let nextDeadline (connection: Connection) : int64 =
        let options = connection.Options
        if connection.IsClosed then Int64.MaxValue
        elif connection.CloseSent then after connection.CloseSentAt options.CloseTimeout
        elif options.IdleTimeout <= 0L then Int64.MaxValue
        elif connection.PingSentAt >= 0L then after connection.PingSentAt options.IdleTimeout
        else after connection.LastActivity options.IdleTimeout

    /// Lets time pass: returns what is due at `now` (a keep-alive ping, an idle close, or the end
    /// of a closing handshake the peer never finished).
    let tick (connection: Connection, now: int64) : struct (Connection * TickAction) =
        let deadline = nextDeadline connection
        // Int64.MaxValue means "never", even when `now` is Int64.MaxValue itself: otherwise a
        // closed connection, or one with keep-alive off, would act at the end of time.
        if deadline = Int64.MaxValue || now < deadline then
            struct (connection, NoAction)
        elif connection.CloseSent then
            struct ({ connection with TimedOut = true }, CloseHandshakeTimedOut)
        elif connection.PingSentAt >= 0L then
            let next = { connection with CloseSent = true; CloseSentAt = now; TimedOut = true }
            struct (next, IdleTimedOut(Frame.close CloseCode.GoingAway "idle timeout"))
        else
            struct ({ connection with PingSentAt = now }, SendPing(Frame.control Opcode.Ping ReadOnlySpan.Empty))

/// Per-connection accounting of outbound bytes that are queued but not yet written, deciding
/// for each send whether it is queued, queued under backpressure, dropped, or must close the
/// connection. `Connection.send` and `Connection.flushed` call `offer` and `flushed` with the
/// state each connection keeps; both are allocation-free struct computations. Whether the
/// connection may still send at all is the connection's closing state, not this accounting's.
module Realtime.Protocol.Backpressure

/// Thresholds on the bytes buffered for one connection.
type Limits =
    {
        /// Above this many buffered bytes, queued sends report Backpressure.
        SoftLimit: int64
        /// A send is accepted only if the buffer stays at or below this many bytes
        /// (buffered + bytes <= HardLimit); once the buffer is at the limit, every non-empty send is refused.
        HardLimit: int64
        /// When true, a send refused by the hard limit tells the host to close the connection
        /// (CloseForLimit) instead of dropping the message.
        CloseOnLimit: bool
    }

/// Why a set of limits is invalid.
type LimitsError =
    /// SoftLimit is negative.
    | NegativeSoftLimit
    /// HardLimit is negative.
    | NegativeHardLimit
    /// SoftLimit is greater than HardLimit.
    | SoftLimitAboveHardLimit

    /// A stable code: "negative-soft-limit", "negative-hard-limit", "soft-limit-above-hard-limit".
    member e.Code: string =
        match e with
        | NegativeSoftLimit -> "negative-soft-limit"
        | NegativeHardLimit -> "negative-hard-limit"
        | SoftLimitAboveHardLimit -> "soft-limit-above-hard-limit"

    /// A human-readable explanation.
    member e.Message: string =
        match e with
        | NegativeSoftLimit -> "The soft limit must not be negative."
        | NegativeHardLimit -> "The hard limit must not be negative."
        | SoftLimitAboveHardLimit -> "The soft limit must not be greater than the hard limit."

/// The default limits: 64 KiB soft (uWebSockets' default maxBackpressure: a fast client keeps
/// the buffer below it, so crossing it is a real signal), 16 MiB hard (Bun's default
/// backpressureLimit: bounds the memory one slow client can pin), and drop rather than close
/// (both Bun and uWebSockets default to not closing).
let defaults: Limits =
    { SoftLimit = 64L * 1024L
      HardLimit = 16L * 1024L * 1024L
      CloseOnLimit = false }

/// Checks limits: both non-negative and SoftLimit <= HardLimit. Reports the first problem found.
let validate (limits: Limits) : Result<Limits, LimitsError> =
    if limits.SoftLimit < 0L then Error NegativeSoftLimit
    elif limits.HardLimit < 0L then Error NegativeHardLimit
    elif limits.SoftLimit > limits.HardLimit then Error SoftLimitAboveHardLimit
    else Ok limits

/// Why a send was not queued.
[<Struct>]
type DropReason =
    /// The connection is closed (or closing): nothing more is sent.
    | ConnectionClosed
    /// Queueing the message would take the buffer above the hard limit.
    | OverLimit
    /// The message length is negative (a caller bug).
    | InvalidLength

/// The outcome of offering a message for sending.
[<Struct>]
type SendResult =
    /// Queued, and the buffer is still at or below the soft limit.
    | Sent of bytes: int
    /// Queued, and the buffer is now above the soft limit: a backpressure episode starts or continues.
    | Backpressure
    /// Not queued; the buffered amount is unchanged.
    | Dropped of reason: DropReason
    /// Not queued: the message would cross the hard limit and CloseOnLimit is set. The host must
    /// close the connection with 1008 (policy violation); the buffered amount is unchanged.
    | CloseForLimit

/// The outcome of the transport writing bytes.
[<Struct>]
type FlushResult =
    /// The buffer fell back to the soft limit or below after a Backpressure result: the host may
    /// resume sending. Reported once per backpressure episode.
    | Drain
    /// Nothing for the host to do.
    | NoDrain

/// The accounting state of one connection. Built only from `initial`, `offer` and `flushed`,
/// so Buffered is never negative.
[<Struct>]
type State =
    private
        { buffered: int64
          inBackpressure: bool }

    /// Bytes queued and not yet written.
    member s.Buffered: int64 = s.buffered

    /// True between a Backpressure result and the Drain that ends the episode.
    member s.InBackpressure: bool = s.inBackpressure

/// The state of a new connection: nothing buffered.
let initial: State =
    { buffered = 0L
      inBackpressure = false }

/// Decides what happens to a message of `bytes` bytes, in this order: negative length, then the
/// hard limit (accepted iff buffered + bytes <= HardLimit, computed without overflow), then the
/// soft limit (Backpressure iff buffered + bytes > SoftLimit). A message longer than HardLimit is
/// therefore never sent. Limits should be validated; invalid ones give whatever these comparisons
/// give, never an exception. O(1), no allocation.
let offer (limits: Limits) (state: State) (bytes: int) : struct (State * SendResult) =
    if bytes < 0 then
        struct (state, Dropped InvalidLength)
    else
        let room =
            if limits.HardLimit < state.buffered then -1L else limits.HardLimit - state.buffered

        if int64 bytes > room then
            struct (state, (if limits.CloseOnLimit then CloseForLimit else Dropped OverLimit))
        else
            let buffered = state.buffered + int64 bytes

            if buffered > limits.SoftLimit then
                struct ({ buffered = buffered; inBackpressure = true }, Backpressure)
            else
                struct ({ state with buffered = buffered }, Sent bytes)

/// Records that the transport wrote `bytes` bytes. Buffered is clamped at zero: flushing more than
/// is buffered (or a negative count, treated as zero) is a caller bug that must not produce a
/// negative balance. Drain is reported when a backpressure episode is open and the buffer is now
/// at or below the soft limit. O(1), no allocation.
let flushed (limits: Limits) (state: State) (bytes: int) : struct (State * FlushResult) =
    let written = if bytes < 0 then 0L else int64 bytes
    let buffered = if written >= state.buffered then 0L else state.buffered - written

    if state.inBackpressure && buffered <= limits.SoftLimit then
        struct ({ buffered = buffered; inBackpressure = false }, Drain)
    else
        struct ({ state with buffered = buffered }, NoDrain)

/// Corrects the account of a message that an earlier offer queued as `queued` bytes (a bound of its
/// size, before its size was known) and that is `actual` bytes, without ending a backpressure
/// episode (the next `flushed` reports the Drain). Clamped at zero like `flushed`. O(1), no allocation.
let resize (state: State) (queued: int) (actual: int) : State =
    let buffered = state.buffered - int64 (max 0 queued) + int64 (max 0 actual)
    { state with buffered = max 0L buffered }

/// Whether the message was queued (Sent or Backpressure).
let inline isQueued (result: SendResult) : bool =
    match result with
    | Sent _
    | Backpressure -> true
    | Dropped _
    | CloseForLimit -> false

/// A stable code for a drop reason: "connection-closed", "over-limit", "invalid-length".
let dropReasonCode (reason: DropReason) : string =
    match reason with
    | ConnectionClosed -> "connection-closed"
    | OverLimit -> "over-limit"
    | InvalidLength -> "invalid-length"

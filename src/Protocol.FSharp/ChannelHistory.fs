/// The rules of a channel's history (docs/channels-protocol.md, "Positions" and "Retention and
/// recovery rules"): publications numbered 1, 2, 3, ... within an epoch, kept while they are within
/// a retention of count, bytes and age. The host keeps the publications themselves (a ring buffer in
/// memory, a Redis Stream); this module keeps the few numbers that describe what the host holds (the
/// `Window`) and decides each new offset and each trim. Time is an input (`now`, milliseconds on the
/// host's clock) and the epoch is chosen by the host: nothing here reads a clock or a random source,
/// allocates per publication, or throws.
module Realtime.Protocol.ChannelHistory

/// How much of a channel's history is kept: a publication is trimmed as soon as any bound is
/// exceeded (the oldest first).
type Retention =
    {
        /// The most publications held (0: none is kept once published).
        MaxCount: int
        /// The most bytes held, summed over the publications' sizes as the host measures them.
        MaxBytes: int64
        /// The longest a publication is held, in milliseconds: one published at `t` is trimmed once
        /// `now - t > MaxAge`.
        MaxAge: int64
    }

/// Why a retention is invalid.
type RetentionError =
    /// MaxCount is negative.
    | NegativeCount
    /// MaxBytes is negative.
    | NegativeBytes
    /// MaxAge is negative.
    | NegativeAge

    /// A stable code: "negative-count", "negative-bytes", "negative-age".
    member e.Code: string =
        match e with
        | NegativeCount -> "negative-count"
        | NegativeBytes -> "negative-bytes"
        | NegativeAge -> "negative-age"

    /// A human-readable explanation.
    member e.Message: string =
        match e with
        | NegativeCount -> "The retention's count must not be negative."
        | NegativeBytes -> "The retention's byte size must not be negative."
        | NegativeAge -> "The retention's age must not be negative."

/// The default retention: 1000 publications, 4 MiB, 5 minutes. Five minutes covers a reconnect
/// after a network change, a server restart or a laptop lid closed for a while; 4 MiB bounds the
/// memory one busy channel can pin on a node.
let defaults: Retention =
    { MaxCount = 1000
      MaxBytes = 4L * 1024L * 1024L
      MaxAge = 5L * 60L * 1000L }

/// Checks a retention: every bound non-negative. Reports the first problem found.
let validate (retention: Retention) : Result<Retention, RetentionError> =
    if retention.MaxCount < 0 then Error NegativeCount
    elif retention.MaxBytes < 0L then Error NegativeBytes
    elif retention.MaxAge < 0L then Error NegativeAge
    else Ok retention

/// What a channel's history holds: the publications `FirstOffset ..= LastOffset` of one epoch
/// (none when `FirstOffset = LastOffset + 1`), and their total size. Built by `empty`, `restore`,
/// `append` and `trim`, so 1 <= FirstOffset <= LastOffset + 1 and Bytes >= 0 always hold.
[<Struct>]
type Window =
    private
        { epoch: string
          first: uint64
          last: uint64
          bytes: int64 }

    /// The epoch of the history: its offsets are comparable only with offsets of the same epoch.
    member w.Epoch: string = w.epoch

    /// The offset of the oldest publication held (LastOffset + 1 when none is held).
    member w.FirstOffset: uint64 = w.first

    /// The offset of the latest publication ever appended in this epoch (0 before the first).
    member w.LastOffset: uint64 = w.last

    /// How many publications are held.
    member w.Count: uint64 = w.last + 1UL - w.first

    /// The total size of the publications held, in the host's bytes.
    member w.Bytes: int64 = w.bytes

    /// Whether no publication is held.
    member w.IsEmpty: bool = w.first > w.last

    /// The channel's current position: this epoch and its last offset (what `subscribed` carries).
    member w.Position: ChannelPosition = { Epoch = w.epoch; Offset = w.last }

/// A new history of `epoch` (chosen by the host, for example at random when the history is
/// created): nothing appended yet, LastOffset 0.
let empty (epoch: string) : Window =
    { epoch = epoch
      first = 1UL
      last = 0UL
      bytes = 0L }

/// A window describing a history the host already holds (for example read back from Redis):
/// publications `firstOffset ..= lastOffset` of `epoch`, `bytes` in total. Out-of-range inputs are
/// brought into range rather than refused: a first offset below 1 is 1, one past `lastOffset + 1`
/// is `lastOffset + 1` (nothing held), negative bytes are 0.
let restore (epoch: string) (firstOffset: uint64) (lastOffset: uint64) (bytes: int64) : Window =
    let first = if firstOffset < 1UL then 1UL else firstOffset
    let first = if first > lastOffset + 1UL then lastOffset + 1UL else first

    { epoch = epoch
      first = first
      last = lastOffset
      bytes = (if bytes < 0L || first > lastOffset then 0L else bytes) }

/// Appends a publication of `bytes` bytes (negative counts as 0): it gets the next offset, the
/// returned position, which the host stores it under. The host then calls `trim` until it says
/// Keep, so a ring buffer needs `MaxCount + 1` slots. O(1), no allocation.
let append (window: Window) (bytes: int) : struct (Window * ChannelPosition) =
    let offset = window.last + 1UL

    let window =
        { window with
            last = offset
            bytes = window.bytes + int64 (max 0 bytes) }

    struct (window, { Epoch = window.epoch; Offset = offset })

/// Why the oldest publication must go.
[<Struct>]
type TrimReason =
    /// More publications are held than MaxCount.
    | OverCount
    /// More bytes are held than MaxBytes.
    | OverBytes
    /// The publication is older than MaxAge.
    | OverAge

/// What `trim` decided about the oldest publication held.
[<Struct>]
type TrimStep =
    /// Keep it (and so every later one): trimming is done.
    | Keep
    /// Remove it (the host drops its oldest entry); ask again about the next oldest.
    | Trim of reason: TrimReason

/// Decides whether the oldest publication held (at FirstOffset, `oldestBytes` bytes, published at
/// `oldestTime`) must go at time `now`, in this order: count, bytes, age. On Trim the returned
/// window no longer holds it and the host removes that entry, then calls again with the next
/// oldest; an empty window answers Keep. The host calls this loop after every `append` and, for
/// age, whenever it reads or on a timer. O(1), no allocation.
let trim
    (retention: Retention)
    (now: int64)
    (window: Window)
    (oldestBytes: int)
    (oldestTime: int64)
    : struct (Window * TrimStep) =
    if window.first > window.last then
        struct (window, Keep)
    else
        let reason =
            if window.Count > uint64 (max 0 retention.MaxCount) then ValueSome OverCount
            elif window.bytes > retention.MaxBytes then ValueSome OverBytes
            elif now - oldestTime > retention.MaxAge then ValueSome OverAge
            else ValueNone

        match reason with
        | ValueNone -> struct (window, Keep)
        | ValueSome reason ->
            let first = window.first + 1UL
            let bytes = window.bytes - int64 (max 0 oldestBytes)

            let window =
                { window with
                    first = first
                    bytes = (if bytes < 0L || first > window.last then 0L else bytes) }

            struct (window, Trim reason)

/// Whether the window holds the publication at `offset` of its epoch.
let holds (window: Window) (offset: uint64) : bool =
    offset >= window.first && offset <= window.last

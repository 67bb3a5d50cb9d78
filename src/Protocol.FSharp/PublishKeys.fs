/// Deduplication of client publishes by key (docs/channels-protocol.md, `publish`): a client retries
/// an unacknowledged publish after reconnecting with the same key, and the server answers a key it
/// has seen with the position the first publish got, without publishing again. The host keeps, per
/// channel, a dictionary from key to `Entry` and the keys in the order they were recorded (a queue);
/// this module decides the limits, what a found entry means and which oldest keys to forget. A key
/// is remembered for the last `MaxKeys` publishes of the channel within `MaxAge`: a retry later than
/// that publishes again. No clock (time is an input), no allocation, never throws.
module Realtime.Protocol.PublishKeys

/// How long keys are remembered, per channel.
type KeyLimits =
    {
        /// The most keys remembered (the latest publishes).
        MaxKeys: int
        /// The longest a key is remembered, in milliseconds: one recorded at `t` is forgotten once
        /// `now - t > MaxAge`.
        MaxAge: int64
    }

/// The default limits: the last 1000 publishes of a channel within 5 minutes, the default history
/// retention (`ChannelHistory.defaults`): a client that can still recover can still retry.
let defaults: KeyLimits =
    { MaxKeys = 1000
      MaxAge = 5L * 60L * 1000L }

/// The longest key, in UTF-8 bytes.
[<Literal>]
let MaxKeyLength = 64

/// Whether a key is 1 to `MaxKeyLength` UTF-8 bytes long (null is not). A lone surrogate counts as
/// the 3 bytes of U+FFFD it is encoded as.
let isValidKey (key: string) : bool =
    not (isNull key)
    && key.Length > 0
    && (key.Length <= MaxKeyLength / 3
        || (key.Length <= MaxKeyLength && System.Text.Encoding.UTF8.GetByteCount key <= MaxKeyLength))

/// What the host remembers of a key: the position its publish got, and when it was recorded.
[<Struct>]
type Entry =
    {
        /// The position the first publish with the key got.
        Position: ChannelPosition
        /// When the key was recorded, in the host's milliseconds.
        Time: int64
    }

/// What to do with a publish, given what the host found under its key.
[<Struct>]
type KeyVerdict =
    /// A new key (or one forgotten): publish, then record the key with the position it gets.
    | Publish
    /// A repeated key: do not publish again; acknowledge with `first`, the position of the first publish.
    | Repeat of first: ChannelPosition

/// Decides a publish whose key the host looked up at time `now` (`found`: the entry under the key,
/// ValueNone if none). An entry past MaxAge counts as forgotten (the host replaces it). The host
/// checks and records under one lock per channel, the serialization point that assigns positions,
/// so that two publishes with one key cannot both publish.
let check (limits: KeyLimits) (now: int64) (found: Entry voption) : KeyVerdict =
    match found with
    | ValueSome entry when now - entry.Time <= limits.MaxAge -> Repeat entry.Position
    | _ -> Publish

/// Whether the host must forget its oldest key (recorded at `oldestTime`) when it remembers `count`
/// keys at time `now`: too many keys, or the oldest is past MaxAge. The host calls it in a loop
/// (after recording a key, and before looking one up) until it answers false. O(1).
let shouldForget (limits: KeyLimits) (now: int64) (count: int) (oldestTime: int64) : bool =
    count > 0 && (count > limits.MaxKeys || now - oldestTime > limits.MaxAge)

/// The rules of publish/subscribe that do not depend on how a host keeps its subscribers: how long
/// a topic name may be, and whether a subscriber may join a topic within the limits. The host keeps
/// the subscribers themselves (per-topic sets with their own locks, see the host's PubSub folder),
/// so that filling a topic of n subscribers costs O(n), not the O(n²) of copying an immutable array.
module Realtime.Protocol.Topics

open System

/// Bounds a subscribe must stay within (see `admit`).
[<Struct>]
type TopicLimits =
    {
        /// The longest topic name, in UTF-8 bytes.
        MaxTopicLength: int
        /// The most topics one subscriber may be in at once.
        MaxTopicsPerSubscriber: int
    }

/// Whether a subscriber may join a topic (see `admit`).
[<Struct>]
type Admission =
    /// The subscriber may join the topic.
    | Admitted
    /// The subscriber is already in the topic: nothing changes.
    | AlreadyIn
    /// Bad input: nothing changes. Codes: "null-topic", "topic-too-long".
    | Refused of code: string
    /// The subscriber is already in as many topics as the limits allow: nothing changes.
    | AtTopicLimit

/// Whether a topic name is at most `maxLength` UTF-8 bytes long (a lone surrogate counts as the 3
/// bytes of U+FFFD it is encoded as). False for a null name. Counts only when the name's length in
/// UTF-16 units does not decide it, so an over-long name costs O(1).
let nameFits (maxLength: int) (topic: string) : bool =
    if isNull topic || maxLength < 0 then false
    // Each UTF-16 unit takes 1 to 3 UTF-8 bytes (a surrogate pair, two units, takes 4).
    elif topic.Length > maxLength then false
    elif topic.Length <= maxLength / 3 then true
    else Text.Encoding.UTF8.GetByteCount topic <= maxLength

/// Whether a subscriber that is in `topicsHeld` topics (`alreadyIn` this one) may join `topic`
/// within `limits`: a name longer than `MaxTopicLength` is Refused "topic-too-long", a subscriber
/// already in the topic is AlreadyIn (even at its limit), one in `MaxTopicsPerSubscriber` topics
/// or more is AtTopicLimit. O(1) for a name under a third of the limit, O(name) otherwise.
let admit (limits: TopicLimits) (topic: string) (alreadyIn: bool) (topicsHeld: int) : Admission =
    if isNull topic then Refused "null-topic"
    elif not (nameFits limits.MaxTopicLength topic) then Refused "topic-too-long"
    elif alreadyIn then AlreadyIn
    elif topicsHeld >= limits.MaxTopicsPerSubscriber then AtTopicLimit
    else Admitted

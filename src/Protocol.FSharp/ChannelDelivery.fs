/// The delivery rule of one subscription (docs/channels-protocol.md, "Retention and recovery
/// rules"): which arriving publications reach the app, which are dropped as duplicates or stale,
/// when a gap or a new epoch means asking the server again, and when the app must be told that
/// publications were lost. The browser client mirrors it in JavaScript; a node uses it for the
/// publications it receives from other nodes (pub/sub may drop, repeat or reorder them) with its
/// store standing in for the server. One small struct per subscription, no allocation, never throws.
///
/// The conversation it follows, per channel on one connection:
/// 1. The client sends `subscribe` (with `since` = `since state` when it has a position): `subscribe`.
/// 2. Publications before the `subscribed` reply are the recovery (in order); `onPublication`.
/// 3. `subscribed`: `onSubscribed`. From then on publications are live: `onPublication`.
/// 4. A Gap or NewEpoch on a live subscription: the client sends `unsubscribe` then `subscribe`
///    with `since` at once; publications before the `unsubscribed` reply are stale (the old
///    subscription's, they will be recovered); `onUnsubscribed` starts step 2 again. The
///    `unsubscribed` reply is the boundary that tells the recovery's publications from stale ones.
/// 5. The connection is lost: on the new one, `resubscribe` and step 1 with `since`.
module Realtime.Protocol.ChannelDelivery

/// Where a subscription is in its conversation with the server.
[<Struct>]
type Phase =
    /// A `subscribe` is in flight: publications before its `subscribed` reply are its recovery.
    | AwaitingSubscribed
    /// Subscribed: publications are live.
    | Active
    /// An `unsubscribe` followed by a `subscribe` are in flight: publications before the
    /// `unsubscribed` reply are stale.
    | AwaitingUnsubscribed

/// One subscription's state: the position of the last publication delivered to the app (none
/// before the first, for a subscription that started fresh) and the phase. Built only by this
/// module's functions.
[<Struct>]
type Subscription =
    private
        { epoch: string
          offset: uint64
          hasPosition: bool
          phase: Phase
          // Within one recovery (AwaitingSubscribed): whether a publication was delivered, and
          // whether the app was told of a loss.
          accepted: bool
          lossReported: bool }

    /// The phase of the conversation.
    member s.Phase: Phase = s.phase

    /// The position of the last publication delivered to the app, if any.
    member s.Position: ChannelPosition voption =
        if s.hasPosition then
            ValueSome { Epoch = s.epoch; Offset = s.offset }
        else
            ValueNone

/// What to do with an arriving publication.
[<Struct>]
type PublicationVerdict =
    /// Deliver it to the app: it is the next one (or the first of a fresh subscription).
    | Deliver
    /// Tell the app that publications before this one were lost (the history no longer held them,
    /// or it was lost with its epoch), then deliver it. Reported once per recovery.
    | DeliverAfterLoss
    /// Drop it: the app already has it.
    | Duplicate
    /// Drop it: it was sent on the subscription being replaced, and the recovery will send it.
    | Stale
    /// Drop it: publications between the position and this one are missing. Send `unsubscribe`
    /// then `subscribe` with `since` = `gapFrom` (a node reads its store after it instead).
    | Gap of gapFrom: ChannelPosition
    /// Drop it: it is of another epoch than the position (the history was lost). Recover as for a
    /// Gap, from `epochFrom`: the server answers NotRecovered and sends the new epoch's history.
    | NewEpoch of epochFrom: ChannelPosition

/// What a `subscribed` reply means.
[<Struct>]
type SubscribedVerdict =
    /// The subscription is live, nothing was lost.
    | Subscribed
    /// The subscription is live; tell the app that publications were lost (not-recovered).
    | SubscribedAfterLoss
    /// The recovery stopped short of the reply's position (a paged reply): send `unsubscribe` then
    /// `subscribe` with `since` = `incompleteFrom` for the rest.
    | Incomplete of incompleteFrom: ChannelPosition
    /// No `subscribe` was waiting for a reply: nothing changes.
    | Ignored

/// What an `unsubscribed` reply means.
[<Struct>]
type UnsubscribedVerdict =
    /// The `unsubscribe` of a resubscribe took effect: the next publications are the recovery of
    /// the `subscribe` sent after it.
    | RecoveryFollows
    /// The server ended a subscription that was not being replaced: the host decides (subscribe
    /// again with `resubscribe`, or forget the subscription).
    | Ended

/// A subscription whose `subscribe` was just sent with `since` (ValueNone: from now, Fresh).
let subscribe (since: ChannelPosition voption) : Subscription =
    match since with
    | ValueSome p ->
        { epoch = p.Epoch
          offset = p.Offset
          hasPosition = true
          phase = AwaitingSubscribed
          accepted = false
          lossReported = false }
    | ValueNone ->
        { epoch = null
          offset = 0UL
          hasPosition = false
          phase = AwaitingSubscribed
          accepted = false
          lossReported = false }

/// A subscription already live at `position`: a node following a channel from its store's current
/// position.
let active (position: ChannelPosition) : Subscription =
    { epoch = position.Epoch
      offset = position.Offset
      hasPosition = true
      phase = Active
      accepted = false
      lossReported = false }

/// The same subscription, asking again with its position: after a reconnect the client sends
/// `subscribe` with `since` on the new connection; a node reads its store after a Gap.
let resubscribe (state: Subscription) : Subscription =
    { state with
        phase = AwaitingSubscribed
        accepted = false
        lossReported = false }

/// The `since` a `subscribe` for this subscription carries: its position, if it has one.
let since (state: Subscription) : ChannelPosition voption = state.Position

let private advance (state: Subscription) (position: ChannelPosition) =
    { state with
        epoch = position.Epoch
        offset = position.Offset
        hasPosition = true
        accepted = true }

let private askAgain (state: Subscription) = { state with phase = AwaitingUnsubscribed }

let private current (state: Subscription) : ChannelPosition =
    { Epoch = state.epoch; Offset = state.offset }

/// Decides what to do with a publication at `position`:
/// - awaiting `unsubscribed`: Stale;
/// - no position yet (a fresh subscribe): Deliver, and the position starts there;
/// - same epoch: offset = position + 1 Deliver, offset <= position Duplicate;
/// - further ahead, or another epoch: while recovering and nothing delivered yet in this recovery,
///   the history starts after a loss: DeliverAfterLoss; otherwise Gap (same epoch) or NewEpoch, and
///   the subscription awaits `unsubscribed`.
/// O(1) (an epoch comparison), no allocation.
let onPublication (state: Subscription) (position: ChannelPosition) : struct (Subscription * PublicationVerdict) =
    match state.phase with
    | AwaitingUnsubscribed -> struct (state, Stale)
    | _ when not state.hasPosition -> struct (advance state position, Deliver)
    | phase ->
        let sameEpoch = System.String.Equals(position.Epoch, state.epoch)

        if sameEpoch && position.Offset = state.offset + 1UL then
            struct (advance state position, Deliver)
        elif sameEpoch && position.Offset <= state.offset then
            struct (state, Duplicate)
        elif not state.accepted && phase.IsAwaitingSubscribed then
            struct ({ advance state position with lossReported = true }, DeliverAfterLoss)
        elif sameEpoch then
            struct (askAgain state, Gap(current state))
        else
            struct (askAgain state, NewEpoch(current state))

/// Decides what a `subscribed` reply at `position` with `recovery` means:
/// - not awaiting it: Ignored;
/// - the app is at or past `position` (same epoch): live; SubscribedAfterLoss when the reply is
///   NotRecovered and the loss was not reported yet;
/// - no position yet (a fresh subscribe): live from `position`;
/// - behind `position` after a Recovered reply, or after delivering some of a NotRecovered one:
///   Incomplete (a paged reply), ask again from the position;
/// - behind after a NotRecovered reply with nothing delivered (nothing is held), or after a Fresh
///   reply to a subscribe that gave `since`: live from `position`, SubscribedAfterLoss.
/// O(1), no allocation.
let onSubscribed
    (state: Subscription)
    (position: ChannelPosition)
    (recovery: Recovery)
    : struct (Subscription * SubscribedVerdict) =
    if not state.phase.IsAwaitingSubscribed then
        struct (state, Ignored)
    else
        let atOrPast =
            state.hasPosition
            && System.String.Equals(position.Epoch, state.epoch)
            && state.offset >= position.Offset

        let liveAt (p: ChannelPosition) =
            { state with
                epoch = p.Epoch
                offset = p.Offset
                hasPosition = true
                phase = Active }

        let notRecovered =
            match recovery with
            | Recovery.NotRecovered -> true
            | Recovery.Fresh
            | Recovery.Recovered -> false

        if atOrPast then
            let verdict =
                if notRecovered && not state.lossReported then SubscribedAfterLoss else Subscribed

            struct ({ state with phase = Active }, verdict)
        elif not state.hasPosition then
            struct (liveAt position, Subscribed)
        else
            match recovery with
            | Recovery.Recovered -> struct (askAgain state, Incomplete(current state))
            | Recovery.NotRecovered when state.accepted -> struct (askAgain state, Incomplete(current state))
            | Recovery.NotRecovered
            // A Fresh reply to a subscribe that gave `since` recovered nothing: the app is told.
            | Recovery.Fresh -> struct (liveAt position, SubscribedAfterLoss)

/// Decides what an `unsubscribed` reply means: awaiting it (a resubscribe), RecoveryFollows and the
/// subscription awaits its `subscribed`; otherwise Ended, nothing changes.
let onUnsubscribed (state: Subscription) : struct (Subscription * UnsubscribedVerdict) =
    match state.phase with
    | AwaitingUnsubscribed -> struct (resubscribe state, RecoveryFollows)
    | _ -> struct (state, Ended)

/// Whether the channel's `current` position (for example its store's, checked when a channel has
/// been quiet) is past what this subscription delivered: another epoch, or a later offset. A
/// subscription without a position is behind any channel with publications.
let isBehind (state: Subscription) (current: ChannelPosition) : bool =
    if not state.hasPosition then
        current.Offset > 0UL
    else
        not (System.String.Equals(current.Epoch, state.epoch)) || current.Offset > state.offset

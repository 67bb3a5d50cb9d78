/// The server's answer to a subscribe (docs/channels-protocol.md, "Retention and recovery rules"):
/// given what the channel's history holds and the client's `since` position, which publications to
/// send before the `subscribed` reply and which `recovery` that reply carries. The host reads the
/// offsets `From ..= Through` from its store and sends them in order, then `subscribed` with
/// `Position`. Pure, no allocation, never throws.
module Realtime.Protocol.ChannelRecovery

/// What to send for a subscribe: the publications `From ..= Through` of the window's epoch (none
/// when `From > Through`), then `subscribed` with `Position` and `Recovery`.
[<Struct>]
type RecoveryPlan =
    {
        /// Fresh (no `since`), Recovered (everything after `since` is sent) or NotRecovered (the
        /// history no longer holds everything after `since`: what it holds is sent).
        Recovery: Recovery
        /// The first offset to send.
        From: uint64
        /// The last offset to send (the window's last offset, or less when paged).
        Through: uint64
        /// The position `subscribed` carries: the window's position (its epoch and last offset).
        Position: ChannelPosition
    }

    /// How many publications to send.
    member p.Count: uint64 = if p.From > p.Through then 0UL else p.Through - p.From + 1UL

/// Decides the answer to a subscribe from `since` (ValueNone: start from now):
/// - no `since`: Fresh, nothing to send;
/// - `since` in the window's epoch with every later publication still held
///   (`FirstOffset <= since.Offset + 1 <= LastOffset + 1`): Recovered, send `since.Offset + 1 ..= LastOffset`
///   (nothing when the client is up to date);
/// - `since` in the window's epoch but older than what is held: NotRecovered, send everything held;
/// - `since` in another epoch (the history it names was lost), or past the window's last offset (a
///   position this history never had): NotRecovered, send everything held.
let plan (window: ChannelHistory.Window) (since: ChannelPosition voption) : RecoveryPlan =
    let last = window.LastOffset
    let position = window.Position

    match since with
    | ValueNone ->
        { Recovery = Recovery.Fresh
          From = last + 1UL
          Through = last
          Position = position }
    | ValueSome since when
        since.Epoch = window.Epoch
        && since.Offset <= last
        && since.Offset + 1UL >= window.FirstOffset
        ->
        { Recovery = Recovery.Recovered
          From = since.Offset + 1UL
          Through = last
          Position = position }
    | ValueSome _ ->
        { Recovery = Recovery.NotRecovered
          From = window.FirstOffset
          Through = last
          Position = position }

/// Limits a plan to at most `maxPublications` (at least 1) publications per reply: the page keeps
/// the plan's Recovery and Position and ends at `From + maxPublications - 1`. A client that has
/// delivered the page is behind the `subscribed` position, so by the delivery rule
/// (`ChannelDelivery.onSubscribed` answers Incomplete) it subscribes again from where it is, and the
/// next page is Recovered while the history still holds it. A plan that fits is returned unchanged.
let page (maxPublications: int) (plan: RecoveryPlan) : RecoveryPlan =
    let size = uint64 (max 1 maxPublications)

    if plan.Count <= size then
        plan
    else
        { plan with Through = plan.From + size - 1UL }

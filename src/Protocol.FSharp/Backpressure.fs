/// Placeholder: filled in by its own change.
module Realtime.Protocol.Backpressure

/// Marker so the module is not empty.
let internal placeholder = ()

/// Placeholder: filled in by its own change.
module Realtime.Protocol.Topics

/// Marker so the module is not empty.
let internal placeholder = ()

/// Placeholder: filled in by its own change.
module Realtime.Protocol.DevServerMessages

/// Marker so the module is not empty.
let internal placeholder = ()

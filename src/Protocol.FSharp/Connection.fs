/// Placeholder.
module Realtime.Protocol.Connection

/// Marker.
let internal placeholder = ()

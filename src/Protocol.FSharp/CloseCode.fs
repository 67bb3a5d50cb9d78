/// Placeholder.
module Realtime.Protocol.CloseCode

/// Marker.
let internal placeholder = ()

/// Placeholder.
module Realtime.Protocol.ProtocolError

/// Marker.
let internal placeholder = ()

/// Placeholder.
module Realtime.Protocol.Frame

/// Marker.
let internal placeholder = ()

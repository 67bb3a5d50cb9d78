/// Placeholder.
module Realtime.Protocol.Masking

/// Marker.
let internal placeholder = ()

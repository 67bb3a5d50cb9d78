/// Placeholder.
module Realtime.Protocol.FrameDecoder

/// Marker.
let internal placeholder = ()

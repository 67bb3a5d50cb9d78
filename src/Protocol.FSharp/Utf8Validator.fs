/// Placeholder.
module Realtime.Protocol.Utf8Validator

/// Marker.
let internal placeholder = ()

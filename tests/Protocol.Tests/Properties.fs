/// Shared FsCheck settings, so every property in the suite checks the same number of cases.
module Realtime.Protocol.Tests.Properties

open Expecto

/// How many generated cases each property checks.
let casesPerProperty = 300

/// FsCheck settings for every property of the core.
let config = { FsCheckConfig.defaultConfig with maxTest = casesPerProperty }

/// A property test with the suite's settings.
let property name (body: 'a) = testPropertyWithConfig config name body

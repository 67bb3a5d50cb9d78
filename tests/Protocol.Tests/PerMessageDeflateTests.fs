module Realtime.Protocol.Tests.PerMessageDeflateTests

open Expecto

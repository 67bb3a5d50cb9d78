module Realtime.Protocol.Tests.CloseCodeTests

open Expecto

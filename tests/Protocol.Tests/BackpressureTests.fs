module Realtime.Protocol.Tests.BackpressureTests

open Expecto

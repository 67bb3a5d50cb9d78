module Realtime.Server.Tests.ConformanceTests

open Expecto

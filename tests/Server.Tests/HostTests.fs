module Realtime.Server.Tests.HostTests

open Expecto

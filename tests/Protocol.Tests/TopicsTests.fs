module Realtime.Protocol.Tests.TopicsTests

open Expecto

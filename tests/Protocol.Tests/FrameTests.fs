module Realtime.Protocol.Tests.FrameTests

open Expecto

module Realtime.Protocol.Tests.FrameDecoderTests

open Expecto

module Realtime.Protocol.Tests.MaskingTests

open Expecto

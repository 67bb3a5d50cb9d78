module Realtime.Protocol.Tests.HandshakeTests

open Expecto

module Realtime.Protocol.Tests.Utf8ValidatorTests

open Expecto

module Realtime.Protocol.Tests.DevServerMessagesTests

open Expecto

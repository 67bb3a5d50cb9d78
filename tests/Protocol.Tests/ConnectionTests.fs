module Realtime.Protocol.Tests.ConnectionTests

open Expecto

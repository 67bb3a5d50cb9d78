module Realtime.Server.Tests.Main

open Expecto

[<EntryPoint>]
let main argv =
    match argv with
    // The hostile soak runs its server in a process of its own (SoakTests): this program doubles as it.
    | [| "--soak-server"; port |] -> SoakServer.run (int port)
    // A channels node on Redis that ChannelsRedisClusterTests kill with SIGKILL.
    | [| "--channels-redis-node"; port; redis; prefix; node |] -> ChannelsRedisNode.run (int port) redis prefix node
    | _ -> runTestsInAssemblyWithCLIArgs [] argv

module Realtime.Browser.Tests.Main

open System.Diagnostics
open Expecto

[<EntryPoint>]
let main argv =
    let clock = Stopwatch.StartNew()
    let result = runTestsInAssemblyWithCLIArgs [ Sequenced ] argv
    Infrastructure.closeBrowser ()
    Infrastructure.deleteSites ()
    printfn "Browser suite took %.1f s" clock.Elapsed.TotalSeconds
    result

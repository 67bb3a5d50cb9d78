/// The dev server is a package of its own (Realtime.DevServer): production apps reference
/// Realtime.Server, which carries none of it, and the dev server is built on Realtime.Server's
/// public API like any other extension.
module Realtime.Server.Tests.DevServerPackageTests

open System
open System.Reflection
open System.Runtime.CompilerServices
open Expecto

let private serverAssembly = typeof<Realtime.IRealtimeServer>.Assembly
let private devServerAssembly = typeof<Realtime.RealtimeDevServer>.Assembly

let private isDevServerName (name: string) =
    name.Contains("DevServer", StringComparison.OrdinalIgnoreCase) || name.Contains("Plugin", StringComparison.OrdinalIgnoreCase)

let private friendsOf (assembly: Assembly) =
    assembly.GetCustomAttributes<InternalsVisibleToAttribute>() |> Seq.map (fun a -> a.AssemblyName) |> List.ofSeq

[<Tests>]
let tests =
    testList "Dev server: a package of its own" [
        testCase "Realtime.Server holds no dev-server type, public or internal, and no dev-server resource" (fun () ->
            let types = serverAssembly.GetTypes() |> Array.map (fun t -> t.FullName) |> Array.filter isDevServerName
            Expect.isEmpty types "no type of the dev server or its plugins in Realtime.Server"
            let resources = serverAssembly.GetManifestResourceNames() |> Array.filter isDevServerName
            Expect.isEmpty resources "no embedded client in Realtime.Server")
        testCase "Realtime.DevServer is its own assembly and carries the browser client and the live-reload module" (fun () ->
            Expect.equal (devServerAssembly.GetName().Name) "Realtime.DevServer" "the assembly"
            Expect.notEqual devServerAssembly serverAssembly "not Realtime.Server"
            let resources = devServerAssembly.GetManifestResourceNames() |> Array.sort
            Expect.equal resources [| "Realtime.DevServer.client.js"; "Realtime.DevServer.reload.js" |] "both modules, under their logical names"
            let extensions = devServerAssembly.GetType("Microsoft.AspNetCore.Builder.RealtimeDevServerExtensions", true)
            Expect.isNotNull (extensions.GetMethod "UseRealtimeDevServer") "UseRealtimeDevServer is in Realtime.DevServer, in the namespace apps already use")
        testCase "Realtime.DevServer uses only Realtime.Server's and Realtime.Protocol's public API: neither opens its internals to it" (fun () ->
            let references = devServerAssembly.GetReferencedAssemblies() |> Array.map (fun a -> a.Name)
            Expect.contains references "Realtime.Server" "built on Realtime.Server"
            for assembly in [ serverAssembly; typeof<Realtime.Protocol.FrameHeader>.Assembly ] do
                let friends = friendsOf assembly
                Expect.isFalse (friends |> List.exists (fun f -> f.StartsWith("Realtime.DevServer", StringComparison.Ordinal))) $"{assembly.GetName().Name} gives no InternalsVisibleTo to Realtime.DevServer: {friends}")
    ]

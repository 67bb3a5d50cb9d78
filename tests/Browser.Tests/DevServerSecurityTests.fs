/// The dev server in Chromium against pages of other sites: another origin cannot open its socket
/// or hear what it broadcasts, and a name pointed at it (DNS rebinding) gets 403.
module Realtime.Browser.Tests.DevServerSecurityTests

open System
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Hosting.Server
open Microsoft.AspNetCore.Hosting.Server.Features
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Expecto
open Realtime
open Realtime.Browser.Tests.Infrastructure
open Realtime.TestSupport.SuiteTransport

/// Another site: a plain Kestrel app on 127.0.0.1 serving `html` at "/" (reached in the browser as
/// http://attacker.test:PORT, which Chromium resolves to 127.0.0.1, or http://127.0.0.1:PORT).
let private startForeignSite (html: string) : Task<WebApplication * int> =
    task {
        let builder = WebApplication.CreateBuilder([||])
        builder.WebHost.UseUrls("http://127.0.0.1:0") |> ignore
        useSuiteTransport builder.WebHost
        builder.Logging.ClearProviders() |> ignore
        let app = builder.Build()
        app.MapGet("/", Func<HttpContext, Task>(fun http -> http.Response.WriteAsync html)) |> ignore
        do! app.StartAsync()
        let url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>().Addresses |> Seq.head
        return app, Uri(url).Port
    }

/// A page script that opens each socket URL and records what happens in `window.events`.
let private probe (urls: string list) =
    let list = urls |> List.map (fun u -> $"'{u}'") |> String.concat ", "
    $"<!DOCTYPE html><html><body><p>another site</p><script>
window.events = [];
for (const url of [{list}]) {{
  const ws = new WebSocket(url);
  ws.onopen = () => window.events.push('open ' + url);
  ws.onmessage = e => window.events.push('message ' + e.data);
  ws.onerror = () => window.events.push('error ' + url);
  ws.onclose = e => window.events.push('close ' + e.code + ' ' + url);
}}
</script></body></html>"

let private events (p: BrowserPage) = p.Eval<string[]>("() => window.events")

let private countOf (prefix: string) (items: string[]) = items |> Array.filter (fun e -> e.StartsWith(prefix: string)) |> Array.length

[<Tests>]
let tests =
    testSequenced <| testList "Dev server in Chromium: closed to other sites" [

        browserTest "a page of another origin cannot open the dev server's socket and receives nothing it broadcasts; its own page can" (fun () ->
            task {
                let started = TaskCompletionSource<DevServerStartContext>(TaskCreationOptions.RunContinuationsAsynchronously)
                let plugin = RealtimePlugin(Name = "test", InjectWebSocket = true, ServerStart = Action<DevServerStartContext>(fun ctx -> started.TrySetResult ctx |> ignore))
                use! host = startDev (site [ "index.html", page "own" "<p>own</p>" ]) [ plugin ] false
                let! ctx = started.Task.WaitAsync(TimeSpan.FromSeconds 5.0)
                let targets = [ $"ws://127.0.0.1:{host.Port}{RealtimeDevServer.WebSocketPath}"; $"ws://localhost:{host.Port}{RealtimeDevServer.WebSocketPath}" ]
                let! foreignApp, foreignPort = startForeignSite (probe targets)
                try
                    let! own = openPage (host.Url + "/")
                    use _ = own
                    do! waitUntil "the dev server's own page connects" 10000 (fun () -> host.WebSockets.Count = 1)
                    for foreignUrl in [ $"http://attacker.test:{foreignPort}/"; $"http://127.0.0.1:{foreignPort}/" ] do
                        let! foreign = openPage foreignUrl
                        use _ = foreign
                        do! waitUntilAsync $"{foreignUrl}: both sockets open or end" 10000 (fun () -> task { let! e = events foreign in return countOf "close" e + countOf "open" e >= 2 })
                        Expect.equal (ctx.WebSockets.SendConsoleLog $"broadcast while {foreignUrl} is open") 1 "the broadcast is queued to the own page only"
                        Expect.equal (ctx.WebSockets.Send """{"type":"secret","changed":["/src/app.js"]}""") 1 "and so is a custom message"
                        do! own.WaitForLog $"broadcast while {foreignUrl} is open"
                        let! seen = events foreign
                        Expect.equal (countOf "open" seen) 0 $"{foreignUrl}: no socket opened: %A{seen}"
                        Expect.equal (countOf "message" seen) 0 $"{foreignUrl}: nothing received: %A{seen}"
                        Expect.equal (countOf "error" seen) 2 $"{foreignUrl}: both sockets failed: %A{seen}"
                        Expect.equal host.WebSockets.Count 1 "the dev server holds the own page's socket only"
                    let origins = host.Logs.Entries |> Seq.filter (fun e -> e.EventId = 108) |> Seq.map (fun e -> e.Message) |> List.ofSeq
                    Expect.exists origins (fun m -> m.Contains $"http://attacker.test:{foreignPort}") $"the refusal is logged with the Origin: {origins}"
                finally
                    foreignApp.StopAsync().Wait(TimeSpan.FromSeconds 10.0) |> ignore
                    (foreignApp :> IAsyncDisposable).DisposeAsync().AsTask().Wait(TimeSpan.FromSeconds 10.0) |> ignore
            })

        browserTest "a name pointed at the dev server (DNS rebinding) gets 403 for pages, files and the socket; localhost names are served" (fun () ->
            task {
                use! host = startDev (site [ "index.html", page "own" "<p id=\"own\">own page</p>"; "app.js", "export const secret = 42;" ]) [ RealtimePlugin(Name = "test", InjectWebSocket = true) ] false
                let! rebound = openPage $"http://attacker.test:{host.Port}/"
                use _ = rebound
                let! text = rebound.Eval<string>("() => document.body.innerText")
                Expect.stringContains text "Host not allowed" "the page is refused"
                let! status = rebound.Eval<int>("async () => (await fetch('/app.js')).status")
                Expect.equal status 403 "a file read from the rebound origin is refused"
                let! socket =
                    rebound.Eval<string>(
                        $"() => new Promise(resolve => {{ const ws = new WebSocket('ws://attacker.test:{host.Port}{RealtimeDevServer.WebSocketPath}'); ws.onopen = () => resolve('open'); ws.onclose = e => resolve('close ' + e.code); }})")
                Expect.equal socket "close 1006" "the socket fails"
                Expect.equal host.WebSockets.Count 0 "no socket"

                let! local = openPage $"http://localhost:{host.Port}/"
                use _ = local
                let! own = local.Page.InnerTextAsync "#own"
                Expect.equal own "own page" "localhost is served"
                do! waitUntil "the localhost page connects" 10000 (fun () -> host.WebSockets.Count = 1)
                host.WebSockets.SendConsoleLog "hello localhost" |> ignore
                do! local.WaitForLog "hello localhost"
            })
    ]

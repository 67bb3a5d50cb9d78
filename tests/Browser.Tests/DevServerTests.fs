/// The dev server's web-socket API in a real browser: the seed's examples as C#-style plugins.
module Realtime.Browser.Tests.DevServerTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Threading
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Expecto
open Realtime
open Realtime.Browser.Tests.Infrastructure

let private tag = "<script type=\"module\" src=\"/__realtime__/client.js\"></script>"

/// A plugin that injects the client and hands its start context to the test.
let private capturing (started: TaskCompletionSource<DevServerStartContext>) =
    RealtimePlugin(Name = "test", InjectWebSocket = true, ServerStart = Action<DevServerStartContext>(fun ctx -> started.TrySetResult ctx |> ignore))

let private contextSource () = TaskCompletionSource<DevServerStartContext>(TaskCreationOptions.RunContinuationsAsynchronously)

/// Waits until the dev server has `count` open sockets.
let private connected (host: DevHost) count =
    waitUntil $"{count} dev-server socket(s) (have {host.WebSockets.Count})" 10000 (fun () -> host.WebSockets.Count = count)

/// Installs `window.received` (every custom message) in the page.
let private listen (page: BrowserPage) =
    page.Run(clientImport + "async () => { window.received = []; (await client()).addMessageListener(m => window.received.push(m)); }")

let private receivedJson (page: BrowserPage) = page.Eval<string>("() => JSON.stringify(window.received)")

[<Tests>]
let tests =
    testSequenced <| testList "Dev server in Chromium" [

        browserTest "the client is injected before </body>, else before </head>, else at the end, and every page connects" (fun () ->
            task {
                let root =
                    site [ "body.html", page "body" "<p>body</p>"
                           "head.html", "<!DOCTYPE html><html><head><title>head</title></head><p>no body end</p>"
                           "bare.html", "<p>a fragment</p>"
                           "style.css", "body { margin: 0 } </body>"
                           "dir/index.html", page "dir" "<p>index</p>" ]
                let started = contextSource ()
                use! host = startDev root [ capturing started ] false
                let! body = http.GetStringAsync(host.Url + "/body.html")
                Expect.stringContains body (tag + "</body>") "before </body>"
                Expect.equal (body.IndexOf "__realtime__") (body.LastIndexOf "__realtime__") "injected once"
                let! head = http.GetStringAsync(host.Url + "/head.html")
                Expect.stringContains head (tag + "</head>") "before </head>"
                let! bare = http.GetStringAsync(host.Url + "/bare.html")
                Expect.equal bare ("<p>a fragment</p>" + tag) "at the end"
                let! css = http.GetStringAsync(host.Url + "/style.css")
                Expect.equal css "body { margin: 0 } </body>" "not into a stylesheet"
                let! index = http.GetStringAsync(host.Url + "/dir/")
                Expect.stringContains index tag "a folder's index.html"
                let! client = http.GetAsync(host.Url + RealtimeDevServer.ClientPath)
                Expect.equal (client.Content.Headers.ContentType.MediaType) "text/javascript" "the client is JavaScript"

                let pages = ResizeArray()
                for (name, count) in [ "body.html", 1; "head.html", 2; "bare.html", 3 ] do
                    let! p = openPage (host.Url + "/" + name)
                    pages.Add p
                    do! connected host count
                    let! state = p.Eval<int>(clientImport + "async () => { const c = await client(); await c.webSocketOpened; return c.webSocket.readyState; }")
                    Expect.equal state 1 $"{name}: the client's socket is open"
                for p in pages do do! p.CloseAsync()
                do! waitUntil "the sockets close with their pages" 10000 (fun () -> host.WebSockets.Count = 0)

                // Without a plugin that asks for it, nothing is injected.
                use! plain = startDev root [ RealtimePlugin(Name = "quiet") ] false
                let! untouched = http.GetStringAsync(plain.Url + "/body.html")
                Expect.equal untouched (page "body" "<p>body</p>") "no injection"
            })

        browserTest "sendConsoleLog: the text is logged in the page's console" (fun () ->
            task {
                let started = contextSource ()
                use! host = startDev (site [ "index.html", page "log" "<p>log</p>" ]) [ capturing started ] false
                let! ctx = started.Task.WaitAsync(TimeSpan.FromSeconds 5.0)
                let! p = openPage (host.Url + "/")
                use _ = p
                do! connected host 1
                Expect.equal (ctx.WebSockets.SendConsoleLog "Hello world! \"quoted\" ünïcode") 1 "queued to the one socket"
                do! p.WaitForLog "Hello world! \"quoted\" ünïcode"
            })

        browserTest "sendImport: a virtual module served by the plugin, with and without args, is called each time" (fun () ->
            task {
                let started = contextSource ()
                let served = ref 0
                let plugin =
                    RealtimePlugin(
                        Name = "my-plugin",
                        InjectWebSocket = true,
                        ServerStart = Action<DevServerStartContext>(fun ctx -> started.TrySetResult ctx |> ignore),
                        Serve =
                            Func<DevServerRequestContext, string>(fun ctx ->
                                if ctx.Path = "/foo.js" then
                                    Interlocked.Increment served |> ignore
                                    "export default (...args) => console.log('/foo.js called with ' + JSON.stringify(args));"
                                else null))
                use! host = startDev (site [ "index.html", page "import" "<p>import</p>" ]) [ plugin ] false
                let! ctx = started.Task.WaitAsync(TimeSpan.FromSeconds 5.0)
                let! p = openPage (host.Url + "/")
                use _ = p
                do! connected host 1
                ctx.WebSockets.SendImport "/foo.js" |> ignore
                do! p.WaitForLog "/foo.js called with []"
                ctx.WebSockets.SendImport("/foo.js", "a", "b", "c") |> ignore
                do! p.WaitForLog "/foo.js called with [\"a\",\"b\",\"c\"]"
                ctx.WebSockets.SendImport("/foo.js", 42, null, {| nested = [| 1; 2 |]; ok = true |}) |> ignore
                do! p.WaitForLog "/foo.js called with [42,null,{\"nested\":[1,2],\"ok\":true}]"
                Expect.equal served.Value 1 "the module was fetched once and its default export called each time"
            })

        browserTest "sendImport of data: URLs: with args, and the seed's window.location.reload()" (fun () ->
            task {
                let started = contextSource ()
                use! host = startDev (site [ "index.html", page "data" "<p>data</p>" ]) [ capturing started ] false
                let! ctx = started.Task.WaitAsync(TimeSpan.FromSeconds 5.0)
                let! p = openPage (host.Url + "/")
                use _ = p
                do! connected host 1
                ctx.WebSockets.SendImport("data:text/javascript,export default (a, b) => console.log('data url says ' + a + ' ' + b.x)", "hi", {| x = 7 |}) |> ignore
                do! p.WaitForLog "data url says hi 7"
                do! p.Run "() => { window.marker = 'before reload'; }"
                Expect.equal p.Loads.Value 1 "one load so far"
                ctx.WebSockets.SendImport "data:text/javascript,window.location.reload()" |> ignore
                do! waitUntil "the page reloads" 10000 (fun () -> p.Loads.Value = 2)
                do! waitUntilAsync "the marker is gone" 5000 (fun () -> task { let! m = p.Eval<string>("() => String(window.marker)") in return m = "undefined" })
                do! connected host 1
            })

        browserTest "custom messages: send reaches every page; each reply reaches the message event with its own socket, and only that socket gets the answer" (fun () ->
            task {
                let started = contextSource ()
                let events = ConcurrentQueue<string * RealtimeSocket>()
                let plugin =
                    RealtimePlugin(
                        Name = "my-plugin",
                        InjectWebSocket = true,
                        ServerStart =
                            Action<DevServerStartContext>(fun ctx ->
                                ctx.WebSockets.add_Message(fun e ->
                                    if e.Type = "hello" then
                                        let name = e.Data.GetProperty("name").GetString()
                                        events.Enqueue((name, e.WebSocket))
                                        e.Reply($"{{\"type\":\"answer\",\"to\":\"{name}\"}}") |> ignore)
                                started.TrySetResult ctx |> ignore))
                use! host = startDev (site [ "index.html", page "custom" "<p>custom</p>" ]) [ plugin ] false
                let! ctx = started.Task.WaitAsync(TimeSpan.FromSeconds 5.0)
                let! a = openPage (host.Url + "/?name=A")
                use _ = a
                do! connected host 1
                let! b = openPage (host.Url + "/?name=B")
                use _ = b
                do! connected host 2
                for p in [ a; b ] do
                    do! listen p
                    // The page answers an "x" message with a "hello" carrying its name.
                    do! p.Run(clientImport + "async () => { const c = await client(); c.addMessageListener(m => { if (m.type === 'x') c.sendMessage({ type: 'hello', name: new URLSearchParams(location.search).get('name') }); }); }")
                Expect.equal (ctx.WebSockets.Send """{ "type": "x", "n": 1 }""") 2 "queued to both pages"
                do! waitUntil "both pages answered" 10000 (fun () -> events.Count = 2)
                for p in [ a; b ] do
                    do! waitUntilAsync "the answer arrives" 10000 (fun () -> task { let! r = receivedJson p in return r.Contains "answer" })
                do! Task.Delay 300 // a wrongly routed answer would arrive by now
                let! receivedA = receivedJson a
                let! receivedB = receivedJson b
                Expect.equal receivedA """[{"type":"x","n":1},{"type":"answer","to":"A"}]""" "A: the broadcast and its own answer only"
                Expect.equal receivedB """[{"type":"x","n":1},{"type":"answer","to":"B"}]""" "B: the broadcast and its own answer only"
                let sockets = dict (List.ofSeq events)
                Expect.notEqual sockets["A"].Id sockets["B"].Id "two different sockets"
                Expect.sequenceEqual (host.WebSockets.Sockets |> Seq.map (fun s -> s.Id) |> Seq.sort) ([ sockets["A"].Id; sockets["B"].Id ] |> List.sort) "the manager's sockets"
                Expect.throwsT<ArgumentException> (fun () -> ctx.WebSockets.Send "not json" |> ignore) "Send checks its JSON"
                Expect.throwsT<ArgumentException> (fun () -> ctx.WebSockets.Send """{"no":"type"}""" |> ignore) "Send wants a type"
            })

        browserTest "request and response by id: sendMessageWaitForResponse resolves with the plugin's Respond, concurrent requests by their ids, and times out" (fun () ->
            task {
                let plugin =
                    RealtimePlugin(
                        Name = "math",
                        InjectWebSocket = true,
                        ServerStart =
                            Action<DevServerStartContext>(fun ctx ->
                                ctx.WebSockets.add_Message(fun e ->
                                    if e.Type = "add" && e.ExpectsResponse then
                                        let a = e.Data.GetProperty("a").GetInt32()
                                        let b = e.Data.GetProperty("b").GetInt32()
                                        // Answer out of order, so ids (not order) must match them up.
                                        Task.Delay((10 - a) * 20).ContinueWith(fun (_: Task) -> e.Respond({| sum = a + b |}) |> ignore) |> ignore)))
                use! host = startDev (site [ "index.html", page "rpc" "<p>rpc</p>" ]) [ plugin ] false
                let! p = openPage (host.Url + "/")
                use _ = p
                do! connected host 1
                let! sum = p.Eval<int>(clientImport + "async () => (await (await client()).sendMessageWaitForResponse({ type: 'add', a: 2, b: 3 })).sum")
                Expect.equal sum 5 "the response"
                let! sums = p.Eval<string>(clientImport + "async () => { const c = await client(); const r = await Promise.all([1, 2, 3, 4].map(a => c.sendMessageWaitForResponse({ type: 'add', a, b: 100 }))); return JSON.stringify(r.map(x => x.sum)); }")
                Expect.equal sums "[101,102,103,104]" "each request got its own response"
                let! timedOut = p.Eval<string>(clientImport + "async () => { const c = await client(); const t0 = performance.now(); try { await c.sendMessageWaitForResponse({ type: 'nobody-answers' }, { timeout: 300 }); return 'resolved'; } catch (e) { return Math.round(performance.now() - t0) + ' ' + e.message; } }")
                let elapsed = int (timedOut.Split(' ')[0])
                Expect.isTrue (elapsed >= 290 && elapsed < 3000) $"rejected after the timeout: {timedOut}"
                Expect.stringContains timedOut "no response to \"nobody-answers\"" "the error says what timed out"
            })

        browserTest "a message that is not JSON or has no type is logged and dropped; the socket goes on; errors in the page are logged in its console" (fun () ->
            task {
                let started = contextSource ()
                let seen = ConcurrentQueue<string>()
                let plugin =
                    RealtimePlugin(
                        Name = "strict",
                        InjectWebSocket = true,
                        ServerStart =
                            Action<DevServerStartContext>(fun ctx ->
                                ctx.WebSockets.add_Message(fun e ->
                                    seen.Enqueue e.Type
                                    if e.Type = "after" then
                                        // The seed's plain-text reply is not a dev-server message: the page logs it.
                                        e.WebSocket.Send "message response" |> ignore
                                    if e.Type = "throw" then failwith "handler failure")
                                started.TrySetResult ctx |> ignore))
                use! host = startDev (site [ "index.html", page "bad" "<p>bad</p>" ]) [ plugin ] false
                let! ctx = started.Task.WaitAsync(TimeSpan.FromSeconds 5.0)
                let! p = openPage (host.Url + "/")
                use _ = p
                do! connected host 1
                do! p.Run(clientImport + "async () => { const c = await client(); const ws = await c.webSocketOpened; ws.send('not json'); ws.send('{\"no\":\"type\"}'); ws.send('[1,2]'); ws.send('{\"type\":42}'); await c.sendMessage({ type: 'throw' }); await c.sendMessage({ type: 'after' }); }")
                do! waitUntil "the valid message after the bad ones" 10000 (fun () -> Seq.contains "after" seen)
                Expect.sequenceEqual seen [ "throw"; "after" ] "only the valid messages reach the event"
                let warnings = host.Logs.Entries |> Seq.filter (fun e -> e.EventId = 100) |> Seq.map (fun e -> e.Message) |> List.ofSeq
                Expect.hasLength warnings 4 $"one warning per dropped message: {warnings}"
                for code in [ "not-json"; "missing-type"; "not-an-object"; "type-not-string" ] do
                    Expect.exists warnings (fun w -> w.Contains $"({code})") $"logged with its code {code}"
                Expect.exists warnings (fun w -> w.Contains "not json") "the dropped text is shown"
                Expect.exists (host.Logs.Entries) (fun e -> e.EventId = 101 && e.Message.Contains "\"throw\"") "a failing handler is logged"
                Expect.equal host.WebSockets.Count 1 "the socket stays open"

                do! p.WaitForLog "not JSON: message response"
                ctx.WebSockets.SendImport "data:text/javascript,export default () => { throw new Error('boom in module') }" |> ignore
                do! p.WaitForLog "boom in module"
                ctx.WebSockets.SendImport "/missing-module.js" |> ignore
                do! p.WaitForLog "import of /missing-module.js failed"
                do! p.Run(clientImport + "async () => { (await client()).addMessageListener(m => { if (m.type === 'explode') throw new Error('listener exploded'); }); }")
                ctx.WebSockets.Send """{"type":"explode"}""" |> ignore
                do! p.WaitForLog "listener exploded"
                do! p.WaitForLog "a message listener failed on a \"explode\" message"
            })

        browserTest "live reload: editing a file the page uses reloads it once (debounced); a file it does not use does not" (fun () ->
            task {
                let root =
                    site [ "index.html", page "reload" "<p id=\"v\"></p><script type=\"module\" src=\"/app.js\"></script>"
                           "app.js", "document.getElementById('v').textContent = 'version 1';"
                           "unused.js", "// not loaded by the page" ]
                use! host = startDevOn 0 root [ RealtimePlugins.Watch(TimeSpan.FromMilliseconds 200.0) ] false ignore
                let! p = openPage (host.Url + "/")
                use _ = p
                do! connected host 1
                do! waitUntilAsync "version 1" 5000 (fun () -> task { let! t = p.Page.InnerTextAsync "#v" in return t = "version 1" })
                File.WriteAllText(Path.Combine(root, "unused.js"), "// changed, still not loaded")
                do! Task.Delay 800
                Expect.equal p.Loads.Value 1 "an unused file changed: no reload"
                for i in 1..5 do
                    File.WriteAllText(Path.Combine(root, "app.js"), $"document.getElementById('v').textContent = 'version 2'; // {i}")
                    do! Task.Delay 20
                do! waitUntil "the page reloads" 10000 (fun () -> p.Loads.Value >= 2)
                do! waitUntilAsync "version 2" 5000 (fun () -> task { let! t = p.Page.InnerTextAsync "#v" in return t = "version 2" })
                do! connected host 1
                do! Task.Delay 800
                Expect.equal p.Loads.Value 2 "five quick writes, one reload"
                File.WriteAllText(Path.Combine(root, "index.html"), page "reload" "<p id=\"v\">edited page</p>")
                do! waitUntil "the page reloads after its own HTML changed" 10000 (fun () -> p.Loads.Value = 3)
                do! waitUntilAsync "the edited page" 5000 (fun () -> task { let! t = p.Page.InnerTextAsync "#v" in return t = "edited page" })
            })

        browserTest "live reload: a changed stylesheet is swapped without reloading the page" (fun () ->
            task {
                let root =
                    site [ "index.html", "<!DOCTYPE html><html><head><link rel=\"stylesheet\" href=\"css/style.css\"></head><body><p>styled</p></body></html>"
                           "css/style.css", "body { color: rgb(255, 0, 0); }" ]
                use! host = startDev root [] true
                let! p = openPage (host.Url + "/")
                use _ = p
                do! connected host 1
                let color () = p.Eval<string>("() => getComputedStyle(document.body).color")
                do! waitUntilAsync "red" 5000 (fun () -> task { let! c = color () in return c = "rgb(255, 0, 0)" })
                do! p.Run "() => { window.marker = 'kept'; }"
                File.WriteAllText(Path.Combine(root, "css", "style.css"), "body { color: rgb(0, 0, 255); }")
                do! waitUntilAsync "blue" 10000 (fun () -> task { let! c = color () in return c = "rgb(0, 0, 255)" })
                let! marker = p.Eval<string>("() => window.marker")
                Expect.equal marker "kept" "no reload"
                Expect.equal p.Loads.Value 1 "one load"
                let! links = p.Eval<int>("() => document.querySelectorAll('link[rel=stylesheet]').length")
                Expect.equal links 1 "the old link was removed"
                do! p.WaitForLog "swapped stylesheet /css/style.css"
            })

        browserTest "the server stops and restarts on the same port: the page reconnects by itself, without a reload, and works again" (fun () ->
            task {
                let root = site [ "index.html", page "restart" "<p>restart</p>" ]
                let responder =
                    RealtimePlugin(
                        Name = "echo",
                        InjectWebSocket = true,
                        ServerStart = Action<DevServerStartContext>(fun ctx -> ctx.WebSockets.add_Message(fun e -> if e.ExpectsResponse then e.RespondJson e.Json |> ignore)))
                let! first = startDev root [ responder ] false
                let port = first.Port
                let! p = openPage (first.Url + "/")
                use _ = p
                do! connected first 1
                do! p.Run "() => { window.marker = 'same page'; }"
                do! first.StopAsync()
                do! p.WaitForLog "connection lost; reconnecting"
                do! Task.Delay 500 // a few reconnect attempts fail while nothing listens
                let started = contextSource ()
                let clock = Stopwatch.StartNew()
                use! second = startDevOn port root [ responder; capturing started ] false ignore
                do! connected second 1
                printfn "    reconnected %d ms after the restart" clock.ElapsedMilliseconds
                do! p.WaitForLog "reconnected to"
                let! marker = p.Eval<string>("() => window.marker")
                Expect.equal marker "same page" "no reload"
                Expect.equal p.Loads.Value 1 "one load"
                let! ctx = started.Task.WaitAsync(TimeSpan.FromSeconds 5.0)
                ctx.WebSockets.SendConsoleLog "hello after the restart" |> ignore
                do! p.WaitForLog "hello after the restart"
                let! echoed = p.Eval<string>(clientImport + "async () => JSON.stringify(await (await client()).sendMessageWaitForResponse({ type: 'ping', n: 1 }, { timeout: 5000 }))")
                Expect.stringContains echoed "\"type\":\"ping\"" "request and response work after the restart"
            })

        testCaseTask "plugin hooks: Serve with a content type, Transform of files and served content, ServerStart's services and logger, ServerStop, routes before files" (fun () ->
            task {
                let stopped = ref 0
                let services = ref null
                let plugins =
                    [ RealtimePlugin(
                          Name = "virtual",
                          Serve =
                              Func<DevServerRequestContext, string>(fun ctx ->
                                  match ctx.Path with
                                  | "/virtual.html" -> "<html><head></head><body>__VERSION__</body></html>"
                                  | "/data" ->
                                      ctx.ContentType <- "application/json"
                                      "{\"v\":\"__VERSION__\"}"
                                  | "/boom.js" -> failwith "serve failed"
                                  | _ -> null),
                          ServerStart = Action<DevServerStartContext>(fun ctx -> services.Value <- ctx.Services.GetService<IRealtimeServer>(); ctx.Logger.LogInformationMarker()),
                          ServerStop = Action<DevServerStartContext>(fun _ -> Interlocked.Increment stopped |> ignore))
                      RealtimePlugin(
                          Name = "version",
                          InjectWebSocket = true,
                          Transform = Func<DevServerTransformContext, string>(fun ctx -> if ctx.Body.Contains "__VERSION__" then ctx.Body.Replace("__VERSION__", "1.2.3") else null)) ]
                let root = site [ "index.html", page "hooks" "__VERSION__"; "app.js", "export const v = '__VERSION__';"; "api", "a file shadowed by a route"; "image.bin", "\u0001\u0002__VERSION__" ]
                let! host = startDevOn 0 root plugins false (fun app -> app.MapGet("/api", Func<string>(fun () -> "from the route")) |> ignore)
                let! index = http.GetStringAsync(host.Url + "/")
                Expect.stringContains index "<body>1.2.3" "a static HTML file is transformed"
                Expect.stringContains index tag "and gets the client"
                let! js = http.GetStringAsync(host.Url + "/app.js")
                Expect.equal js "export const v = '1.2.3';" "a static module is transformed"
                let! virtualPage = http.GetStringAsync(host.Url + "/virtual.html")
                Expect.equal virtualPage ("<html><head></head><body>1.2.3" + tag + "</body></html>") "served HTML is transformed and injected"
                let! data = http.GetAsync(host.Url + "/data")
                Expect.equal data.Content.Headers.ContentType.MediaType "application/json" "the content type the hook chose"
                let! dataText = data.Content.ReadAsStringAsync()
                Expect.equal dataText "{\"v\":\"1.2.3\"}" "transformed"
                let! binary = http.GetByteArrayAsync(host.Url + "/image.bin")
                Expect.equal binary [| 1uy; 2uy; yield! "__VERSION__"B |] "binary files are served untouched"
                let! api = http.GetStringAsync(host.Url + "/api")
                Expect.equal api "from the route" "routes come before files"
                let! failed = http.GetAsync(host.Url + "/boom.js")
                Expect.equal (int failed.StatusCode) 500 "a failing Serve is a 500"
                Expect.exists host.Logs.Entries (fun e -> e.EventId = 103 && e.Message.Contains "Serve") "and is logged"
                let! missing = http.GetAsync(host.Url + "/missing.js")
                Expect.equal (int missing.StatusCode) 404 "missing files fall through"
                let! outside = http.GetAsync(host.Url + "/..%2f..%2fetc/passwd")
                Expect.equal (int outside.StatusCode) 404 "nothing outside the root"
                Expect.isNotNull services.Value "ServerStart received the app's services"
                Expect.exists host.Logs.Entries (fun e -> e.Category = "Realtime.DevServer.virtual" && e.Message = "marker") "the plugin's logger"
                do! host.StopAsync()
                Expect.equal stopped.Value 1 "ServerStop ran once"
            })
    ]

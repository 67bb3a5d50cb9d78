/// The dev server is closed to other sites by default: Host and Origin checks (DNS rebinding,
/// cross-site WebSocket hijacking), no dot files, no symbolic links out of the folder, built-in
/// messages from the server's API only, and the allowedHosts option that opens it deliberately.
module Realtime.Server.Tests.DevServerSecurityTests

open System
open System.Collections.Concurrent
open System.IO
open System.Net.Sockets
open System.Net.WebSockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting.Server
open Microsoft.AspNetCore.Hosting.Server.Features
open Microsoft.AspNetCore.Http
open Microsoft.AspNetCore.Http.Features
open Expecto
open Realtime
open Realtime.DevServer
open Realtime.Server.Tests.TestHost

/// A response read off a raw connection: status code, headers and body.
type private RawResponse =
    { Status: int
      Head: string
      Body: string }

/// The body of a chunked message (RFC 9112 §7.1), or None while its last chunk has not arrived.
let private dechunk (body: string) : string option =
    let result = StringBuilder()
    let rec go (at: int) =
        let lineEnd = body.IndexOf("\r\n", at)
        if lineEnd < 0 then None
        else
            let sizeText = body.Substring(at, lineEnd - at).Split(';').[0].Trim()
            let size = Convert.ToInt32(sizeText, 16)
            if size = 0 then Some(result.ToString())
            elif body.Length < lineEnd + 2 + size + 2 then None
            else
                result.Append(body, lineEnd + 2, size) |> ignore
                go (lineEnd + 2 + size + 2)
    go 0

/// Sends `request` (a whole HTTP/1.1 request head) on a new TCP connection to 127.0.0.1:`port` and
/// reads the response head and its body, by Content-Length or chunked (bounded by 10 s). A 101 has no body.
let private rawRequest (port: int) (request: string) : Task<RawResponse> =
    task {
        use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
        use tcp = new TcpClient()
        do! tcp.ConnectAsync("127.0.0.1", port, cancel.Token)
        use stream = tcp.GetStream()
        let bytes = Encoding.ASCII.GetBytes request
        do! stream.WriteAsync(bytes, cancel.Token)
        let received = new MemoryStream()
        let buffer = Array.zeroCreate<byte> 8192
        let text () = Encoding.UTF8.GetString(received.ToArray())
        let mutable headEnd = -1
        let mutable finished = false
        let mutable body = None
        while not finished do
            let! n = stream.ReadAsync(buffer.AsMemory(), cancel.Token)
            if n = 0 then finished <- true
            else
                received.Write(buffer, 0, n)
                let all = text ()
                if headEnd < 0 then headEnd <- all.IndexOf "\r\n\r\n"
                if headEnd >= 0 then
                    let head = all.Substring(0, headEnd)
                    let rest = all.Substring(headEnd + 4)
                    if head.StartsWith "HTTP/1.1 101" then
                        body <- Some ""
                        finished <- true
                    elif head.Contains("Transfer-Encoding: chunked", StringComparison.OrdinalIgnoreCase) then
                        body <- dechunk rest
                        finished <- body.IsSome
                    else
                        let length =
                            head.Split("\r\n")
                            |> Array.tryPick (fun line ->
                                if line.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase) then Some(int (line.Substring(15).Trim())) else None)
                        match length with
                        | Some length when Encoding.UTF8.GetByteCount rest >= length ->
                            body <- Some rest
                            finished <- true
                        | None ->
                            body <- Some rest
                            finished <- true
                        | _ -> ()
        let all = text ()
        if headEnd < 0 then failtestf "no response head in %A" all
        let head = all.Substring(0, headEnd)
        return { Status = int (head.Split(' ')[1]); Head = head; Body = defaultArg body (all.Substring(headEnd + 4)) }
    }

let private get (port: int) (host: string) (path: string) =
    rawRequest port $"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"

/// An opening handshake to the dev server's socket with this Host and, when given, Origin.
let private upgrade (port: int) (host: string) (origin: string option) =
    let originLine = match origin with Some o -> $"Origin: {o}\r\n" | None -> ""
    rawRequest
        port
        $"GET {RealtimeDevServer.WebSocketPath} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{originLine}\r\n"

/// A temporary folder, deleted when disposed.
type private Folder(path: string) =
    member _.Path = path
    interface IDisposable with
        member _.Dispose() = try Directory.Delete(path, true) with _ -> ()

/// A new temporary folder with `files` (relative path, content).
let private site (files: (string * string) list) =
    let root = Path.Combine(Path.GetTempPath(), "realtime-devsec-" + Guid.NewGuid().ToString("N").Substring(0, 12))
    for path, content in files do
        let full = Path.Combine(root, path)
        Directory.CreateDirectory(Path.GetDirectoryName full) |> ignore
        File.WriteAllText(full, content)
    Directory.CreateDirectory root |> ignore
    new Folder(root)

/// A dev server for `root` on 127.0.0.1 (ephemeral port) with `plugins`, `allowedHosts`, and a
/// route /api; its listener accepts sockets directly (UseRealtimeDirectConnections) when `direct`.
let private startDevIn (direct: bool) (root: string) (plugins: RealtimePlugin list) (allowedHosts: string list option) : Task<RunningServer * RealtimeDevServer> =
    task {
        let mutable devServer = Unchecked.defaultof<RealtimeDevServer>
        let! server =
            startIn direct ignore (fun app ->
                devServer <- app.UseRealtimeDevServer(root, plugins, false, (match allowedHosts with Some hosts -> hosts :> seq<string> | None -> null))
                app.MapGet("/api", Func<string>(fun () -> "from the route")) |> ignore)
        return server, devServer
    }

let private startDev root plugins allowedHosts = startDevIn false root plugins allowedHosts

let private index = "<!DOCTYPE html><html><head></head><body>index</body></html>"

/// An IServer whose only feature is the listening addresses given.
type private FakeServer(addresses: string list) =
    let features = FeatureCollection()
    do
        let feature = { new IServerAddressesFeature with
                            member _.Addresses = ResizeArray addresses :> Collections.Generic.ICollection<string>
                            member _.PreferHostingUrls with get () = false and set _ = () }
        features.Set<IServerAddressesFeature> feature
    interface IServer with
        member _.Features = features :> IFeatureCollection
        member _.StartAsync(_, _) = Task.CompletedTask
        member _.StopAsync _ = Task.CompletedTask
        member _.Dispose() = ()

let private requestTo (scheme: string) (host: string) (origin: string option) =
    let http = DefaultHttpContext()
    http.Request.Scheme <- scheme
    http.Request.Host <- HostString.FromUriComponent host
    origin |> Option.iter (fun o -> http.Request.Headers.Origin <- Microsoft.Extensions.Primitives.StringValues o)
    http.Request

[<Tests>]
let tests =
    testList "Dev server: closed to other sites" [

        testCaseTask "a request whose Host is not a localhost name or a listening address gets 403 (DNS rebinding), for files, the client, routes and the socket" (fun () ->
            task {
                use root = site [ "index.html", index; "app.js", "export default 1;" ]
                let! server, devServer = startDev root.Path [ RealtimePlugin(Name = "inject", InjectWebSocket = true) ] None
                use _ = server
                let port = server.Port
                for host in [ $"127.0.0.1:{port}"; $"localhost:{port}"; "localhost"; "localhost:1"; $"app.localhost:{port}"; $"LocalHost:{port}"; $"127.0.0.2:{port}"; $"127.255.0.9"; $"[::1]:{port}"; "localhost." ] do
                    let! response = get port host "/app.js"
                    Expect.equal response.Status 200 $"Host {host} is served"
                    Expect.equal response.Body "export default 1;" $"Host {host}: the file"
                for host in [ "attacker.example"; $"attacker.example:{port}"; $"127.0.0.1.attacker.example:{port}"; $"localhost.attacker.example:{port}"; $"localhost-attacker.example:{port}"; $"10.1.2.3:{port}"; "" ] do
                    for path in [ "/"; "/app.js"; RealtimeDevServer.ClientPath; "/api"; "/missing" ] do
                        let! response = get port host path
                        Expect.equal response.Status 403 $"Host {host} {path}: refused"
                        Expect.stringContains response.Body "Host not allowed" $"Host {host} {path}: a short text body"
                        Expect.isFalse (response.Body.Contains "index" || response.Body.Contains "export default" || response.Body.Contains "from the route") "nothing of the site"
                    let! socket = upgrade port host (Some $"http://{host}")
                    Expect.equal socket.Status 403 $"Host {host}: no socket, even with the Origin that Host implies"
                    let! noOrigin = upgrade port host None
                    Expect.equal noOrigin.Status 403 $"Host {host}: no socket without an Origin either"
                Expect.equal devServer.WebSockets.Count 0 "no socket was opened"
            })

        testCaseTask "the socket opens only with the dev server's own Origin, or none (a non-browser client); any other Origin gets 403" (fun () ->
            task {
                let opened = ref 0
                let plugin = RealtimePlugin(Name = "count", ServerStart = Action<DevServerStartContext>(fun ctx -> ctx.WebSockets.add_Opened(fun _ -> Interlocked.Increment opened |> ignore)))
                use root = site [ "index.html", index ]
                let! server, devServer = startDev root.Path [ plugin ] None
                use _ = server
                let port = server.Port
                let accepted =
                    [ $"127.0.0.1:{port}", Some $"http://127.0.0.1:{port}"
                      $"127.0.0.1:{port}", None
                      $"localhost:{port}", Some $"http://localhost:{port}"
                      $"localhost:{port}", Some $"HTTP://LOCALHOST:{port}"
                      "localhost", Some "http://localhost"
                      "localhost", Some "http://localhost:80" ]
                for host, origin in accepted do
                    let! response = upgrade port host origin
                    Expect.equal response.Status 101 $"Host {host}, Origin {origin}: opened"
                do! Task.Delay 0
                let! allOpened = eventually (TimeSpan.FromSeconds 10.0) (fun () -> opened.Value = accepted.Length)
                Expect.isTrue allOpened $"each accepted handshake opened a socket ({opened.Value})"

                let refused =
                    [ $"127.0.0.1:{port}", $"http://attacker.example"
                      $"127.0.0.1:{port}", $"http://attacker.example:{port}"
                      $"127.0.0.1:{port}", $"http://localhost:{port}"
                      $"localhost:{port}", $"http://127.0.0.1:{port}"
                      $"127.0.0.1:{port}", $"http://127.0.0.1:{port + 1}"
                      $"127.0.0.1:{port}", $"http://127.0.0.1"
                      $"127.0.0.1:{port}", $"https://127.0.0.1:{port}"
                      $"127.0.0.1:{port}", "null"
                      $"127.0.0.1:{port}", "file://"
                      $"127.0.0.1:{port}", $"http://127.0.0.1:{port}/path"
                      $"127.0.0.1:{port}", $"http://user@127.0.0.1:{port}"
                      $"127.0.0.1:{port}", "" ]
                for host, origin in refused do
                    let! response = upgrade port host (Some origin)
                    Expect.equal response.Status 403 $"Host {host}, Origin {origin}: refused"
                    Expect.stringContains response.Body "Origin not allowed" "a short text body"
                let! twoOrigins =
                    rawRequest port $"GET {RealtimeDevServer.WebSocketPath} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://127.0.0.1:{port}\r\nOrigin: http://attacker.example\r\n\r\n"
                Expect.equal twoOrigins.Status 403 "two Origin headers: refused"
                do! Task.Delay 200
                Expect.equal opened.Value accepted.Length "no refused handshake opened a socket"
                Expect.isLessThanOrEqual devServer.WebSockets.Count accepted.Length "the manager holds the accepted sockets only"
            })

        testCaseTask "the Host and Origin checks hold for sockets accepted directly (UseRealtimeDirectConnections) too" (fun () ->
            task {
                use root = site [ "index.html", index ]
                let! server, devServer = startDevIn true root.Path [] None
                use _ = server
                let port = server.Port
                let! own = upgrade port $"127.0.0.1:{port}" (Some $"http://127.0.0.1:{port}")
                Expect.equal own.Status 101 "the dev server's own origin"
                let! foreignOrigin = upgrade port $"127.0.0.1:{port}" (Some "http://attacker.example")
                Expect.equal foreignOrigin.Status 403 "another Origin"
                let! foreignHost = upgrade port $"attacker.example:{port}" (Some $"http://attacker.example:{port}")
                Expect.equal foreignHost.Status 403 "another Host"
                let! closed = eventually (TimeSpan.FromSeconds 10.0) (fun () -> devServer.WebSockets.Count = 0)
                Expect.isTrue closed "the one accepted socket closes with its TCP connection; no other was opened"
            })

        testCaseTask "files and folders whose name starts with a dot are not served, at any depth (404)" (fun () ->
            task {
                use root =
                    site [ "index.html", index
                           ".env", "SECRET=1"
                           ".git/config", "[core] secret"
                           ".git/HEAD", "ref: refs/heads/main"
                           "sub/.hidden/x.js", "secret module"
                           "sub/.npmrc", "//registry/:_authToken=secret"
                           ".well-known/security.txt", "contact"
                           "a.b/file.txt", "dots inside names are fine"
                           "sub/x.min.js", "fine too" ]
                let! server, _ = startDev root.Path [] None
                use _ = server
                let host = $"127.0.0.1:{server.Port}"
                for path in [ "/.env"; "/.git/config"; "/.git/HEAD"; "/.git/"; "/.git"; "/sub/.hidden/x.js"; "/sub/.npmrc"; "/.well-known/security.txt"; "/%2egit/config"; "/sub/%2Ehidden/x.js"; "/sub/../.env" ] do
                    let! response = get server.Port host path
                    Expect.equal response.Status 404 $"{path}: not found"
                    Expect.isFalse (response.Body.Contains "secret" || response.Body.Contains "SECRET") $"{path}: nothing of the file"
                for path, content in [ "/a.b/file.txt", "dots inside names are fine"; "/sub/x.min.js", "fine too" ] do
                    let! response = get server.Port host path
                    Expect.equal response.Status 200 $"{path}: served"
                    Expect.equal response.Body content path
            })

        testCaseTask "symbolic links that lead out of the folder are not served (404); links that stay inside are" (fun () ->
            task {
                use outsideFolder = site [ "secret.txt", "outside secret"; "dir/inner.txt", "outside inner" ]
                use rootFolder = site [ "index.html", index; "real/page.txt", "inside page"; "real/deep/file.txt", "inside deep" ]
                let outside, root = outsideFolder.Path, rootFolder.Path
                let link (path: string) (target: string) = File.CreateSymbolicLink(Path.Combine(root, path), target) |> ignore
                let linkDir (path: string) (target: string) = Directory.CreateSymbolicLink(Path.Combine(root, path), target) |> ignore
                link "to-secret.txt" (Path.Combine(outside, "secret.txt"))
                link "relative-secret.txt" (Path.GetRelativePath(root, Path.Combine(outside, "secret.txt")))
                linkDir "outdir" (Path.Combine(outside, "dir"))
                linkDir "escape" outside
                link "chain.txt" (Path.Combine(root, "to-secret.txt"))                 // inside -> inside -> outside
                link "through-outdir.txt" (Path.Combine(root, "outdir", "inner.txt"))   // inside by its text, outside for real
                link "inside.txt" (Path.Combine(root, "real", "page.txt"))
                link "inside-relative.txt" "real/page.txt"
                linkDir "alias" (Path.Combine(root, "real"))
                linkDir "alias-relative" "real/deep"
                let! server, _ = startDev root [] None
                use _ = server
                let host = $"127.0.0.1:{server.Port}"
                for path in [ "/to-secret.txt"; "/relative-secret.txt"; "/outdir/inner.txt"; "/escape/secret.txt"; "/escape/dir/inner.txt"; "/chain.txt"; "/through-outdir.txt" ] do
                    let! response = get server.Port host path
                    Expect.equal response.Status 404 $"{path}: not found"
                    Expect.isFalse (response.Body.Contains "outside") $"{path}: nothing of the file"
                for path, content in [ "/inside.txt", "inside page"; "/inside-relative.txt", "inside page"; "/alias/page.txt", "inside page"; "/alias/deep/file.txt", "inside deep"; "/alias-relative/file.txt", "inside deep"; "/real/page.txt", "inside page" ] do
                    let! response = get server.Port host path
                    Expect.equal response.Status 200 $"{path}: served"
                    Expect.equal response.Body content path
            })

        testCaseTask "a symbolic link loop is not served and does not hang the server" (fun () ->
            task {
                use rootFolder = site [ "index.html", index ]
                let root = rootFolder.Path
                File.CreateSymbolicLink(Path.Combine(root, "a.txt"), Path.Combine(root, "b.txt")) |> ignore
                File.CreateSymbolicLink(Path.Combine(root, "b.txt"), Path.Combine(root, "a.txt")) |> ignore
                let! server, _ = startDev root [] None
                use _ = server
                let! response = get server.Port $"127.0.0.1:{server.Port}" "/a.txt"
                Expect.equal response.Status 404 "a loop is not found"
                let! page = get server.Port $"127.0.0.1:{server.Port}" "/"
                Expect.equal page.Status 200 "the server goes on"
            })

        testCaseTask "allowedHosts opens the dev server to the named hosts (any port, *.name for subdomains); \"*\" to any" (fun () ->
            task {
                use rootFolder = site [ "index.html", index ]
                let root = rootFolder.Path
                let! server, devServer = startDev root [] (Some [ "devbox.test"; "*.lan.test"; "192.168.7.20" ])
                use _ = server
                let port = server.Port
                Expect.sequenceEqual devServer.AllowedHosts [ "devbox.test"; "*.lan.test"; "192.168.7.20" ] "the option as given"
                for host in [ $"devbox.test:{port}"; "devbox.test:9999"; "DEVBOX.TEST"; $"a.lan.test:{port}"; $"b.c.lan.test:{port}"; $"192.168.7.20:{port}"; $"localhost:{port}" ] do
                    let! response = get port host "/"
                    Expect.equal response.Status 200 $"Host {host}: served"
                for host in [ $"lan.test:{port}"; $"xlan.test:{port}"; $"devbox.test.attacker.example:{port}"; $"attacker.example:{port}"; $"192.168.7.21:{port}" ] do
                    let! response = get port host "/"
                    Expect.equal response.Status 403 $"Host {host}: refused"
                let! socket = upgrade port $"devbox.test:{port}" (Some $"http://devbox.test:{port}")
                Expect.equal socket.Status 101 "a page of an allowed host opens the socket"
                let! foreign = upgrade port $"devbox.test:{port}" (Some "http://attacker.example")
                Expect.equal foreign.Status 403 "another site's page still cannot"

                let! any, _ = startDev root [] (Some [ "*" ])
                use _ = any
                let! opened = get any.Port "attacker.example" "/"
                Expect.equal opened.Status 200 "\"*\": any host"
                let! stillOrigin = upgrade any.Port $"127.0.0.1:{any.Port}" (Some "http://attacker.example")
                Expect.equal stillOrigin.Status 403 "\"*\" still needs the socket's Origin to be the dev server's own"

                for bad in [ [ "" ]; [ "http://devbox.test/" ]; [ "devbox.test:8000" ]; [ "a b" ]; [ null ] ] do
                    Expect.throwsT<ArgumentException>
                        (fun () -> (startDev root [] (Some bad)).GetAwaiter().GetResult() |> ignore)
                        $"refused at start: %A{bad}"
            })

        test "the Host rule: listening addresses with their ports, any IP address on a wildcard listener, never a name it does not know" {
            let access (addresses: string list) = DevServerAccess(FakeServer addresses, [||])
            let named = access [ "http://devbox.lan:8000"; "http://192.168.1.5:8001" ]
            Expect.isTrue (named.IsHostAllowed(requestTo "http" "devbox.lan:8000" None)) "a named listener, its port"
            Expect.isFalse (named.IsHostAllowed(requestTo "http" "devbox.lan:8001" None)) "a named listener, another port"
            Expect.isTrue (named.IsHostAllowed(requestTo "http" "192.168.1.5:8001" None)) "an address listener, its port"
            Expect.isFalse (named.IsHostAllowed(requestTo "http" "192.168.1.6:8001" None)) "another address"
            Expect.isFalse (named.IsHostAllowed(requestTo "http" "attacker.example:8000" None)) "a name it does not know"
            let wildcard = access [ "http://0.0.0.0:8000"; "http://[::]:8002"; "http://+:8003" ]
            for host in [ "192.168.1.5:8000"; "10.0.0.1:8002"; "[fe80::1]:8003"; "[2001:db8::1]:8000" ] do
                Expect.isTrue (wildcard.IsHostAllowed(requestTo "http" host None)) $"{host}: an address of a wildcard listener"
            for host in [ "192.168.1.5:8001"; "attacker.example:8000"; "192.168.1.5.attacker.example:8000"; "0x7f.example:8000" ] do
                Expect.isFalse (wildcard.IsHostAllowed(requestTo "http" host None)) $"{host}: refused"
            let ipv6 = DevServerAccess(FakeServer [], [| "fe80::1"; "[fd00::2]"; "DevBox.Lan." |])
            for host in [ "[fe80::1]:8000"; "[fd00::2]"; "devbox.lan:1234"; "devbox.lan." ] do
                Expect.isTrue (ipv6.IsHostAllowed(requestTo "http" host None)) $"{host}: an allowed host however it was written"
            Expect.isFalse (ipv6.IsHostAllowed(requestTo "http" "[fe80::2]:8000" None)) "another IPv6 address"
            let https = access [ "https://devbox.lan:443" ]
            Expect.isTrue (https.IsHostAllowed(requestTo "https" "devbox.lan" None)) "no port in Host: the scheme's default"
            Expect.isTrue (DevServerAccess.IsOriginAllowed(requestTo "https" "devbox.lan" (Some "https://devbox.lan"))) "the default port on both sides"
            Expect.isTrue (DevServerAccess.IsOriginAllowed(requestTo "https" "devbox.lan" (Some "https://devbox.lan:443"))) "the default port written out"
            Expect.isFalse (DevServerAccess.IsOriginAllowed(requestTo "https" "devbox.lan" (Some "http://devbox.lan"))) "another scheme"
            for name in [ "localhost"; "a.localhost"; "127.0.0.1"; "127.1.2.3"; "[::1]" ] do
                Expect.isTrue (DevServerAccess.IsLocalhostName name) name
            for name in [ "localhost.example"; "notlocalhost"; "128.0.0.1"; "[::2]"; "0.0.0.0"; "" ] do
                Expect.isFalse (DevServerAccess.IsLocalhostName name) name
        }

        testCaseTask "built-in messages come from the server's API only: a page cannot make a relaying plugin send them, and SendImport takes same-origin paths and data: URLs" (fun () ->
            task {
                let seen = ConcurrentQueue<string>()
                let mutable webSockets = Unchecked.defaultof<DevServerWebSockets>
                // A plugin that relays every message a page sends to every page (a chat between tabs).
                let relay =
                    RealtimePlugin(
                        Name = "relay",
                        ServerStart =
                            Action<DevServerStartContext>(fun ctx ->
                                webSockets <- ctx.WebSockets
                                ctx.WebSockets.add_Message(fun e ->
                                    seen.Enqueue e.Type
                                    ctx.WebSockets.Send e.Json |> ignore)))
                use root = site [ "index.html", index ]
                let! server, devServer = startDev root.Path [ relay ] None
                use _ = server
                use! sender = connect (server.WsUrl + RealtimeDevServer.WebSocketPath)
                use! other = connect (server.WsUrl + RealtimeDevServer.WebSocketPath)
                let! both = eventually (TimeSpan.FromSeconds 10.0) (fun () -> devServer.WebSockets.Count = 2)
                Expect.isTrue both "two sockets"
                for forged in
                    [ """{"type":"import","data":{"importPath":"https://attacker.example/x.js","args":[]}}"""
                      """{"type":"import","data":{"importPath":"/local.js","args":[]}}"""
                      """{"type":"console-log","data":{"text":"forged"}}"""
                      """{"type":"message-response","id":1,"response":"forged"}""" ] do
                    do! sendText sender forged
                do! sendText sender """{"type":"chat","text":"relayed"}"""
                let! first = receiveText other
                Expect.equal first """{"type":"chat","text":"relayed"}""" "the other page gets the custom message, and none of the forged built-in ones before it"
                Expect.sequenceEqual seen [ "chat" ] "the Message event never sees a built-in type"

                for builtIn in [ """{"type":"import","data":{"importPath":"/x.js"}}"""; """{"type":"console-log","data":{"text":"x"}}"""; """{"type":"message-response","id":1,"response":1}""" ] do
                    Expect.throwsT<ArgumentException> (fun () -> webSockets.Send builtIn |> ignore) $"Send refuses {builtIn}"
                    Expect.throwsT<ArgumentException> (fun () -> webSockets.SendTo(webSockets.Sockets[0], builtIn) |> ignore) $"SendTo refuses {builtIn}"

                for path in [ "//attacker.example/x.js"; "/\\attacker.example/x.js"; "/\t/attacker.example/x.js"; "https://attacker.example/x.js"; "http://127.0.0.1/x.js"; "javascript:alert(1)"; "x.js"; "../x.js"; "" ] do
                    let e = Expect.throwsC (fun () -> webSockets.SendImport path |> ignore) id
                    Expect.isTrue (e :? ArgumentException) $"SendImport refuses {path}: {e.GetType().Name}"
                    Expect.stringContains e.Message "same-origin path" "the message says what is accepted"
                    Expect.throwsT<ArgumentException> (fun () -> webSockets.SendImportTo(webSockets.Sockets[0], path) |> ignore) $"SendImportTo refuses {path}"
                Expect.equal (webSockets.SendImport("/module.js", 1)) 2 "a same-origin path goes to both pages"
                let! imported = receiveText other
                Expect.equal imported """{"type":"import","data":{"importPath":"/module.js","args":[1]}}""" "the import the server's API sent"
                Expect.equal (webSockets.SendImport "data:text/javascript,export default () => 1") 2 "a data: URL goes too"
                let! dataImport = receiveText other
                Expect.stringContains dataImport "data:text/javascript" "the data: URL import"
                do! sender.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
                do! other.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None)
            })
    ]
    |> testSequenced

/// The channels browser client (clients/channels) in Chromium against a scripted server: connection
/// states, the delivery rule, reconnect with backoff and recovery from positions, publishes retried
/// with their key, the offline queue's bounds, not-recovered, presence and requests; and the package.
module Realtime.Browser.Tests.ChannelsClientTests

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Text.RegularExpressions
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Expecto
open Realtime.Browser.Tests.Infrastructure
open Realtime.Browser.Tests.ChannelsScriptedServer

/// Connects a client in the page (window.client) with one channel (window.room) and records every
/// event of both in window.events ({ kind, ...detail }).
let private setUp (p: BrowserPage) (socketUrl: string) (options: string) (channel: string) (presence: bool) =
    p.Run(
        $$"""async () => {
               const m = await import('/_realtime/channels.js');
               window.channels = m;
               const events = window.events = [];
               const client = window.client = m.connect({{jsonString socketUrl}}, {{options}});
               for (const kind of ['connecting', 'connected', 'disconnected', 'closed', 'error'])
                 client.on(kind, e => events.push({ kind, ...e, code: e.code, message: e.message }));
               const room = window.room = client.channel({{jsonString channel}}, { presence: {{(if presence then "true" else "false")}} });
               for (const kind of ['message', 'subscribed', 'recovered', 'not-recovered', 'gap', 'join', 'leave', 'unsubscribed', 'error'])
                 room.on(kind, e => events.push({ kind, ...e }));
             }""")

/// The kinds of the recorded events, in order.
let private kinds (p: BrowserPage) = p.Eval<string[]> "() => window.events.map(e => e.kind)"

/// The delivered messages as "epoch:offset", in order.
let private delivered (p: BrowserPage) =
    p.Eval<string[]> "() => window.events.filter(e => e.kind === 'message').map(e => e.data.epoch + ':' + e.data.n + '@' + e.position.epoch + ':' + e.position.offset)"

/// "e:n@e:n" for each (epoch, offset): a message whose data and position agree.
let private expected (list: (string * int) list) = list |> List.map (fun (e, n) -> $"{e}:{n}@{e}:{n}") |> Array.ofList

let private waitForDelivered (p: BrowserPage) (count: int) =
    waitUntilAsync $"{count} messages delivered" 10000 (fun () -> task { let! d = delivered p in return d.Length >= count })

let private waitForKind (p: BrowserPage) (kind: string) (count: int) =
    waitUntilAsync $"{count} \"{kind}\" event(s)" 10000 (fun () -> task { let! k = kinds p in return (k |> Array.filter ((=) kind)).Length >= count })

/// Starts `subscribe()` in the page (its outcome lands in window.subscribeResult).
let private subscribe (p: BrowserPage) =
    p.Run "() => { window.room.subscribe().then(r => window.subscribeResult = r, e => window.subscribeResult = { error: e.code }); }"

/// Starts a publish in the page; its outcome lands in window.outcomes[name] ("ack e:n" or "rejected code: message").
let private publish (p: BrowserPage) (name: string) (data: string) =
    p.Run(
        $$"""() => {
               window.outcomes ??= {};
               window.outcomes[{{jsonString name}}] = 'pending';
               window.room.publish({{data}}).then(
                 position => window.outcomes[{{jsonString name}}] = 'ack ' + position.epoch + ':' + position.offset,
                 error => window.outcomes[{{jsonString name}}] = 'rejected ' + error.code + ': ' + error.message);
             }""")

let private outcome (p: BrowserPage) (name: string) =
    p.Eval<string>($"() => (window.outcomes ?? {{}})[{jsonString name}] ?? 'none'")

let private waitForOutcome (p: BrowserPage) (name: string) (prefix: string) =
    waitUntilAsync $"publish {name} to end with \"{prefix}\"" 10000 (fun () -> task { let! o = outcome p name in return o.StartsWith prefix })

[<Tests>]
let tests =
    testSequenced <| testList "Channels client" [

        browserTest "connect asks for realtime.channels.v1.json; states: connecting, then connected with the welcome's client id; close() ends in closed without reconnecting" (fun () ->
            task {
                use! server = startScripted ()
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{ minReconnectDelay: 10, maxReconnectDelay: 20 }" "room" false
                let! connection = server.WaitForConnection 1
                Expect.equal connection.Requested [ "realtime.channels.v1.json" ] "the one subprotocol offered"
                do! waitForKind p "connected" 1
                let! clientId = p.Eval<string> "() => window.client.clientId"
                Expect.equal clientId "c1" "the client id from the welcome"
                let! state = p.Eval<string> "() => window.client.state"
                Expect.equal state "connected" "the state"
                do! p.Run "() => window.client.close()"
                do! waitForKind p "closed" 1
                do! waitUntil "the server sees the connection end" 10000 (fun () -> connection.Closed)
                // With reconnect delays of at most 20 ms, a reconnect would come well within this.
                do! Task.Delay 500
                Expect.equal server.Connections.Length 1 "no reconnect after close()"
                let! k = kinds p
                Expect.equal k [| "connecting"; "connected"; "closed" |] "the states in order"
            })

        browserTest "delivery rule: offset = position + 1 is delivered, duplicates and older offsets are dropped, a gap subscribes again with since = the position and the recovered publications arrive once, in order" (fun () ->
            task {
                use! server = startScripted ()
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{}" "room" false
                do! subscribe p
                let! c = server.WaitForConnection 1
                let! first = c.WaitFor "subscribe"
                Expect.equal (sinceOf first) "none" "a first subscribe has no since"
                do! c.Send [ subscribed first "e1" 10 "fresh"; pub "room" "e1" 11; pub "room" "e1" 11; pub "room" "e1" 12; pub "room" "e1" 10; pub "room" "e1" 14 ]
                let! again = c.WaitFor("subscribe", 1)
                Expect.equal (sinceOf again) "e1:12" "the gap (14 after 12) subscribes again from the last delivered position"
                // The server recovers 13 and 14 before answering, then 15 comes live.
                do! c.Send [ pub "room" "e1" 13; pub "room" "e1" 14; subscribed again "e1" 14 "recovered"; pub "room" "e1" 15; pub "room" "e1" 15 ]
                do! waitForDelivered p 5
                do! Task.Delay 200
                let! d = delivered p
                Expect.equal d (expected [ "e1", 11; "e1", 12; "e1", 13; "e1", 14; "e1", 15 ]) "each publication once, in order"
                let! k = kinds p
                let relevant = k |> Array.filter (fun kind -> kind <> "connecting" && kind <> "connected")
                Expect.equal relevant [| "subscribed"; "message"; "message"; "gap"; "message"; "message"; "recovered"; "subscribed"; "message" |] "gap, then the recovery"
                let! count = p.Eval<int> "() => window.events.find(e => e.kind === 'recovered').count"
                Expect.equal count 2 "two publications recovered"
                let! position = p.Eval<string> "() => window.room.position.epoch + ':' + window.room.position.offset"
                Expect.equal position "e1:15" "the channel's position"
            })

        browserTest "after the server drops the connection the client reconnects with backoff and subscribes again from its position: what it missed arrives once, in order, then 'recovered'" (fun () ->
            task {
                use! server = startScripted ()
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{ minReconnectDelay: 50, maxReconnectDelay: 400 }" "room" false
                do! subscribe p
                let! c1 = server.WaitForConnection 1
                let! s1 = c1.WaitFor "subscribe"
                do! c1.Send [ subscribed s1 "e1" 0 "fresh"; pub "room" "e1" 1; pub "room" "e1" 2 ]
                do! waitForDelivered p 2

                // Down for a while: each attempt is refused, and each delay is random up to a bound
                // that doubles from minReconnectDelay to maxReconnectDelay.
                server.Refuse <- true
                c1.Abort()
                do! waitUntil "five refused attempts" 20000 (fun () -> server.Refused.Length >= 5)
                server.Refuse <- false
                let! c2 = server.WaitForConnection(2, 10000)
                let! s2 = c2.WaitFor "subscribe"
                Expect.equal (sinceOf s2) "e1:2" "subscribes again from the last delivered position"
                do! c2.Send [ pub "room" "e1" 2; pub "room" "e1" 3; pub "room" "e1" 4; subscribed s2 "e1" 4 "recovered"; pub "room" "e1" 5 ]
                do! waitForDelivered p 5
                let! d = delivered p
                Expect.equal d (expected [ for n in 1..5 -> "e1", n ]) "every publication once, in order"
                let! count = p.Eval<int> "() => window.events.find(e => e.kind === 'recovered').count"
                Expect.equal count 2 "3 and 4 recovered"

                let! delays = p.Eval<float[]> "() => window.events.filter(e => e.kind === 'disconnected').map(e => e.retryIn)"
                let! attempts = p.Eval<int[]> "() => window.events.filter(e => e.kind === 'connecting').map(e => e.attempt)"
                Expect.isGreaterThanOrEqual delays.Length 6 "a disconnected event for the drop and each refused attempt"
                for i in 0 .. delays.Length - 1 do
                    let bound = min 400.0 (50.0 * 2.0 ** float i)
                    Expect.isTrue (delays[i] >= 0.0 && delays[i] <= bound) $"delay {i} ({delays[i]} ms) is within 0 .. {bound} ms"
                Expect.equal (Array.distinct delays).Length delays.Length "each delay is drawn at random (full jitter)"
                Expect.equal attempts[0 .. delays.Length] [| 0 .. delays.Length |] "the attempt count grows by one per failure"
                let! reasons = p.Eval<string[]> "() => window.events.filter(e => e.kind === 'disconnected').map(e => e.reason)"
                Expect.equal reasons[1] "could not connect" "a refused attempt says so"
            })

        browserTest "a paged recovery (an answer that the recovered publications do not reach) asks again from where the client is; the app is told once, when the channel is live again" (fun () ->
            task {
                use! server = startScripted ()
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{ minReconnectDelay: 50, maxReconnectDelay: 100 }" "room" false
                do! subscribe p
                let! c1 = server.WaitForConnection 1
                let! s1 = c1.WaitFor "subscribe"
                do! c1.Send [ subscribed s1 "e1" 0 "fresh"; pub "room" "e1" 1; pub "room" "e1" 2 ]
                do! waitForDelivered p 2
                c1.Abort()
                let! c2 = server.WaitForConnection(2, 10000)
                let! s2 = c2.WaitFor "subscribe"
                Expect.equal (sinceOf s2) "e1:2" "from the position"
                do! c2.Send [ pub "room" "e1" 3; pub "room" "e1" 4; subscribed s2 "e1" 6 "recovered" ]
                let! s3 = c2.WaitFor("subscribe", 1)
                Expect.equal (sinceOf s3) "e1:4" "asks again from where it is"
                do! c2.Send [ pub "room" "e1" 5; pub "room" "e1" 6; subscribed s3 "e1" 6 "recovered"; pub "room" "e1" 7 ]
                do! waitForDelivered p 7
                let! d = delivered p
                Expect.equal d (expected [ for n in 1..7 -> "e1", n ]) "every publication once, in order"
                let! k = kinds p
                let relevant = k |> Array.filter (fun kind -> kind = "recovered" || kind = "subscribed" || kind = "not-recovered")
                Expect.equal relevant [| "subscribed"; "recovered"; "subscribed" |] "one recovery, told once"
                let! told = p.Eval<string> "() => { const e = window.events.find(e => e.kind === 'recovered'); return e.since.offset + ' -> ' + e.position.offset + ', ' + e.count; }"
                Expect.equal told "2 -> 6, 4" "from where it started, with all it recovered"
            })

        browserTest "a publish whose ack the connection lost is sent again after reconnecting with the same key, before publishes made while disconnected; each promise resolves once, with its ack; a request whose answer was lost rejects with connection-lost" (fun () ->
            task {
                use! server = startScripted ()
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{ minReconnectDelay: 50, maxReconnectDelay: 100 }" "room" false
                do! waitForKind p "connected" 1
                let! c1 = server.WaitForConnection 1
                do! publish p "first" """{ "text": "once" }"""
                let! sent = c1.WaitFor "publish"
                let key = sent.GetProperty("key").GetString()
                Expect.isGreaterThanOrEqual key.Length 16 "a random key"
                // A request in flight too: it may have run, so it is not sent again but rejected.
                do! p.Run "() => { window.requestOutcome = 'pending'; window.client.request('charge', { amount: 1 }).then(() => window.requestOutcome = 'answered', e => window.requestOutcome = e.code + ': ' + e.message); }"
                let! _ = c1.WaitFor "request"
                server.Refuse <- true
                c1.Abort()
                do! waitForKind p "disconnected" 1
                do! waitUntilAsync "the request is rejected" 10000 (fun () -> task { let! o = p.Eval<string> "() => window.requestOutcome" in return o <> "pending" })
                let! requestOutcome = p.Eval<string> "() => window.requestOutcome"
                Expect.equal requestOutcome "connection-lost: the connection closed before the answer to request \"charge\"" "a request whose answer was lost rejects"
                do! publish p "second" """{ "text": "while away" }"""
                let! waiting = outcome p "second"
                Expect.equal waiting "pending" "waits for the connection"
                server.Refuse <- false
                let! c2 = server.WaitForConnection(2, 10000)
                let! again = c2.WaitFor "publish"
                let! next = c2.WaitFor("publish", 1)
                Expect.equal (again.GetProperty("key").GetString()) key "the same key: the server applies it once"
                Expect.equal (again.GetProperty("data").GetRawText()) """{"text":"once"}""" "the same data"
                Expect.equal (next.GetProperty("data").GetRawText()) """{"text":"while away"}""" "then the one made while disconnected"
                Expect.notEqual (next.GetProperty("key").GetString()) key "a key per publish"
                do! c2.Send [ ack again "e1" 7; ack next "e1" 8 ]
                do! waitForOutcome p "first" "ack"
                do! waitForOutcome p "second" "ack"
                let! first = outcome p "first"
                let! second = outcome p "second"
                Expect.equal (first, second) ("ack e1:7", "ack e1:8") "each resolves with its ack's position"
                Expect.equal (c2.OfType "publish").Length 2 "nothing else sent again"
                Expect.isEmpty (c2.OfType "request") "the request is not sent again"
            })

        browserTest "offline queue: a publish that does not fit in maxQueueBytes rejects at once with queue-full, one older than maxQueueAge rejects with queue-expired, the rest is sent in order once connected" (fun () ->
            task {
                use! server = startScripted ()
                server.Refuse <- true
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{ minReconnectDelay: 50, maxReconnectDelay: 200, maxQueueBytes: 300, maxQueueAge: 1500 }" "room" false
                do! waitUntil "a refused attempt" 10000 (fun () -> server.Refused.Length >= 1)
                do! publish p "old" """{ "text": "too old by the time we connect" }"""
                do! publish p "big" $"""{{ "text": "{String('x', 300)}" }}"""
                do! waitForOutcome p "big" "rejected"
                let! big = outcome p "big"
                Expect.stringStarts big "rejected queue-full: publish to \"room\"" "too big for the queue, at once"
                Expect.stringContains big "maxQueueBytes 300" "the error names the bound"
                let! queued = p.Eval<int> "() => window.client.queuedBytes"
                Expect.isTrue (queued > 0 && queued <= 300) $"the small one waits ({queued} bytes)"
                do! waitForOutcome p "old" "rejected"
                let! old = outcome p "old"
                Expect.stringStarts old "rejected queue-expired: publish to \"room\" waited" "expired after maxQueueAge"
                Expect.stringContains old "(maxQueueAge 1500 ms)" "the error names the bound"
                do! publish p "fresh" """{ "text": "fresh" }"""
                server.Refuse <- false
                let! c = server.WaitForConnection(1, 10000)
                let! sent = c.WaitFor "publish"
                Expect.equal (sent.GetProperty("data").GetRawText()) """{"text":"fresh"}""" "only the fresh one is sent"
                do! c.Send [ ack sent "e1" 1 ]
                do! waitForOutcome p "fresh" "ack"
                do! Task.Delay 200
                Expect.equal (c.OfType "publish").Length 1 "the rejected ones are not sent"
            })

        browserTest "not-recovered: a new epoch (history lost) or a trimmed history is told to the app before the publications still held are delivered; a live publication of another epoch subscribes again" (fun () ->
            task {
                use! server = startScripted ()
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{ minReconnectDelay: 50, maxReconnectDelay: 100 }" "room" false
                do! subscribe p
                let! c1 = server.WaitForConnection 1
                let! s1 = c1.WaitFor "subscribe"
                do! c1.Send [ subscribed s1 "e1" 0 "fresh"; pub "room" "e1" 1; pub "room" "e1" 2 ]
                do! waitForDelivered p 2
                c1.Abort()
                let! c2 = server.WaitForConnection(2, 10000)
                let! s2 = c2.WaitFor "subscribe"
                Expect.equal (sinceOf s2) "e1:2" "from the position"
                // The server restarted with its history in memory: a new epoch, two publications since.
                do! c2.Send [ pub "room" "e2" 1; pub "room" "e2" 2; subscribed s2 "e2" 2 "not-recovered"; pub "room" "e2" 3 ]
                do! waitForDelivered p 5
                // A live publication of yet another epoch: subscribe again; the history was trimmed too.
                do! c2.Send [ pub "room" "e3" 5 ]
                let! s3 = c2.WaitFor("subscribe", 1)
                Expect.equal (sinceOf s3) "e2:3" "from the position in the old epoch"
                do! c2.Send [ pub "room" "e3" 4; pub "room" "e3" 5; subscribed s3 "e3" 5 "not-recovered" ]
                do! waitForDelivered p 7
                let! d = delivered p
                Expect.equal d (expected [ "e1", 1; "e1", 2; "e2", 1; "e2", 2; "e2", 3; "e3", 4; "e3", 5 ]) "what was held, in order"
                let! k = kinds p
                let relevant = k |> Array.filter (fun kind -> kind = "message" || kind = "not-recovered")
                Expect.equal relevant [| "message"; "message"; "not-recovered"; "message"; "message"; "message"; "not-recovered"; "message"; "message" |] "told before what follows"
                let! told = p.Eval<string[]> "() => window.events.filter(e => e.kind === 'not-recovered').map(e => e.since.epoch + ':' + e.since.offset + ' -> ' + e.position.epoch + ':' + e.position.offset)"
                Expect.equal told [| "e1:2 -> e2:2"; "e2:3 -> e3:5" |] "from where, to where"
            })

        browserTest "acks resolve publishes with their position, errors reject them with the server's code; a refused subscribe rejects; requests, presence, join and leave" (fun () ->
            task {
                use! server = startScripted ()
                server.Respond <-
                    fun connection message ->
                        match message.GetProperty("type").GetString() with
                        | "publish" when message.GetProperty("data").GetProperty("text").GetString() = "no" ->
                            [ error message "forbidden" "not allowed to publish to room" ]
                        | "publish" -> [ ack message "e1" 1 ]
                        | "subscribe" when message.GetProperty("channel").GetString() = "secret" ->
                            [ error message "forbidden" "not allowed to subscribe to secret" ]
                        | "subscribe" ->
                            [ subscribed message "e1" 0 "fresh"
                              $"""{{"type":"join","channel":"room","member":{{"client":"c9","info":{{"name":"bob"}}}}}}"""
                              $"""{{"type":"leave","channel":"room","member":{{"client":"c9","info":{{"name":"bob"}}}}}}""" ]
                        | "presence" ->
                            [ $"""{{"type":"presence","id":{message.GetProperty("id").GetUInt32()},"channel":"room","members":[{{"client":"{connection.ClientId}","info":{{"name":"ann"}}}}]}}""" ]
                        | "request" ->
                            [ $"""{{"type":"response","id":{message.GetProperty("id").GetUInt32()},"data":{{"method":{jsonString (message.GetProperty("method").GetString())},"echo":{message.GetProperty("data").GetRawText()}}}}}""" ]
                        | _ -> []
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{}" "room" true
                do! subscribe p
                let! c = server.WaitForConnection 1
                let! s = c.WaitFor "subscribe"
                Expect.isTrue (s.GetProperty("presence").GetBoolean()) "asks for join and leave events"
                do! waitForKind p "leave" 1
                let! members = p.Eval<string> "() => JSON.stringify(window.events.filter(e => e.kind === 'join' || e.kind === 'leave').map(e => [e.kind, e.client, e.info.name]))"
                Expect.equal members """[["join","c9","bob"],["leave","c9","bob"]]""" "join and leave with the member's info"
                do! publish p "yes" """{ "text": "yes" }"""
                do! publish p "no" """{ "text": "no" }"""
                do! waitForOutcome p "yes" "ack"
                do! waitForOutcome p "no" "rejected"
                let! no = outcome p "no"
                Expect.equal no "rejected forbidden: not allowed to publish to room" "the server's code and message"
                let! presence = p.Eval<string> "async () => JSON.stringify(await window.room.presence())"
                Expect.equal presence """[{"client":"c1","info":{"name":"ann"}}]""" "the members"
                let! response = p.Eval<string> "async () => JSON.stringify(await window.client.request('whoami', { a: [1, 2] }))"
                Expect.equal response """{"method":"whoami","echo":{"a":[1,2]}}""" "the response's data"
                let! refused = p.Eval<string> "() => window.client.channel('secret').subscribe().then(() => 'subscribed', e => e.name + ' ' + e.code + ': ' + e.message)"
                Expect.equal refused "ChannelsError forbidden: not allowed to subscribe to secret" "a refused subscribe rejects"
                let! secretState = p.Eval<string> "() => window.client.channel('secret').state"
                Expect.equal secretState "unsubscribed" "and is not retried"
            })

        browserTest "the browser's online event reconnects at once instead of waiting out the backoff delay" (fun () ->
            task {
                use! server = startScripted ()
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{ minReconnectDelay: 30000, maxReconnectDelay: 30000 }" "room" false
                do! subscribe p
                let! c1 = server.WaitForConnection 1
                let! s1 = c1.WaitFor "subscribe"
                do! c1.Send [ subscribed s1 "e1" 3 "fresh" ]
                // The jitter pinned near its bound: the next attempt would be about 30 s away.
                do! p.Run "() => { Math.random = () => 0.999; }"
                c1.Abort()
                do! waitForKind p "disconnected" 1
                let! delay = p.Eval<float> "() => window.events.find(e => e.kind === 'disconnected').retryIn"
                Expect.isGreaterThan delay 29000.0 "a long delay ahead"
                let clock = Stopwatch.StartNew()
                do! p.Run "() => window.dispatchEvent(new Event('online'))"
                let! c2 = server.WaitForConnection(2, 10000)
                Expect.isLessThan clock.Elapsed.TotalSeconds 10.0 "reconnected long before the delay"
                let! s2 = c2.WaitFor "subscribe"
                Expect.equal (sinceOf s2) "e1:3" "and subscribed again from its position"
            })

        browserTest "a request not answered within requestTimeout rejects with timeout and a late answer is ignored; one waiting for a connection times out in the queue and is never sent" (fun () ->
            task {
                use! server = startScripted ()
                server.Respond <-
                    fun _ message ->
                        let isRequest = message.GetProperty("type").GetString() = "request"
                        match isRequest && message.GetProperty("method").GetString() = "fast" with
                        | true -> [ $"""{{"type":"response","id":{message.GetProperty("id").GetUInt32()},"data":"fast answer"}}""" ]
                        | _ -> []
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{ requestTimeout: 500, minReconnectDelay: 30000, maxReconnectDelay: 30000 }" "room" false
                do! waitForKind p "connected" 1
                let ask (name: string) (method: string) =
                    p.Run(
                        $$"""() => {
                               window.asked ??= {};
                               const started = performance.now();
                               window.asked[{{jsonString name}}] = 'pending';
                               window.client.request({{jsonString method}}).then(
                                 data => window.asked[{{jsonString name}}] = 'answered ' + data,
                                 error => window.asked[{{jsonString name}}] = 'rejected ' + error.code + ' after ' + Math.round(performance.now() - started) + ' ms: ' + error.message);
                             }""")
                let asked (name: string) = p.Eval<string>($"() => (window.asked ?? {{}})[{jsonString name}] ?? 'none'")
                let settled (name: string) =
                    waitUntilAsync $"request {name} settled" 10000 (fun () -> task { let! a = asked name in return a <> "pending" })
                do! ask "slow" "slow"
                let! c1 = server.WaitForConnection 1
                let! slow = c1.WaitFor "request"
                do! settled "slow"
                let! outcome = asked "slow"
                let m = Regex.Match(outcome, "^rejected timeout after (\\d+) ms: no answer to request \"slow\" within requestTimeout 500 ms; it was sent, so it may have run$")
                Expect.isTrue m.Success $"rejected with timeout: {outcome}"
                Expect.isGreaterThanOrEqual (int m.Groups[1].Value) 450 "not before the timeout"
                do! c1.Send [ $"""{{"type":"response","id":{slow.GetProperty("id").GetUInt32()},"data":"late answer"}}""" ]
                do! ask "fast" "fast"
                do! settled "fast"
                let! fast = asked "fast"
                Expect.equal fast "answered fast answer" "the next request gets its own answer"
                let! stillSlow = asked "slow"
                Expect.equal stillSlow outcome "the late answer changed nothing"

                do! p.Run "() => { Math.random = () => 0.999; }"
                c1.Abort()
                do! waitForKind p "disconnected" 1
                do! ask "queued" "queued"
                do! settled "queued"
                let! queued = asked "queued"
                Expect.stringStarts queued "rejected timeout after" "timed out while waiting for a connection"
                Expect.isFalse (queued.Contains "it was sent") "and says it was never sent"
                let! queuedBytes = p.Eval<int> "() => window.client.queuedBytes"
                Expect.equal queuedBytes 0 "and left the queue"
                do! p.Run "() => window.dispatchEvent(new Event('online'))"
                let! c2 = server.WaitForConnection 2
                do! waitForKind p "connected" 2
                do! ask "fast again" "fast"
                do! settled "fast again"
                let methods = c2.OfType "request" |> List.map (fun r -> r.GetProperty("method").GetString())
                Expect.equal methods [ "fast" ] "the timed-out request was never sent"
            })

        browserTest "the browser going offline closes the socket at once (disconnected, reason: the browser went offline) and coming back online reconnects at once and subscribes again from its position" (fun () ->
            task {
                use! server = startScripted ()
                let! p = openPage server.Url
                use _ = p
                do! setUp p server.SocketUrl "{ minReconnectDelay: 30000, maxReconnectDelay: 30000 }" "room" false
                do! subscribe p
                let! c1 = server.WaitForConnection 1
                let! s1 = c1.WaitFor "subscribe"
                do! c1.Send [ subscribed s1 "e1" 3 "fresh" ]
                do! waitUntilAsync "subscribed" 10000 (fun () -> task { let! k = kinds p in return Array.contains "subscribed" k })
                do! p.Run "() => { Math.random = () => 0.999; }"
                let clock = Stopwatch.StartNew()
                do! p.Page.Context.SetOfflineAsync true
                do! waitForKind p "disconnected" 1
                Expect.isLessThan clock.Elapsed.TotalSeconds 5.0 "disconnected at once"
                let! detail = p.Eval<string> "() => { const e = window.events.find(e => e.kind === 'disconnected'); return e.code + ' ' + e.reason + ' ' + window.client.state; }"
                Expect.equal detail "1006 the browser went offline disconnected" "the state says why"
                let online = Stopwatch.StartNew()
                do! p.Page.Context.SetOfflineAsync false
                let! c2 = server.WaitForConnection(2, 10000)
                Expect.isLessThan online.Elapsed.TotalSeconds 10.0 "reconnected at once, not after the 30 s delay"
                let! s2 = c2.WaitFor "subscribe"
                Expect.equal (sinceOf s2) "e1:3" "subscribed again from its position"
            })

        testCaseTask "Realtime.Channels serves the client at /_realtime/channels.js and /_realtime/channels.d.ts: the repository's files byte for byte, with an ETag that answers 304; a second MapRealtimeChannelsClient maps nothing more" <| fun () ->
            task {
                use! server = startScripted ()
                for (path, file, mediaType) in [ ChannelsClientEndpoint.ScriptPath, clientModulePath, "text/javascript"
                                                 ChannelsClientEndpoint.DeclarationsPath, clientDeclarationsPath, "text/plain" ] do
                    use! response = http.GetAsync(server.Url + path)
                    Expect.equal (int response.StatusCode) 200 $"{path} is served"
                    Expect.equal response.Content.Headers.ContentType.MediaType mediaType $"{path}'s type"
                    let! served = response.Content.ReadAsByteArrayAsync()
                    Expect.equal served (File.ReadAllBytes file) $"{path} is {file} as built (rebuild after changing it)"
                    let etag = response.Headers.ETag
                    Expect.isNotNull etag $"{path} has an ETag"
                    use request = new Net.Http.HttpRequestMessage(Net.Http.HttpMethod.Get, server.Url + path)
                    request.Headers.IfNoneMatch.Add etag
                    use! again = http.SendAsync request
                    Expect.equal (int again.StatusCode) 304 $"{path} unchanged: 304"
                let builder = Microsoft.AspNetCore.Builder.WebApplication.CreateBuilder([||])
                let app = builder.Build()
                let first = app.MapRealtimeChannelsClient()
                let second = app.MapRealtimeChannelsClient()
                Expect.isTrue (obj.ReferenceEquals(first, second)) "mapped once per route builder"
                do! app.DisposeAsync()
            }

        testCase "the npm package: npm pack --dry-run packs package.json, README.md, src/channels.js and src/channels.d.ts at the .NET packages' version" <| fun () ->
            let folder = Path.Combine(repositoryRoot, "clients", "channels")
            let info = ProcessStartInfo("npm", "pack --dry-run --json --ignore-scripts", WorkingDirectory = folder, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
            use npm = Process.Start info
            let output = npm.StandardOutput.ReadToEndAsync()
            let errors = npm.StandardError.ReadToEndAsync()
            Expect.isTrue (npm.WaitForExit 60000) "npm pack ends within 60 s"
            Expect.equal npm.ExitCode 0 $"npm pack succeeds: {errors.Result}"
            let packed = JsonDocument.Parse(output.Result).RootElement[0]
            let files = [ for f in packed.GetProperty("files").EnumerateArray() -> f.GetProperty("path").GetString() ] |> List.sort
            Expect.equal files [ "README.md"; "package.json"; "src/channels.d.ts"; "src/channels.js" ] "exactly the module, its types, the README and package.json"
            let props = File.ReadAllText(Path.Combine(repositoryRoot, "Directory.Build.props"))
            let version = Regex.Match(props, "<Version>([^<]+)</Version>").Groups[1].Value
            Expect.equal (packed.GetProperty("version").GetString()) version "the version of the .NET packages"
            let manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "package.json"))).RootElement
            Expect.equal (manifest.GetProperty("type").GetString()) "module" "an ES module package"
            Expect.equal (manifest.GetProperty("exports").GetProperty(".").GetProperty("types").GetString()) "./src/channels.d.ts" "types exported"

        browserTest "every export of channels.js is declared in channels.d.ts" (fun () ->
            task {
                use! server = startScripted ()
                let! p = openPage server.Url
                use _ = p
                let! exports = p.Eval<string[]> "async () => Object.keys(await import('/_realtime/channels.js'))"
                Expect.isNonEmpty exports "the module exports something"
                let declarations = File.ReadAllText clientDeclarationsPath
                for name in exports do
                    Expect.isTrue (Regex.IsMatch(declarations, $@"export declare (const|class|function) {name}\b")) $"{name} is declared"
            })
    ]

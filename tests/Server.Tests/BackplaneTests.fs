/// The publish seam that scale-out builds on: two real servers joined by an in-memory backplane.
module Realtime.Server.Tests.BackplaneTests

open System
open System.Collections.Concurrent
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Builder
open Microsoft.Extensions.DependencyInjection
open Realtime
open Realtime.Protocol
open Realtime.Server.Tests.TestHost

/// A backplane that hands every publish straight to the other servers of the same bus, but only for
/// topics they activated, and records what the server told it.
type InMemoryBackplane(bus: ConcurrentBag<InMemoryBackplane>) as this =
    let active = ConcurrentDictionary<string, bool>()
    let log = ConcurrentQueue<string>()
    let mutable receiver: IRealtimeBackplaneReceiver = Unchecked.defaultof<_>
    do bus.Add this

    /// What the server called, in order ("publish t", "activate t", "deactivate t").
    member _.Log = log |> Seq.toList

    /// Topics this server currently wants from the others.
    member _.Active = active.Keys |> Seq.sort |> Seq.toList

    /// Delivers to this server if it has interest in the topic.
    member _.Receive(topic: string, kind: MessageKind, payload: byte[], compress: bool) =
        if active.ContainsKey topic then receiver.DeliverLocally(topic, kind, ReadOnlySpan payload, compress) |> ignore

    interface IRealtimeBackplane with
        member _.Start(r) = receiver <- r
        member _.Publish(topic, kind, payload, compress, _) =
            log.Enqueue $"publish {topic}"
            let copy = payload.ToArray()
            for other in bus do
                if not (obj.ReferenceEquals(other, this)) then other.Receive(topic, kind, copy, compress)
        member _.TopicActivated(topic) =
            log.Enqueue $"activate {topic}"
            active[topic] <- true
        member _.TopicDeactivated(topic) =
            log.Enqueue $"deactivate {topic}"
            active.TryRemove topic |> ignore

let private routes (app: WebApplication) =
    app.MapRealtime(
        "/room",
        RealtimeHandlers<obj>(
            Open = (fun ws -> ws.Subscribe "room" |> ignore),
            Message = (fun ws message -> if message.Text = "leave" then ws.Unsubscribe "room" |> ignore else ws.Publish("room", message.Text) |> ignore)))
    |> ignore

let private startNode bus =
    let backplane = InMemoryBackplane(bus)
    task {
        let! server = startWith (fun host -> host.Services.AddSingleton<IRealtimeBackplane>(backplane) |> ignore) ignore routes
        return server, backplane
    }

[<Tests>]
let tests =
    testList "Scale-out seam: publishes cross servers through IRealtimeBackplane" [
        testCaseTask "a publish on one server reaches subscribers on the other, and skips its sender" (fun () -> task {
            let bus = ConcurrentBag()
            let! a, _ = startNode bus
            use _ = a
            let! b, _ = startNode bus
            use _ = b
            let! sender = connect (a.WsUrl + "/room")
            use _ = sender
            let! sameServer = connect (a.WsUrl + "/room")
            use _ = sameServer
            let! otherServer = connect (b.WsUrl + "/room")
            use _ = otherServer
            do! sendText sender "hello"
            let! onA = receiveText sameServer
            let! onB = receiveText otherServer
            Expect.equal onA "hello" "same server"
            Expect.equal onB "hello" "other server"
            // The sender gets nothing: the next thing it receives is a reply to its own later message's echo from b.
            do! sendText otherServer "back"
            let! reply = receiveText sender
            Expect.equal reply "back" "the sender's first message never came back to it"
        })
        testCaseTask "a server-wide publish with no local subscriber still reaches the other servers" (fun () -> task {
            let bus = ConcurrentBag()
            let! a, _ = startNode bus
            use _ = a
            let! b, _ = startNode bus
            use _ = b
            let! listener = connect (b.WsUrl + "/room")
            use _ = listener
            let! _ = eventually (TimeSpan.FromSeconds 5.0) (fun () -> b.Realtime.SubscriberCount "room" = 1)
            let local = a.Realtime.Publish("room", "from a route on a")
            Expect.equal local 0 "no subscriber on a itself"
            let! text = receiveText listener
            Expect.equal text "from a route on a" "crossed to b"
        })
        testCaseTask "the backplane hears of a topic's first subscriber and of its last one leaving" (fun () -> task {
            let bus = ConcurrentBag()
            let! a, backplane = startNode bus
            use _ = a
            let! first = connect (a.WsUrl + "/room")
            use _ = first
            let! second = connect (a.WsUrl + "/room")
            use _ = second
            let! _ = eventually (TimeSpan.FromSeconds 5.0) (fun () -> a.Realtime.SubscriberCount "room" = 2)
            Expect.equal backplane.Active [ "room" ] "active once the first subscribed"
            do! sendText first "leave"
            let! _ = eventually (TimeSpan.FromSeconds 5.0) (fun () -> a.Realtime.SubscriberCount "room" = 1)
            Expect.equal backplane.Active [ "room" ] "still one subscriber"
            do! second.CloseAsync(Net.WebSockets.WebSocketCloseStatus.NormalClosure, "", Threading.CancellationToken.None)
            let! left = eventually (TimeSpan.FromSeconds 5.0) (fun () -> backplane.Active.IsEmpty)
            Expect.isTrue left "inactive once the last subscriber's connection closed"
            let activations = backplane.Log |> List.filter (fun entry -> entry.EndsWith " room" && not (entry.StartsWith "publish"))
            Expect.equal activations [ "activate room"; "deactivate room" ] "exactly one activation and one deactivation"
        })
    ]

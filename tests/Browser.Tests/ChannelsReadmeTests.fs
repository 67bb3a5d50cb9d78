/// The README's browser block of the Channels section, as written, in Chromium against a server set up
/// as the section's C# block says.
module Realtime.Browser.Tests.ChannelsReadmeTests

open System
open System.IO
open System.Text.RegularExpressions
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Expecto
open Realtime
open Realtime.Channels
open Realtime.Browser.Tests.Infrastructure
open Realtime.TestSupport.SuiteTransport

/// The first ```html block after the README's "In the browser" line.
let private browserBlock () =
    let readme = File.ReadAllText(Path.Combine(repositoryRoot, "README.md"))
    let at = readme.IndexOf("In the browser", StringComparison.Ordinal)
    if at < 0 then failtest "README.md has no \"In the browser\" line"
    let block = Regex.Match(readme.Substring at, "```html\n(.*?)```", RegexOptions.Singleline)
    if not block.Success then failtest "no ```html block after \"In the browser\" in README.md"
    block.Groups[1].Value

type private User = { Name: string }

[<Tests>]
let tests =
    testSequenced <| testList "Channels in the README" [

        browserTest "the README's browser block, as written, subscribes, publishes, sees its message and presence and calls whoami on a server set up as the README's C# block" (fun () ->
            task {
                let builder = WebApplication.CreateBuilder([||])
                builder.WebHost.UseUrls("http://127.0.0.1:0") |> ignore
                useSuiteTransport builder.WebHost
                builder.Logging.ClearProviders() |> ignore
                builder.Services.AddRealtime().AddRealtimeChannels(fun o -> o.ChannelNameRule <- fun name -> name.StartsWith "room:") |> ignore
                let app = builder.Build()
                app.MapRealtimeChannels<User>(
                    "/channels",
                    fun c ->
                        c.Attach <- fun http -> Attachment<User>.Accept { Name = http.Request.Query["name"].ToString() }
                        c.CanPublish <- fun conn _ -> conn.Data.Name <> ""
                        c.PresenceInfo <- fun conn -> box {| name = conn.Data.Name |}
                        c.Requests["whoami"] <- fun conn _ -> ValueTask.FromResult<obj>(box {| name = conn.Data.Name |}))
                |> ignore
                let block = browserBlock ()
                app.MapGet("/", Func<IResult>(fun () -> Results.Content(page "readme" block, "text/html"))) |> ignore
                do! app.StartAsync()
                try
                    let url = app.Urls |> Seq.head
                    let! p = openPage (url + "/")
                    use _ = p
                    do! p.WaitForLog("published #1; here: ann; I am ann", 15000)
                    for line in [ "connection connecting"; "connection connected"; "ann joined"; "#1: hi" ] do
                        Expect.isTrue (p.Logged line) $"the console shows \"{line}\""
                    Expect.isFalse (p.Console |> Seq.exists (fun m -> m.StartsWith "pageerror")) "no error in the page"
                finally
                    (app.StopAsync()).Wait(TimeSpan.FromSeconds 10.0) |> ignore
                    (app.DisposeAsync().AsTask()).Wait(TimeSpan.FromSeconds 10.0) |> ignore
            })
    ]

/// The differential suite: every way a WebSocket connection can be accepted (the ordinary route
/// through Kestrel's HTTP layer, UseRealtimeDirectConnections, and the native transport
/// UseRealtimeNativeTransport) must give identical outcomes for
/// the same application and the same request, because the application's whole request pipeline
/// (authentication, authorization, rate limiting, host filtering, forwarded headers, path base,
/// CORS, endpoint filters, routing) runs for every upgrade. Each configuration is started three times,
/// plain (route), with direct connections (direct) and on the native transport (native); the same raw requests go to each; the
/// outcomes (status, the headers that matter, what the handlers saw) are compared, and the key
/// ones are also checked against their expected value, so both paths being equally wrong fails too.
module Realtime.Server.Tests.DifferentialTests

open System
open System.Collections.Concurrent
open System.Net
open System.Security.Claims
open System.Text.Encodings.Web
open System.Threading
open System.Threading.RateLimiting
open System.Threading.Tasks
open Expecto
open Microsoft.AspNetCore.Authentication
open Microsoft.AspNetCore.Authorization
open Microsoft.AspNetCore.Authorization.Infrastructure
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Cors.Infrastructure
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.HostFiltering
open Microsoft.AspNetCore.Http
open Microsoft.AspNetCore.Http.Features
open Microsoft.AspNetCore.HttpOverrides
open Microsoft.AspNetCore.RateLimiting
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Microsoft.Extensions.Options
open Microsoft.Extensions.Primitives
open Realtime
open Realtime.Server.Tests.TestHost

// ---------------------------------------------------------------------------------------------
// The application's parts the configurations use.
// ---------------------------------------------------------------------------------------------

/// The test authentication scheme: `Authorization: Test alice:admin,ops` signs in "alice" with the
/// roles admin and ops; `Authorization: Test` with no name fails; no header is anonymous. Its
/// challenge answers 401 with `WWW-Authenticate: Test`.
type TestAuthenticationHandler(options: IOptionsMonitor<AuthenticationSchemeOptions>, logger: ILoggerFactory, encoder: UrlEncoder) =
    inherit AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)

    /// The scheme's name.
    static member Scheme = "Test"

    override handler.HandleAuthenticateAsync() =
        let header = handler.Request.Headers.Authorization.ToString()
        if not (header.StartsWith "Test") then
            Task.FromResult(AuthenticateResult.NoResult())
        else
            let credentials = header.Substring(4).Trim()
            let name, roles =
                match credentials.Split(':', 2) with
                | [| name; roles |] -> name, roles.Split(',', StringSplitOptions.RemoveEmptyEntries)
                | _ -> credentials, [||]
            if name = "" then
                Task.FromResult(AuthenticateResult.Fail "no name in the credentials")
            else
                let claims = [ yield Claim(ClaimTypes.Name, name); for role in roles -> Claim(ClaimTypes.Role, role) ]
                let identity = ClaimsIdentity(claims, TestAuthenticationHandler.Scheme, ClaimTypes.Name, ClaimTypes.Role)
                Task.FromResult(AuthenticateResult.Success(AuthenticationTicket(ClaimsPrincipal identity, TestAuthenticationHandler.Scheme)))

    override handler.HandleChallengeAsync(_properties) =
        handler.Response.StatusCode <- StatusCodes.Status401Unauthorized
        handler.Response.Headers.WWWAuthenticate <- "Test"
        Task.CompletedTask

/// Endpoint metadata that requires the user named `name` (authorization requirement data, .NET 8+).
type RequireUserNamed(name: string) =
    interface IAuthorizationRequirementData with
        member _.GetRequirements() =
            let isNamed = Func<AuthorizationHandlerContext, bool>(fun context -> context.User.Identity.Name = name)
            Seq.singleton (AssertionRequirement isNamed :> IAuthorizationRequirement)

/// A feature an application middleware sets for the endpoint to read.
[<AllowNullLiteral>]
type TenantFeature(name: string) =
    /// The tenant's name.
    member _.Name = name

// ---------------------------------------------------------------------------------------------
// What the handlers observe.
// ---------------------------------------------------------------------------------------------

/// What Attach saw of the request.
type Observation =
    { Handler: string
      Endpoint: string
      User: string
      Authenticated: bool
      Claims: string list
      RemoteIp: string
      PathBase: string
      Path: string
      Scheme: string
      Host: string
      RouteValues: string list
      Items: string list
      Tenant: string }

/// Attach and Open calls of one server, by the request's `X-Case` header; and the type of the
/// upgrade feature each attached request had (which tells whether it was accepted directly).
type Recorder() =
    /// Attached requests: what Attach saw, and the upgrade feature's type name.
    member val Attached = ConcurrentDictionary<string, Observation * string>()
    /// Requests whose Open handler ran: what it saw through the socket's HttpContext.
    member val Opened = ConcurrentDictionary<string, Observation>()
    /// The upgrade feature's type name each request had in the middleware of a configuration that
    /// records it (the empty-value one), whatever the answer: which path answered a refusal too.
    member val PipelineRan = ConcurrentDictionary<string, string>()

let private upgradeFeatureName (context: HttpContext) =
    match context.Features.Get<IHttpUpgradeFeature>() with
    | null -> "(none)"
    | upgrade -> upgrade.GetType().Name

let private observe (handler: string) (context: HttpContext) : Observation =
    let request = context.Request
    let user = context.User
    let identity = user.Identity
    let shortType (claimType: string) = claimType.Substring(claimType.LastIndexOf('/') + 1)
    { Handler = handler
      Endpoint = (match context.GetEndpoint() with null -> "(none)" | endpoint -> endpoint.DisplayName)
      User = (match identity with null -> "(none)" | identity -> (match identity.Name with null -> "(none)" | name -> name))
      Authenticated = (not (isNull identity) && identity.IsAuthenticated)
      Claims = [ for claim in user.Claims -> $"{shortType claim.Type}={claim.Value}" ] |> List.sort
      RemoteIp = (match context.Connection.RemoteIpAddress with null -> "(none)" | address -> string address)
      PathBase = request.PathBase.Value
      Path = request.Path.Value
      Scheme = request.Scheme
      Host = request.Host.Value
      RouteValues = [ for pair in request.RouteValues -> $"{pair.Key}={pair.Value}" ] |> List.sort
      Items =
        [ for pair in context.Items do
              match pair.Key with
              | :? string as key when key.StartsWith "test." -> yield $"{key}={pair.Value}"
              | _ -> () ]
        |> List.sort
      Tenant = (match context.Features.Get<TenantFeature>() with null -> "(none)" | tenant -> tenant.Name) }

/// Handlers that record Attach and Open under the request's `X-Case`, and send "open" from Open.
let private observing (recorder: Recorder) (handler: string) =
    RealtimeHandlers<string>(
        Attach =
            (fun context ->
                let case = context.Request.Headers["X-Case"].ToString()
                recorder.Attached[case] <- (observe handler context, upgradeFeatureName context)
                Attachment<string>.Accept case),
        Open =
            fun ws ->
                recorder.Opened[ws.Data] <- observe handler ws.HttpContext
                ws.Send "open" |> ignore
    )

/// Maps a Realtime endpoint at `pattern` whose handlers record what they see.
let private mapObserved (recorder: Recorder) (app: WebApplication) (pattern: string) =
    app.MapRealtime(pattern, observing recorder pattern)

// ---------------------------------------------------------------------------------------------
// Requests, exactly as sent.
// ---------------------------------------------------------------------------------------------

/// A raw HTTP/1.1 request.
type Request =
    { Method: string
      Target: string
      Host: string
      /// The handshake's own lines after Host (empty for a request that is not an upgrade).
      Handshake: (string * string) list
      /// Further header lines, after the handshake's.
      Headers: (string * string) list }

/// The header lines of a client's opening handshake (RFC 6455 §4.1), after Host.
let private handshakeLines =
    [ "Upgrade", "websocket"
      "Connection", "Upgrade"
      "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="
      "Sec-WebSocket-Version", "13" ]

/// A WebSocket upgrade request (RFC 6455 §4.1) for `target`, Host 127.0.0.1.
let private upgrade target =
    { Method = "GET"; Target = target; Host = "127.0.0.1"; Handshake = handshakeLines; Headers = [] }

/// A GET that is not an upgrade.
let private plainGet target : Request = { upgrade target with Handshake = [] }

let private withHeader name value (request: Request) = { request with Headers = request.Headers @ [ name, value ] }

/// The handshake line `name` sent with `value` instead of its standard one.
let private replacingHandshakeLine name value (request: Request) =
    { request with Handshake = request.Handshake |> List.map (fun (line, standard) -> line, (if line = name then value else standard)) }

let private signedIn (credentials: string) request = withHeader "Authorization" ("Test " + credentials) request

let private forwardedFor (address: string) request =
    request |> withHeader "X-Forwarded-For" address |> withHeader "X-Forwarded-Proto" "https"

let private withHost host (request: Request) = { request with Host = host }

let private requestText (case: string) (request: Request) =
    let lines =
        [ yield $"{request.Method} {request.Target} HTTP/1.1"
          yield $"Host: {request.Host}"
          // An empty value is sent as nothing after the colon (RFC 9110 §5.5 allows an empty field value).
          for name, value in request.Handshake @ request.Headers -> if value = "" then $"{name}:" else $"{name}: {value}"
          yield $"X-Case: {case}" ]
    String.Join("\r\n", lines) + "\r\n\r\n"

// ---------------------------------------------------------------------------------------------
// Outcomes.
// ---------------------------------------------------------------------------------------------

/// What a client and the handlers saw of one request; equal on every accept path.
type Outcome =
    { Status: int
      /// The response headers that matter, "name: value", sorted (Retry-After as presence only:
      /// its value counts down).
      Headers: string list
      /// What Attach saw, when it was called.
      Attached: Observation option
      /// Whether the client received the message Open sends (so Open ran, and the connection carries frames).
      Opened: bool
      /// What Open saw through the socket's HttpContext, when it ran.
      OpenSaw: Observation option }

/// One request's outcome on one server, plus whether the upgrade was accepted directly (not part
/// of the comparison: it differs by design).
type Run =
    { Outcome: Outcome
      /// The type name of the request's IHttpUpgradeFeature when Attach ran: DirectConnectionFeatures
      /// when accepted directly, Kestrel's own otherwise.
      UpgradeFeature: string option
      /// The same for every request the middleware of a recording configuration saw.
      PipelineFeature: string option }

let private headersThatMatter =
    set [ "www-authenticate"; "retry-after"; "vary"; "allow"; "upgrade"; "x-app-middleware"
          "sec-websocket-accept"; "sec-websocket-protocol"; "sec-websocket-extensions"; "sec-websocket-version"
          "x-seen-request-headers" ]

let private parseHead (head: string) =
    let lines = head.Split("\r\n", StringSplitOptions.RemoveEmptyEntries)
    let status =
        match lines |> Array.tryHead |> Option.map (fun line -> line.Split(' ')) with
        | Some parts when parts.Length >= 2 -> (match Int32.TryParse parts[1] with | true, code -> code | _ -> 0)
        | _ -> 0
    let headers =
        [ for line in Array.skip (min 1 lines.Length) lines do
              let colon = line.IndexOf ':'
              if colon > 0 then
                  let name = line.Substring(0, colon).Trim().ToLowerInvariant()
                  let value = line.Substring(colon + 1).Trim()
                  if name = "retry-after" then yield $"{name}: (present)"
                  elif headersThatMatter.Contains name || name.StartsWith "access-control-" then yield $"{name}: {value}" ]
        |> List.sort
    status, headers

/// Sends one request to `server` and records its outcome; a connection that upgraded is kept
/// open (in `held`) until the configuration is done, so connection limits see it.
let private runCase (server: RunningServer) (recorder: Recorder) (held: ResizeArray<IDisposable>) (case: string) (request: Request) : Task<Run> =
    task {
        let! tcp, stream, head = RawClient.handshakeRaw server.Port (requestText case request)
        let status, headers = parseHead head
        let mutable opened = false
        if status = 101 then
            let connection = new RawClient.RawConnection(tcp, stream, head)
            held.Add connection
            try
                let! _, message = connection.ReceiveMessage()
                opened <- Text.Encoding.UTF8.GetString message = "open"
            with _ -> opened <- false
        else
            tcp.Dispose()
        let attached =
            match recorder.Attached.TryGetValue case with
            | true, (observation, upgradeType) -> Some(observation, upgradeType)
            | _ -> None
        return
            { Outcome =
                { Status = status
                  Headers = headers
                  Attached = attached |> Option.map fst
                  Opened = opened
                  OpenSaw =
                    match recorder.Opened.TryGetValue case with
                    | true, observation -> Some observation
                    | _ -> None }
              UpgradeFeature = attached |> Option.map snd
              PipelineFeature =
                match recorder.PipelineRan.TryGetValue case with
                | true, feature -> Some feature
                | _ -> None }
    }

// ---------------------------------------------------------------------------------------------
// Explicit expectations, so that both paths being equally wrong fails too.
// ---------------------------------------------------------------------------------------------

/// A check of an outcome: None when it holds, or what is wrong.
type Check = Outcome -> string option

let private expect (holds: Outcome -> bool) (description: string) : Check =
    fun outcome -> if holds outcome then None else Some description

let private status (code: int) : Check = expect (fun outcome -> outcome.Status = code) $"status {code}"

let private notAttached: Check =
    expect (fun outcome -> outcome.Attached.IsNone && outcome.OpenSaw.IsNone && not outcome.Opened) "Attach not called"

/// 101 from the endpoint mapped at `pattern`, with Attach and Open called, and Open seeing the
/// same request through the socket's HttpContext as Attach did.
let private upgradedBy (pattern: string) : Check =
    expect
        (fun outcome ->
            outcome.Status = 101 && outcome.Opened
            && (outcome.Attached |> Option.exists (fun seen -> seen.Handler = pattern))
            && outcome.OpenSaw = outcome.Attached)
        $"101 from {pattern}, Attach and Open called, Open seeing what Attach saw"

let private seen (description: string) (holds: Observation -> bool) : Check =
    expect (fun outcome -> outcome.Attached |> Option.exists holds) description

let private user (name: string) = seen $"User {name}, authenticated" (fun seen -> seen.User = name && seen.Authenticated)

let private anonymous = seen "anonymous User" (fun seen -> not seen.Authenticated)

let private claim (value: string) = seen $"claim {value}" (fun seen -> List.contains value seen.Claims)

let private remoteIp (address: string) = seen $"RemoteIpAddress {address}" (fun seen -> seen.RemoteIp = address)

let private scheme (name: string) = seen $"Scheme {name}" (fun seen -> seen.Scheme = name)

let private pathBase (value: string) = seen $"PathBase '{value}'" (fun seen -> seen.PathBase = value)

let private path (value: string) = seen $"Path '{value}'" (fun seen -> seen.Path = value)

let private host (value: string) = seen $"Host {value}" (fun seen -> seen.Host = value)

let private routeValues (values: string list) = seen $"route values {values}" (fun seen -> seen.RouteValues = values)

let private item (value: string) = seen $"item {value}" (fun seen -> List.contains value seen.Items)

let private tenant (name: string) = seen $"feature tenant {name}" (fun seen -> seen.Tenant = name)

let private header (line: string) : Check = expect (fun outcome -> List.contains line outcome.Headers) $"header '{line}'"

/// The request header `entry` ("Name=['value',...]") among those the empty-value configuration's middleware saw.
let private seenHeader (entry: string) : Check =
    expect
        (fun outcome ->
            outcome.Headers
            |> List.exists (fun line -> line.StartsWith "x-seen-request-headers: " && (line.Substring 24).Split("; ") |> Array.contains entry))
        $"the pipeline saw {entry}"

let private noHeaderStarting (prefix: string) : Check =
    expect (fun outcome -> outcome.Headers |> List.forall (fun line -> not (line.StartsWith prefix))) $"no '{prefix}' header"

// ---------------------------------------------------------------------------------------------
// Configurations, and the comparison.
// ---------------------------------------------------------------------------------------------

/// A request sent to both servers, and what its outcome must be.
type Case =
    { Name: string
      Request: Request
      Checks: Check list }

let private case name request checks = { Name = name; Request = request; Checks = checks }

/// An application: its services and its middleware and endpoints; and the requests sent to it, in order.
type Configuration =
    { Name: string
      Services: WebApplicationBuilder -> unit
      App: Recorder -> WebApplication -> unit
      Cases: Case list }

/// How a server accepts its connections.
type private AcceptPath =
    | Route
    | Direct
    | Native

/// Starts the configuration on one accept path, sends every case in order, and stops it.
let private runAll (path: AcceptPath) (configuration: Configuration) : Task<Run list> =
    task {
        let recorder = Recorder()
        let! server =
            startOn OwnTransport
                (fun builder ->
                    configuration.Services builder
                    match path with
                    | Route -> ()
                    | Direct -> builder.WebHost.UseRealtimeDirectConnections() |> ignore
                    | Native -> builder.WebHost.UseRealtimeNativeTransport() |> ignore)
                ignore
                (configuration.App recorder)
        use _ = server
        let held = ResizeArray<IDisposable>()
        try
            let runs = ResizeArray<Run>()
            for index, case in List.indexed configuration.Cases do
                let! run = runCase server recorder held (string index) case.Request
                runs.Add run
            return List.ofSeq runs
        finally
            for connection in held do connection.Dispose()
    }

let private describe (outcome: Outcome) =
    let attached =
        match outcome.Attached with
        | None -> "Attach: not called"
        | Some seen ->
            let claims = String.Join(",", seen.Claims)
            let routes = String.Join(",", seen.RouteValues)
            let items = String.Join(",", seen.Items)
            $"Attach: handler={seen.Handler} endpoint={seen.Endpoint} user={seen.User} authenticated={seen.Authenticated} claims=[{claims}] remote={seen.RemoteIp} pathBase='{seen.PathBase}' path='{seen.Path}' scheme={seen.Scheme} host={seen.Host} route=[{routes}] items=[{items}] tenant={seen.Tenant}"
    let headers = String.Join(" | ", outcome.Headers)
    let openSaw =
        match outcome.OpenSaw with
        | Some seen when Some seen <> outcome.Attached -> $" Open saw otherwise: user={seen.User} authenticated={seen.Authenticated} remote={seen.RemoteIp} pathBase='{seen.PathBase}' path='{seen.Path}' route={seen.RouteValues} items={seen.Items}"
        | _ -> ""
    $"{outcome.Status} [{headers}] open={outcome.Opened} {attached}{openSaw}"

/// The problems of one case: outcomes that differ, expectations that fail on either path, and a
/// direct server's upgrade that did not go through the direct path.
let private problemsOf (case: Case) (route: Run) (direct: Run) =
    [ if route.Outcome <> direct.Outcome then yield "the outcomes differ"
      for label, run in [ "route", route; "direct", direct ] do
          for check in case.Checks do
              match check run.Outcome with
              | Some expected -> yield $"{label}: expected {expected}"
              | None -> ()
      if route.UpgradeFeature |> Option.exists (fun name -> name = "DirectConnectionFeatures") then
          yield "route: accepted by the direct path on a server without direct connections"
      if direct.Outcome.Status = 101 && direct.UpgradeFeature <> Some "DirectConnectionFeatures" then
          let feature = defaultArg direct.UpgradeFeature "(Attach not called)"
          yield $"direct: the 101 did not come from the direct path (upgrade feature {feature})"
      match direct.PipelineFeature with
      | Some feature when feature <> "DirectConnectionFeatures" ->
          yield $"direct: the pipeline ran on Kestrel's path, not the direct one (upgrade feature {feature}); a recording configuration sends only requests the direct path takes"
      | _ -> () ]

/// The problems of one case on the native transport: an outcome other than the route's, or a failed
/// expectation. The native transport keeps only upgrades to a Realtime endpoint's own path (others,
/// such as paths under a PathBase, go on to Kestrel), so which path served a request is not compared.
let private nativeProblemsOf (case: Case) (route: Run) (native: Run) =
    [ if route.Outcome <> native.Outcome then yield "native: the outcome differs from the route's"
      for check in case.Checks do
          match check native.Outcome with
          | Some expected -> yield $"native: expected {expected}"
          | None -> () ]

/// Runs a configuration on every path and fails with every problem, outcomes side by side.
let private differential (configuration: Configuration) =
    testCaseTask configuration.Name (fun () -> task {
        let! routeRuns = runAll Route configuration
        let! directRuns = runAll Direct configuration
        let! nativeRuns = runAll Native configuration
        let report = Text.StringBuilder()
        let mutable failing = 0
        for index, (case, (route, (direct, native))) in List.indexed (List.zip configuration.Cases (List.zip routeRuns (List.zip directRuns nativeRuns))) do
            match problemsOf case route direct @ nativeProblemsOf case route native with
            | [] -> ()
            | problems ->
                failing <- failing + 1
                report.AppendLine($"[{index}] {case.Name}") |> ignore
                for problem in problems do report.AppendLine($"    - {problem}") |> ignore
                report.AppendLine($"    route : {describe route.Outcome}") |> ignore
                report.AppendLine($"    direct: {describe direct.Outcome}") |> ignore
                report.AppendLine($"    native: {describe native.Outcome}") |> ignore
        // Without an upgrade the native transport kept itself, its leg would compare Kestrel with itself.
        if not (nativeRuns |> List.exists (fun run -> run.UpgradeFeature = Some "DirectConnectionFeatures")) then
            failing <- failing + 1
            report.AppendLine("native: the native transport kept none of the upgrades (all went on to Kestrel)") |> ignore
        if failing > 0 then
            failtestf "%d of %d cases of \"%s\" fail:\n%s" failing configuration.Cases.Length configuration.Name (report.ToString())
    })

// ---------------------------------------------------------------------------------------------
// The configurations: each item of the rule, with the clients that tell it apart.
// ---------------------------------------------------------------------------------------------

let private testAuthentication (builder: WebApplicationBuilder) =
    builder.Services
        .AddAuthentication(TestAuthenticationHandler.Scheme)
        .AddScheme<AuthenticationSchemeOptions, TestAuthenticationHandler>(TestAuthenticationHandler.Scheme, ignore)
    |> ignore

let private useAuth (app: WebApplication) =
    app.UseRouting() |> ignore
    app.UseAuthentication() |> ignore
    app.UseAuthorization() |> ignore

let private hello (app: WebApplication) =
    app.MapGet("/hello", Func<string>(fun () -> "hi")) |> ignore

let private fallbackPolicy =
    { Name = "authorization: fallback policy (RequireAuthenticatedUser)"
      Services =
        fun builder ->
            testAuthentication builder
            builder.Services.AddAuthorization(fun options ->
                options.FallbackPolicy <- AuthorizationPolicyBuilder().RequireAuthenticatedUser().Build())
            |> ignore
      App =
        fun recorder app ->
            useAuth app
            mapObserved recorder app "/chat" |> ignore
            hello app
      Cases =
        [ case "anonymous upgrade" (upgrade "/chat") [ status 401; header "www-authenticate: Test"; notAttached ]
          case "signed-in upgrade" (upgrade "/chat" |> signedIn "alice") [ upgradedBy "/chat"; user "alice"; claim "name=alice" ]
          case "credentials without a name (authentication fails)" (upgrade "/chat" |> signedIn "") [ status 401; notAttached ]
          case "anonymous plain GET to the endpoint" (plainGet "/chat") [ status 401; notAttached ]
          case "signed-in plain GET to the endpoint" (plainGet "/chat" |> signedIn "alice") [ status 400; notAttached ]
          case "anonymous GET of an ordinary route" (plainGet "/hello") [ status 401 ]
          case "signed-in GET of an ordinary route" (plainGet "/hello" |> signedIn "alice") [ status 200 ] ] }

let private namedPolicy =
    { Name = "authorization: RequireAuthorization with a named policy (role claim)"
      Services =
        fun builder ->
            testAuthentication builder
            builder.Services.AddAuthorization(fun options -> options.AddPolicy("admins", fun policy -> policy.RequireRole("admin") |> ignore))
            |> ignore
      App =
        fun recorder app ->
            useAuth app
            (mapObserved recorder app "/admin").RequireAuthorization("admins") |> ignore
            mapObserved recorder app "/chat" |> ignore
      Cases =
        [ case "anonymous upgrade to the policy's endpoint" (upgrade "/admin") [ status 401; header "www-authenticate: Test"; notAttached ]
          case "signed in, wrong role" (upgrade "/admin" |> signedIn "bob:user") [ status 403; notAttached ]
          case "signed in, right role" (upgrade "/admin" |> signedIn "alice:admin") [ upgradedBy "/admin"; user "alice"; claim "role=admin" ]
          case "anonymous upgrade to a public endpoint" (upgrade "/chat") [ upgradedBy "/chat"; anonymous ]
          case "signed-in upgrade to a public endpoint: User is still set" (upgrade "/chat" |> signedIn "bob:user") [ upgradedBy "/chat"; user "bob"; claim "role=user" ]
          case "anonymous plain GET to the policy's endpoint" (plainGet "/admin") [ status 401; notAttached ] ] }

let private metadataAuthorization =
    { Name = "authorization: endpoint metadata (AuthorizeAttribute, AuthorizationPolicy, IAuthorizationRequirementData)"
      Services =
        fun builder ->
            testAuthentication builder
            builder.Services.AddAuthorization() |> ignore
      App =
        fun recorder app ->
            useAuth app
            (mapObserved recorder app "/attribute").WithMetadata(AuthorizeAttribute(Roles = "admin")) |> ignore
            (mapObserved recorder app "/policy").WithMetadata(AuthorizationPolicyBuilder().RequireRole("admin").Build()) |> ignore
            (mapObserved recorder app "/requirement").WithMetadata(RequireUserNamed "alice") |> ignore
      Cases =
        [ for pattern in [ "/attribute"; "/policy"; "/requirement" ] do
              case $"anonymous upgrade to {pattern}" (upgrade pattern) [ status 401; notAttached ]
              case $"signed in as bob (no admin role) to {pattern}" (upgrade pattern |> signedIn "bob:user") [ status 403; notAttached ]
              case $"signed in as alice (admin) to {pattern}" (upgrade pattern |> signedIn "alice:admin") [ upgradedBy pattern; user "alice" ] ] }

let private allowAnonymous =
    { Name = "authorization: AllowAnonymous under a fallback policy"
      Services = fallbackPolicy.Services
      App =
        fun recorder app ->
            useAuth app
            (mapObserved recorder app "/public").AllowAnonymous() |> ignore
            mapObserved recorder app "/chat" |> ignore
      Cases =
        [ case "anonymous upgrade to the AllowAnonymous endpoint" (upgrade "/public") [ upgradedBy "/public"; anonymous ]
          case "signed-in upgrade to the AllowAnonymous endpoint: still authenticated" (upgrade "/public" |> signedIn "alice:admin") [ upgradedBy "/public"; user "alice" ]
          case "anonymous upgrade to an endpoint under the fallback policy" (upgrade "/chat") [ status 401; notAttached ] ] }

let private rejectionWithRetryAfter (options: RateLimiterOptions) =
    options.RejectionStatusCode <- StatusCodes.Status429TooManyRequests
    options.OnRejected <-
        Func<OnRejectedContext, CancellationToken, ValueTask>(fun context _ ->
            match context.Lease.TryGetMetadata MetadataName.RetryAfter with
            | true, retryAfter -> context.HttpContext.Response.Headers.RetryAfter <- string (int retryAfter.TotalSeconds)
            | _ -> ()
            ValueTask.CompletedTask)

let private twoPerHour () =
    FixedWindowRateLimiterOptions(PermitLimit = 2, Window = TimeSpan.FromHours 1.0, QueueLimit = 0)

let private endpointRateLimit =
    { Name = "rate limiting: RequireRateLimiting with a fixed window of 2"
      Services =
        fun builder ->
            builder.Services.AddRateLimiter(fun options ->
                rejectionWithRetryAfter options
                options.AddFixedWindowLimiter("p", fun window ->
                    window.PermitLimit <- 2
                    window.Window <- TimeSpan.FromHours 1.0
                    window.QueueLimit <- 0) |> ignore)
            |> ignore
      App =
        fun recorder app ->
            app.UseRouting() |> ignore
            app.UseRateLimiter() |> ignore
            (mapObserved recorder app "/limited").RequireRateLimiting("p") |> ignore
            mapObserved recorder app "/free" |> ignore
      Cases =
        [ case "first upgrade" (upgrade "/limited") [ upgradedBy "/limited" ]
          case "second upgrade" (upgrade "/limited") [ upgradedBy "/limited" ]
          case "third upgrade: over the limit" (upgrade "/limited") [ status 429; header "retry-after: (present)"; notAttached ]
          case "plain GET over the limit" (plainGet "/limited") [ status 429; notAttached ]
          case "an endpoint without the policy" (upgrade "/free") [ upgradedBy "/free" ] ] }

/// X-Forwarded-For and X-Forwarded-Proto, trusted from 127.0.0.1 only.
let private trustLoopbackProxy (builder: WebApplicationBuilder) =
    builder.Services.Configure<ForwardedHeadersOptions>(fun (options: ForwardedHeadersOptions) ->
        options.ForwardedHeaders <- ForwardedHeaders.XForwardedFor ||| ForwardedHeaders.XForwardedProto
        options.KnownIPNetworks.Clear()
        options.KnownProxies.Clear()
        options.KnownProxies.Add IPAddress.Loopback)
    |> ignore

let private globalRateLimit =
    { Name = "rate limiting: a global limiter partitioned by remote address (behind forwarded headers)"
      Services =
        fun builder ->
            trustLoopbackProxy builder
            builder.Services.AddRateLimiter(fun options ->
                rejectionWithRetryAfter options
                options.GlobalLimiter <-
                    PartitionedRateLimiter.Create<HttpContext, string>(fun context ->
                        RateLimitPartition.GetFixedWindowLimiter(string context.Connection.RemoteIpAddress, fun _ -> twoPerHour ())))
            |> ignore
      App =
        fun recorder app ->
            app.UseForwardedHeaders() |> ignore
            app.UseRateLimiter() |> ignore
            mapObserved recorder app "/chat" |> ignore
      Cases =
        [ case "client A, first" (upgrade "/chat" |> forwardedFor "203.0.113.7") [ upgradedBy "/chat"; remoteIp "203.0.113.7" ]
          case "client A, second" (upgrade "/chat" |> forwardedFor "203.0.113.7") [ upgradedBy "/chat" ]
          case "client A, third: over its limit" (upgrade "/chat" |> forwardedFor "203.0.113.7") [ status 429; header "retry-after: (present)"; notAttached ]
          case "client B: its own partition" (upgrade "/chat" |> forwardedFor "198.51.100.9") [ upgradedBy "/chat"; remoteIp "198.51.100.9" ]
          case "the proxy itself (not forwarded)" (upgrade "/chat") [ upgradedBy "/chat"; remoteIp "127.0.0.1" ]
          case "client B, plain GET" (plainGet "/chat" |> forwardedFor "198.51.100.9") [ status 400; notAttached ]
          case "client B, third: over its limit" (upgrade "/chat" |> forwardedFor "198.51.100.9") [ status 429; notAttached ] ] }

let private hostFiltering =
    { Name = "host filtering: AllowedHosts good.example"
      Services =
        fun builder ->
            builder.Services.Configure<HostFilteringOptions>(fun (options: HostFilteringOptions) ->
                options.AllowedHosts <- ResizeArray [ "good.example" ])
            |> ignore
      App =
        fun recorder app ->
            mapObserved recorder app "/chat" |> ignore
            hello app
      Cases =
        [ case "the allowed host" (upgrade "/chat" |> withHost "good.example") [ upgradedBy "/chat"; host "good.example" ]
          case "the allowed host with a port" (upgrade "/chat" |> withHost "good.example:8080") [ upgradedBy "/chat"; host "good.example:8080" ]
          case "a wrong Host" (upgrade "/chat" |> withHost "attacker.example") [ status 400; notAttached ]
          case "the server's own address as Host" (upgrade "/chat") [ status 400; notAttached ]
          case "a wrong Host, plain GET of an ordinary route" (plainGet "/hello" |> withHost "attacker.example") [ status 400 ] ] }

let private forwardedHeaders =
    { Name = "forwarded headers: X-Forwarded-For and -Proto from a known proxy; MaxConnectionsPerAddress counts the client"
      Services = trustLoopbackProxy
      App =
        fun recorder app ->
            app.UseForwardedHeaders() |> ignore
            app.MapRealtime("/chat", observing recorder "/chat", fun options -> options.MaxConnectionsPerAddress <- Nullable 1) |> ignore
      Cases =
        [ case "forwarded client A" (upgrade "/chat" |> forwardedFor "203.0.113.7") [ upgradedBy "/chat"; remoteIp "203.0.113.7"; scheme "https" ]
          case "client A again while its first connection is open" (upgrade "/chat" |> forwardedFor "203.0.113.7") [ status 503; notAttached ]
          case "forwarded client B" (upgrade "/chat" |> forwardedFor "198.51.100.9") [ upgradedBy "/chat"; remoteIp "198.51.100.9"; scheme "https" ]
          case "the proxy's own request (not forwarded)" (upgrade "/chat") [ upgradedBy "/chat"; remoteIp "127.0.0.1"; scheme "http" ]
          case "a chain of two: the last hop counts (ForwardLimit 1)" (upgrade "/chat" |> forwardedFor "192.0.2.1, 192.0.2.44")
              [ upgradedBy "/chat"; remoteIp "192.0.2.44" ] ] }

let private pathBaseConfiguration =
    { Name = "path base: UsePathBase(\"/app\")"
      Services = ignore
      App =
        fun recorder app ->
            app.UsePathBase("/app") |> ignore
            app.UseRouting() |> ignore
            mapObserved recorder app "/chat" |> ignore
            mapObserved recorder app "/rooms/{room}" |> ignore
      Cases =
        [ case "under the path base" (upgrade "/app/chat") [ upgradedBy "/chat"; pathBase "/app"; path "/chat" ]
          case "under the path base, with a route value" (upgrade "/app/rooms/lobby") [ upgradedBy "/rooms/{room}"; pathBase "/app"; path "/rooms/lobby"; routeValues [ "room=lobby" ] ]
          case "without the path base" (upgrade "/chat") [ upgradedBy "/chat"; pathBase ""; path "/chat" ]
          case "the path base in other letter case" (upgrade "/APP/chat") [ upgradedBy "/chat"; path "/chat" ]
          case "under the path base, no such endpoint" (upgrade "/app/nowhere") [ status 404; notAttached ] ] }

let private cors =
    { Name = "CORS: UseCors with a policy for https://good.example"
      Services =
        fun builder ->
            builder.Services.AddCors(fun options ->
                options.AddPolicy("site", fun (policy: CorsPolicyBuilder) ->
                    policy.WithOrigins("https://good.example").AllowAnyHeader().AllowAnyMethod() |> ignore))
            |> ignore
      App =
        fun recorder app ->
            app.UseRouting() |> ignore
            app.UseCors("site") |> ignore
            mapObserved recorder app "/chat" |> ignore
      Cases =
        [ case "an allowed origin" (upgrade "/chat" |> withHeader "Origin" "https://good.example")
              [ upgradedBy "/chat"; header "access-control-allow-origin: https://good.example" ]
          case "another origin: CORS does not block a WebSocket" (upgrade "/chat" |> withHeader "Origin" "https://other.example")
              [ upgradedBy "/chat"; noHeaderStarting "access-control-allow-origin" ]
          case "no origin" (upgrade "/chat") [ upgradedBy "/chat" ]
          case "a preflight" ({ plainGet "/chat" with Method = "OPTIONS" } |> withHeader "Origin" "https://good.example" |> withHeader "Access-Control-Request-Method" "GET")
              [ status 204; header "access-control-allow-origin: https://good.example"; notAttached ] ] }

let private endpointFilters =
    { Name = "endpoint filters: AddEndpointFilter on a Realtime endpoint"
      Services = ignore
      App =
        fun recorder app ->
            app.UseRouting() |> ignore
            (mapObserved recorder app "/chat")
                .AddEndpointFilter(fun (context: EndpointFilterInvocationContext) (next: EndpointFilterDelegate) ->
                    if context.HttpContext.Request.Headers.ContainsKey "X-Deny" then
                        ValueTask<obj>(Results.StatusCode StatusCodes.Status403Forbidden :> obj)
                    else
                        context.HttpContext.Items["test.filter"] <- "ran"
                        next.Invoke context)
            |> ignore
      Cases =
        [ case "the filter lets it through" (upgrade "/chat") [ upgradedBy "/chat"; item "test.filter=ran" ]
          case "the filter refuses" (upgrade "/chat" |> withHeader "X-Deny" "1") [ status 403; notAttached ] ] }

let private routingPrecedence =
    { Name = "routing: precedence, constraints, an ordinary route beside a Realtime one, a middleware that answers first"
      Services =
        fun builder ->
            testAuthentication builder
            builder.Services.AddAuthorization() |> ignore
      App =
        fun recorder app ->
            app.Use(fun (context: HttpContext) (next: RequestDelegate) ->
                if context.Request.Headers.ContainsKey "X-Teapot" then
                    context.Response.StatusCode <- 418
                    Task.CompletedTask
                else
                    next.Invoke context)
            |> ignore
            useAuth app
            mapObserved recorder app "/ws/{room}" |> ignore
            (mapObserved recorder app "/ws/admin").RequireAuthorization() |> ignore
            app.MapGet("/ws/status", Func<string>(fun () -> "status")) |> ignore
            mapObserved recorder app "/items/{id:int}" |> ignore
      Cases =
        [ case "anonymous to the literal route that needs authorization" (upgrade "/ws/admin") [ status 401; notAttached ]
          case "signed in to the literal route: its endpoint, no room" (upgrade "/ws/admin" |> signedIn "alice")
              [ upgradedBy "/ws/admin"; routeValues []; user "alice" ]
          case "the parameter route" (upgrade "/ws/lobby") [ upgradedBy "/ws/{room}"; routeValues [ "room=lobby" ] ]
          case "an ordinary GET route beside the parameter route" (upgrade "/ws/status") [ status 200; notAttached ]
          case "a constraint that holds" (upgrade "/items/5") [ upgradedBy "/items/{id:int}"; routeValues [ "id=5" ] ]
          case "a constraint that fails" (upgrade "/items/abc") [ status 404; notAttached ]
          case "a middleware answers before routing" (upgrade "/ws/lobby" |> withHeader "X-Teapot" "1") [ status 418; notAttached ]
          case "plain GET of the parameter route" (plainGet "/ws/lobby") [ status 400; notAttached ] ] }

let private routeGroup =
    { Name = "route groups: a group's conventions (authorization, endpoint filter) on the Realtime endpoints in it"
      Services = namedPolicy.Services
      App =
        fun recorder app ->
            useAuth app
            let group = app.MapGroup("/api")
            group
                .RequireAuthorization("admins")
                .AddEndpointFilter(fun (context: EndpointFilterInvocationContext) (next: EndpointFilterDelegate) ->
                    context.HttpContext.Items["test.group-filter"] <- "ran"
                    next.Invoke context)
            |> ignore
            group.MapRealtime("/chat", observing recorder "/api/chat") |> ignore
      Cases =
        [ case "anonymous" (upgrade "/api/chat") [ status 401; notAttached ]
          case "signed in, wrong role" (upgrade "/api/chat" |> signedIn "bob:user") [ status 403; notAttached ]
          case "signed in, right role" (upgrade "/api/chat" |> signedIn "alice:admin")
              [ upgradedBy "/api/chat"; user "alice"; path "/api/chat"; item "test.group-filter=ran" ] ] }

let private middlewareState =
    { Name = "middleware: items, features, User and response headers set before the endpoint"
      Services = ignore
      App =
        fun recorder app ->
            app.Use(fun (context: HttpContext) (next: RequestDelegate) ->
                context.Items["test.tenant"] <- "blue"
                context.Features.Set<TenantFeature>(TenantFeature "blue")
                context.Response.Headers["X-App-Middleware"] <- "ran"
                match context.Request.Headers["X-Middleware-User"].ToString() with
                | "" -> ()
                | name -> context.User <- ClaimsPrincipal(ClaimsIdentity([ Claim(ClaimTypes.Name, name) ], "Middleware"))
                next.Invoke context)
            |> ignore
            mapObserved recorder app "/chat" |> ignore
      Cases =
        [ case "items, feature and response header" (upgrade "/chat") [ upgradedBy "/chat"; item "test.tenant=blue"; tenant "blue"; header "x-app-middleware: ran" ]
          case "a User set by middleware" (upgrade "/chat" |> withHeader "X-Middleware-User" "carol") [ upgradedBy "/chat"; user "carol" ]
          case "plain GET: the header on the refusal too" (plainGet "/chat") [ status 400; header "x-app-middleware: ran"; notAttached ] ] }

let private changedRequestHeaders =
    { Name = "middleware: request headers changed before the endpoint (the handshake sees what the pipeline left)"
      Services = ignore
      App =
        fun recorder app ->
            app.Use(fun (context: HttpContext) (next: RequestDelegate) ->
                let headers = context.Request.Headers
                if headers.ContainsKey "X-Set-Protocol" then headers["Sec-WebSocket-Protocol"] <- StringValues "chat"
                if headers.ContainsKey "X-Drop-Version" then headers.Remove "Sec-WebSocket-Version" |> ignore
                if headers.ContainsKey "X-Replace-Headers" then
                    let copy = HeaderDictionary()
                    for pair in headers do copy[pair.Key] <- pair.Value
                    copy["Sec-WebSocket-Protocol"] <- StringValues "chat"
                    context.Features.Get<IHttpRequestFeature>().Headers <- copy
                next.Invoke context)
            |> ignore
            app.MapRealtime("/chat", observing recorder "/chat", fun (options: RealtimeOptions) -> options.Subprotocols.Add "chat") |> ignore
      Cases =
        [ case "unchanged" (upgrade "/chat") [ upgradedBy "/chat"; noHeaderStarting "sec-websocket-protocol" ]
          case "a subprotocol set by middleware" (upgrade "/chat" |> withHeader "X-Set-Protocol" "1") [ upgradedBy "/chat"; header "sec-websocket-protocol: chat" ]
          case "the version removed by middleware" (upgrade "/chat" |> withHeader "X-Drop-Version" "1") [ status 426; header "sec-websocket-version: 13"; notAttached ]
          case "the request headers replaced by middleware" (upgrade "/chat" |> withHeader "X-Replace-Headers" "1") [ upgradedBy "/chat"; header "sec-websocket-protocol: chat" ] ] }

/// The request headers the empty-value cases send empty, as the application's pipeline saw them:
/// "Name=['value',...]" when present, "Name absent" otherwise.
let private seenRequestHeaders (headers: IHeaderDictionary) =
    let seen name =
        match headers.TryGetValue name with
        | true, values -> let quoted = [ for value in values -> $"'{value}'" ] in $"""{name}=[{String.Join(",", quoted)}]"""
        | _ -> $"{name} absent"
    String.Join("; ", [ "Sec-WebSocket-Version"; "Sec-WebSocket-Protocol"; "Sec-WebSocket-Extensions"; "Origin"; "X-Flag" ] |> List.map seen)

let private emptyHeaderValues =
    { Name = "empty header values: handshake headers and a custom header with nothing after the colon"
      Services = ignore
      App =
        fun recorder app ->
            app.Use(fun (context: HttpContext) (next: RequestDelegate) ->
                let headers = context.Request.Headers
                recorder.PipelineRan[headers["X-Case"].ToString()] <- upgradeFeatureName context
                context.Response.Headers["X-Seen-Request-Headers"] <- seenRequestHeaders headers
                if headers.ContainsKey "X-Flag" then context.Items["test.flag"] <- "'" + headers["X-Flag"].ToString() + "'"
                next.Invoke context)
            |> ignore
            app.MapRealtime(
                "/chat",
                observing recorder "/chat",
                fun (options: RealtimeOptions) ->
                    options.Subprotocols.Add "chat"
                    options.AllowedOrigins.Add "https://good.example"
                    options.PerMessageDeflate <- true)
            |> ignore
      Cases =
        [ case "the standard handshake" (upgrade "/chat")
              [ upgradedBy "/chat"; noHeaderStarting "sec-websocket-protocol"; noHeaderStarting "sec-websocket-extensions"
                header "x-seen-request-headers: Sec-WebSocket-Version=['13']; Sec-WebSocket-Protocol absent; Sec-WebSocket-Extensions absent; Origin absent; X-Flag absent" ]
          case "an empty Sec-WebSocket-Version instead of 13: present and empty, so not version 13" (upgrade "/chat" |> replacingHandshakeLine "Sec-WebSocket-Version" "")
              [ status 426; header "sec-websocket-version: 13"; notAttached; seenHeader "Sec-WebSocket-Version=['']" ]
          case "whitespace only as Sec-WebSocket-Version: trimmed to empty (RFC 9110 §5.5)" (upgrade "/chat" |> replacingHandshakeLine "Sec-WebSocket-Version" "  ")
              [ status 426; header "sec-websocket-version: 13"; notAttached; seenHeader "Sec-WebSocket-Version=['']" ]
          case "an empty Sec-WebSocket-Version line beside 13: two values, not the single 13" (upgrade "/chat" |> withHeader "Sec-WebSocket-Version" "")
              [ status 426; header "sec-websocket-version: 13"; notAttached; seenHeader "Sec-WebSocket-Version=['13','']" ]
          case "an empty Sec-WebSocket-Protocol: no subprotocol offered" (upgrade "/chat" |> withHeader "Sec-WebSocket-Protocol" "")
              [ upgradedBy "/chat"; noHeaderStarting "sec-websocket-protocol"; seenHeader "Sec-WebSocket-Protocol=['']" ]
          case "an empty Sec-WebSocket-Protocol line beside chat" (upgrade "/chat" |> withHeader "Sec-WebSocket-Protocol" "chat" |> withHeader "Sec-WebSocket-Protocol" "")
              [ upgradedBy "/chat"; header "sec-websocket-protocol: chat"; seenHeader "Sec-WebSocket-Protocol=['chat','']" ]
          case "an empty Sec-WebSocket-Extensions: no extension offered" (upgrade "/chat" |> withHeader "Sec-WebSocket-Extensions" "")
              [ upgradedBy "/chat"; noHeaderStarting "sec-websocket-extensions"; seenHeader "Sec-WebSocket-Extensions=['']" ]
          case "an empty Sec-WebSocket-Extensions line beside permessage-deflate"
              (upgrade "/chat" |> withHeader "Sec-WebSocket-Extensions" "permessage-deflate" |> withHeader "Sec-WebSocket-Extensions" "")
              [ upgradedBy "/chat"; header "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                seenHeader "Sec-WebSocket-Extensions=['permessage-deflate','']" ]
          case "an allowed Origin" (upgrade "/chat" |> withHeader "Origin" "https://good.example") [ upgradedBy "/chat" ]
          case "an empty Origin: present, so checked, and not allowed" (upgrade "/chat" |> withHeader "Origin" "")
              [ status 403; notAttached; seenHeader "Origin=['']" ]
          case "an empty custom header the middleware reads: present, with an empty value" (upgrade "/chat" |> withHeader "X-Flag" "")
              [ upgradedBy "/chat"; item "test.flag=''"; seenHeader "X-Flag=['']" ] ] }

/// Every configuration, each item of the rule.
let configurations =
    [ fallbackPolicy
      namedPolicy
      metadataAuthorization
      allowAnonymous
      endpointRateLimit
      globalRateLimit
      hostFiltering
      forwardedHeaders
      pathBaseConfiguration
      cors
      endpointFilters
      routingPrecedence
      routeGroup
      middlewareState
      changedRequestHeaders
      emptyHeaderValues ]

[<Tests>]
let differentialTests =
    testSequenced <| testList "Differential: every accept path, identical outcomes" [ for configuration in configurations -> differential configuration ]

using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Realtime;

namespace Microsoft.Extensions.DependencyInjection
{
    /// <summary>Registers Realtime's services.</summary>
    public static class RealtimeServiceCollectionExtensions
    {
        /// <summary>
        /// Adds the Realtime server (<see cref="IRealtimeServer"/>), its options and graceful shutdown.
        /// When Kestrel is the server already registered, its <c>IServer</c> registration is wrapped
        /// so that direct connections (<c>UseRealtimeDirectConnections</c>) can run the application's
        /// request pipeline; Kestrel itself is unchanged, and other servers are left alone.
        /// </summary>
        /// <param name="services">The application's services.</param>
        /// <param name="configure">Sets the defaults every endpoint starts from.</param>
        public static IRealtimeBuilder AddRealtime(this IServiceCollection services, Action<RealtimeOptions>? configure = null)
        {
            ArgumentNullException.ThrowIfNull(services);
            // Out-of-range values fail the start with a message naming them (RealtimeOptionsValidation).
            services.AddOptions<RealtimeOptions>().ValidateOnStart();
            services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<RealtimeOptions>, RealtimeOptionsValidation>());
            if (configure is not null) services.Configure(configure);
            services.TryAddSingleton(provider => new RealtimeServer(
                provider.GetRequiredService<ILogger<RealtimeServer>>(),
                provider.GetRequiredService<IOptions<RealtimeOptions>>().Value,
                provider.GetService<TimeProvider>(),
                provider.GetService<IRealtimeBackplane>(),
                new RealtimeMetrics(provider.GetService<System.Diagnostics.Metrics.IMeterFactory>())));
            services.TryAddSingleton<IRealtimeServer>(provider => provider.GetRequiredService<RealtimeServer>());
            services.AddHostedService<RealtimeLifecycle>();
            Realtime.Direct.ApplicationCapture.Register(services);
            // The handshake's header time is Kestrel's to enforce: it reads the headers before any endpoint runs.
            services.AddSingleton<IConfigureOptions<Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions>>(provider =>
                new ConfigureOptions<Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions>(kestrel =>
                {
                    if (provider.GetRequiredService<IOptions<RealtimeOptions>>().Value.HandshakeTimeout is { } timeout)
                        kestrel.Limits.RequestHeadersTimeout = timeout;
                }));
            return new RealtimeBuilder(services);
        }
    }
}

namespace Microsoft.AspNetCore.Builder
{
    /// <summary>Maps Realtime endpoints beside ordinary routes.</summary>
    public static class RealtimeEndpointRouteBuilderExtensions
    {
        /// <summary>
        /// Maps a WebSocket endpoint at <paramref name="pattern"/> whose connections are handled by
        /// <paramref name="handlers"/>: HTTP/1.1 upgrades (RFC 6455) and HTTP/2 extended CONNECTs
        /// (RFC 8441). Other requests get 400/426/405.
        /// </summary>
        /// <typeparam name="TData">The per-connection data returned by <c>Attach</c>.</typeparam>
        /// <param name="endpoints">The application's routes.</param>
        /// <param name="pattern">The route pattern, for example <c>/chat</c>.</param>
        /// <param name="handlers">The endpoint's handlers.</param>
        /// <param name="configure">Overrides the <see cref="RealtimeOptions"/> for this endpoint only.</param>
        public static IEndpointConventionBuilder MapRealtime<TData>(this IEndpointRouteBuilder endpoints, string pattern, RealtimeHandlers<TData> handlers, Action<RealtimeOptions>? configure = null)
        {
            ArgumentNullException.ThrowIfNull(endpoints);
            ArgumentNullException.ThrowIfNull(pattern);
            ArgumentNullException.ThrowIfNull(handlers);
            var services = endpoints.ServiceProvider;
            var server = services.GetService<RealtimeServer>()
                ?? throw new InvalidOperationException("Call services.AddRealtime() before MapRealtime.");
            var options = services.GetRequiredService<IOptions<RealtimeOptions>>().Value.Clone();
            configure?.Invoke(options);
            var endpoint = new RealtimeEndpoint<TData>(server, pattern, options, handlers);
            server.AddEndpoint(endpoint);
            // The endpoint itself is metadata, so direct connections find it under its full route (group prefixes included).
            return endpoints.Map(pattern, endpoint.HandleAsync).WithDisplayName($"Realtime {pattern}").WithMetadata(endpoint);
        }
    }
}

namespace Microsoft.AspNetCore.Hosting
{
    /// <summary>Lets Realtime accept WebSocket connections directly on Kestrel listeners.</summary>
    public static class RealtimeDirectConnectionExtensions
    {
        /// <summary>
        /// Makes this listener read WebSocket upgrade requests at the connection
        /// level, below Kestrel's HTTP layer. Such a request runs through the application's whole
        /// request pipeline (the same one Kestrel runs: authentication, authorization, rate limiting,
        /// forwarded headers, routing, every middleware); after a 101 from a Realtime endpoint the
        /// connection runs on the listener's own pipes, which costs less memory and CPU. Requests this
        /// middleware is not sure of (past Kestrel's limits, with a body, paths Kestrel would rewrite,
        /// anything that is not a WebSocket upgrade) pass through to Kestrel untouched.
        /// For TLS, call it after <c>UseHttps</c>, so it sees the decrypted bytes.
        /// </summary>
        /// <param name="listen">The Kestrel listener.</param>
        public static ListenOptions UseRealtimeDirectConnections(this ListenOptions listen)
        {
            ArgumentNullException.ThrowIfNull(listen);
            var services = listen.ApplicationServices;
            listen.Use(next => new Realtime.Direct.DirectConnectionMiddleware(next, services).OnConnectionAsync);
            return listen;
        }

        /// <summary>
        /// <see cref="UseRealtimeDirectConnections(ListenOptions)"/> on every Kestrel listener, including those
        /// made from <c>--urls</c> or <c>ASPNETCORE_URLS</c>. On an HTTPS listener made that way the
        /// middleware sits before TLS and passes every connection on (they take the ordinary route);
        /// configure such a listener with <c>Listen(..., l => { l.UseHttps(...); l.UseRealtimeDirectConnections(); })</c>
        /// for direct connections over TLS.
        /// </summary>
        /// <param name="host">The web host builder, for example <c>builder.WebHost</c>.</param>
        public static IWebHostBuilder UseRealtimeDirectConnections(this IWebHostBuilder host)
        {
            ArgumentNullException.ThrowIfNull(host);
            return host
                .ConfigureServices(Realtime.Direct.ApplicationCapture.Register)
                .ConfigureKestrel(kestrel => kestrel.ConfigureEndpointDefaults(listen => listen.UseRealtimeDirectConnections()));
        }
    }
}

namespace Microsoft.AspNetCore.Hosting
{
    /// <summary>Runs Realtime's WebSocket connections on its native Linux transport.</summary>
    public static class RealtimeNativeTransportExtensions
    {
        /// <summary>
        /// On Linux (x86-64), Kestrel's TCP listeners are bound and accepted by Realtime's epoll event
        /// loops (one per core by default). A connection whose first request is a WebSocket upgrade to a
        /// Realtime endpoint runs that request through the application's whole pipeline, and after the
        /// 101 stays on its loop as a file descriptor: handlers run on the loop's thread, reads go into the
        /// loop's buffer, writes go straight to the socket. Every other connection (other requests,
        /// HTTP/2, TLS, other WebSocket endpoints) is handed to Kestrel's socket transport with its bytes
        /// unread. Elsewhere, and for endpoints that are not TCP, nothing changes.
        /// </summary>
        /// <param name="host">The web host builder, for example <c>builder.WebHost</c>.</param>
        /// <param name="configure">Sets the number of event loops.</param>
        public static IWebHostBuilder UseRealtimeNativeTransport(this IWebHostBuilder host, Action<RealtimeNativeTransportOptions>? configure = null)
        {
            ArgumentNullException.ThrowIfNull(host);
            return host.ConfigureServices(services =>
            {
                if (configure is not null) services.Configure(configure);
                else services.AddOptions<RealtimeNativeTransportOptions>();
                if (!Realtime.Native.Libc.IsSupported) return;
                Realtime.Direct.ApplicationCapture.Register(services);
                services.TryAddSingleton<Realtime.Native.PlainListeners>();
                // After every other configuration of Kestrel, so that its endpoint defaults are final.
                services.AddSingleton<IPostConfigureOptions<KestrelServerOptions>>(provider =>
                    new PostConfigureOptions<KestrelServerOptions>(Options.DefaultName, kestrel => provider.GetRequiredService<Realtime.Native.PlainListeners>().Install(kestrel)));
                // Kestrel binds with the transport registered last that can bind the endpoint.
                services.AddSingleton<Microsoft.AspNetCore.Connections.IConnectionListenerFactory, Realtime.Native.NativeTransportFactory>();
            });
        }
    }
}

namespace Realtime
{
    /// <summary>Returned by <c>AddRealtime</c>, for further configuration.</summary>
    public interface IRealtimeBuilder
    {
        /// <summary>The application's services.</summary>
        IServiceCollection Services { get; }
    }

    internal sealed class RealtimeBuilder(IServiceCollection services) : IRealtimeBuilder
    {
        public IServiceCollection Services { get; } = services;
    }

    /// <summary>
    /// Starts the backplane, if any, when the host starts, and closes every connection with 1001 when
    /// it stops. It acts in the host's "starting" and "stopping" phases, which run before any hosted
    /// service starts or stops, so Kestrel still carries the close handshakes.
    /// </summary>
    internal sealed class RealtimeLifecycle(RealtimeServer server, IOptions<RealtimeOptions> options) : IHostedLifecycleService
    {
        public Task StartingAsync(CancellationToken cancellationToken)
        {
            server.StartBackplane();
            return Task.CompletedTask;
        }

        public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StoppingAsync(CancellationToken cancellationToken) => server.ShutdownAsync(options.Value.ShutdownTimeout);

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}

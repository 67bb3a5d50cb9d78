using Microsoft.AspNetCore.Http;
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
        /// </summary>
        /// <param name="services">The application's services.</param>
        /// <param name="configure">Sets the defaults every endpoint starts from.</param>
        public static IRealtimeBuilder AddRealtime(this IServiceCollection services, Action<RealtimeOptions>? configure = null)
        {
            ArgumentNullException.ThrowIfNull(services);
            services.AddOptions<RealtimeOptions>();
            if (configure is not null) services.Configure(configure);
            services.TryAddSingleton(provider => new RealtimeServer(
                provider.GetRequiredService<ILogger<RealtimeServer>>(),
                provider.GetService<TimeProvider>(),
                provider.GetService<IRealtimeBackplane>(),
                new RealtimeMetrics(provider.GetService<System.Diagnostics.Metrics.IMeterFactory>())));
            services.TryAddSingleton<IRealtimeServer>(provider => provider.GetRequiredService<RealtimeServer>());
            services.AddHostedService<RealtimeLifecycle>();
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
        /// <paramref name="handlers"/>. Requests that are not WebSocket upgrades get 400/426/405.
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
            return endpoints.Map(pattern, endpoint.HandleAsync).WithDisplayName($"Realtime {pattern}");
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

using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace Realtime.Direct;

/// <summary>
/// Puts <see cref="ApplicationCapturingServer"/> around Kestrel's <see cref="IServer"/> registration, so
/// that direct connections can run the application Kestrel runs. Only Kestrel's own server is wrapped
/// (a test server or another server registered later is left as it is, and direct connections then
/// stay off); registering twice changes nothing.
/// </summary>
internal static class ApplicationCapture
{
    private const string KestrelServer = "Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerImpl";

    public static void Register(IServiceCollection services)
    {
        services.TryAddSingleton<DirectApplication>();
        // The host uses the last IServer registered.
        for (int i = services.Count - 1; i >= 0; i--)
        {
            var descriptor = services[i];
            if (descriptor.ServiceType != typeof(IServer)) continue;
            if (descriptor.IsKeyedService || descriptor.ImplementationType is not { } kestrel || kestrel.FullName != KestrelServer) return;
            // Kestrel's server is made by the container as before, under its own type.
            services.TryAddSingleton(kestrel);
            services[i] = ServiceDescriptor.Singleton<IServer>(provider =>
                new ApplicationCapturingServer((IServer)provider.GetRequiredService(kestrel), provider.GetRequiredService<DirectApplication>()));
            return;
        }
    }
}

using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Http.Features;

namespace Realtime.Direct;

/// <summary>
/// The application Kestrel runs for every request (the host's <see cref="IHttpApplication{TContext}"/>:
/// the whole middleware pipeline, routing and endpoints, with the host's request logging and
/// diagnostics), captured when the server starts. A request that <see cref="DirectConnectionMiddleware"/>
/// takes runs through this same object, so nothing the application configured is skipped.
/// </summary>
internal sealed class DirectApplication
{
    private Runner? _runner;

    /// <summary>True once the server started with an application to run.</summary>
    public bool IsCaptured => Volatile.Read(ref _runner) is not null;

    /// <summary>Called by <see cref="ApplicationCapturingServer"/> as the server starts.</summary>
    public void Capture<TContext>(IHttpApplication<TContext> application) where TContext : notnull =>
        Volatile.Write(ref _runner, new Runner<TContext>(application));

    /// <summary>
    /// Runs one request through the application, as Kestrel does: makes its context, runs the pipeline,
    /// finishes the response (a 500 when the application threw before starting one) and disposes the
    /// context. Returns what the application threw, if anything, for the caller to log.
    /// </summary>
    public Task<Exception?> ProcessRequestAsync(DirectConnectionFeatures features) =>
        (Volatile.Read(ref _runner) ?? throw new InvalidOperationException("the server has not started")).ProcessRequestAsync(features);

    private abstract class Runner
    {
        public abstract Task<Exception?> ProcessRequestAsync(DirectConnectionFeatures features);
    }

    private sealed class Runner<TContext>(IHttpApplication<TContext> application) : Runner where TContext : notnull
    {
        public override async Task<Exception?> ProcessRequestAsync(DirectConnectionFeatures features)
        {
            var context = application.CreateContext(features);
            Exception? failure = null;
            try
            {
                await application.ProcessRequestAsync(context).ConfigureAwait(false);
            }
            catch (Exception exception)
            {
                failure = exception;
            }
            try
            {
                await features.CompleteAsync(failure).ConfigureAwait(false);
            }
            finally
            {
                application.DisposeContext(context, failure);
            }
            return failure;
        }
    }
}

/// <summary>
/// Kestrel's <see cref="IServer"/> with one addition: it hands the application it is started with to
/// <see cref="DirectApplication"/>. Everything else is Kestrel's own; the container that made Kestrel's
/// server disposes it.
/// </summary>
internal sealed class ApplicationCapturingServer(IServer inner, DirectApplication application) : IServer
{
    /// <summary>The server this one stands for.</summary>
    public IServer Inner => inner;

    public IFeatureCollection Features => inner.Features;

    public Task StartAsync<TContext>(IHttpApplication<TContext> httpApplication, CancellationToken cancellationToken) where TContext : notnull
    {
        application.Capture(httpApplication);
        return inner.StartAsync(httpApplication, cancellationToken);
    }

    public Task StopAsync(CancellationToken cancellationToken) => inner.StopAsync(cancellationToken);

    public void Dispose()
    {
    }
}

using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Microsoft.AspNetCore.Builder;

/// <summary>
/// Serves the channels browser client (clients/channels in the repository, the npm package
/// <c>@realtime/channels</c>), embedded in this assembly, at a fixed path: pages import it without a
/// build step.
/// </summary>
public static class ChannelsClientEndpoint
{
    /// <summary>Where the client's ES module is served.</summary>
    public const string ScriptPath = "/_realtime/channels.js";

    /// <summary>Where the client's TypeScript declarations are served.</summary>
    public const string DeclarationsPath = "/_realtime/channels.d.ts";

    private static readonly Lazy<ClientFile> s_script = new(() => ClientFile.Load("Realtime.Channels.channels.js", "text/javascript; charset=utf-8"));
    private static readonly Lazy<ClientFile> s_declarations = new(() => ClientFile.Load("Realtime.Channels.channels.d.ts", "text/plain; charset=utf-8"));
    private static readonly ConditionalWeakTable<IEndpointRouteBuilder, IEndpointConventionBuilder> s_mapped = [];

    /// <summary>
    /// Maps <see cref="ScriptPath"/> and <see cref="DeclarationsPath"/> (once per route builder: a
    /// second call returns the first's convention builder). Answers carry an ETag and
    /// <c>Cache-Control: no-cache</c>, so browsers revalidate and get 304 while the file is unchanged.
    /// </summary>
    /// <param name="endpoints">The application's routes.</param>
    public static IEndpointConventionBuilder MapRealtimeChannelsClient(this IEndpointRouteBuilder endpoints)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        lock (s_mapped)
        {
            if (s_mapped.TryGetValue(endpoints, out var mapped)) return mapped;
            var group = endpoints.MapGroup("");
            group.MapGet(ScriptPath, (HttpContext http) => s_script.Value.Write(http));
            group.MapGet(DeclarationsPath, (HttpContext http) => s_declarations.Value.Write(http));
            s_mapped.Add(endpoints, group);
            return group;
        }
    }

    private sealed record ClientFile(byte[] Content, string ContentType, string ETag)
    {
        public static ClientFile Load(string resource, string contentType)
        {
            using var stream = typeof(ChannelsClientEndpoint).Assembly.GetManifestResourceStream(resource)
                ?? throw new InvalidOperationException($"Embedded resource {resource} is missing from Realtime.Channels.");
            using var copy = new MemoryStream();
            stream.CopyTo(copy);
            var content = copy.ToArray();
            return new ClientFile(content, contentType, $"\"{Convert.ToHexString(SHA256.HashData(content), 0, 16)}\"");
        }

        public Task Write(HttpContext http)
        {
            var response = http.Response;
            response.Headers.ETag = ETag;
            response.Headers.CacheControl = "no-cache";
            if (http.Request.Headers.IfNoneMatch.Contains(ETag))
            {
                response.StatusCode = StatusCodes.Status304NotModified;
                return Task.CompletedTask;
            }
            response.ContentType = ContentType;
            response.ContentLength = Content.Length;
            return response.Body.WriteAsync(Content).AsTask();
        }
    }
}

using Microsoft.Extensions.DependencyInjection.Extensions;
using Realtime;
using Realtime.Redis;
using StackExchange.Redis;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Adds the Redis backplane to a Realtime server.</summary>
public static class RedisBackplaneBuilderExtensions
{
    /// <summary>
    /// Joins this server to the others on the same Redis (and channel prefix): topic publishes reach
    /// subscribers on every server. Only the topics with subscribers on this server are subscribed in Redis.
    /// </summary>
    /// <param name="builder">What <c>AddRealtime</c> returned.</param>
    /// <param name="configuration">A StackExchange.Redis configuration string, for example <c>127.0.0.1:6379</c>.</param>
    /// <param name="configure">Further settings (channel prefix, node id, ...).</param>
    public static IRealtimeBuilder AddRedisBackplane(this IRealtimeBuilder builder, string configuration, Action<RedisBackplaneOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return builder.AddRedisBackplane(options =>
        {
            options.Configuration = configuration;
            configure?.Invoke(options);
        });
    }

    /// <summary>
    /// Joins this server to the others on the same Redis (and channel prefix), configured with
    /// StackExchange.Redis options (copied before use).
    /// </summary>
    /// <param name="builder">What <c>AddRealtime</c> returned.</param>
    /// <param name="configuration">The StackExchange.Redis configuration.</param>
    /// <param name="configure">Further settings (channel prefix, node id, ...).</param>
    public static IRealtimeBuilder AddRedisBackplane(this IRealtimeBuilder builder, ConfigurationOptions configuration, Action<RedisBackplaneOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return builder.AddRedisBackplane(options =>
        {
            options.ConfigurationOptions = configuration;
            configure?.Invoke(options);
        });
    }

    /// <summary>
    /// Joins this server to the others on the same Redis, with every setting given by
    /// <paramref name="configure"/> (which must set a configuration string or options).
    /// </summary>
    /// <param name="builder">What <c>AddRealtime</c> returned.</param>
    /// <param name="configure">The settings.</param>
    public static IRealtimeBuilder AddRedisBackplane(this IRealtimeBuilder builder, Action<RedisBackplaneOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        builder.Services.AddOptions<RedisBackplaneOptions>().Configure(configure);
        builder.Services.TryAddSingleton<RedisBackplane>();
        builder.Services.Replace(ServiceDescriptor.Singleton<IRealtimeBackplane>(provider => provider.GetRequiredService<RedisBackplane>()));
        return builder;
    }
}

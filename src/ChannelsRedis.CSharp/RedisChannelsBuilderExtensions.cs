using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Realtime.Channels;
using Realtime.Channels.Redis;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Keeps channel history and presence in Redis, shared by every node.</summary>
public static class RedisChannelsBuilderExtensions
{
    /// <summary>
    /// Replaces the in-memory channel store and presence with Redis ones (<see cref="RedisChannelStore"/>,
    /// <see cref="RedisChannelPresence"/>): positions are assigned in Redis, history is a Redis Stream per
    /// channel, presence spans the nodes. Publications reach other nodes' subscribers through the Realtime
    /// backplane: add it too (<c>AddRealtime().AddRedisBackplane(...)</c>, package Realtime.Redis).
    /// </summary>
    /// <param name="builder">What <c>AddRealtimeChannels</c> returned.</param>
    /// <param name="configuration">A StackExchange.Redis configuration string, for example <c>127.0.0.1:6379</c>.</param>
    /// <param name="configure">Further settings (key prefix, heartbeat, ...).</param>
    public static IRealtimeChannelsBuilder AddRedis(this IRealtimeChannelsBuilder builder, string configuration, Action<RedisChannelsOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return builder.AddRedis(options =>
        {
            options.Configuration = configuration;
            configure?.Invoke(options);
        });
    }

    /// <summary>
    /// Replaces the in-memory channel store and presence with Redis ones, with every setting given by
    /// <paramref name="configure"/> (which must set a configuration string or options).
    /// </summary>
    /// <param name="builder">What <c>AddRealtimeChannels</c> returned.</param>
    /// <param name="configure">The settings.</param>
    public static IRealtimeChannelsBuilder AddRedis(this IRealtimeChannelsBuilder builder, Action<RedisChannelsOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        var services = builder.Services;
        services.AddOptions<RedisChannelsOptions>().Configure(configure);
        services.TryAddSingleton(provider => new RedisChannelsConnection(provider.GetRequiredService<IOptions<RedisChannelsOptions>>().Value));
        services.TryAddSingleton(provider => new RedisChannelStore(
            provider.GetRequiredService<RedisChannelsConnection>(),
            provider.GetRequiredService<IOptions<RealtimeChannelsOptions>>().Value.Retention,
            provider.GetRequiredService<IOptions<RedisChannelsOptions>>().Value));
        services.TryAddSingleton(provider => new RedisChannelPresence(
            provider.GetRequiredService<RedisChannelsConnection>(),
            provider.GetRequiredService<IOptions<RedisChannelsOptions>>().Value,
            provider.GetRequiredService<IOptions<RealtimeChannelsOptions>>().Value.NodeId,
            provider.GetRequiredService<ILoggerFactory>().CreateLogger<RedisChannelPresence>()));
        services.Replace(ServiceDescriptor.Singleton<IChannelStore>(provider => provider.GetRequiredService<RedisChannelStore>()));
        services.Replace(ServiceDescriptor.Singleton<IChannelPresence>(provider => provider.GetRequiredService<RedisChannelPresence>()));
        return builder;
    }
}

using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Realtime;
using Realtime.Channels;
using Realtime.Channels.Redis;
using Realtime.Redis;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Keeps channel history and presence in Redis, shared by every node.</summary>
public static class RedisChannelsBuilderExtensions
{
    /// <summary>
    /// Makes channels span every node on one Redis: replaces the in-memory channel store and presence with
    /// Redis ones (<see cref="RedisChannelStore"/>, <see cref="RedisChannelPresence"/>), adds the Redis
    /// backplane (package Realtime.Redis) on the same Redis unless <c>AddRedisBackplane</c> was called
    /// before, so that publications reach other nodes' subscribers, and fills from history what Redis
    /// pub/sub drops (<see cref="RedisChannelsOptions.GapCheckInterval"/>).
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
    /// Makes channels span every node on one Redis, with every setting given by <paramref name="configure"/>
    /// (which must set a configuration string or options); see the other overload.
    /// </summary>
    /// <param name="builder">What <c>AddRealtimeChannels</c> returned.</param>
    /// <param name="configure">The settings.</param>
    public static IRealtimeChannelsBuilder AddRedis(this IRealtimeChannelsBuilder builder, Action<RedisChannelsOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        var services = builder.Services;
        services.AddOptions<RedisChannelsOptions>().Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<RedisChannelsOptions>, RedisChannelsOptionsValidation>());
        services.TryAddSingleton(provider => new RedisChannelsConnection(Options(provider)));
        services.TryAddSingleton(provider => new RedisChannelStore(
            provider.GetRequiredService<RedisChannelsConnection>(),
            provider.GetRequiredService<IOptions<RealtimeChannelsOptions>>().Value.Retention,
            Options(provider)));
        services.TryAddSingleton(provider => new RedisChannelPresence(
            provider.GetRequiredService<RedisChannelsConnection>(),
            Options(provider),
            provider.GetRequiredService<IOptions<RealtimeChannelsOptions>>().Value.NodeId,
            provider.GetRequiredService<ILoggerFactory>().CreateLogger<RedisChannelPresence>()));
        services.Replace(ServiceDescriptor.Singleton<IChannelStore>(provider => provider.GetRequiredService<RedisChannelStore>()));
        services.Replace(ServiceDescriptor.Singleton<IChannelPresence>(provider => provider.GetRequiredService<RedisChannelPresence>()));

        if (!services.Any(d => d.ServiceType == typeof(RedisBackplane)))
        {
            new RealtimeServices(services).AddRedisBackplane(_ => { });
            services.AddOptions<RedisBackplaneOptions>().Configure<IOptions<RedisChannelsOptions>>((backplane, channels) =>
            {
                backplane.Configuration = channels.Value.Configuration;
                backplane.ConfigurationOptions = channels.Value.ConfigurationOptions;
                backplane.ChannelPrefix = "channels:" + channels.Value.KeyPrefix;
            });
        }
        Decorate(services);
        return builder;
    }

    /// <summary>Puts the gap filler in front of the registered backplane (it sees every publication this node delivers).</summary>
    private static void Decorate(IServiceCollection services)
    {
        var original = services.Last(d => d.ServiceType == typeof(IRealtimeBackplane));
        if (original.ImplementationFactory?.Target is GapFillerRegistration) return;
        services.Remove(original);
        services.TryAddSingleton(provider => new PublicationGapFiller(
            Create(provider, original),
            provider.GetRequiredService<RedisChannelStore>(),
            Options(provider).GapCheckInterval,
            provider.GetRequiredService<ILoggerFactory>().CreateLogger<PublicationGapFiller>()));
        services.AddSingleton<IRealtimeBackplane>(new GapFillerRegistration().Resolve);
    }

    private static IRealtimeBackplane Create(IServiceProvider provider, ServiceDescriptor descriptor) =>
        (IRealtimeBackplane)(descriptor.ImplementationInstance
            ?? descriptor.ImplementationFactory?.Invoke(provider)
            ?? ActivatorUtilities.CreateInstance(provider, descriptor.ImplementationType!));

    private static RedisChannelsOptions Options(IServiceProvider provider) => provider.GetRequiredService<IOptions<RedisChannelsOptions>>().Value;

    private sealed class GapFillerRegistration
    {
        public IRealtimeBackplane Resolve(IServiceProvider provider) => provider.GetRequiredService<PublicationGapFiller>();
    }

    private sealed class RealtimeServices(IServiceCollection services) : IRealtimeBuilder
    {
        public IServiceCollection Services { get; } = services;
    }
}

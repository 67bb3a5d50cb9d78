using StackExchange.Redis;

namespace Realtime.Channels.Redis;

/// <summary>
/// The one Redis connection that a node's channel store and presence share, opened on first use. The
/// node starts while Redis is down; operations then fail (and are reported to the client) until it is back.
/// </summary>
internal sealed class RedisChannelsConnection : IAsyncDisposable
{
    private readonly ConfigurationOptions configuration;
    private readonly Lazy<Task<ConnectionMultiplexer>> multiplexer;

    public RedisChannelsConnection(RedisChannelsOptions options)
    {
        options.Validate();
        configuration = options.ConfigurationOptions?.Clone() ?? ConfigurationOptions.Parse(options.Configuration!);
        configuration.AbortOnConnectFail = false;
        configuration.BacklogPolicy = BacklogPolicy.FailFast;
        Keys = new RedisChannelKeys(options.KeyPrefix);
        multiplexer = new(() => ConnectionMultiplexer.ConnectAsync(configuration), LazyThreadSafetyMode.ExecutionAndPublication);
    }

    public RedisChannelKeys Keys { get; }

    public async ValueTask<IDatabase> DatabaseAsync() => (await multiplexer.Value.ConfigureAwait(false)).GetDatabase();

    public async ValueTask DisposeAsync()
    {
        if (multiplexer.IsValueCreated)
        {
            try
            {
                await (await multiplexer.Value.ConfigureAwait(false)).DisposeAsync().ConfigureAwait(false);
            }
            catch (RedisConnectionException)
            {
            }
        }
    }
}

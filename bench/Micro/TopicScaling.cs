using BenchmarkDotNet.Attributes;
using Realtime;

namespace Micro;

/// <summary>
/// Filling and emptying one topic of n subscribers through the host's <see cref="TopicRegistry{T}"/>
/// (each subscriber with its own subscription set, as each connection has). The whole operation is
/// one invocation: its total cost should grow linearly with n.
/// </summary>
[MemoryDiagnoser]
[InvocationCount(1)]
public class TopicChurn
{
    static readonly Realtime.Protocol.Topics.TopicLimits Limits = new(256, 1_000);

    [Params(1_000, 10_000, 100_000)]
    public int N;

    Subscriptions<Subscriber>[] subscriptions = [];
    TopicRegistry<Subscriber> registry = new();

    void Fresh()
    {
        subscriptions = Enumerable.Range(0, N).Select(i => { var s = new Subscriber(i); return new Subscriptions<Subscriber>(s, s); }).ToArray();
        registry = new TopicRegistry<Subscriber>(static _ => { }, static _ => { });
    }

    void SubscribeEach()
    {
        for (int i = 0; i < N; i++) registry.Subscribe(subscriptions[i], "room", Limits);
    }

    [IterationSetup(Target = nameof(SubscribeAll))]
    public void BeforeSubscribe() => Fresh();

    [Benchmark(Description = "subscribe n connections to one topic (total)")]
    public int SubscribeAll()
    {
        SubscribeEach();
        return registry.SubscriberCount("room");
    }

    [IterationSetup(Target = nameof(UnsubscribeAll))]
    public void BeforeUnsubscribe()
    {
        Fresh();
        SubscribeEach();
    }

    [Benchmark(Description = "unsubscribe n connections from one topic (total)")]
    public int UnsubscribeAll()
    {
        for (int i = 0; i < N; i++) registry.Unsubscribe(subscriptions[i], "room");
        return registry.SubscriberCount("room");
    }
}

/// <summary>A publish to one topic of n subscribers through the host's registry: find the topic, enumerate every recipient but the sender.</summary>
[MemoryDiagnoser]
public class TopicFanout
{
    static readonly Realtime.Protocol.Topics.TopicLimits Limits = new(256, 1_000);

    [Params(1_000, 10_000, 100_000)]
    public int N;

    TopicRegistry<Subscriber> registry = new();
    Subscriber sender = new(-1);

    [GlobalSetup]
    public void Setup()
    {
        registry = new TopicRegistry<Subscriber>();
        for (int i = 0; i < N; i++)
        {
            var subscriber = new Subscriber(i);
            registry.Subscribe(new Subscriptions<Subscriber>(subscriber, subscriber), "room", Limits);
            if (i == N / 2) sender = subscriber;
        }
    }

    [Benchmark(Description = "publish to one topic of n, skipping the sender (enumerate)")]
    public int Publish()
    {
        int sum = 0;
        foreach (var subscription in registry.Find("room")!.Recipients(sender)) sum += subscription.Subscriber.Id;
        return sum;
    }
}

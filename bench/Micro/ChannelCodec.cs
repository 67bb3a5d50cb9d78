using System.Text;
using BenchmarkDotNet.Attributes;
using Realtime.Protocol;

namespace Micro;

/// <summary>
/// The channels protocol's codecs on their hot paths: the server encodes each publication once per
/// form (a <c>pub</c> of 64 B data, from its parts or through the union) and decodes each client
/// <c>publish</c> (64 B data), in the JSON and the binary form.
/// </summary>
[MemoryDiagnoser]
public class ChannelCodec
{
    const string Channel = "room:lobby";
    static readonly ChannelPosition Position = new("k3J9", 123_456);

    byte[] data = [];
    byte[] destination = new byte[512];
    ServerMessage publication = null!;
    byte[] jsonPublish = [];
    byte[] binaryPublish = [];

    [GlobalSetup]
    public void Setup()
    {
        // {"text":"aaa…"}: 64 bytes of JSON.
        data = Encoding.UTF8.GetBytes("{\"text\":\"" + new string('a', 64 - 11) + "\"}");
        if (data.Length != 64) throw new InvalidOperationException($"data is {data.Length} bytes");
        publication = ServerMessage.NewPublication(Channel, Position, ChannelData.OfBytes(data));
        var publish = ClientMessage.NewPublish(17, Channel, "c7f0-17", ChannelData.OfBytes(data));
        jsonPublish = ChannelJson.encodeClient(publish);
        binaryPublish = ChannelBinary.encodeClient(publish);
    }

    [Benchmark(Description = "JSON: pub from its parts, new array")]
    public byte[] JsonEncodePublication() => ChannelJson.encodePublication(Channel, Position, data);

    [Benchmark(Description = "JSON: pub from its parts, into a span")]
    public int JsonWritePublication() => ChannelJson.writePublication(Channel, Position, data, destination);

    [Benchmark(Description = "JSON: pub from the union, new array")]
    public byte[] JsonEncodeServer() => ChannelJson.encodeServer(publication);

    [Benchmark(Description = "JSON: decode publish")]
    public bool JsonDecodePublish() => ChannelJson.decodeClient(jsonPublish).IsOk;

    [Benchmark(Description = "binary: pub from its parts, new array")]
    public byte[] BinaryEncodePublication() => ChannelBinary.encodePublication(Channel, Position, data);

    [Benchmark(Description = "binary: pub from its parts, into a span")]
    public int BinaryWritePublication() => ChannelBinary.writePublication(Channel, Position, data, destination);

    [Benchmark(Description = "binary: decode publish")]
    public bool BinaryDecodePublish() => ChannelBinary.decodeClient(binaryPublish).IsOk;
}

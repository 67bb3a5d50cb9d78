using System.Buffers.Binary;
using BenchmarkDotNet.Attributes;
using Realtime.Protocol;

namespace Micro;

/// <summary>Client frames (masked, FIN set) as a server receives them, for the benchmarks' input buffers.</summary>
static class ClientFrames
{
    public const uint Key = 0x5A3C_96E1;

    /// <summary>`count` masked frames with `payload`-byte payloads of ASCII text, back to back.</summary>
    public static byte[] Many(int count, int payload, byte opcode = 0x1, bool fragmented = false)
    {
        int frameSize = 2 + 4 + payload;
        var buffer = new byte[count * frameSize];
        var plain = new byte[payload];
        for (int i = 0; i < payload; i++) plain[i] = (byte)('a' + i % 26);
        for (int f = 0; f < count; f++)
        {
            var frame = buffer.AsSpan(f * frameSize, frameSize);
            byte op = fragmented ? (f == 0 ? opcode : (byte)0x0) : opcode;
            bool fin = !fragmented || f == count - 1;
            frame[0] = (byte)((fin ? 0x80 : 0) | op);
            frame[1] = (byte)(0x80 | payload);
            BinaryPrimitives.WriteUInt32LittleEndian(frame[2..], Key);
            Masking.apply(Key, 0L, plain, frame[6..]);
        }
        return buffer;
    }
}

/// <summary>FrameDecoder.step over a buffer of 1,000 small masked frames (per frame).</summary>
[MemoryDiagnoser]
public class FrameDecode
{
    const int Frames = 1000;
    byte[] input = [];

    [Params(16, 125)]
    public int Payload { get; set; }

    [GlobalSetup]
    public void Setup() => input = ClientFrames.Many(Frames, Payload);

    [Benchmark(OperationsPerInvoke = Frames, Description = "FrameDecoder.step (per frame)")]
    public int Decode()
    {
        var decoder = FrameDecoderModule.initial;
        ReadOnlySpan<byte> rest = input;
        int payloads = 0;
        while (true)
        {
            var (next, consumed, ev) = FrameDecoderModule.step(Role.Server, false, decoder, rest);
            decoder = next;
            rest = rest[consumed..];
            if (ev.Tag == DecodeEvent.Tags.Payload) payloads++;
            else if (ev.Tag == DecodeEvent.Tags.NeedMore || ev.Tag == DecodeEvent.Tags.Failed) break;
        }
        if (payloads != Frames) throw new InvalidOperationException($"decoded {payloads} payloads");
        return payloads;
    }
}

/// <summary>Masking.apply against a plain memory copy of the same size (the upper bound).</summary>
[MemoryDiagnoser]
public class Unmask
{
    byte[] source = [], destination = [];

    [Params(16, 125, 4096, 65536, 1048576)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        source = new byte[Size];
        destination = new byte[Size];
        new Random(42).NextBytes(source);
    }

    [Benchmark(Baseline = true, Description = "Span.CopyTo (limit)")]
    public void Copy() => source.AsSpan().CopyTo(destination);

    [Benchmark(Description = "Masking.apply")]
    public void Apply() => Masking.apply(ClientFrames.Key, 0L, source, destination);

    [Benchmark(Description = "Masking.apply in place")]
    public void ApplyInPlace() => Masking.applyInPlace(ClientFrames.Key, 0L, destination);
}

/// <summary>Connection.receive over many small frames: whole messages, and one message in many fragments.</summary>
[MemoryDiagnoser]
public class MessageAssembly
{
    const int Frames = 1000;
    byte[] messages = [], fragments = [];

    [GlobalSetup]
    public void Setup()
    {
        messages = ClientFrames.Many(Frames, 32);
        fragments = ClientFrames.Many(Frames, 32, fragmented: true);
    }

    static int ReceiveAll(byte[] input)
    {
        var connection = ConnectionModule.create(ConnectionModule.defaultOptions, 0L);
        ReadOnlySpan<byte> rest = input;
        int events = 0;
        while (true)
        {
            var (next, consumed, ev) = ConnectionModule.receive(connection, rest, 1L);
            connection = next;
            rest = rest[consumed..];
            if (ev.Tag == ConnectionEvent.Tags.MessageData) events++;
            else break;
        }
        return events;
    }

    [Benchmark(OperationsPerInvoke = Frames, Description = "Connection.receive, 1,000 text messages of 32 B (per frame)")]
    public int WholeMessages()
    {
        int n = ReceiveAll(messages);
        if (n != Frames) throw new InvalidOperationException($"got {n} events");
        return n;
    }

    [Benchmark(OperationsPerInvoke = Frames, Description = "Connection.receive, 1 text message in 1,000 fragments (per frame)")]
    public int Fragments()
    {
        int n = ReceiveAll(fragments);
        if (n != Frames) throw new InvalidOperationException($"got {n} events");
        return n;
    }
}

/// <summary>A subscriber as the host would hold it: a reference type compared by reference.</summary>
public sealed class Subscriber(int id)
{
    public int Id { get; } = id;
}


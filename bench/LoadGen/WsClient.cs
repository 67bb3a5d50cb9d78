using System.Buffers.Binary;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace LoadGen;

/// <summary>A received data message: payload bytes in Array[Offset, Offset+Length), valid until the next read.</summary>
public readonly record struct Message(byte[] Array, int Offset, int Length, int Opcode, bool Compressed)
{
    public ReadOnlySpan<byte> Span => Array.AsSpan(Offset, Length);
}

/// <summary>
/// A minimal WebSocket client over a raw socket (optionally SslStream): its own HTTP upgrade,
/// masked client frames with a nonzero random key per connection, and a parser for server
/// frames that hands out payloads in place (fragments are assembled; pings are answered).
/// Always connects to 127.0.0.1.
/// </summary>
public sealed class WsClient : IDisposable
{
    public Stream Stream { get; }
    public uint MaskKey { get; }
    public bool DeflateNegotiated { get; private set; }
    public bool Closed { get; private set; }
    /// <summary>Serializes writes when a sender task and the reader (pongs) share the connection.</summary>
    public SemaphoreSlim WriteLock { get; } = new(1, 1);

    readonly Socket socket;
    byte[] recv;
    int recvStart, recvEnd;
    byte[] fragment = [];
    int fragmentLength, fragmentOpcode;
    bool fragmentCompressed, inFragment;
    byte[] control = new byte[256];
    int controlLength;

    WsClient(Socket socket, Stream stream, int receiveBuffer)
    {
        this.socket = socket;
        Stream = stream;
        recv = new byte[receiveBuffer];
        uint key;
        do key = (uint)RandomNumberGenerator.GetInt32(int.MinValue, int.MaxValue); while (key == 0 || (key & 0xFF) == 0 || (key >> 24) == 0);
        MaskKey = key; // nonzero, and no zero byte either, so every payload byte is really XORed
    }

    /// <summary>Connects and upgrades; with <paramref name="subprotocol"/>, offers it and requires the server to choose it.</summary>
    public static async Task<WsClient> ConnectAsync(int port, string path, bool tls, bool deflate, int receiveBuffer, CancellationToken ct, string? subprotocol = null)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), ct);
            Stream stream = new NetworkStream(socket, ownsSocket: true);
            if (tls)
            {
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                {
                    TargetHost = "localhost",
                    // The servers use self-signed certificates made for the run: trust them.
                    RemoteCertificateValidationCallback = static (_, _, _, _) => true,
                }, ct);
                stream = ssl;
            }
            var client = new WsClient(socket, stream, receiveBuffer);
            await client.HandshakeAsync(port, path, deflate, subprotocol, ct);
            return client;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    async Task HandshakeAsync(int port, string path, bool deflate, string? subprotocol, CancellationToken ct)
    {
        string key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(16));
        var request = new StringBuilder()
            .Append("GET ").Append(path).Append(" HTTP/1.1\r\n")
            .Append("Host: 127.0.0.1:").Append(port).Append("\r\n")
            .Append("Upgrade: websocket\r\nConnection: Upgrade\r\n")
            .Append("Sec-WebSocket-Key: ").Append(key).Append("\r\n")
            .Append("Sec-WebSocket-Version: 13\r\n");
        if (deflate) request.Append("Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n");
        if (subprotocol is not null) request.Append("Sec-WebSocket-Protocol: ").Append(subprotocol).Append("\r\n");
        request.Append("\r\n");
        await Stream.WriteAsync(Encoding.ASCII.GetBytes(request.ToString()), ct);

        int headerEnd;
        while ((headerEnd = recv.AsSpan(0, recvEnd).IndexOf("\r\n\r\n"u8)) < 0)
        {
            if (recvEnd == recv.Length) throw new IOException("handshake response too long");
            int n = await Stream.ReadAsync(recv.AsMemory(recvEnd), ct);
            if (n == 0) throw new IOException("connection closed during the handshake");
            recvEnd += n;
        }
        string response = Encoding.ASCII.GetString(recv, 0, headerEnd);
        recvStart = headerEnd + 4;
        if (!response.StartsWith("HTTP/1.1 101", StringComparison.Ordinal))
            throw new IOException($"upgrade refused: {response.Split('\r')[0]}");
        foreach (string line in response.Split("\r\n"))
        {
            if (line.StartsWith("Sec-WebSocket-Extensions:", StringComparison.OrdinalIgnoreCase) && line.Contains("permessage-deflate", StringComparison.OrdinalIgnoreCase))
            {
                if (!line.Contains("server_no_context_takeover", StringComparison.OrdinalIgnoreCase))
                    throw new IOException("server accepted permessage-deflate without server_no_context_takeover");
                DeflateNegotiated = true;
            }
        }
        if (deflate && !DeflateNegotiated) throw new IOException("server did not accept permessage-deflate");
        if (subprotocol is not null && !response.Split("\r\n").Any(line =>
                line.StartsWith("Sec-WebSocket-Protocol:", StringComparison.OrdinalIgnoreCase) && line["Sec-WebSocket-Protocol:".Length..].Trim() == subprotocol))
            throw new IOException($"server did not choose the subprotocol {subprotocol}");
    }

    /// <summary>Reads more bytes from the socket; false when the connection ended. Pooled: no allocation per read.</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> FillAsync(CancellationToken ct = default)
    {
        if (recvStart == recvEnd) { recvStart = 0; recvEnd = 0; }
        else if (recvEnd == recv.Length)
        {
            int kept = recvEnd - recvStart;
            if (recvStart == 0) Array.Resize(ref recv, recv.Length * 2); // one frame is larger than the buffer
            else recv.AsSpan(recvStart, kept).CopyTo(recv);
            recvStart = 0;
            recvEnd = kept;
        }
        int n = await Stream.ReadAsync(recv.AsMemory(recvEnd), ct);
        if (n == 0) { Closed = true; return false; }
        recvEnd += n;
        return true;
    }

    /// <summary>True when a pong is owed: write <see cref="TakeControl"/> before the next read.</summary>
    public bool HasControl => controlLength > 0;

    /// <summary>The pending pong frames, as bytes to write; clears them.</summary>
    public ReadOnlyMemory<byte> TakeControl()
    {
        var pending = control.AsMemory(0, controlLength);
        controlLength = 0;
        return pending;
    }

    /// <summary>The next complete data message in the buffer, if any. Protocol errors throw.</summary>
    public bool TryNext(out Message message)
    {
        while (true)
        {
            message = default;
            int available = recvEnd - recvStart;
            if (available < 2) return false;
            var span = recv.AsSpan(recvStart, available);
            byte b0 = span[0], b1 = span[1];
            if ((b1 & 0x80) != 0) throw new IOException("server frame is masked");
            long length = b1 & 0x7F;
            int header = 2;
            if (length == 126)
            {
                if (available < 4) return false;
                length = BinaryPrimitives.ReadUInt16BigEndian(span[2..]);
                header = 4;
            }
            else if (length == 127)
            {
                if (available < 10) return false;
                length = (long)BinaryPrimitives.ReadUInt64BigEndian(span[2..]);
                header = 10;
            }
            if (length > 256L * 1024 * 1024) throw new IOException("server frame too large");
            if (available < header + length) return false;
            int start = recvStart + header;
            recvStart += header + (int)length;
            int opcode = b0 & 0x0F;
            bool fin = (b0 & 0x80) != 0;
            bool rsv1 = (b0 & 0x40) != 0;
            if (opcode >= 8)
            {
                if (opcode == 8) { Closed = true; return false; }
                if (opcode == 9) AddPong(recv.AsSpan(start, (int)length));
                continue;
            }
            if (opcode == 0)
            {
                if (!inFragment) throw new IOException("continuation without a message");
                Append(recv.AsSpan(start, (int)length));
                if (!fin) continue;
                inFragment = false;
                message = new Message(fragment, 0, fragmentLength, fragmentOpcode, fragmentCompressed);
                return true;
            }
            if (inFragment) throw new IOException("new message inside a fragmented one");
            if (!fin)
            {
                inFragment = true;
                fragmentLength = 0;
                fragmentOpcode = opcode;
                fragmentCompressed = rsv1;
                Append(recv.AsSpan(start, (int)length));
                continue;
            }
            message = new Message(recv, start, (int)length, opcode, rsv1);
            return true;
        }
    }

    void Append(ReadOnlySpan<byte> data)
    {
        if (fragment.Length < fragmentLength + data.Length) Array.Resize(ref fragment, Math.Max(fragmentLength + data.Length, fragment.Length * 2));
        data.CopyTo(fragment.AsSpan(fragmentLength));
        fragmentLength += data.Length;
    }

    void AddPong(ReadOnlySpan<byte> payload)
    {
        int needed = controlLength + 6 + payload.Length;
        if (control.Length < needed) Array.Resize(ref control, needed * 2);
        controlLength += Frames.Write(control.AsSpan(controlLength), 0xA, payload, MaskKey, compressed: false);
    }

    public void Dispose()
    {
        Closed = true;
        try { socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        Stream.Dispose();
        socket.Dispose();
    }
}

/// <summary>Client frame writing and masking.</summary>
public static class Frames
{
    public static int HeaderSize(int payloadLength) => payloadLength < 126 ? 6 : payloadLength <= ushort.MaxValue ? 8 : 14;

    /// <summary>Writes one masked frame (FIN set) and returns its size.</summary>
    public static int Write(Span<byte> destination, int opcode, ReadOnlySpan<byte> payload, uint key, bool compressed)
    {
        int n = WriteHeader(destination, opcode, payload.Length, key, compressed);
        Mask(payload, destination.Slice(n, payload.Length), key);
        return n + payload.Length;
    }

    /// <summary>Writes a masked frame header (with the key) and returns its size.</summary>
    public static int WriteHeader(Span<byte> destination, int opcode, int payloadLength, uint key, bool compressed)
    {
        destination[0] = (byte)(0x80 | (compressed ? 0x40 : 0) | opcode);
        int n;
        if (payloadLength < 126) { destination[1] = (byte)(0x80 | payloadLength); n = 2; }
        else if (payloadLength <= ushort.MaxValue) { destination[1] = 0x80 | 126; BinaryPrimitives.WriteUInt16BigEndian(destination[2..], (ushort)payloadLength); n = 4; }
        else { destination[1] = 0x80 | 127; BinaryPrimitives.WriteUInt64BigEndian(destination[2..], (ulong)payloadLength); n = 10; }
        BinaryPrimitives.WriteUInt32LittleEndian(destination[n..], key);
        return n + 4;
    }

    /// <summary>XORs source with the key (key byte i%4 for payload byte i) into destination.</summary>
    public static void Mask(ReadOnlySpan<byte> source, Span<byte> destination, uint key)
    {
        ulong key64 = key | ((ulong)key << 32);
        int i = 0;
        for (; i + 8 <= source.Length; i += 8)
            BinaryPrimitives.WriteUInt64LittleEndian(destination[i..], BinaryPrimitives.ReadUInt64LittleEndian(source[i..]) ^ key64);
        for (; i < source.Length; i++)
            destination[i] = (byte)(source[i] ^ (byte)(key >> ((i & 3) * 8)));
    }

    /// <summary>
    /// Writes hex digits of value into a frame whose payload is already masked, at payload offset
    /// `at` (a multiple of 4): the digits are masked with the key as they are written.
    /// </summary>
    public static void PatchHex(Span<byte> maskedPayload, int at, int digits, ulong value, uint key)
    {
        Span<byte> plain = stackalloc byte[16];
        Payload.WriteHex(plain[..digits], value);
        for (int i = 0; i < digits; i++)
            maskedPayload[at + i] = (byte)(plain[i] ^ (byte)(key >> ((i & 3) * 8)));
    }
}

/// <summary>
/// One connection's pre-masked message: the whole frame (header + masked template payload) is
/// built once; each send copies it and patches only the sequence number and timestamp.
/// With compression the payload changes size, so each message is compressed and masked anew.
/// </summary>
public sealed class MessageWriter
{
    readonly byte[] frame;
    readonly int headerSize;
    readonly byte[] plain;
    readonly uint key;
    readonly DeflateCodec? codec;

    public MessageWriter(WsClient client, int size, int sender, bool deflate)
    {
        key = client.MaskKey;
        plain = Payload.Template(size, sender);
        headerSize = Frames.HeaderSize(size);
        frame = new byte[headerSize + size];
        Frames.Write(frame, 0x1, plain, key, compressed: false);
        if (deflate) codec = new DeflateCodec();
    }

    public byte[] Template => plain;

    /// <summary>The most bytes one message can take in a send buffer.</summary>
    public int MaxFrameSize => frame.Length + 64;

    /// <summary>Writes message `seq` stamped with `timestamp` into destination; returns its size.</summary>
    public int Write(Span<byte> destination, ulong seq, long timestamp)
    {
        if (codec is null)
        {
            frame.CopyTo(destination);
            var payload = destination.Slice(headerSize, plain.Length);
            Frames.PatchHex(payload, Payload.SeqAt, 16, seq, key);
            Frames.PatchHex(payload, Payload.TimeAt, 16, (ulong)timestamp, key);
            return frame.Length;
        }
        Payload.WriteHex(plain.AsSpan(Payload.SeqAt, 16), seq);
        Payload.WriteHex(plain.AsSpan(Payload.TimeAt, 16), (ulong)timestamp);
        var compressed = codec.Compress(plain);
        return Frames.Write(destination, 0x1, compressed, key, compressed: true);
    }
}

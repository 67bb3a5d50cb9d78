// The floor probe of the idle-connections benchmark: how much memory an idle WebSocket connection
// costs a .NET process when nothing but System.Net.Sockets carries it. Each connection is one
// Socket and one SocketAsyncEventArgs that waits with a zero-byte receive (so no buffer is held);
// there is no Kestrel, no pipe, no HTTP context and no per-connection state beyond that. Real
// servers (ours included) sit above this line; the gap to it is what they keep per connection.
//
// It answers just enough for the load generator: the opening handshake (RFC 6455 §4.2.2) of a
// GET with a Sec-WebSocket-Key, then echoes small masked frames that arrive whole (the liveness
// check). Anything else closes the connection. Not a WebSocket server: a measuring stick.
//
// Usage: dotnet SocketsFloor.dll --urls http://127.0.0.1:PORT
using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

string url = args.SkipWhile(a => a != "--urls").Skip(1).FirstOrDefault() ?? "http://127.0.0.1:5000";
var endpoint = new Uri(url);
using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
listener.Bind(new IPEndPoint(IPAddress.Parse(endpoint.Host), endpoint.Port));
listener.Listen(1024);
Console.WriteLine($"SocketsFloor listening on {url}");
while (true)
{
    var socket = await listener.AcceptAsync();
    _ = IdleConnection.OpenAsync(socket);
}

/// <summary>One connection: the handshake, then zero-byte receives until the peer sends or leaves.</summary>
sealed class IdleConnection : SocketAsyncEventArgs
{
    private const int MaxHead = 8192;
    private readonly Socket _socket;

    private IdleConnection(Socket socket) => _socket = socket;

    public static async Task OpenAsync(Socket socket)
    {
        byte[] head = ArrayPool<byte>.Shared.Rent(MaxHead);
        try
        {
            int length = 0;
            while (head.AsSpan(0, length).IndexOf("\r\n\r\n"u8) < 0)
            {
                if (length == MaxHead) { socket.Dispose(); return; }
                int read = await socket.ReceiveAsync(head.AsMemory(length, MaxHead - length), SocketFlags.None);
                if (read == 0) { socket.Dispose(); return; }
                length += read;
            }
            string? key = KeyOf(Encoding.Latin1.GetString(head, 0, length));
            if (key is null) { socket.Dispose(); return; }
            string accept = Convert.ToBase64String(SHA1.HashData(Encoding.ASCII.GetBytes(key + "258EAFA5-E914-47DA-95CA-C5AB0DC11B85")));
            await socket.SendAsync(Encoding.ASCII.GetBytes(
                $"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"), SocketFlags.None);
        }
        catch (SocketException)
        {
            socket.Dispose();
            return;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(head);
        }
        new IdleConnection(socket).WaitForData();
    }

    private static string? KeyOf(string head)
    {
        foreach (var line in head.Split("\r\n"))
        {
            if (line.StartsWith("Sec-WebSocket-Key:", StringComparison.OrdinalIgnoreCase)) return line[18..].Trim();
        }
        return null;
    }

    private void WaitForData()
    {
        while (true)
        {
            SetBuffer(Memory<byte>.Empty);
            try
            {
                if (_socket.ReceiveAsync(this)) return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            if (!EchoWhatArrived()) return;
        }
    }

    protected override void OnCompleted(SocketAsyncEventArgs e)
    {
        if (EchoWhatArrived()) WaitForData();
    }

    /// <summary>Reads what arrived and echoes it unmasked; false (and closed) when the connection is over.</summary>
    private bool EchoWhatArrived()
    {
        if (SocketError != SocketError.Success) return Close();
        byte[] buffer = ArrayPool<byte>.Shared.Rent(4096);
        try
        {
            int read = _socket.Receive(buffer, SocketFlags.None);
            if (read == 0) return Close();
            int position = 0, reply = 0;
            // Whole masked frames with payloads under 126 bytes; anything else ends the connection.
            while (position < read)
            {
                if (read - position < 6 || (buffer[position + 1] & 0x80) == 0) return Close();
                int payload = buffer[position + 1] & 0x7F;
                if (payload >= 126 || position + 6 + payload > read) return Close();
                // The reply is written over the request, behind the read position: take the key first.
                uint key = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(buffer.AsSpan(position + 2));
                byte first = buffer[position];
                for (int i = 0; i < payload; i++)
                    buffer[reply + 2 + i] = (byte)(buffer[position + 6 + i] ^ (byte)(key >> (8 * (i & 3))));
                buffer[reply] = first;
                buffer[reply + 1] = (byte)payload;
                position += 6 + payload;
                reply += 2 + payload;
            }
            _socket.Send(buffer, 0, reply, SocketFlags.None);
            return true;
        }
        catch (SocketException)
        {
            return Close();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private bool Close()
    {
        _socket.Dispose();
        return false;
    }
}

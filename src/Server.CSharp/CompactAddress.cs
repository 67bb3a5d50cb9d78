using System.Buffers.Binary;
using System.Net;

namespace Realtime;

/// <summary>
/// An IP address kept inside the object that holds it: an IPv4 address as its 32 bits, any other
/// as the <see cref="IPAddress"/> itself. An <see cref="IPAddress"/> is made when one is asked for,
/// so an idle connection from an IPv4 client keeps no address object (40 bytes) of its own.
/// </summary>
internal readonly struct CompactAddress
{
    // The IPv4 address in network order in the low 32 bits; -1 when the address is _other (or none).
    private readonly long _v4;
    private readonly IPAddress? _other;

    public CompactAddress(IPAddress? address)
    {
        _v4 = -1;
        _other = null;
        Span<byte> bytes = stackalloc byte[4];
        if (address is { AddressFamily: System.Net.Sockets.AddressFamily.InterNetwork } && address.TryWriteBytes(bytes, out int written) && written == 4)
            _v4 = BinaryPrimitives.ReadUInt32BigEndian(bytes);
        else
            _other = address;
    }

    /// <summary>The address (a new <see cref="IPAddress"/> for an IPv4 one), or null when none was given.</summary>
    public IPAddress? ToIPAddress()
    {
        if (_v4 < 0) return _other;
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, (uint)_v4);
        return new IPAddress(bytes);
    }
}

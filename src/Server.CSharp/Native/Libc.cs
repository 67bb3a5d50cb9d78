using System.Runtime.InteropServices;

namespace Realtime.Native;

/// <summary>
/// The Linux system calls the native transport makes, through libc. Every call is blittable and
/// records errno (<see cref="Marshal.GetLastPInvokeError"/>); none throws.
/// </summary>
internal static unsafe partial class Libc
{
    private const string Library = "libc";

    public const int EpollCloexec = 0x80000;
    public const int EpollCtlAdd = 1;
    public const int EpollCtlDel = 2;
    public const int EpollCtlMod = 3;
    public const uint EpollIn = 0x001;
    public const uint EpollOut = 0x004;
    public const uint EpollErr = 0x008;
    public const uint EpollHup = 0x010;
    public const uint EpollRdHup = 0x2000;
    public const uint EpollEt = 1u << 31;

    public const int EfdNonblock = 0x800;
    public const int EfdCloexec = 0x80000;
    public const int SockNonblock = 0x800;
    public const int SockCloexec = 0x80000;

    public const int AfUnix = 1;
    public const int SockStream = 1;

    public const int MsgPeek = 0x02;
    public const int MsgDontWait = 0x40;
    public const int MsgNoSignal = 0x4000;

    public const int ShutWr = 1;
    public const int ShutRdWr = 2;

    public const int IpProtoTcp = 6;
    public const int TcpNoDelay = 1;

    public const int EIntr = 4;
    public const int EAgain = 11;
    public const int ENFile = 23;
    public const int EMFile = 24;

    /// <summary>struct epoll_event as the x86-64 kernel lays it out (packed: 12 bytes).</summary>
    [StructLayout(LayoutKind.Sequential, Pack = 4)]
    public struct EpollEvent
    {
        public uint Events;
        public ulong Data;
    }

    [LibraryImport(Library, EntryPoint = "epoll_create1", SetLastError = true)]
    public static partial int EpollCreate1(int flags);

    [LibraryImport(Library, EntryPoint = "epoll_ctl", SetLastError = true)]
    public static partial int EpollCtl(int epfd, int op, int fd, EpollEvent* ev);

    [LibraryImport(Library, EntryPoint = "epoll_wait", SetLastError = true)]
    public static partial int EpollWait(int epfd, EpollEvent* events, int maxEvents, int timeout);

    [LibraryImport(Library, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initial, int flags);

    [LibraryImport(Library, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nint count);

    [LibraryImport(Library, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nint count);

    [LibraryImport(Library, EntryPoint = "recv", SetLastError = true)]
    public static partial nint Recv(int fd, byte* buffer, nint length, int flags);

    [LibraryImport(Library, EntryPoint = "send", SetLastError = true)]
    public static partial nint Send(int fd, byte* buffer, nint length, int flags);

    [LibraryImport(Library, EntryPoint = "accept4", SetLastError = true)]
    public static partial int Accept4(int fd, byte* address, int* addressLength, int flags);

    [LibraryImport(Library, EntryPoint = "getpeername", SetLastError = true)]
    public static partial int GetPeerName(int fd, byte* address, int* addressLength);

    [LibraryImport(Library, EntryPoint = "getsockname", SetLastError = true)]
    public static partial int GetSockName(int fd, byte* address, int* addressLength);

    [LibraryImport(Library, EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, int* value, int length);

    [LibraryImport(Library, EntryPoint = "shutdown", SetLastError = true)]
    public static partial int Shutdown(int fd, int how);

    [LibraryImport(Library, EntryPoint = "getrlimit", SetLastError = true)]
    public static partial int GetRLimit(int resource, ulong* limits);

    [LibraryImport(Library, EntryPoint = "socketpair", SetLastError = true)]
    public static partial int SocketPair(int domain, int type, int protocol, int* fds);

    [LibraryImport(Library, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    /// <summary>True when this process can run the native transport: Linux on x86-64 (the epoll_event layout above).</summary>
    public static bool IsSupported =>
        OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;

    public static int LastError => Marshal.GetLastPInvokeError();

    /// <summary>The process's soft limit on open descriptors (RLIMIT_NOFILE), or int.MaxValue when unknown.</summary>
    public static int OpenFilesLimit()
    {
        ulong* limits = stackalloc ulong[2];
        const int RLimitNoFile = 7;
        return GetRLimit(RLimitNoFile, limits) == 0 ? (int)Math.Min(int.MaxValue, limits[0]) : int.MaxValue;
    }

    /// <summary>Registers, changes or removes <paramref name="fd"/> in an epoll set; false with errno set on failure.</summary>
    public static bool Control(int epoll, int op, int fd, uint events)
    {
        var ev = new EpollEvent { Events = events, Data = (ulong)fd };
        return EpollCtl(epoll, op, fd, &ev) == 0;
    }

    /// <summary>Reads a socket address (sockaddr_in or sockaddr_in6) as an endpoint; null for other families.</summary>
    public static System.Net.IPEndPoint? ToEndPoint(ReadOnlySpan<byte> address)
    {
        if (address.Length < 2) return null;
        ushort family = BitConverter.ToUInt16(address);
        if (family == 2 && address.Length >= 8)
            return new System.Net.IPEndPoint(new System.Net.IPAddress(address.Slice(4, 4)), address[2] << 8 | address[3]);
        if (family == 10 && address.Length >= 28)
            return new System.Net.IPEndPoint(new System.Net.IPAddress(address.Slice(8, 16), BitConverter.ToUInt32(address.Slice(24, 4))), address[2] << 8 | address[3]);
        return null;
    }

    /// <summary>The peer's or the local address of a connected socket.</summary>
    public static System.Net.IPEndPoint? EndPointOf(int fd, bool peer)
    {
        byte* address = stackalloc byte[128];
        int length = 128;
        int result = peer ? GetPeerName(fd, address, &length) : GetSockName(fd, address, &length);
        return result == 0 ? ToEndPoint(new ReadOnlySpan<byte>(address, Math.Min(length, 128))) : null;
    }
}

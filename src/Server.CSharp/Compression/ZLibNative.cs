using System.Runtime.InteropServices;

namespace Realtime.Compression;

/// <summary>
/// The zlib entry points of the runtime's own compression library (System.IO.Compression.Native,
/// shipped with every .NET runtime and also called by System.Net.WebSockets). They expose what the
/// managed DeflateStream does not: raw deflate with a chosen window size (RFC 7692 window bits),
/// full flushes, and inflating into caller-owned buffers without any stream object.
/// </summary>
internal static unsafe partial class ZLibNative
{
    private const string Library = "System.IO.Compression.Native";

    /// <summary>The runtime's z_stream view (PAL_ZStream): pointers first, then 32-bit counts.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct ZStream
    {
        public byte* NextIn;
        public byte* NextOut;
        public byte* Message;
        public nint State;
        public uint AvailIn;
        public uint AvailOut;
    }

    internal const int Ok = 0;
    internal const int StreamEnd = 1;
    internal const int BufferError = -5;

    internal const int NoFlush = 0;
    internal const int SyncFlush = 2;
    internal const int FullFlush = 3;

    internal const int Deflated = 8;
    internal const int DefaultStrategy = 0;

    [LibraryImport(Library, EntryPoint = "CompressionNative_DeflateInit2_")]
    internal static partial int DeflateInit2(ZStream* stream, int level, int method, int windowBits, int memLevel, int strategy);

    [LibraryImport(Library, EntryPoint = "CompressionNative_Deflate")]
    internal static partial int Deflate(ZStream* stream, int flush);

    [LibraryImport(Library, EntryPoint = "CompressionNative_DeflateEnd")]
    internal static partial int DeflateEnd(ZStream* stream);

    [LibraryImport(Library, EntryPoint = "CompressionNative_InflateInit2_")]
    internal static partial int InflateInit2(ZStream* stream, int windowBits);

    [LibraryImport(Library, EntryPoint = "CompressionNative_Inflate")]
    internal static partial int Inflate(ZStream* stream, int flush);

    [LibraryImport(Library, EntryPoint = "CompressionNative_InflateReset2_")]
    internal static partial int InflateReset2(ZStream* stream, int windowBits);

    [LibraryImport(Library, EntryPoint = "CompressionNative_InflateEnd")]
    internal static partial int InflateEnd(ZStream* stream);
}

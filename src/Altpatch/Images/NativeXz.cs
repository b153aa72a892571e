using System.Runtime.InteropServices;

namespace Altpatch.Images;

/// <summary>
/// The system's liblzma (<c>liblzma.so.5</c>, the library <c>xz</c> itself uses), when it can be loaded: a whole .xz
/// payload decoded in one call (<c>lzma_stream_buffer_decode</c>) straight into the output array, at <c>xz -d</c>'s
/// speed (SharpCompress's managed decoder takes about 4x as long on the Debian 686 image: docs/benchmarks.md). The
/// managed decoder stays the reference: any result other than a clean stream of exactly the expected size, and any
/// system without the library, goes to it, so errors and their messages are the managed decoder's.
/// </summary>
internal static unsafe class NativeXz
{
    private const int LzmaOk = 0;

    // lzma_ret lzma_stream_buffer_decode(uint64_t *memlimit, uint32_t flags, const lzma_allocator *allocator,
    //     const uint8_t *in, size_t *in_pos, size_t in_size, uint8_t *out, size_t *out_pos, size_t out_size);
    private static readonly delegate* unmanaged<ulong*, uint, nint, byte*, nuint*, nuint, byte*, nuint*, nuint, int> Decode = Load();

    /// <summary>Whether the system's liblzma was found.</summary>
    public static bool Available => Decode != null;

    /// <summary>Decodes one .xz stream that fills exactly <paramref name="expectedSize"/> bytes; null when the library is
    /// missing or the stream is anything else (corrupt, truncated, longer or shorter, followed by other bytes).</summary>
    public static byte[]? TryDecode(ReadOnlySpan<byte> input, int expectedSize)
    {
        if (Decode == null || expectedSize <= 0)
            return null;
        var output = LargeBuffer.Allocate(expectedSize);
        ulong memlimit = ulong.MaxValue;
        nuint inPos = 0, outPos = 0;
        int ret;
        fixed (byte* i = input)
        fixed (byte* o = output)
            ret = Decode(&memlimit, 0, 0, i, &inPos, (nuint)input.Length, o, &outPos, (nuint)output.Length);
        return ret == LzmaOk && inPos == (nuint)input.Length && outPos == (nuint)expectedSize ? output : null;
    }

    private static delegate* unmanaged<ulong*, uint, nint, byte*, nuint*, nuint, byte*, nuint*, nuint, int> Load()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("ALTPATCH_MANAGED_XZ") == "1")
            return null;
        if (!NativeLibrary.TryLoad("liblzma.so.5", out var lib))
            return null;
        return NativeLibrary.TryGetExport(lib, "lzma_stream_buffer_decode", out var f)
            ? (delegate* unmanaged<ulong*, uint, nint, byte*, nuint*, nuint, byte*, nuint*, nuint, int>)f
            : null;
    }
}

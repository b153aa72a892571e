using System.Runtime.InteropServices;

namespace Altpatch.Images;

/// <summary>
/// The system's libzstd (<c>libzstd.so.1</c>, the library <c>zstd</c> itself uses), when it can be loaded: a whole zstd
/// payload decoded in one call (<c>ZSTD_decompress</c>) straight into the output array. As with <see cref="NativeXz"/>,
/// the managed decoder (ZstdSharp) stays the reference: anything but a clean result of exactly the expected size, and
/// any system without the library, goes to it.
/// </summary>
internal static unsafe class NativeZstd
{
    // size_t ZSTD_decompress(void* dst, size_t dstCapacity, const void* src, size_t compressedSize);
    private static readonly delegate* unmanaged<byte*, nuint, byte*, nuint, nuint> Decompress;
    // unsigned ZSTD_isError(size_t code);
    private static readonly delegate* unmanaged<nuint, uint> IsError;

    static NativeZstd()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("ALTPATCH_MANAGED_ZSTD") == "1")
            return;
        if (!NativeLibrary.TryLoad("libzstd.so.1", out var lib))
            return;
        if (NativeLibrary.TryGetExport(lib, "ZSTD_decompress", out var d) && NativeLibrary.TryGetExport(lib, "ZSTD_isError", out var e))
        {
            Decompress = (delegate* unmanaged<byte*, nuint, byte*, nuint, nuint>)d;
            IsError = (delegate* unmanaged<nuint, uint>)e;
        }
    }

    /// <summary>Decodes the zstd frames of <paramref name="input"/> when they fill exactly <paramref name="expectedSize"/>
    /// bytes; null when the library is missing or the data is anything else.</summary>
    public static byte[]? TryDecode(ReadOnlySpan<byte> input, int expectedSize)
    {
        if (Decompress == null || expectedSize <= 0)
            return null;
        var output = LargeBuffer.Allocate(expectedSize);
        nuint n;
        fixed (byte* i = input)
        fixed (byte* o = output)
            n = Decompress(o, (nuint)output.Length, i, (nuint)input.Length);
        return IsError(n) == 0 && n == (nuint)expectedSize ? output : null;
    }
}

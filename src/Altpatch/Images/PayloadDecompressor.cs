using System.Buffers.Binary;
using System.IO.Compression;
using System.Runtime.InteropServices;
using SharpCompress.Compressors.BZip2;
using SharpCompress.Compressors.LZMA;
using SharpCompress.Compressors.Xz;
using ZstdSharp;
using ZstdSharp.Unsafe;
using ScCompressionMode = SharpCompress.Compressors.CompressionMode;

namespace Altpatch.Images;

/// <summary>
/// Detects and decompresses a bzImage payload: every compression the x86 kernel can be built with.
/// </summary>
/// <remarks>
/// <para>A bzImage payload is <c>vmlinux.bin</c> (plus <c>vmlinux.relocs</c> on relocatable kernels)
/// compressed by one of the <c>cmd_*_with_size</c> rules of <c>scripts/Makefile.lib</c>: the compressed
/// stream followed by the decompressed size as a little-endian u32 (<c>size_append</c>). For gzip the
/// stream's own ISIZE trailer plays that part. <c>arch/x86/boot/compressed/mkpiggy.c</c> reads those
/// last 4 bytes as the output length; so does <see cref="DecompressPayload"/>.</para>
/// <para>Codecs: gzip — <see cref="GZipStream"/>; bzip2, LZMA, xz (with its x86 BCJ filter) —
/// SharpCompress (xz through the system's liblzma first when it is there: <see cref="NativeXz"/>); zstd — ZstdSharp (through the system's libzstd first: <see cref="NativeZstd"/>); LZ4 legacy frame — <see cref="Lz4LegacyFrame"/> over K4os;
/// LZO — <see cref="Lzop"/>, Altpatch's own LZO1X decoder.</para>
/// </remarks>
public static class PayloadDecompressor
{
    /// <summary>Largest decompressed payload accepted (<see cref="ImageLimits.MaxDecompressedSize"/>, 256 MiB); protects
    /// against corrupt size fields and decompression bombs.</summary>
    public const int MaxDecompressedSize = ImageLimits.MaxDecompressedSize;

    /// <summary>Detects the compression of a stream by its magic number.</summary>
    /// <param name="data">The start of the stream (at least 9 bytes for a certain answer).</param>
    /// <param name="compression">The compression, when known.</param>
    /// <returns>Whether a known magic number was found.</returns>
    public static bool TryDetect(ReadOnlySpan<byte> data, out PayloadCompression compression)
    {
        compression = data switch
        {
            [0x1f, 0x8b, ..] or [0x1f, 0x9e, ..] => PayloadCompression.Gzip,
            [0x42, 0x5a, 0x68, ..] => PayloadCompression.Bzip2,
            [0x5d, 0x00, ..] => PayloadCompression.Lzma,
            [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, ..] => PayloadCompression.Xz,
            [0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a, ..] => PayloadCompression.Lzo,
            [0x02, 0x21, 0x4c, 0x18, ..] => PayloadCompression.Lz4,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => PayloadCompression.Zstd,
            _ => PayloadCompression.None,
        };
        return compression != PayloadCompression.None;
    }

    /// <summary>Detects the compression of a bzImage payload and decompresses it, checking the result
    /// against the payload's size trailer.</summary>
    /// <param name="payload">The payload (payload_offset … + payload_length of the setup header).</param>
    /// <param name="context">Prefix for error messages (file name).</param>
    /// <returns>The decompressed bytes (a new array) and the compression found.</returns>
    /// <exception cref="ImageFormatException">Unknown magic, truncated or corrupt data, or a size mismatch.</exception>
    public static (byte[] Data, PayloadCompression Compression) DecompressPayload(ReadOnlyMemory<byte> payload, string context)
    {
        var span = payload.Span;
        if (!TryDetect(span, out var compression))
            throw new ImageFormatException(
                $"{context}: unknown payload compression (magic {Convert.ToHexString(span[..Math.Min(8, span.Length)]).ToLowerInvariant()}); " +
                "known: gzip, bzip2, lzma, xz, lzo, lz4, zstd");
        if (span.Length < 8)
            throw new ImageFormatException($"{context}: {Name(compression)} payload of {span.Length} bytes is too short; truncated?");
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(span[^4..]);
        if (size == 0 || size > MaxDecompressedSize)
            throw new ImageFormatException(
                $"{context}: payload size trailer says {size} decompressed bytes (must be 1 … {MaxDecompressedSize}); truncated or corrupt");
        var stream = compression == PayloadCompression.Gzip ? payload : payload[..^4];
        return (Decompress(stream, compression, (int)size, context), compression);
    }

    /// <summary>Decompresses one stream of a known compression.</summary>
    /// <param name="data">The compressed stream (for a bzImage payload: without the 4-byte size trailer, except gzip).</param>
    /// <param name="compression">Its compression.</param>
    /// <param name="expectedSize">The decompressed size when known (checked exactly), else -1.</param>
    /// <param name="context">Prefix for error messages.</param>
    /// <exception cref="ImageFormatException">Truncated or corrupt data, a size mismatch, or <see cref="PayloadCompression.None"/>.</exception>
    public static byte[] Decompress(ReadOnlyMemory<byte> data, PayloadCompression compression, int expectedSize, string context)
    {
        string where = $"{context}: {Name(compression)} payload";
        try
        {
            return compression switch
            {
                PayloadCompression.Lz4 => Lz4LegacyFrame.Decode(data, expectedSize, where),
                PayloadCompression.Lzo => Lzop.Decode(data, expectedSize, where),
                PayloadCompression.Zstd => NativeZstd.TryDecode(data.Span, expectedSize) ?? DecodeZstd(data, expectedSize, where),
                PayloadCompression.Gzip => ReadAll(new GZipStream(AsStream(data), CompressionMode.Decompress), expectedSize, where),
                PayloadCompression.Xz => NativeXz.TryDecode(data.Span, expectedSize) ?? ReadAll(new XZStream(AsStream(data)), expectedSize, where),
                PayloadCompression.Bzip2 => ReadAll(BZip2Stream.Create(AsStream(data), ScCompressionMode.Decompress, false, false, false), expectedSize, where),
                PayloadCompression.Lzma => DecodeLzma(data, expectedSize, where),
                _ => throw new ImageFormatException($"{context}: cannot decompress compression '{compression}'"),
            };
        }
        catch (Exception e) when (e is not ImageFormatException and not OutOfMemoryException)
        {
            throw new ImageFormatException($"{where} is corrupt or truncated: {OneLine(e.Message)}", e);
        }
    }

    /// <summary>The conventional lower-case name of a compression ("lz4", "xz", …).</summary>
    public static string Name(PayloadCompression compression) =>
        compression == PayloadCompression.None ? "none" : compression.ToString().ToLowerInvariant();

    private static byte[] DecodeZstd(ReadOnlyMemory<byte> data, int expectedSize, string where)
    {
        // The kernel's zstd may use windows above the library's default limit.
        using var zstd = new Decompressor();
        zstd.SetParameter(ZSTD_dParameter.ZSTD_d_windowLogMax, 31);
        return ReadAll(new DecompressionStream(AsStream(data), zstd), expectedSize, where);
    }

    private static byte[] DecodeLzma(ReadOnlyMemory<byte> data, int expectedSize, string where)
    {
        // .lzma ("LZMA alone"): 5 bytes of properties, u64 uncompressed size (all ones: unknown), the stream.
        var span = data.Span;
        if (span.Length < 13)
            throw new ImageFormatException($"{where}: {span.Length} bytes is shorter than the 13-byte .lzma header; truncated?");
        var props = span[..5].ToArray();
        long headerSize = BinaryPrimitives.ReadInt64LittleEndian(span[5..]);
        if (headerSize >= 0 && expectedSize >= 0 && headerSize != expectedSize)
            throw new ImageFormatException($"{where}: .lzma header says {headerSize} bytes, the size trailer says {expectedSize}");
        long outSize = headerSize >= 0 ? headerSize : expectedSize;
        var input = AsStream(data[13..]);
        return ReadAll(LzmaStream.Create(props, input, input.Length, outSize, false), expectedSize, where);
    }

    private static byte[] ReadAll(Stream stream, int expectedSize, string where)
    {
        using (stream)
        {
            if (expectedSize < 0)
            {
                using var ms = new MemoryStream();
                stream.CopyTo(ms);
                return ms.ToArray();
            }
            var output = LargeBuffer.Allocate(expectedSize);
            int total = 0;
            while (total < expectedSize)
            {
                int n = stream.Read(output, total, expectedSize - total);
                if (n <= 0)
                    throw new ImageFormatException($"{where} ended after {total} bytes, the size trailer says {expectedSize}; truncated?");
                total += n;
            }
            Span<byte> probe = stackalloc byte[1];
            if (stream.Read(probe) > 0)
                throw new ImageFormatException($"{where} decompresses to more than the {expectedSize} bytes its size trailer says");
            return output;
        }
    }

    private static MemoryStream AsStream(ReadOnlyMemory<byte> data) =>
        MemoryMarshal.TryGetArray(data, out ArraySegment<byte> seg)
            ? new MemoryStream(seg.Array!, seg.Offset, seg.Count, writable: false)
            : new MemoryStream(data.ToArray(), writable: false);

    private static string OneLine(string s) => s.ReplaceLineEndings(" ").Trim();
}

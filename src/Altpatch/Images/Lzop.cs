using System.Buffers.Binary;

namespace Altpatch.Images;

/// <summary>
/// Decoder for the lzop container of LZO1X blocks that <c>CONFIG_KERNEL_LZO</c> bzImages carry
/// (<c>lzop -9</c>), with Altpatch's own LZO1X decompressor: none of the compression packages Altpatch
/// references decodes LZO, and the format is small. Written from the bitstream
/// description in the kernel's <c>Documentation/staging/lzo.rst</c> (bitstream version 0, which
/// lzop writes; the LZO-RLE version 1 is rejected) and the header layout that the kernel's
/// <c>lib/decompress_unlzo.c</c> parses. Every read and copy is bounds-checked.
/// </summary>
public static class Lzop
{
    private static readonly byte[] Magic = [0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a];

    private const uint AdlerD = 0x1, AdlerC = 0x2, ExtraField = 0x40, CrcD = 0x100, CrcC = 0x200, Filter = 0x800;

    /// <summary>Largest block an lzop stream may hold (lzop's own limit, 64 MiB).</summary>
    public const int MaxBlockSize = 64 << 20;

    /// <summary>Decodes an lzop stream (without the kernel's 4-byte size trailer).</summary>
    /// <param name="input">The stream, starting at the lzop magic.</param>
    /// <param name="expectedSize">The decompressed size when known, else -1.</param>
    /// <param name="context">Prefix for error messages.</param>
    /// <exception cref="ImageFormatException">Bad header, unsupported method or filter, truncated or corrupt blocks, size mismatch.</exception>
    public static byte[] Decode(ReadOnlyMemory<byte> input, int expectedSize, string context)
    {
        var s = input.Span;
        int p = 0;
        if (!s.StartsWith(Magic))
            throw new ImageFormatException($"{context}: not an lzop stream (no 89 4c 5a 4f 00 0d 0a 1a 0a magic)");
        p = Magic.Length;
        ushort version = U16(s, ref p, context);
        U16(s, ref p, context); // library version
        if (version >= 0x0940)
            U16(s, ref p, context); // version needed to extract
        byte method = U8(s, ref p, context);
        if (method is < 1 or > 3)
            throw new ImageFormatException($"{context}: lzop method {method} is not LZO1X (1, 2 or 3)");
        if (version >= 0x0940)
            U8(s, ref p, context); // level
        uint flags = U32(s, ref p, context);
        if ((flags & Filter) != 0)
            throw new ImageFormatException($"{context}: lzop filters (flags 0x{flags:x}) are not supported");
        U32(s, ref p, context); // mode
        U32(s, ref p, context); // mtime low
        if (version >= 0x0940)
            U32(s, ref p, context); // mtime high
        int nameLength = U8(s, ref p, context);
        Skip(s, ref p, nameLength, context);
        U32(s, ref p, context); // header checksum
        if ((flags & ExtraField) != 0)
        {
            uint extra = U32(s, ref p, context);
            Skip(s, ref p, checked((int)Math.Min(extra, int.MaxValue)), context);
            U32(s, ref p, context);
        }

        using var output = expectedSize >= 0 ? new MemoryStream(expectedSize) : new MemoryStream();
        byte[] block = [];
        for (int index = 0; ; index++)
        {
            uint dst = U32(s, ref p, context);
            if (dst == 0)
                break;
            uint src = U32(s, ref p, context);
            if (dst > MaxBlockSize)
                throw new ImageFormatException($"{context}: lzo block {index} at offset 0x{p - 8:x}: size {dst} exceeds lzop's 64 MiB block limit; corrupt");
            if (src > dst)
                throw new ImageFormatException($"{context}: lzo block {index} at offset 0x{p - 8:x}: compressed size {src} is larger than its size {dst}; corrupt");
            if ((flags & AdlerD) != 0) U32(s, ref p, context);
            if ((flags & CrcD) != 0) U32(s, ref p, context);
            if (src < dst)
            {
                if ((flags & AdlerC) != 0) U32(s, ref p, context);
                if ((flags & CrcC) != 0) U32(s, ref p, context);
            }
            if (src > (uint)(s.Length - p))
                throw new ImageFormatException($"{context}: lzo block {index} at offset 0x{p:x}: {src} bytes run past the end of the stream; truncated?");
            var data = s.Slice(p, (int)src);
            p += (int)src;
            if (src == dst)
                output.Write(data);   // stored
            else
            {
                if (block.Length < dst)
                    block = new byte[dst];
                int n = Lzo1xDecompress(data, block.AsSpan(0, (int)dst), $"{context}: lzo block {index}");
                if (n != dst)
                    throw new ImageFormatException($"{context}: lzo block {index} decoded to {n} bytes, its header says {dst}");
                output.Write(block, 0, n);
            }
            if (expectedSize >= 0 && output.Length > expectedSize)
                throw new ImageFormatException($"{context} decompresses to more than the {expectedSize} bytes its size trailer says");
        }
        if (expectedSize >= 0 && output.Length != expectedSize)
            throw new ImageFormatException($"{context} ended after {output.Length} bytes, the size trailer says {expectedSize}; truncated?");
        return output.ToArray();
    }

    /// <summary>Decompresses one raw LZO1X block (bitstream version 0).</summary>
    /// <param name="input">The compressed block, ending with the end-of-stream marker (11 00 00).</param>
    /// <param name="output">Room for the decompressed bytes.</param>
    /// <param name="context">Prefix for error messages.</param>
    /// <returns>The number of bytes written.</returns>
    /// <exception cref="ImageFormatException">The block reads or writes out of bounds, refers before the start of the output, or has no end marker.</exception>
    public static int Lzo1xDecompress(ReadOnlySpan<byte> input, Span<byte> output, string context)
    {
        int ip = 0, op = 0, state = 0;
        if (input.Length == 0)
            throw new ImageFormatException($"{context}: empty LZO1X block");
        if (input[0] == 17 && input.Length >= 5)
            throw new ImageFormatException($"{context}: LZO-RLE bitstream (version byte {input[1]}) is not supported");
        if (input[0] > 17)
        {
            // First byte 18..255: a literal run of (byte - 17); 1..3 literals set state to their count.
            int t = input[ip++] - 17;
            CopyLiterals(input, ref ip, output, ref op, t, context);
            state = t < 4 ? t : 4;
        }
        while (true)
        {
            if (ip >= input.Length)
                throw new ImageFormatException($"{context}: LZO1X block ends at input offset {ip} without its end marker; truncated?");
            int t = input[ip++];
            int length, distance;
            if (t < 16)
            {
                if (state == 0)
                {
                    // 0000LLLL: long literal run of 3 + (L ?: 15 + 255·zeros + byte).
                    length = 3 + (t != 0 ? t : 15 + ExtendedLength(input, ref ip, context));
                    CopyLiterals(input, ref ip, output, ref op, length, context);
                    state = 4;
                    continue;
                }
                int h = Byte(input, ref ip, context);
                if (state < 4)
                {
                    // 0000DDSS HHHHHHHH after 1..3 literals: 2 bytes from distance (H << 2) + D + 1.
                    length = 2;
                    distance = (h << 2) + (t >> 2) + 1;
                }
                else
                {
                    // 0000DDSS HHHHHHHH after a literal run: 3 bytes from distance (H << 2) + D + 2049.
                    length = 3;
                    distance = (h << 2) + (t >> 2) + 2049;
                }
                state = t & 3;
            }
            else if (t < 32)
            {
                // 0001HLLL + LE16: length 2 + (L ?: 7 + …), distance 16384 + (H << 14) + D; 16384 ends the stream.
                length = 2 + ((t & 7) != 0 ? t & 7 : 7 + ExtendedLength(input, ref ip, context));
                int next = Le16(input, ref ip, context);
                distance = 16384 + ((t & 8) << 11) + (next >> 2);
                state = next & 3;
                if (distance == 16384)
                    return op;
            }
            else if (t < 64)
            {
                // 001LLLLL + LE16: length 2 + (L ?: 31 + …), distance D + 1.
                length = 2 + ((t & 31) != 0 ? t & 31 : 31 + ExtendedLength(input, ref ip, context));
                int next = Le16(input, ref ip, context);
                distance = (next >> 2) + 1;
                state = next & 3;
            }
            else
            {
                // 01LDDDSS / 1LLDDDSS + H: 3–4 or 5–8 bytes from distance (H << 3) + D + 1.
                length = t < 128 ? 3 + ((t >> 5) & 1) : 5 + ((t >> 5) & 3);
                distance = (Byte(input, ref ip, context) << 3) + ((t >> 2) & 7) + 1;
                state = t & 3;
            }
            if (distance > op)
                throw new ImageFormatException($"{context}: LZO1X match at output offset {op} refers {distance} bytes back, before the start; corrupt");
            if (length > output.Length - op)
                throw new ImageFormatException($"{context}: LZO1X output overruns its {output.Length}-byte block; corrupt");
            for (int i = 0; i < length; i++, op++)
                output[op] = output[op - distance];
            CopyLiterals(input, ref ip, output, ref op, state, context);
        }
    }

    private static int ExtendedLength(ReadOnlySpan<byte> input, ref int ip, string context)
    {
        int zeros = 0;
        while (ip < input.Length && input[ip] == 0)
        {
            zeros++;
            ip++;
            if (zeros > MaxBlockSize / 255)
                throw new ImageFormatException($"{context}: LZO1X length run is implausibly long; corrupt");
        }
        return 255 * zeros + Byte(input, ref ip, context);
    }

    private static void CopyLiterals(ReadOnlySpan<byte> input, ref int ip, Span<byte> output, ref int op, int count, string context)
    {
        if (count > input.Length - ip)
            throw new ImageFormatException($"{context}: LZO1X literal run of {count} at input offset {ip} runs past the end of the block; truncated?");
        if (count > output.Length - op)
            throw new ImageFormatException($"{context}: LZO1X output overruns its {output.Length}-byte block; corrupt");
        input.Slice(ip, count).CopyTo(output[op..]);
        ip += count;
        op += count;
    }

    private static int Byte(ReadOnlySpan<byte> s, ref int p, string context)
    {
        if (p >= s.Length)
            throw new ImageFormatException($"{context}: LZO1X block ends inside an instruction at input offset {p}; truncated?");
        return s[p++];
    }

    private static int Le16(ReadOnlySpan<byte> s, ref int p, string context) =>
        Byte(s, ref p, context) | (Byte(s, ref p, context) << 8);

    private static byte U8(ReadOnlySpan<byte> s, ref int p, string context)
    {
        Need(s, p, 1, context);
        return s[p++];
    }

    private static ushort U16(ReadOnlySpan<byte> s, ref int p, string context)
    {
        Need(s, p, 2, context);
        p += 2;
        return BinaryPrimitives.ReadUInt16BigEndian(s[(p - 2)..]);
    }

    private static uint U32(ReadOnlySpan<byte> s, ref int p, string context)
    {
        Need(s, p, 4, context);
        p += 4;
        return BinaryPrimitives.ReadUInt32BigEndian(s[(p - 4)..]);
    }

    private static void Skip(ReadOnlySpan<byte> s, ref int p, int n, string context)
    {
        Need(s, p, n, context);
        p += n;
    }

    private static void Need(ReadOnlySpan<byte> s, int p, int n, string context)
    {
        if (n > s.Length - p)
            throw new ImageFormatException($"{context}: lzop stream ends at offset 0x{s.Length:x} inside its headers (need {n} bytes at 0x{p:x}); truncated?");
    }
}

using System.Buffers.Binary;
using K4os.Compression.LZ4;

namespace Altpatch.Images;

/// <summary>
/// Decoder for the LZ4 "legacy" frame that <c>lz4 -l</c> writes and the kernel's
/// <c>lib/decompress_unlz4.c</c> reads: the magic 02 21 4c 18 (LE 0x184c2102), then blocks of
/// <c>u32 compressed_size</c> + an LZ4 block that decompresses to exactly 8 MiB (the last block: the
/// rest). A repeated magic starts a new concatenated frame; a zero size ends the stream.
/// </summary>
/// <remarks>Blocks are independent, so they are decoded in parallel straight into their final place
/// in the output (each block's output offset is its index × 8 MiB). Each block is decoded with
/// K4os <see cref="LZ4Codec.Decode(ReadOnlySpan{byte}, Span{byte})"/>, which is bounds-checked.</remarks>
public static class Lz4LegacyFrame
{
    /// <summary>The frame magic as a little-endian u32.</summary>
    public const uint Magic = 0x184c2102;

    /// <summary>Decompressed size of every block but the last.</summary>
    public const int BlockSize = 8 << 20;

    /// <summary>Largest compressed block the format allows (LZ4_compressBound of 8 MiB).</summary>
    public static readonly int MaxCompressedBlock = LZ4Codec.MaximumOutputSize(BlockSize);

    /// <summary>Decodes a legacy-frame stream (without the kernel's 4-byte size trailer).</summary>
    /// <param name="input">The stream, starting at the magic.</param>
    /// <param name="expectedSize">The decompressed size when known (the bzImage trailer), else -1.</param>
    /// <param name="context">Prefix for error messages (file and payload).</param>
    /// <exception cref="ImageFormatException">Bad magic, a block running past the end, a corrupt block, or a size mismatch.</exception>
    public static byte[] Decode(ReadOnlyMemory<byte> input, int expectedSize, string context)
    {
        var src = input.Span;
        if (src.Length < 4 || BinaryPrimitives.ReadUInt32LittleEndian(src) != Magic)
            throw new ImageFormatException($"{context}: not an LZ4 legacy frame (no 02 21 4c 18 magic)");
        var blocks = new List<(int Offset, int Length)>();
        int pos = 4;
        while (pos + 4 <= src.Length)
        {
            uint size = BinaryPrimitives.ReadUInt32LittleEndian(src[pos..]);
            if (size == Magic) { pos += 4; continue; }
            if (size == 0) { pos += 4; break; }
            if (size > (uint)MaxCompressedBlock)
                throw new ImageFormatException(
                    $"{context}: lz4 block {blocks.Count} at offset 0x{pos:x}: compressed size {size} exceeds the format's bound {MaxCompressedBlock}; corrupt data");
            pos += 4;
            if (size > (uint)(src.Length - pos))
                throw new ImageFormatException(
                    $"{context}: lz4 block {blocks.Count} at offset 0x{pos - 4:x}: compressed size {size} runs past the end of the stream ({src.Length - pos} bytes left); truncated?");
            blocks.Add((pos, (int)size));
            pos += (int)size;
        }
        if (pos < src.Length && src[pos..].ContainsAnyExcept((byte)0))
            throw new ImageFormatException($"{context}: {src.Length - pos} stray bytes after the last lz4 block at offset 0x{pos:x}");

        return expectedSize >= 0 ? DecodeKnownSize(input, blocks, expectedSize, context) : DecodeUnknownSize(input.Span, blocks, context);
    }

    private static byte[] DecodeKnownSize(ReadOnlyMemory<byte> input, List<(int Offset, int Length)> blocks, int expectedSize, string context)
    {
        long need = ((long)expectedSize + BlockSize - 1) / BlockSize;
        if (blocks.Count != need)
            throw new ImageFormatException(
                $"{context}: lz4 stream has {blocks.Count} blocks but {expectedSize} decompressed bytes need {need} blocks of 8 MiB; truncated or corrupt");
        var output = LargeBuffer.Allocate(expectedSize);
        var decoded = new int[blocks.Count];   // each block's result, so the error names one block's own
        int OutLength(int i) => Math.Min(BlockSize, expectedSize - i * BlockSize);
        void One(int i) =>
            decoded[i] = LZ4Codec.Decode(input.Span.Slice(blocks[i].Offset, blocks[i].Length), output.AsSpan(i * BlockSize, OutLength(i)));
        if (blocks.Count > 1 && Environment.ProcessorCount > 1)
            Parallel.For(0, blocks.Count, One);
        else
            for (int i = 0; i < blocks.Count; i++) One(i);
        for (int i = 0; i < blocks.Count; i++)
        {
            if (decoded[i] == OutLength(i))
                continue;
            throw new ImageFormatException(decoded[i] < 0
                ? $"{context}: lz4 block {i} at offset 0x{blocks[i].Offset - 4:x} is corrupt"
                : $"{context}: lz4 block {i} at offset 0x{blocks[i].Offset - 4:x} decoded to {decoded[i]} bytes, expected {OutLength(i)}");
        }
        return output;
    }

    private static byte[] DecodeUnknownSize(ReadOnlySpan<byte> input, List<(int Offset, int Length)> blocks, string context)
    {
        var buffer = new byte[BlockSize];
        using var output = new MemoryStream();
        for (int i = 0; i < blocks.Count; i++)
        {
            int n = LZ4Codec.Decode(input.Slice(blocks[i].Offset, blocks[i].Length), buffer);
            if (n < 0)
                throw new ImageFormatException($"{context}: lz4 block {i} at offset 0x{blocks[i].Offset - 4:x} is corrupt");
            if (n != BlockSize && i != blocks.Count - 1)
                throw new ImageFormatException($"{context}: lz4 block {i} decoded to {n} bytes; every block but the last must give 8 MiB");
            output.Write(buffer, 0, n);
        }
        return output.ToArray();
    }
}

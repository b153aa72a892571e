using System.Buffers.Binary;
using Altpatch.Images;
using CsCheck;
using K4os.Compression.LZ4;

namespace Altpatch.Tests.Images;

/// <summary>Every payload compression, round-tripped through the system's own compressors as the kernel's
/// Makefile.lib runs them, wrapped in a bzImage-shaped file.</summary>
public class CompressionTests
{
    public static TheoryData<string, PayloadCompression> Codecs => new()
    {
        { "gzip", PayloadCompression.Gzip },
        { "bzip2", PayloadCompression.Bzip2 },
        { "lzma", PayloadCompression.Lzma },
        { "xz", PayloadCompression.Xz },
        { "lz4", PayloadCompression.Lz4 },
        { "zstd", PayloadCompression.Zstd },
        { "lzo", PayloadCompression.Lzo },
    };

    [SkippableTheory]
    [MemberData(nameof(Codecs))]
    public void Synthetic_kernel_round_trips_through_a_bzImage(string codec, PayloadCompression expected)
    {
        Skip.IfNot(Compressors.Available(codec), $"the {Compressors.Command(codec).Tool} tool is not installed");
        var k = new SyntheticKernel(is64: true, AltInstrFormat.Relative12);
        var elf = k.Build();
        var file = SyntheticBzImage.Build(Compressors.Payload(codec, elf));

        var img = KernelImage.Load(file, $"synthetic.{codec}");
        Assert.Equal(expected, img.Compression);
        Assert.True(img.ElfBytes.Span.SequenceEqual(elf));
        Assert.Equal(SyntheticBzImage.Version, img.BzImage!.Header.KernelVersion);
        Assert.Equal("6.1.0-synthetic", img.Version!.Release);
        Assert.Equal(KernelArchitecture.X86_64, img.Architecture);
        Assert.Equal(k.Alts.Count, img.Tables.Alternatives.Length);
    }

    [SkippableTheory]
    [MemberData(nameof(Codecs))]
    public void Corrupt_payloads_fail_with_ImageFormatException(string codec, PayloadCompression expected)
    {
        Skip.IfNot(Compressors.Available(codec), $"the {Compressors.Command(codec).Tool} tool is not installed");
        var elf = new SyntheticKernel(is64: false, AltInstrFormat.Relative12).Build();
        var payload = Compressors.Payload(codec, elf);
        Assert.True(PayloadDecompressor.TryDetect(payload, out var detected));
        Assert.Equal(expected, detected);
        // Flip bytes and cut the stream at many places: every failure is an ImageFormatException.
        Gen.Select(Gen.Int[6, payload.Length - 5], Gen.Byte, Gen.Int[8, payload.Length]).Sample((pos, value, cut) =>
        {
            var p = payload.AsSpan(0, cut).ToArray();
            if (pos < p.Length && p[pos] != value)
                p[pos] = value;
            try
            {
                var (data, _) = PayloadDecompressor.DecompressPayload(p, "fuzz");
                Assert.Equal(BinaryPrimitives.ReadInt32LittleEndian(p.AsSpan(p.Length - 4)), data.Length);
            }
            catch (ImageFormatException)
            {
            }
        }, iter: 200);
    }

    [SkippableFact]
    public void Truncated_xz_payload_names_the_codec()
    {
        Skip.IfNot(Compressors.Available("xz"), "the xz tool is not installed");
        var elf = new SyntheticKernel(is64: true, AltInstrFormat.Relative12).Build();
        var payload = Compressors.Payload("xz", elf);
        var cut = SyntheticBzImage.WithSize(payload.AsSpan(0, payload.Length / 2).ToArray(), elf.Length);
        var e = Assert.Throws<ImageFormatException>(() => KernelImage.Load(SyntheticBzImage.Build(cut), "cut.xz"));
        Assert.StartsWith("cut.xz: xz payload", e.Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void Lz4_legacy_frame_with_several_8MiB_blocks()
    {
        Skip.IfNot(Compressors.Available("lz4"), "the lz4 tool is not installed");
        // 20 MiB + a bit: three blocks, decoded in parallel into their places.
        var data = new byte[(20 << 20) + 12345];
        var rng = new Random(42);
        for (int i = 0; i < data.Length; i += 4096)
            rng.NextBytes(data.AsSpan(i, Math.Min(64, data.Length - i)));
        var payload = Compressors.Payload("lz4", data);
        var (output, c) = PayloadDecompressor.DecompressPayload(payload, "big");
        Assert.Equal(PayloadCompression.Lz4, c);
        Assert.True(output.AsSpan().SequenceEqual(data));
        Assert.True(Lz4LegacyFrame.Decode(payload.AsMemory(0, payload.Length - 4), -1, "big").AsSpan().SequenceEqual(data));
        // A wrong size trailer is caught.
        BinaryPrimitives.WriteInt32LittleEndian(payload.AsSpan(payload.Length - 4), data.Length + 1);
        Assert.Contains("lz4 block 2", Assert.Throws<ImageFormatException>(() => PayloadDecompressor.DecompressPayload(payload, "big")).Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void Lzop_stream_with_several_blocks()
    {
        Skip.IfNot(Compressors.Available("lzo"), "the lzop tool is not installed");
        // lzop cuts its input into 256 KiB blocks; mix compressible and random ones (the latter are stored).
        var data = new byte[(1 << 20) + 777];
        var rng = new Random(7);
        for (int i = 0; i < data.Length; i += 1024)
            rng.NextBytes(data.AsSpan(i, Math.Min(i < 512 << 10 ? 32 : 1024, data.Length - i)));
        var (output, c) = PayloadDecompressor.DecompressPayload(Compressors.Payload("lzo", data), "lzop");
        Assert.Equal(PayloadCompression.Lzo, c);
        Assert.True(output.AsSpan().SequenceEqual(data));
    }

    [Fact]
    public void Lz4_legacy_frames_built_with_K4os_decode_exactly()
    {
        Gen.Byte.Array[1, 20000].Sample(data =>
        {
            var block = new byte[LZ4Codec.MaximumOutputSize(data.Length)];
            int n = LZ4Codec.Encode(data, block, LZ4Level.L09_HC);
            var frame = new byte[8 + n];
            BinaryPrimitives.WriteUInt32LittleEndian(frame, Lz4LegacyFrame.Magic);
            BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(4), n);
            block.AsSpan(0, n).CopyTo(frame.AsSpan(8));
            Assert.True(Lz4LegacyFrame.Decode(frame, data.Length, "p").AsSpan().SequenceEqual(data));
            Assert.True(Lz4LegacyFrame.Decode(frame, -1, "p").AsSpan().SequenceEqual(data));
        }, iter: 200);
    }

    [Fact]
    public void Lz4_legacy_frame_errors()
    {
        var ok = new byte[] { 0x02, 0x21, 0x4c, 0x18, 5, 0, 0, 0, 0x40, (byte)'a', (byte)'b', (byte)'c', (byte)'d' };
        Assert.Equal("abcd"u8.ToArray(), Lz4LegacyFrame.Decode(ok, 4, "t"));
        Assert.Contains("runs past the end", Assert.Throws<ImageFormatException>(() => Lz4LegacyFrame.Decode(ok.AsMemory(0, 10), 4, "t")).Message, StringComparison.Ordinal);
        var huge = (byte[])ok.Clone();
        huge[7] = 0x7f;
        Assert.Contains("exceeds the format's bound", Assert.Throws<ImageFormatException>(() => Lz4LegacyFrame.Decode(huge, 4, "t")).Message, StringComparison.Ordinal);
        Assert.Contains("decoded to 4 bytes, expected 5", Assert.Throws<ImageFormatException>(() => Lz4LegacyFrame.Decode(ok, 5, "t")).Message, StringComparison.Ordinal);
        var corrupt = (byte[])ok.Clone();
        corrupt[8] = 0xf0; // 15 + 97 literals claimed, 4 present
        Assert.Contains("is corrupt", Assert.Throws<ImageFormatException>(() => Lz4LegacyFrame.Decode(corrupt, 4, "t")).Message, StringComparison.Ordinal);
        Assert.Contains("not an LZ4 legacy frame", Assert.Throws<ImageFormatException>(() => Lz4LegacyFrame.Decode(new byte[] { 4, 0x22, 0x4d, 0x18 }, 4, "t")).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(new byte[] { 0x1f, 0x8b, 8, 0 }, PayloadCompression.Gzip)]
    [InlineData(new byte[] { 0x1f, 0x9e, 8, 0 }, PayloadCompression.Gzip)]
    [InlineData(new byte[] { 0x42, 0x5a, 0x68, 0x39 }, PayloadCompression.Bzip2)]
    [InlineData(new byte[] { 0x5d, 0, 0, 0x80 }, PayloadCompression.Lzma)]
    [InlineData(new byte[] { 0xfd, 0x37, 0x7a, 0x58, 0x5a, 0 }, PayloadCompression.Xz)]
    [InlineData(new byte[] { 0x89, 0x4c, 0x5a, 0x4f, 0, 0x0d, 0x0a, 0x1a, 0x0a }, PayloadCompression.Lzo)]
    [InlineData(new byte[] { 0x02, 0x21, 0x4c, 0x18 }, PayloadCompression.Lz4)]
    [InlineData(new byte[] { 0x28, 0xb5, 0x2f, 0xfd }, PayloadCompression.Zstd)]
    public void Magic_numbers(byte[] magic, PayloadCompression expected)
    {
        Assert.True(PayloadDecompressor.TryDetect(magic, out var c));
        Assert.Equal(expected, c);
    }

    [Theory]
    [InlineData(new byte[] { 0x50, 0x4b, 3, 4 })]
    [InlineData(new byte[] { 0x04, 0x22, 0x4d, 0x18 })] // the LZ4 *frame* format, not the legacy one the kernel uses
    [InlineData(new byte[] { 0x7f, 0x45 })]
    [InlineData(new byte[0])]
    public void Unknown_magic_numbers(byte[] magic)
    {
        Assert.False(PayloadDecompressor.TryDetect(magic, out _));
        var payload = magic.Concat(new byte[16]).ToArray();
        var e = Assert.Throws<ImageFormatException>(() => PayloadDecompressor.DecompressPayload(payload, "x"));
        Assert.StartsWith("x: unknown payload compression (magic ", e.Message, StringComparison.Ordinal);
    }
}

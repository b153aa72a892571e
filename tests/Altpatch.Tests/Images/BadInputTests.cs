using System.Buffers.Binary;
using Altpatch.Images;

namespace Altpatch.Tests.Images;

/// <summary>Truncated, corrupt and foreign files: each is one clear <see cref="ImageFormatException"/>.</summary>
public class BadInputTests
{
    private static readonly Lazy<byte[]> RealFile = new(() => File.ReadAllBytes(TestPaths.CloudAmd64));

    private static byte[] Real()
    {
        Skip.IfNot(File.Exists(TestPaths.CloudAmd64), TestPaths.NoSharedImages);
        return RealFile.Value;
    }

    private static ImageFormatException Fails(byte[] file, string name = "img") =>
        Assert.Throws<ImageFormatException>(() => KernelImage.Load(file, name));

    /// <summary>Past the CRC check (--ignore-crc): what the decoders and readers say about the same bytes.</summary>
    private static ImageFormatException FailsPastCrc(byte[] file, string name = "img") =>
        Assert.Throws<ImageFormatException>(() => KernelImage.Load(file, name, new KernelImageOptions { IgnoreCrc = true }));

    [SkippableTheory]
    [InlineData(0, "img: empty file")]
    [InlineData(0x100, "img: not a kernel image: 256 bytes, no ELF magic and too short for a bzImage setup header")]
    [InlineData(0x230, "img: bzImage truncated inside the setup header (560 bytes; boot protocol 2.15 needs 0x264)")]
    [InlineData(0x4000, "img: bzImage truncated: the setup code is 20480 bytes (39 + 1 sectors), the file has 16384")]
    [InlineData(0x6000, "img: bzImage truncated: payload at 0x52cc + 14023999 bytes (payload_offset 0x2cc at 0x248) runs past the end of the file (0x6000 bytes)")]
    [InlineData(0xd6500a, "img: bzImage truncated: payload at 0x52cc + 14023999 bytes (payload_offset 0x2cc at 0x248) runs past the end of the file (0xd6500a bytes)")]
    [InlineData(0xd6500c, "img: bzImage truncated: syssize (0x1f4) says 0xd79200 bytes of protected-mode code, the file has 0xd6000c")]
    public void Truncated_real_bzImage(int length, string message)
    {
        var cut = Real().AsSpan(0, length).ToArray();
        Assert.Equal(message, Fails(cut).Message);
    }

    [SkippableFact]
    public void Corrupt_payload_magic_in_the_real_image()
    {
        var f = (byte[])Real().Clone();
        f.AsSpan(0x52cc, 4).Fill(0);
        Assert.Equal("img: unknown payload compression at file offset 0x52cc (magic 00000000d6b83a00); known: gzip, bzip2, lzma, xz, lzo, lz4, zstd", Fails(f).Message);
        "PK\x03\x04"u8.CopyTo(f.AsSpan(0x52cc));
        Assert.StartsWith("img: unknown payload compression at file offset 0x52cc (magic 504b0304", Fails(f).Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void Corrupt_lz4_block_in_the_real_image()
    {
        var f = (byte[])Real().Clone();
        // Block 0 starts at payload + 8; scribble over compressed bytes in its middle.
        f.AsSpan(0x52cc + 8 + 1_000_000, 64).Fill(0xff);
        Assert.StartsWith("img: bzImage CRC32 mismatch", Fails(f).Message, StringComparison.Ordinal);
        var m = FailsPastCrc(f).Message;
        Assert.StartsWith("img: lz4 payload: lz4 block 0 at offset 0x4 ", m, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void Corrupt_setup_signature_and_size_trailer()
    {
        var f = (byte[])Real().Clone();
        f[0x202] = (byte)'X';
        Assert.Equal("img: not a kernel image: no ELF magic at 0 and no bzImage setup header ('HdrS' at 0x202, 0xAA55 at 0x1fe)", Fails(f).Message);
        f = (byte[])Real().Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(0x52cc + 14_023_999 - 4), 0);
        Assert.StartsWith("img: bzImage CRC32 mismatch", Fails(f).Message, StringComparison.Ordinal);
        Assert.Equal("img: payload size trailer says 0 decompressed bytes (must be 1 … 268435456); truncated or corrupt", FailsPastCrc(f).Message);
    }

    [Theory]
    [InlineData(100)]
    [InlineData(0x1f1)]
    [InlineData(0x250)]
    [InlineData(SyntheticBzImage.SetupSize - 1)]
    [InlineData(SyntheticBzImage.SetupSize + SyntheticBzImage.PayloadOffset + 3)]
    [InlineData(-20)]
    [InlineData(-1)]
    public void Truncated_synthetic_bzImage(int cut)
    {
        var elf = new SyntheticKernel(true, AltInstrFormat.Relative12).Build();
        var gz = GzipPayload(elf);
        var f = SyntheticBzImage.Build(gz);
        int payloadEnd = SyntheticBzImage.SetupSize + SyntheticBzImage.PayloadOffset + gz.Length;
        int length = cut >= 0 ? cut : payloadEnd + cut;
        var e = Fails(f.AsSpan(0, length).ToArray());
        Assert.Matches("truncated|too short", e.Message);
    }

    [Fact]
    public void Synthetic_gzip_bzImage_opens()
    {
        var elf = new SyntheticKernel(true, AltInstrFormat.Relative12).Build();
        var img = KernelImage.Load(SyntheticBzImage.Build(GzipPayload(elf)), "gz");
        Assert.Equal(PayloadCompression.Gzip, img.Compression);
        Assert.True(img.ElfBytes.Span.SequenceEqual(elf));
    }

    [Fact]
    public void Old_boot_protocol_is_refused_with_the_reason()
    {
        var f = SyntheticBzImage.Build(GzipPayload([1, 2, 3]), protocol: 0x0206);
        Assert.Equal("img: boot protocol 2.06 has no payload_offset/payload_length (needs 2.08, Linux 2.6.26+); such bzImages carry no ELF file, open the vmlinux ELF instead", Fails(f).Message);
    }

    [Fact]
    public void Zero_length_and_foreign_files()
    {
        Assert.Equal("img: empty file", Fails([]).Message);
        var path = Path.Combine(Path.GetTempPath(), $"altpatch-empty-{Guid.NewGuid():N}");
        File.WriteAllBytes(path, []);
        try
        {
            Assert.Equal($"{Path.GetFileName(path)}: empty file", Assert.Throws<ImageFormatException>(() => KernelImage.Open(path)).Message);
        }
        finally
        {
            File.Delete(path);
        }
        Assert.StartsWith("img: not a kernel image", Fails(new byte[4096]).Message, StringComparison.Ordinal);
        var arm = new SyntheticElf(false, 40, 0x8000).Section(".text", 0x8000, [0, 0, 0xa0, 0xe1], SyntheticElf.Alloc | SyntheticElf.Exec).Build();
        Assert.Equal("img: not an x86 kernel: ELF32 with machine 40 (want ELF32 EM_386 = 3 or ELF64 EM_X86_64 = 62)", Fails(arm).Message);
    }

    private static byte[] GzipPayload(byte[] data)
    {
        using var ms = new MemoryStream();
        using (var gz = new System.IO.Compression.GZipStream(ms, System.IO.Compression.CompressionLevel.Optimal, leaveOpen: true))
            gz.Write(data);
        return ms.ToArray();
    }
}

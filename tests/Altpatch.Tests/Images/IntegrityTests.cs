using System.Buffers.Binary;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Altpatch.Images;
using Altpatch.Tests.Cli;
using CsCheck;

namespace Altpatch.Tests.Images;

/// <summary>The bzImage's build CRC-32 (arch/x86/boot/tools/build.c) and Secure Boot signatures: a flipped byte
/// anywhere is refused whatever the compression, signed images are checked as they were built.</summary>
public class IntegrityTests
{
    private static readonly Lazy<byte[]> RealFile = new(() => File.ReadAllBytes(TestPaths.CloudAmd64));

    private static byte[] Real()
    {
        Skip.IfNot(File.Exists(TestPaths.CloudAmd64), TestPaths.NoSharedImages);
        return (byte[])RealFile.Value.Clone();
    }

    private static ImageFormatException Fails(byte[] file, string name = "img") =>
        Assert.Throws<ImageFormatException>(() => KernelImage.Load(file, name));

    [SkippableFact]
    public void The_crc_table_is_build_c_s_crctab32()
    {
        // Three entries quoted from the kernel's table, and all 256 when the 6.1 source is at hand.
        Assert.Equal(0x77073096u, KernelCrc32.TableEntries[1]);
        Assert.Equal(0xedb88320u, KernelCrc32.TableEntries[128]);
        Assert.Equal(0x2d02ef8du, KernelCrc32.TableEntries[255]);
        const string source = "/work/ref/linux-source-6.1/arch/x86/boot/tools/build.c";
        Skip.IfNot(File.Exists(source), $"{source} is not present");
        var text = File.ReadAllText(source);
        var body = text[text.IndexOf("crctab32[] = {", StringComparison.Ordinal)..];
        body = body[..body.IndexOf('}', StringComparison.Ordinal)];
        var values = Regex.Matches(body, "0x([0-9a-f]{8})").Select(m => uint.Parse(m.Groups[1].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture)).ToArray();
        Assert.Equal(256, values.Length);
        Assert.Equal(values, KernelCrc32.TableEntries.ToArray());
    }

    [Fact]
    public void The_fast_crc_equals_build_c_s_byte_loop_with_any_chaining()
    {
        Gen.Select(Gen.Byte.Array[0, 5000], Gen.Int[0, 5000], Gen.UInt).Sample((data, cut, seed) =>
        {
            int c = Math.Min(cut, data.Length);
            Assert.Equal(KernelCrc32.AppendBytewise(KernelCrc32.Initial, data), KernelCrc32.Compute(data));
            uint a = KernelCrc32.Append(KernelCrc32.Append(KernelCrc32.Initial, data.AsSpan(0, c)), data.AsSpan(c));
            Assert.Equal(KernelCrc32.AppendBytewise(KernelCrc32.Initial, data), a);
            Assert.Equal(KernelCrc32.AppendBytewise(seed, data), KernelCrc32.Append(seed, data));
        }, iter: 300);
    }

    [Fact]
    public void The_pe_checksum_equals_the_word_by_word_definition()
    {
        static uint Slow(byte[] f, int skip)
        {
            ulong sum = 0;
            for (int i = 0; i < f.Length; i += 2)
            {
                uint w = 0;
                for (int k = 0; k < 2 && i + k < f.Length; k++)
                {
                    if (i + k < skip || i + k >= skip + 4)
                        w |= (uint)f[i + k] << (8 * k);
                }
                sum += w;
                sum = (sum & 0xffff) + (sum >> 16);
            }
            sum = (sum & 0xffff) + (sum >> 16);
            return (uint)sum + (uint)f.Length;
        }
        Gen.Select(Gen.Byte.Array[8, 3000], Gen.Int[0, 3000]).Sample((data, at) =>
        {
            int skip = Math.Min(at, data.Length - 4);
            Assert.Equal(Slow(data, skip), PeHeader.ComputeChecksum(data, skip));
        }, iter: 500);
    }

    [SkippableFact]
    public void The_real_images_carry_the_crc_their_bytes_give()
    {
        Skip.IfNot(TestPaths.HaveSharedImages, TestPaths.NoSharedImages);
        foreach (var path in Directory.GetFiles(TestPaths.SharedLinux, "vmlinuz-*"))
        {
            var f = File.ReadAllBytes(path);
            uint stored = BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(f.Length - 4));
            Assert.Equal(stored, KernelCrc32.AppendBytewise(KernelCrc32.Initial, f.AsSpan(0, f.Length - 4)));
            var i = BzImageIntegrity.Check(BzImage.Parse(f, "x"));
            Assert.True(i.CrcMatches, i.Status);
            Assert.Equal(stored, i.ComputedCrc);
            Assert.Equal(f.Length - 4, i.CrcOffset);
            Assert.Null(i.Signature);
        }
    }

    public static TheoryData<string> Codecs => ["gzip", "bzip2", "lzma", "xz", "lzo", "lz4", "zstd"];

    [SkippableTheory]
    [MemberData(nameof(Codecs))]
    public void A_flipped_payload_byte_is_refused_in_every_compression(string codec)
    {
        Skip.IfNot(Compressors.Available(codec), $"the {Compressors.Command(codec).Tool} tool is not installed");
        var elf = new SyntheticKernel(is64: true, AltInstrFormat.Relative12).Build();
        var payload = Compressors.Payload(codec, elf);
        var good = SyntheticBzImage.Build(payload);
        Assert.True(KernelImage.Load(good, "good").Integrity!.CrcMatches);
        int start = SyntheticBzImage.SetupSize + SyntheticBzImage.PayloadOffset;
        // The magic's last byte, the stream's first, middle and last bytes, the size trailer.
        foreach (int at in new[] { 3, 12, payload.Length / 2, payload.Length - 5, payload.Length - 1 })
        {
            foreach (byte bit in new byte[] { 0x01, 0x80 })
            {
                var f = (byte[])good.Clone();
                f[start + at] ^= bit;
                var e = Fails(f, $"flip.{codec}");
                if (PayloadDecompressor.TryDetect(f.AsSpan(start), out var c) && c == PayloadDecompressor_Compression(codec))
                    Assert.StartsWith($"flip.{codec}: bzImage CRC32 mismatch: the image stores 0x", e.Message, StringComparison.Ordinal);
                // Read anyway, the decoders still give a clear error or the (wrong) bytes: never another exception.
                try
                {
                    _ = KernelImage.Load(f, "x", new KernelImageOptions { IgnoreCrc = true }).Tables;
                }
                catch (ImageFormatException)
                {
                }
            }
        }
    }

    private static PayloadCompression PayloadDecompressor_Compression(string codec) => codec switch
    {
        "gzip" => PayloadCompression.Gzip,
        "bzip2" => PayloadCompression.Bzip2,
        "lzma" => PayloadCompression.Lzma,
        "xz" => PayloadCompression.Xz,
        "lzo" => PayloadCompression.Lzo,
        "lz4" => PayloadCompression.Lz4,
        _ => PayloadCompression.Zstd,
    };

    [SkippableFact]
    public void A_flipped_bit_in_the_real_lz4_payload_is_refused()
    {
        // The case that started it: the LZ4 legacy frame has no checksum, so this bit decodes "fine".
        var f = Real();
        f[0x52cc + 5_000_000] ^= 0x10;
        var read = KernelImage.Load(f, "img", new KernelImageOptions { IgnoreCrc = true });
        Assert.False(read.Integrity!.CrcMatches);
        Assert.Equal(0x7e923da9u, read.Integrity.StoredCrc);
        var m = Fails(f).Message;
        Assert.Equal($"img: bzImage CRC32 mismatch: the image stores 0x7e923da9 (at file offset 0xd7e1fc), its bytes give 0x{read.Integrity.ComputedCrc:x8}; the file is corrupt or was changed after the build (--ignore-crc reads it anyway)", m);
    }

    [SkippableTheory]
    [InlineData(0x20)]        // boot sector
    [InlineData(0x230)]       // setup header: kernel_alignment
    [InlineData(0x3000)]      // setup code
    [InlineData(0x5100)]      // the decompressor, before the payload
    [InlineData(0xd7e000)]    // after the payload
    [InlineData(0xd7e1fc)]    // the stored CRC itself
    public void A_flipped_byte_outside_the_payload_is_refused(int offset)
    {
        var f = Real();
        f[offset] ^= 0x01;
        Assert.Contains("bzImage CRC32 mismatch", Fails(f).Message, StringComparison.Ordinal);
    }

    /// <summary>Signs an image the way sbsign does: pads to 8 bytes, appends a WIN_CERTIFICATE table, points the
    /// PE certificate table entry at it and sets the PE checksum.</summary>
    internal static byte[] SignLikeSbsign(byte[] built, byte[] certificateContent)
    {
        int start = (built.Length + 7) & ~7;
        int entry = 8 + certificateContent.Length;
        int table = (entry + 7) & ~7;
        var f = new byte[start + table];
        built.CopyTo(f, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(start), (uint)entry);
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(start + 4), 0x0200);
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(start + 6), 2);
        certificateContent.CopyTo(f, start + 8);
        var pe = PeHeader.TryRead(f)!;
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(pe.CertificateEntryOffset), (uint)start);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(pe.CertificateEntryOffset + 4), (uint)table);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(pe.ChecksumOffset), PeHeader.ComputeChecksum(f, pe.ChecksumOffset));
        return f;
    }

    [SkippableFact]
    public void An_image_signed_like_sbsign_is_checked_as_built()
    {
        var built = Real();
        var f = SignLikeSbsign(built, [0x30, 0x03, 0x02, 0x01, 0x00]);   // a certificate that is no PKCS#7
        var img = KernelImage.Load(f, "signed");
        var i = img.Integrity!;
        Assert.True(i.CrcMatches, i.Status);
        Assert.Equal(built.Length, i.BuiltLength);
        Assert.Equal(0x7e923da9u, i.ComputedCrc);
        var sig = i.Signature!;
        Assert.Equal(built.Length, sig.Offset);
        Assert.True(sig.PeChecksumMatches);
        Assert.Equal(WinCertificate.TypePkcsSignedData, Assert.Single(sig.Certificates).Type);
        Assert.NotNull(sig.Certificates[0].Problem);
        Assert.True(img.ElfBytes.Span.SequenceEqual(KernelImage.Load(built, "built").ElfBytes.Span));

        // The certificate is not part of the built image: changing it leaves the CRC, and only the PE checksum, to tell.
        var g = (byte[])f.Clone();
        g[^3] ^= 0xff;
        var j = KernelImage.Load(g, "g").Integrity!;
        Assert.True(j.CrcMatches);
        Assert.False(j.Signature!.PeChecksumMatches);
        // The image under the signature is.
        g = (byte[])f.Clone();
        g[0x52cc + 1234] ^= 0x04;
        Assert.Contains("bzImage CRC32 mismatch", Fails(g).Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void A_certificate_table_outside_the_file_is_refused_unless_ignored()
    {
        var f = SignLikeSbsign(Real(), [1, 2, 3]);
        var pe = PeHeader.TryRead(f)!;
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(pe.CertificateEntryOffset), (uint)f.Length - 8);
        Assert.Equal(
            "img: bzImage integrity cannot be checked: the image's PE header is signed but its certificate table entry (0xe8) names 0xd7e208 + 16 bytes, which is not inside the file (0xd7e210 bytes); the file is corrupt (--ignore-crc reads it anyway)",
            Fails(f).Message);
        var img = KernelImage.Load(f, "img", new KernelImageOptions { IgnoreCrc = true });
        Assert.False(img.Integrity!.CrcMatches);
    }

    [SkippableFact]
    public void The_real_signed_image_passes_and_names_its_signer()
    {
        Skip.IfNot(File.Exists(TestPaths.SignedCloudAmd64), TestPaths.NoSignedImage);
        var signed = File.ReadAllBytes(TestPaths.SignedCloudAmd64);
        var img = KernelImage.Load(signed, "signed");
        var i = img.Integrity!;
        Assert.True(i.CrcMatches, i.Status);
        var sig = i.Signature!;
        Assert.True(sig.PeChecksumMatches);
        var c = Assert.Single(sig.Certificates);
        Assert.Equal((ushort)0x0200, c.Revision);
        Assert.Equal("sha256", c.DigestAlgorithm);
        Assert.Equal("CN=Debian Secure Boot Signer 2022 - linux", c.Signer);
        Assert.Equal("CN=Debian Secure Boot CA", c.Issuer);
        Assert.Null(c.Problem);
        if (File.Exists(TestPaths.CloudAmd64))
        {
            // Exactly the unsigned twin's CRC, and the same vmlinux.
            var unsigned = RealFile.Value;
            Assert.Equal(unsigned.Length, i.BuiltLength);
            Assert.Equal(BinaryPrimitives.ReadUInt32LittleEndian(unsigned.AsSpan(unsigned.Length - 4)), i.ComputedCrc);
            Assert.True(img.ElfBytes.Span.SequenceEqual(RealImages.CloudAmd64.ElfBytes.Span));
        }
    }

    [SkippableFact]
    public void Cli_shows_the_crc_and_the_signature()
    {
        Skip.IfNot(File.Exists(TestPaths.SignedCloudAmd64), TestPaths.NoSignedImage);
        var (exit, output, err) = CliRunner.Run("kernel", "info", TestPaths.SignedCloudAmd64);
        Assert.True(exit == 0, err);
        Assert.Contains("CRC32          0x7e923da9 matches (over 0xd7e1fc bytes, the image as built, without its signature)", output, StringComparison.Ordinal);
        Assert.Contains("Signed         Authenticode PKCS#7 (sha256), signer CN=Debian Secure Boot Signer 2022 - linux, issued by CN=Debian Secure Boot CA", output, StringComparison.Ordinal);
        Assert.Contains("PE checksum    0xd8b3a5 matches", output, StringComparison.Ordinal);
        (exit, output, err) = CliRunner.Run("kernel", "info", TestPaths.SignedCloudAmd64, "--json");
        Assert.True(exit == 0, err);
        using var doc = JsonDocument.Parse(output);
        var crc = doc.RootElement.GetProperty("crc");
        Assert.Equal("match", crc.GetProperty("status").GetString());
        Assert.Equal("0x7e923da9", crc.GetProperty("stored").GetString());
        var sig = doc.RootElement.GetProperty("signature");
        Assert.True(sig.GetProperty("peChecksumMatches").GetBoolean());
        Assert.Equal("CN=Debian Secure Boot Signer 2022 - linux", sig.GetProperty("certificates")[0].GetProperty("signer").GetString());
    }

    [SkippableFact]
    public void Cli_refuses_a_corrupt_image_and_reads_it_with_ignore_crc_and_a_warning()
    {
        var f = Real();
        f[0x52cc + 5_000_000] ^= 0x10;
        string dir = Path.Combine(Path.GetTempPath(), $"altpatch-crc-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string img = Path.Combine(dir, "vmlinuz"), output = Path.Combine(dir, "out");
            File.WriteAllBytes(img, f);
            foreach (var args in new[] { new[] { "kernel", "info", img }, ["kernel", "sites", img, "--kind", "lock"], ["kernel", "patch", img, "--flags", "fpu", "-o", output] })
            {
                var (exit, stdout, err) = CliRunner.Run(args);
                Assert.Equal(1, exit);
                Assert.Equal("", stdout);
                Assert.Matches(@"^altpatch: error: vmlinuz: bzImage CRC32 mismatch: the image stores 0x7e923da9 \(at file offset 0xd7e1fc\), its bytes give 0x[0-9a-f]{8}; the file is corrupt or was changed after the build \(--ignore-crc reads it anyway\)\r?\n$", err);
                Assert.False(File.Exists(output));

                (exit, stdout, err) = CliRunner.Run([.. args, "--ignore-crc"]);
                Assert.True(exit == 0, err);
                Assert.Matches(@"^altpatch: warning: vmlinuz: bzImage CRC32 mismatch: .*; reading it anyway \(--ignore-crc\)\r?\n$", err);
                Assert.NotEqual("", stdout);
            }
            Assert.True(File.Exists(output));
            (_, var info, _) = CliRunner.Run("kernel", "info", img, "--ignore-crc", "--json");
            using var doc = JsonDocument.Parse(info);
            Assert.Equal("mismatch", doc.RootElement.GetProperty("crc").GetProperty("status").GetString());
            Assert.Equal(JsonValueKind.Null, doc.RootElement.GetProperty("signature").ValueKind);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}

using System.Buffers.Binary;
using System.Security.Cryptography;
using Altpatch.Images;
using CsCheck;

namespace Altpatch.Tests.Images;

/// <summary>
/// LZO1X and the lzop container, without the lzop tool (CompressionTests round-trips through <c>lzop -9</c>
/// when it is installed). The two compressed blocks below were made once with the kernel's own compressor (<c>lib/lzo/lzo1x_compress.c</c> of Linux 6.1, <c>lzo1x_1_compress</c>,
/// built for x86-64 with a few header shims) from a 70,000-byte mix of words, random bytes, zero runs and
/// back-references (40,000 + 30,000 bytes); the expected output is identified by its SHA-256. The lzop
/// container around them is built here, as <c>lzop -9</c> lays it out.
/// </summary>
public class LzoTests
{
    private const string BlockA =
        "AAlzbXBfbG9ja2FsdGVybmF0aXZlcGFyYXZpcnQpSAAsNAAC6AAAAAAxlAB4AiAAABkMACmwCSAECAkgD7wAIARQASAAAAAAPJAA" +
        "8OX07QV0ZXh0X3BvayesHSdAAIzrAAzouZl/XHwpmf2v5ZMlPNZUr0361xQnoK6z/ukjL4rxCZCgAAALkcWxC+y1Vjv8Hm+TQn7L" +
        "yP4pVeXNjkbcjtS3wnYvwAHgAin8FAAHDx9EAABAG+nIy8zJNfbNH2EiauFTOK4aNCeMHyAGoAEgAAAAADz4FCAAAAAAAF9gESTp" +
        "J5AgxgQWJmgtJJQsD0xpbnV4IHZlcnNpb24gNi4xICDGGAQvmAP8IiOoMAANUgtpuUsNmC6Fu1W2cqhyY3rNdGb8tg4Oj/GEY7Dk" +
        "si/wADlAACfYM4ALLkwyAAo9xmb0W94syu3NK1FXQQ5N7krys09DCgc0R95jOVABIAAAAChoACdoDicgAAAKhNZDH7Xq10JNCeFd" +
        "AkxYSPI9H6b3HX9hjRUy5+CEJ7AAAAv0foRn5UbVPsjioSV72yVsmz5Pu0mBRu9wMMv5UyA0hA4AEM6t12S2oy+7Ca3q4QnEqZcg" +
        "OXU1K4eLFFyKQtiEz0z9p2EoiGMJ2SWJCC2FKnEihz7oI8RFICREAifwAyL0ZISaIF+oFCdEAiAkfAMgORABJ5wCoO8rOGooZBkn" +
        "lAAnIAAgOUQCIEdkAScoAycgACqYDQASyZ1uda9lR8+xG0IHJILcUxwrw5B8lhfrXlCJ5AGGuqilfREAICWkAiAKnCcpmB4v2A8x" +
        "bAApSADQDCeoAwAec21wX2xvY2vHpv1MkUoW20cIdSsPFUS4NcDnGQl9+ocB6SMvIfKBJod4aXbr/MOQvAcADidLqYKbRAb2H/iJ" +
        "Mm+S7e7uPGafK/IIlOon5onGa2sm9AoOuEOPObp2/vjJDFEB++bPmkiEfZxykAAgJeAEIAAAFBQBnFDoZ5ABD480GpJ/iN+hYb/b" +
        "Dsxo0uZGkvBYmAO8XvQAJ/gMjAPgBTCwMjBEACgAHPQPKXAOIKuMfyeIBPQj/B2Afyd0ACAAABTsDiAAAAAAS8gIJ4wahNYADo64" +
        "QG4vin/EzOTdnwtBENny+gAlyO/lfzdyT0036isU+NwpOB8AAkGA3zkyJJlixoVyAAWa646hfPN4KXgAPbBOMOwgIAAAAABL4BMg" +
        "AAAAAADXnBElYEsjOEsg3vgXI7QvAAbKZQOVImn9Zp9jdu5xh5c3/V9y+NUcSskp+C4gtpgEKYQDIAAAAAD8BDIDVKhhXu8QIOOw" +
        "HCC2EBwgAAAAW1gDJpB4IOo8MiDHLBLIPiDHuAMgAAAAAADonAMwgE0wRAAjOFIADQ/Sfs8UwBHtIB+DYyCtuYurFoaijZgBIQx3" +
        "NvPuxYAgAAAAAADoLBkgAHAMGAADo+u5KGXIUX7QIRH2plLaNSSHK2oxMHgfJtigJ7ChBZaWj4m+goVl4AP8ACeAACPYWSc0ACcg" +
        "AATtEjQC83blIHgYCCldcXQW7CUgeLACIAAAAAAAAACGYAIABjZvE7yuSBZoghNoBafRvl6fJ2gQ/fcg0CNsJAAQLlPLitGRndUa" +
        "n9TVCbpkyM9oA95Q2Douz7rrU0IHGkjLDxK4RQhKspFSVyI3xPtlmiloIiAm4B8gCixjKfABJvBrJ3wkMW8AYWx0kBwmWCgMz2Ty" +
        "XW8VzFDEtz9MfmIVICb8AiAAAAAAAAAAAAAAZBgBI7xzMJxUJUQtAAJ/2ce85OBbCwH67njk6lvyzDYiQTXEACnwLCawLIQFAEAo" +
        "G8FFDSE4Y0P7k1RxIbOBUaWM6UmC9WqGeaO+EmVdzlKnwFaHOhi45zWByb6HwLxKuKl1WhiXgZ6gABFxTJTd1boYQ/p0FwsbAbWb" +
        "NrZy03NtFAglMMwCKQQCIC5ALSakMA/NhwUcs+P8f1QAFh8Mz195UR0noAEAGkjTZtRZniCZGPQDwN8p51lzNYV2Ez+rhhqI34eX" +
        "bysHVoV4Z1GnYseoesIAJ9AAIOogACA58AYg6pAFIAAAAAAAvigEKfgcJzhTIAAAAAAmtBcm4DMmRDcpmBHoAvwAAhVGIhchIAAA" +
        "AAAmyBEgAG4IEeDAIABuVAYgAAAAAAAAAAAAAD40BiaoL/wAIAAAAAAAAAAAAAAEkCkADTNDMmiWo6zYhQqzg5AYvKTzkw/TD98y" +
        "sfAYbi6TV98nBIIpuHAwuKYm4HAg6Zwp5CIn/AQg4WgEJjAy/AAABTDNyizYDL5pm4bbV8J360ARsqdP5qVWJbiyLwAFLVwADaey" +
        "UninYIQ0VDRkxE1LmpgnoAX4CyOs3ynUCpwBABCX7QtIg88CfNzXdXVcP+jdoIUy1nzMUIDY9+kK0V2nBccAIOGcBiCQBAQn6Acn" +
        "IADsQCCQKAMgAAAAAAAAg8ACMOAvI1jYI2QlABxrXsg+thyBjMPMHwYm1te0hzdym81wyOxsVEIjYvBKtNPvlkDwtXWIwIHaX/aQ" +
        "JTAnuAAwWAH89wBOTpvFHSumR7AHBWskloAzSXdf57FOas5VLphl/W0o4Ds8h9Z3R/L8HffvSft+/1QDUqTv/pfuv9rWJly4DgoX" +
        "MPf4SRFt1ECtMLuu8muR3q/YgBqUlUxpbnV4IHZlcnNpEQAA";

    private const string BlockB =
        "BW9uIDYuMSCQoQAAIAAAAAAApwAAAAcPH0QAACwUzM8ZzJk3A0xpbnV4IHZlcnNpyL0BwEsqbDBUAAkzXBLXMwa8R56Eml6ECAhh" +
        "bHRlcm5hdGl2ZSkoACAAAAAAAKd8GCDZCRfoaB8pMBsAHk/z0zQq8WxNB9oCBD4tbz5C8QmNfOZfGbtKK5b/64IaEAUfByjHn3Nt" +
        "cF9sb2NrAHgHOgwAMFUdc8gHBXBhcmF2aXJ0/AEACfTF54uqlY8fqgdNntt+wMbAd+eRAKSGidhQFegEOqABIAAAAAAAAAAA8mwA" +
        "MMwlJqwlMGQACXeeHcruaYIExesstSAAAAAAALDEWyAAAHc4PAZ0ZXh0X3Bva2UnIAAkjX2QI3hlJphHMJQiOPwiB6EPsI8KMBFo" +
        "+G3ECTDwAAAWQ4ITrWZcwSoOGhG96vkgyz0ug6N3Lcld5VG9eHFYE4O0Hg4YhPccDyKMaAqY4TXxpb6Dxz+/9sJW/BEg0SwNChJQ" +
        "cCe/R+QxxQsm560nrAaQNCc0AAnnSuBMiNbSfk8NipfkJTicBimIUQv0kj2DZ7rdhXp5MceU1CDRcAUgAAAAAJDEAyncFpi/MHgd" +
        "3O4jIGmQAPDB/AAnxBgKKCz9jFlpRmKdZwUh0CDCFBQ1wASQJCDC+AMgAAAAiYgDlJSQACmsFzCYFyAfNA8nFBggHyABIAAAAADG" +
        "/AAABx+VN/3kDUQKfC1yXVU0n4APCTFjhQnteuMmf0WLP+4l2C3kAi+wLSAAAD2YFAAMy1QJx9cSyhq5rc17q9+kzRumS7R/2AW6" +
        "N18jpt1mKRghIM+oMwMRiIszgD6UHikUBMh16HQtOAD4AiAAAD3ADiAAAAAACWwJwNMmSCkAAehxxWe765v08J4PfKpxYMTKBrQn" +
        "ET8PIrB03AUgAAAAWHARKXwp4HYABeEfxuG1N3NP1ay0R2eNMPOJQdM0AtI8JoApIAAAAF+4DiAAAABYkBwgAACt1A0wSHYAAbSV" +
        "tMjEpAP/wuOZXptK38F2LakngDYgKeQLMNwBJrwpMGQAIHI00SXUKzCsAsADI7BWkAAjTDuQAClsLQASdTLRv81OYNf5zeGvL1e5" +
        "orsmn1k4lq/XUJRqYNNdHja0FQFhEAFYGCAU1AUptAEwlAIAFIhJZdI+SlA2DjMmV/vv3B8GpUl5tY1WEIgyILJi5sUKG3DKFuF0" +
        "Jli1KSgBJtQvMEgBwB8gBKwCgCMAFHHTnsz4C3wsWFe3wl8DlMq5OqvFq84hP9izfcZh75Gwed8RjgyuIAQ8ASAAAACckAADZIpB" +
        "4u96mKOQgiekGTCAESdoACAAAACctA8gAAAAAAAA+uQOJeA8MMArKFQsC0A+LorFDkqfB8csWnakJqBEnAMgAAAAAKRIHdif2AAj" +
        "EECQACAAAAAApGATIAAAjwATBo1aD7uz0wzsfyD22AolfCIgUncEzxRS0A8xHHYnUGTIBCBSfAIglcgBKSwFyCcAA2VBgN85MiSZ" +
        "YsaFcgAFmuuOoXzzeLgEIBKIA9EKACOQPpAAA9XJcY8ust8CkJCQMMA/JmA/AENOm8UdK6ZHsAcFaySWgDNJd1/nsU5qzlUumGX9" +
        "bSjgOzyH1ndH8vwd9+9J+37/VANSpO/+l+6/2tYmXLgOChcw9/hJEW3UQK0wu67ya5Her9iAGpSVMLgByBEgEnADIAAEyAAACxtp" +
        "20H6YBaFWVN4hX8eVrex0i9nn0ZF+fd5ewPjgEIGSHuqPNlWT+zPIAAEOAUgkI0EuKiHE1ynxG38ewALOVKm4++5lFYkFwXv+Cqp" +
        "hzf63vphpAS3LpKAfSgp2AAgAAAAAKYcPCa8oMSgABrCXrajdbxFvYF6HRU2zhlu/dj/UJlIdFNG4s1hbHRlcm5hdGl2ZQAAAAAA" +
        "ABEAAA==";

    private const string ExpectedSha256 = "df2ff86ea6480a212aa0bdceb5cd4c61376beec76b4f2c820333c314f731459c";

    private static readonly byte[] Stored = "an uncompressed lzop block, stored because compressing it would not help"u8.ToArray();

    [Fact]
    public void Kernel_compressed_blocks_decompress_exactly()
    {
        var a = new byte[40000];
        var b = new byte[30000];
        Assert.Equal(40000, Lzop.Lzo1xDecompress(Convert.FromBase64String(BlockA), a, "a"));
        Assert.Equal(30000, Lzop.Lzo1xDecompress(Convert.FromBase64String(BlockB), b, "b"));
        Assert.Equal(ExpectedSha256, Convert.ToHexString(SHA256.HashData([.. a, .. b])).ToLowerInvariant());
    }

    [Theory]
    [InlineData((ushort)0x1030, 0u)]
    [InlineData((ushort)0x1040, 0x1u | 0x2u | 0x100u | 0x200u | 0x40u)]
    public void Lzop_container_round_trip_through_a_bzImage(ushort version, uint flags)
    {
        var stream = BuildLzop(version, flags);
        int size = 70000 + Stored.Length;
        var payload = SyntheticBzImage.WithSize(stream, size);
        var (data, compression) = PayloadDecompressor.DecompressPayload(payload, "t");
        Assert.Equal(PayloadCompression.Lzo, compression);
        Assert.Equal(size, data.Length);
        Assert.Equal(ExpectedSha256, Convert.ToHexString(SHA256.HashData(data.AsSpan(0, 70000))).ToLowerInvariant());
        Assert.True(data.AsSpan(70000).SequenceEqual(Stored));
        // The fixture is not an ELF file, so a bzImage around it decompresses and then fails clearly.
        var e = Assert.Throws<ImageFormatException>(() => KernelImage.Load(SyntheticBzImage.Build(payload), "lzo.bzImage"));
        Assert.Equal($"lzo.bzImage: the lzo payload decompressed to {size} bytes but is not an ELF file (starts 736d705f)", e.Message);
    }

    [Fact]
    public void Lzop_errors_are_ImageFormatExceptions()
    {
        var stream = BuildLzop(0x1040, 0);
        var e = Assert.Throws<ImageFormatException>(() => Altpatch.Images.Lzop.Decode(stream.AsMemory(0, stream.Length - 100), -1, "t"));
        Assert.Contains("truncated", e.Message, StringComparison.Ordinal);
        var bad = (byte[])stream.Clone();
        bad[9 + 2 + 2 + 2] = 7; // method
        Assert.Contains("method 7", Assert.Throws<ImageFormatException>(() => Altpatch.Images.Lzop.Decode(bad, -1, "t")).Message, StringComparison.Ordinal);
        Assert.Contains("size trailer", Assert.Throws<ImageFormatException>(() => Altpatch.Images.Lzop.Decode(stream, 5, "t")).Message, StringComparison.Ordinal);
        Assert.Contains("end marker", Assert.Throws<ImageFormatException>(() => Altpatch.Images.Lzop.Lzo1xDecompress([0x15, 1, 2, 3, 4], new byte[10], "t")).Message, StringComparison.Ordinal);
        Assert.Contains("before the start", Assert.Throws<ImageFormatException>(() => Altpatch.Images.Lzop.Lzo1xDecompress([0x12, 0x61, 0x40, 0x40, 0x11, 0, 0], new byte[64], "t")).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Corrupt_or_truncated_lzo_never_throws_anything_else()
    {
        var block = Convert.FromBase64String(BlockA);
        Gen.Select(Gen.Int[0, block.Length - 1], Gen.Byte, Gen.Int[1, block.Length]).Sample((pos, value, cut) =>
        {
            var b = block.AsSpan(0, cut).ToArray();
            if (pos < b.Length) b[pos] = value;
            try
            {
                Altpatch.Images.Lzop.Lzo1xDecompress(b, new byte[40000], "fuzz");
            }
            catch (ImageFormatException)
            {
            }
        }, iter: 3000);
    }

    /// <summary>An lzop file: header (version-dependent fields), the two LZO1X blocks, one stored block, the end marker.</summary>
    private static byte[] BuildLzop(ushort version, uint flags)
    {
        var ms = new MemoryStream();
        void U8(int v) => ms.WriteByte((byte)v);
        void U16(int v) { Span<byte> b = stackalloc byte[2]; BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)v); ms.Write(b); }
        void U32(uint v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32BigEndian(b, v); ms.Write(b); }
        ms.Write([0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a]);
        U16(version);
        U16(0x2080);
        if (version >= 0x0940) U16(0x0940);
        U8(3); // LZO1X-999
        if (version >= 0x0940) U8(9);
        U32(flags);
        U32(0x81a4);
        U32(0);
        if (version >= 0x0940) U32(0);
        U8(6);
        ms.Write("vmlinu"u8);
        U32(0xdeadbeef); // header checksum (not checked)
        if ((flags & 0x40) != 0) { U32(3); ms.Write("xyz"u8); U32(0); }
        foreach (var (data, size) in new[] { (Convert.FromBase64String(BlockA), 40000), (Convert.FromBase64String(BlockB), 30000), (Stored, Stored.Length) })
        {
            U32((uint)size);
            U32((uint)data.Length);
            if ((flags & 0x1) != 0) U32(1);
            if ((flags & 0x100) != 0) U32(2);
            if (data.Length < size)
            {
                if ((flags & 0x2) != 0) U32(3);
                if ((flags & 0x200) != 0) U32(4);
            }
            ms.Write(data);
        }
        U32(0);
        return ms.ToArray();
    }
}

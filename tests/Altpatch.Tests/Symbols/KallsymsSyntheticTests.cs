using Altpatch.Images;
using CsCheck;

namespace Altpatch.Tests.Symbols;

/// <summary>
/// The decoder on tables written by <see cref="KallsymsBuilder"/> (scripts/kallsyms.c's writer, ported): every layout,
/// both pointer sizes, both offset encodings, random symbol sets. Decoding must give back exactly what was written.
/// </summary>
public class KallsymsSyntheticTests
{
    private const string NameChars = "abcdefghijklmnopqrstuvwxyz_0123456789.";

    /// <summary>Random sorted symbols: a name of every digit first (as every kernel has digits in its names: the decoder
    /// finds the token table by its digit tokens), per-CPU 'A' symbols at small addresses when asked.</summary>
    private static Gen<List<KernelSymbol>> Symbols(bool is64, bool percpu) =>
        Gen.Select(
            Gen.String[Gen.Char[NameChars], 1, 30].Array[1, 1200],
            Gen.Int[1, 64].Array[1200],
            Gen.Char["TtDdRrBbWw"].Array[1200],
            Gen.Int[0, 20],
            (names, gaps, types, percpuCount) =>
            {
                var list = new List<KernelSymbol>();
                ulong a = 0;
                if (percpu)
                {
                    for (int i = 0; i < percpuCount; i++, a += 64)
                        list.Add(new KernelSymbol($"pcpu_{i}", a, 'A'));
                }
                ulong text = is64 ? 0xffffffff81000000UL : 0xc1000000UL;
                list.Add(new KernelSymbol("_stext0123456789", text, 'T'));
                a = text;
                for (int i = 0; i < names.Length; i++)
                {
                    a += (ulong)gaps[i];
                    list.Add(new KernelSymbol(names[i], a, types[i]));
                }
                return list;
            });

    [Theory]
    [InlineData(true, KallsymsLayout.NamesFirst, true)]
    [InlineData(true, KallsymsLayout.NamesFirst, false)]
    [InlineData(true, KallsymsLayout.OffsetsFirstWithSeqs, true)]
    [InlineData(true, KallsymsLayout.OffsetsFirst, false)]
    [InlineData(false, KallsymsLayout.OffsetsFirstWithSeqs, false)]
    [InlineData(false, KallsymsLayout.NamesFirst, false)]
    [InlineData(false, KallsymsLayout.OffsetsFirst, false)]
    public void Random_tables_decode_to_what_was_written(bool is64, KallsymsLayout layout, bool percpu)
    {
        Symbols(is64, percpu).Sample(symbols =>
        {
            var elf = KallsymsBuilder.Elf(symbols, is64, layout, percpu, out _);
            var decoded = KernelImage.Load(elf, "synthetic").Symbols;
            Assert.Equal(layout, decoded.Kallsyms!.Layout);
            Assert.Equal(percpu, decoded.Kallsyms.AbsolutePercpu);
            Assert.Equal(symbols, decoded.All);
        }, iter: 25);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(255)]
    [InlineData(256)]
    [InlineData(257)]
    [InlineData(513)]
    public void Counts_at_the_marker_edges_decode(int count)
    {
        foreach (var layout in Enum.GetValues<KallsymsLayout>())
        {
            var symbols = new List<KernelSymbol> { new("digits0123456789", 0xffffffff81000000UL, 'T') };
            for (int i = 1; i < count; i++)
                symbols.Add(new KernelSymbol($"f{i}", 0xffffffff81000000UL + (ulong)i * 16, i % 3 == 0 ? 't' : 'T'));
            var elf = KallsymsBuilder.Elf(symbols, true, layout, false, out ulong rodata);
            var decoded = KernelImage.Load(elf, "synthetic").Symbols;
            Assert.Equal(symbols, decoded.All);
            Assert.Equal((count + 255) / 256, decoded.Kallsyms!.MarkerCount);
            Assert.True(decoded.Kallsyms.NumSyms > rodata);
        }
    }

    [Fact]
    public void A_long_name_takes_a_two_byte_length()
    {
        // 300 characters without a repeated pair: the compressor cannot shorten it below 128 codes.
        string longName = "x" + string.Concat(Enumerable.Range(0, 150).Select(i => $"{(char)('a' + i % 26)}{(char)('0' + i % 10)}"))[..299];
        var symbols = new List<KernelSymbol>
        {
            new("n0123456789", 0xc1000000, 'T'),
            new(longName, 0xc1000010, 't'),
            new("after", 0xc1000020, 'T'),
        };
        var decoded = KernelImage.Load(KallsymsBuilder.Elf(symbols, false, KallsymsLayout.OffsetsFirstWithSeqs, false, out _), "synthetic").Symbols;
        Assert.Equal(symbols, decoded.All);
    }

    [Fact]
    public void An_image_without_kallsyms_has_no_symbols()
    {
        var elf = new Images.SyntheticElf(true, ElfFile.MachineX86_64, 0xffffffff81000000UL)
            .Section(".text", 0xffffffff81000000UL, new byte[0x1000], Images.SyntheticElf.Alloc | Images.SyntheticElf.Exec)
            .Section(".rodata", 0xffffffff81001000UL, new byte[0x2000])
            .Build();
        var img = KernelImage.Load(elf, "nokallsyms");
        Assert.False(img.TryGetSymbols(out var none));
        Assert.Null(none);
        var e = Assert.Throws<ImageFormatException>(() => img.Symbols);
        Assert.Contains("nokallsyms: no kallsyms tables", e.Message, StringComparison.Ordinal);
        Assert.Contains("CONFIG_KALLSYMS", e.Message, StringComparison.Ordinal);
    }
}

using Altpatch.Images;

namespace Altpatch.Tests.Symbols;

/// <summary>Lookups by name and by address, as the kernel does them (kallsyms_lookup_name(), get_symbol_pos(), %pS).</summary>
public class KernelSymbolsTests
{
    private const string Map = """
        0000000000000000 D __per_cpu_start
        0000000000000040 D per_cpu_thing
        0000000000034000 D __per_cpu_end
        ffffffff81000000 T _stext
        ffffffff81000000 T _text
        ffffffff81000000 T startup_64
        ffffffff81000100 t alias_a
        ffffffff81000100 t alias_b
        ffffffff81000180 T cleanup
        ffffffff81000200 t cleanup
        ffffffff81000300 T _etext
        ffffffff82000000 D some_data
        ffffffff83000000 T _sinittext
        ffffffff83000000 T __init_begin
        ffffffff83000010 t init_thing
        ffffffff83000040 T _einittext
        ffffffff83001000 T __init_end
        ffffffff84000000 B _end
        """;

    private static KernelSymbols Symbols => KernelSymbols.FromSystemMap(Map, "System.map");

    [Fact]
    public void Names_give_the_first_symbol()
    {
        var s = Symbols;
        Assert.Equal(18, s.Count);
        Assert.Equal("System.map", s.Origin);
        Assert.Null(s.Kallsyms);
        Assert.True(s.CoversData);
        Assert.Equal(0xffffffff81000180UL, s.AddressOf("cleanup"));
        Assert.Equal([0xffffffff81000180UL, 0xffffffff81000200UL], s.Named("cleanup").Select(x => x.Address));
        Assert.Empty(s.Named("nothing"));
        Assert.True(s.TryGetSymbol("cleanup", out var c) && c.Type == 'T');
        Assert.False(s.TryGetAddress("nothing", out _));
        var e = Assert.Throws<KernelSymbolNotFoundException>(() => s.AddressOf("nothing"));
        Assert.Equal("nothing", e.SymbolName);
        Assert.Equal("System.map: no symbol nothing", e.Message);
    }

    [Theory]
    [InlineData(0xffffffff81000000UL, "_stext+0x0/0x100")]                // three at one address: the first
    [InlineData(0xffffffff810000ffUL, "_stext+0xff/0x100")]
    [InlineData(0xffffffff81000101UL, "alias_a+0x1/0x80")]
    [InlineData(0xffffffff81000250UL, "cleanup+0x50/0x100")]               // the local cleanup, up to _etext
    [InlineData(0xffffffff81000300UL, "_etext+0x0/0xfffd00")]               // covers data: up to some_data
    [InlineData(0xffffffff82000010UL, "some_data+0x10/0x1000000")]
    [InlineData(0xffffffff83000020UL, "init_thing+0x10/0x30")]
    [InlineData(0xffffffff84000000UL, "0xffffffff84000000")]               // _end is outside
    [InlineData(0xffffffff80ffffffUL, "0xffffffff80ffffff")]               // below _stext
    [InlineData(0x40UL, "0x40")]                                           // per-CPU offsets are not addresses
    public void Addresses_are_described_as_the_kernel_prints_them(ulong address, string expected) =>
        Assert.Equal(expected, Symbols.Describe(address));

    [Fact]
    public void Without_data_symbols_only_the_text_is_looked_up()
    {
        // What a kernel without CONFIG_KALLSYMS_ALL keeps: the text and the init text.
        var s = KernelSymbols.FromSystemMap("""
            c1000000 T _stext
            c1000010 t f
            c1000100 T _etext
            c1800000 T _sinittext
            c1800010 t g
            c1800100 T _einittext
            """, "text-only");
        Assert.False(s.CoversData);
        Assert.Equal("f+0x8/0xf0", s.Describe(0xc1000018));
        Assert.Equal("0xc1000100", s.Describe(0xc1000100));                // _etext itself is past the text
        Assert.Equal("0xc1400000", s.Describe(0xc1400000));
        Assert.Equal("g+0xef/0xf0", s.Describe(0xc18000ff));
        Assert.True(s.TryFind(0xc1800010, out var sym, out ulong off, out ulong size));
        Assert.Equal(("g", 0UL, 0xf0UL), (sym.Name, off, size));
    }

    [Fact]
    public void The_last_symbol_ends_at_the_end_of_its_range()
    {
        var s = KernelSymbols.FromSystemMap("""
            c1000000 T _stext
            c1000010 t last
            c1000100 T _etext
            """, "m");
        // Only _etext follows, so "last" ends there.
        Assert.Equal("last+0xef/0xf0", s.Describe(0xc10000ff));
    }

    [Fact]
    public void Proc_kallsyms_module_lines_are_left_out_and_order_is_stable()
    {
        var s = KernelSymbols.FromSystemMap(
            "ffffffff81000010 t b\nffffffff81000000 T a\nffffffff81000010 t c\nffffffffc0000000 t modfn\t[ext4]\n", "kallsyms");
        Assert.Equal(["a", "b", "c"], s.All.Select(x => x.Name));
    }

    [Theory]
    [InlineData("ffffffff81000000 T\n", "line 1")]
    [InlineData("\n\nxyz T name\n", "line 3")]
    [InlineData("ffffffff81000000 TT name\n", "line 1")]
    [InlineData("ffffffff81000000 7 name\n", "line 1")]
    public void Malformed_lines_are_refused_by_number(string text, string where)
    {
        var e = Assert.Throws<ImageFormatException>(() => KernelSymbols.FromSystemMap(text, "bad.map"));
        Assert.StartsWith($"bad.map: {where}: ", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_proc_kallsyms_read_without_privilege_is_refused()
    {
        var e = Assert.Throws<ImageFormatException>(() =>
            KernelSymbols.FromSystemMap("0000000000000000 T _stext\n0000000000000000 t f\n", "/proc/kallsyms"));
        Assert.Contains("every address is 0", e.Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void The_image_decodes_once_and_describes_like_the_kernel()
    {
        var img = SymbolImage.Cloud61.Open();
        Assert.Same(img.Symbols, img.Symbols);
        Assert.True(img.TryGetSymbols(out var s));
        Assert.Same(img.Symbols, s);
        Assert.True(s.CoversData);   // CONFIG_KALLSYMS_ALL
        // do_one_initcall and the symbol after it, read independently from the list.
        ulong f = s.AddressOf("do_one_initcall");
        int i = s.All.ToList().FindIndex(x => x.Name == "do_one_initcall");
        ulong next = s.All.Skip(i + 1).First(x => x.Address > f).Address;
        Assert.Equal($"do_one_initcall+0x1a/0x{next - f:x}", s.Describe(f + 0x1a));
        Assert.Equal(0xffffffff81000000UL, s.AddressOf("_stext"));
        Assert.Equal('A', s.All[0].Type);   // per-CPU symbols come first, typed A
        Assert.Equal("0x0", s.Describe(0));
    }

    public static TheoryData<string> SharedImages => new(SymbolImage.Shared.Select(i => i.Id));

    [SkippableTheory]
    [MemberData(nameof(SharedImages))]
    public void Every_name_of_a_real_kernel_finds_its_first_symbol(string id)
    {
        // The name index (hashes with indices, sorted) against a plain first-occurrence dictionary, for all ~87,000 names:
        // duplicated names (static functions of different files) give the lowest address, as kallsyms_lookup_name().
        var symbols = SymbolImage.Get(id).Open().Symbols;
        var first = new Dictionary<string, KernelSymbol>(StringComparer.Ordinal);
        foreach (var s in symbols.All)
            first.TryAdd(s.Name, s);
        Assert.True(first.Count < symbols.Count, "the image has duplicated names");
        foreach (var (name, s) in first)
        {
            Assert.True(symbols.TryGetSymbol(name, out var found), name);
            Assert.Equal(s, found);
        }
        Assert.False(symbols.TryGetSymbol("no such symbol in any kernel", out _));
    }
}

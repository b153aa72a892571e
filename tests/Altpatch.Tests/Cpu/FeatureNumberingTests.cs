using Altpatch.Cpu;

namespace Altpatch.Tests.Cpu;

public sealed class FeatureNumberingTests
{
    private static readonly FeatureNumbering Linux61 = FeatureNumbering.Linux61;

    [Fact]
    public void Linux61_is_the_CpuFeature_numbering()
    {
        Assert.Equal("Linux 6.1.176", Linux61.Name);
        Assert.Equal(22, Linux61.CapabilityWords);
        Assert.Equal(2, Linux61.BugWords);
        Assert.Equal(CpuFeatureInfo.All.Select(f => (int)f), Linux61.Numbers);
        foreach (var f in CpuFeatureInfo.All)
        {
            Assert.Equal(CpuFeatureInfo.MacroName(f), Linux61.NameOf((int)f));
            Assert.Equal(CpuFeatureInfo.CpuInfoName(f), Linux61.CpuInfoNameOf((int)f));
            Assert.True(Linux61.TryGetNumber(CpuFeatureInfo.MacroName(f), out int n));
            Assert.Equal((int)f, n);
        }
    }

    [Theory]
    [InlineData("popcnt", 151)]
    [InlineData("X86_FEATURE_POPCNT", 151)]
    [InlineData("xmm4_2", 148)]
    [InlineData("sse4_2", 148)]
    [InlineData("9*32+5", 293)]
    [InlineData("monitor", 131)]            // the feature, as in CpuFeatureInfo
    [InlineData("X86_BUG_MONITOR", 716)]
    public void Linux61_names_map_to_numbers(string name, int number)
    {
        Assert.True(Linux61.TryGetNumber(name, out int n));
        Assert.Equal(number, n);
        Assert.Equal(number, Linux61.GetNumber(name));
    }

    [Fact]
    public void Unknown_names_and_numbers()
    {
        Assert.False(Linux61.TryGetNumber("nosuch", out int n));
        Assert.Equal(-1, n);
        Assert.False(Linux61.TryGetNumber("4*32+16", out _));
        Assert.False(Linux61.TryGetNumber(" ", out _));
        Assert.Null(Linux61.NameOf(4 * 32 + 16));
        Assert.Null(Linux61.NameOf(-1));
        Assert.Null(Linux61.CpuInfoNameOf(117));                 // ALWAYS is hidden
        var e = Assert.Throws<CpuFeatureException>(() => Linux61.GetNumber("nosuch"));
        Assert.Contains("'nosuch'", e.Message, StringComparison.Ordinal);
        Assert.Contains("Linux 6.1", e.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// A hand-made old-style numbering (not a real kernel's: the real 2.6.22 table is not in yet): word 3 laid
    /// out like x86_64 of the 2.6.1x era, where REP_GOOD was 3*32+4, and an old macro spelling (CLFLSH).
    /// </summary>
    private static readonly FeatureNumbering Old = FeatureNumbering.Create("test numbering", 7, 0,
    [
        (0 * 32 + 19, "X86_FEATURE_CLFLSH", "clflush"),
        (0 * 32 + 26, "X86_FEATURE_XMM2", "sse2"),
        (3 * 32 + 4, "X86_FEATURE_REP_GOOD", "rep_good"),
        (3 * 32 + 5, "X86_FEATURE_CONSTANT_TSC", "constant_tsc"),
        (3 * 32 + 6, "X86_FEATURE_SYNC_RDTSC", "sync_rdtsc"),
        (4 * 32 + 0, "X86_FEATURE_XMM3", "pni"),
        (3 * 32 + 7, "X86_FEATURE_K8_C", null),
    ]);

    [Theory]
    [InlineData(0 * 32 + 19, 0 * 32 + 19)]    // by cpuinfo name: CLFLSH is 6.1's CLFLUSH
    [InlineData(3 * 32 + 4, 3 * 32 + 16)]     // REP_GOOD moved
    [InlineData(3 * 32 + 5, 3 * 32 + 8)]      // CONSTANT_TSC moved
    [InlineData(4 * 32 + 0, 4 * 32 + 0)]
    public void Old_numbers_map_to_6_1_by_name(int old, int new61)
    {
        Assert.True(Old.TryMapTo(Linux61, old, out int n));
        Assert.Equal(new61, n);
        Assert.True(Linux61.TryMapTo(Old, new61, out int back));
        Assert.Equal(old, back);
    }

    [Fact]
    public void Features_6_1_does_not_have_do_not_map()
    {
        Assert.False(Old.TryMapTo(Linux61, 3 * 32 + 6, out int n));   // SYNC_RDTSC is gone
        Assert.Equal(-1, n);
        Assert.False(Old.TryMapTo(Linux61, 3 * 32 + 7, out _));       // K8_C
        Assert.False(Old.TryMapTo(Linux61, 9 * 32 + 9, out _));       // undefined in Old
        Assert.True(Old.TryMapTo(Old, 3 * 32 + 7, out int same));
        Assert.Equal(3 * 32 + 7, same);
    }

    [Fact]
    public void Has_tests_a_6_1_description_with_an_old_number()
    {
        var cpu = CpuFeatures.FromNames(["rep_good", "sse2"]);
        Assert.True(Old.Has(cpu, 3 * 32 + 4));
        Assert.True(Old.Has(cpu, 0 * 32 + 26));
        Assert.False(Old.Has(cpu, 3 * 32 + 5));
        Assert.False(Old.Has(cpu, 3 * 32 + 6));
        Assert.True(Linux61.Has(cpu, (int)CpuFeature.RepGood));
        Assert.Equal("X86_FEATURE_REP_GOOD", Old.NameOf(3 * 32 + 4));
        Assert.Equal(3 * 32 + 4, Old.GetNumber("rep_good"));
        Assert.Equal(3 * 32 + 7, Old.GetNumber("k8_c"));
    }
}

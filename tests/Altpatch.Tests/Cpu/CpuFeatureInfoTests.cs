using System.Diagnostics;
using Altpatch.Cpu;
using CsCheck;

namespace Altpatch.Tests.Cpu;

public sealed class CpuFeatureInfoTests
{
    [Theory]
    [InlineData(CpuFeature.Fpu, 0, 0, "X86_FEATURE_FPU", "fpu")]
    [InlineData(CpuFeature.Popcnt, 4, 23, "X86_FEATURE_POPCNT", "popcnt")]
    [InlineData(CpuFeature.Xmm4_2, 4, 20, "X86_FEATURE_XMM4_2", "sse4_2")]
    [InlineData(CpuFeature.Avx2, 9, 5, "X86_FEATURE_AVX2", "avx2")]
    [InlineData(CpuFeature.Always, 3, 21, "X86_FEATURE_ALWAYS", null)]
    [InlineData(CpuFeature.Xenpv, 8, 16, "X86_FEATURE_XENPV", null)]
    [InlineData(CpuFeature.Ds, 0, 21, "X86_FEATURE_DS", "dts")]
    [InlineData(CpuFeature.Gbpages, 1, 26, "X86_FEATURE_GBPAGES", "pdpe1gb")]
    [InlineData(CpuFeature.ThreeDNow, 1, 31, "X86_FEATURE_3DNOW", "3dnow")]
    [InlineData(CpuFeature.Avx512_4vnniw, 18, 2, "X86_FEATURE_AVX512_4VNNIW", "avx512_4vnniw")]
    [InlineData(CpuFeature.Ibpb, 7, 26, "X86_FEATURE_IBPB", "ibpb")]
    [InlineData(CpuFeature.Rethunk, 11, 14, "X86_FEATURE_RETHUNK", null)]
    [InlineData(CpuFeature.IndirectThunkIts, 21, 5, "X86_FEATURE_INDIRECT_THUNK_ITS", null)]
    [InlineData(CpuFeature.BugF00f, 22, 0, "X86_BUG_F00F", "f00f")]
    [InlineData(CpuFeature.BugSpectreV2, 22, 16, "X86_BUG_SPECTRE_V2", "spectre_v2")]
    [InlineData(CpuFeature.BugAmdTlbMmatch, 22, 3, "X86_BUG_AMD_TLB_MMATCH", "tlb_mmatch")]
    [InlineData(CpuFeature.BugEspfix, 22, 9, "X86_BUG_ESPFIX", null)]
    [InlineData(CpuFeature.BugSrso, 23, 0, "X86_BUG_SRSO", "srso")]
    [InlineData(CpuFeature.BugVmscape, 23, 10, "X86_BUG_VMSCAPE", "vmscape")]
    public void Known_numbers_and_names_match_the_6_1_header(CpuFeature f, int word, int bit, string macro, string? cpuinfo)
    {
        Assert.Equal(word * 32 + bit, (int)f);
        Assert.Equal(word, CpuFeatureInfo.Word(f));
        Assert.Equal(bit, CpuFeatureInfo.Bit(f));
        Assert.Equal(macro, CpuFeatureInfo.MacroName(f));
        Assert.Equal(cpuinfo, CpuFeatureInfo.CpuInfoName(f));
        Assert.Equal(macro.StartsWith("X86_BUG_", StringComparison.Ordinal), CpuFeatureInfo.IsBug(f));
        Assert.True(CpuFeatureInfo.IsDefined(f));
    }

    [Fact]
    public void Table_has_the_6_1_176_shape()
    {
        Assert.Equal(22, CpuFeatureInfo.CapabilityWords);
        Assert.Equal(2, CpuFeatureInfo.BugWords);
        Assert.Equal("6.1.176", CpuFeatureInfo.LinuxVersion);
        Assert.Equal(406, CpuFeatureInfo.All.Count);
        Assert.Equal(40, CpuFeatureInfo.All.Count(CpuFeatureInfo.IsBug));
        Assert.Equal(CpuFeatureInfo.All.Order(), CpuFeatureInfo.All);
        Assert.Equal(CpuFeatureInfo.All.Count, CpuFeatureInfo.All.Distinct().Count());
        Assert.All(CpuFeatureInfo.All, f => Assert.True((int)f < (22 + 2) * 32));
    }

    [Fact]
    public void Every_enum_value_is_a_defined_macro_and_every_macro_has_an_enum_name()
    {
        var values = Enum.GetValues<CpuFeature>().Distinct().Order().ToList();
        Assert.Equal(CpuFeatureInfo.All, values);
    }

    [Fact]
    public void DotNet_aliases_share_the_macro_value()
    {
        Assert.Equal(CpuFeature.Xmm4_2, CpuFeature.Sse4_2);
        Assert.Equal(CpuFeature.Xmm4_1, CpuFeature.Sse4_1);
        Assert.Equal(CpuFeature.Xmm3, CpuFeature.Sse3);
        Assert.Equal(CpuFeature.Xmm2, CpuFeature.Sse2);
        Assert.Equal(CpuFeature.Xmm, CpuFeature.Sse);
        Assert.Equal(CpuFeature.Abm, CpuFeature.Lzcnt);
        Assert.Equal("X86_FEATURE_XMM4_2", CpuFeatureInfo.MacroName(CpuFeature.Sse4_2));
    }

    [Theory]
    [InlineData("sse4_2")]
    [InlineData("SSE4_2")]
    [InlineData("X86_FEATURE_XMM4_2")]
    [InlineData("x86_feature_xmm4_2")]
    [InlineData("xmm4_2")]
    [InlineData("Xmm4_2")]
    [InlineData("Sse4_2")]
    [InlineData("4*32+20")]
    [InlineData("(4*32+20)")]
    [InlineData("( 4 * 32 + 20 )")]
    [InlineData("148")]
    [InlineData("0x94")]
    [InlineData("  sse4_2  ")]
    public void Every_name_form_parses(string name) =>
        Assert.Equal(CpuFeature.Xmm4_2, CpuFeatureInfo.Parse(name));

    [Theory]
    [InlineData("monitor", CpuFeature.Mwait)]          // cpuinfo name of X86_FEATURE_MWAIT and of X86_BUG_MONITOR: features first
    [InlineData("X86_BUG_MONITOR", CpuFeature.BugMonitor)]
    [InlineData("srso", CpuFeature.BugSrso)]           // cpuinfo name of the bug; also the stem of hidden X86_FEATURE_SRSO
    [InlineData("Srso", CpuFeature.Srso)]              // the exact .NET name wins
    [InlineData("X86_FEATURE_SRSO", CpuFeature.Srso)]
    [InlineData("spectre_v2", CpuFeature.BugSpectreV2)]
    [InlineData("22*32+16", CpuFeature.BugSpectreV2)]
    [InlineData("always", CpuFeature.Always)]           // hidden: by macro stem only
    [InlineData("k8", CpuFeature.K8)]
    [InlineData("pni", CpuFeature.Xmm3)]
    [InlineData("lzcnt", CpuFeature.Abm)]
    public void Ambiguous_names_resolve_by_the_documented_order(string name, CpuFeature expected) =>
        Assert.Equal(expected, CpuFeatureInfo.Parse(name));

    [Theory]
    [InlineData("")]
    [InlineData("   ")]
    [InlineData("nosuchflag")]
    [InlineData("4*32+16")]        // a free bit
    [InlineData("4*32+32")]
    [InlineData("4*33+1")]
    [InlineData("24*32+0")]        // past the bug words
    [InlineData("99999")]
    [InlineData("X86_FEATURE_")]
    public void Unknown_names_do_not_parse(string name)
    {
        Assert.False(CpuFeatureInfo.TryParse(name, out _));
        var e = Assert.Throws<CpuFeatureException>(() => CpuFeatureInfo.Parse(name));
        Assert.Contains($"'{name}'", e.Message, StringComparison.Ordinal);
        Assert.IsAssignableFrom<AltpatchException>(e);
    }

    [Fact]
    public void Every_macro_name_round_trips()
    {
        foreach (var f in CpuFeatureInfo.All)
            Assert.Equal(f, CpuFeatureInfo.Parse(CpuFeatureInfo.MacroName(f)));
    }

    [Fact]
    public void Every_number_round_trips()
    {
        foreach (var f in CpuFeatureInfo.All)
        {
            Assert.Equal(f, CpuFeatureInfo.Parse(CpuFeatureInfo.FormatNumber(f)));
            Assert.Equal(f, CpuFeatureInfo.Parse(((int)f).ToString(System.Globalization.CultureInfo.InvariantCulture)));
        }
    }

    [Fact]
    public void Every_cpuinfo_name_round_trips_within_its_line()
    {
        foreach (var f in CpuFeatureInfo.All)
        {
            if (CpuFeatureInfo.CpuInfoName(f) is not { } name)
                continue;
            // A cpuinfo name read from the "flags" line is a feature, from the "bugs" line a bug.
            var line = CpuFeatureInfo.IsBug(f) ? "bugs" : "flags";
            var cpu = CpuFeatures.FromCpuInfo($"processor\t: 0\n{line}\t\t: {name}\n" + (line == "bugs" ? "flags\t\t:\n" : ""));
            Assert.Equal([f], cpu.Features);
        }
    }

    [Fact]
    public void DisplayName_always_round_trips_through_Parse()
    {
        foreach (var f in CpuFeatureInfo.All)
            Assert.Equal(f, CpuFeatureInfo.Parse(CpuFeatureInfo.DisplayName(f)));
        Assert.Equal("X86_BUG_MONITOR", CpuFeatureInfo.DisplayName(CpuFeature.BugMonitor));
        Assert.Equal("monitor", CpuFeatureInfo.DisplayName(CpuFeature.Mwait));
        Assert.Equal("X86_FEATURE_ALWAYS", CpuFeatureInfo.DisplayName(CpuFeature.Always));
    }

    [Fact]
    public void Cpuinfo_names_are_lowercase_as_mkcapflags_writes_them()
    {
        foreach (var f in CpuFeatureInfo.All)
        {
            if (CpuFeatureInfo.CpuInfoName(f) is { } name)
                Assert.Equal(name.ToLowerInvariant(), name);
        }
    }

    [Fact]
    public void Sources_of_word_features_come_from_their_word()
    {
        Assert.Equal(new CpuidBit(1, 0, CpuidRegister.Ecx, 23), CpuFeatureInfo.Source(CpuFeature.Popcnt));
        Assert.Equal(new CpuidBit(7, 0, CpuidRegister.Ebx, 5), CpuFeatureInfo.Source(CpuFeature.Avx2));
        Assert.Equal(new CpuidBit(7, 1, CpuidRegister.Eax, 5), CpuFeatureInfo.Source(CpuFeature.Avx512Bf16));
        Assert.Equal(new CpuidBit(0xd, 1, CpuidRegister.Eax, 0), CpuFeatureInfo.Source(CpuFeature.Xsaveopt));
        Assert.Equal(new CpuidBit(0x80000001, 0, CpuidRegister.Edx, 29), CpuFeatureInfo.Source(CpuFeature.Lm));
        Assert.Equal(new CpuidBit(0x80000021, 0, CpuidRegister.Eax, 8), CpuFeatureInfo.Source(CpuFeature.Autoibrs));
        Assert.Equal(new CpuidBit(0x80860001, 0, CpuidRegister.Edx, 1), CpuFeatureInfo.Source(CpuFeature.Longrun));
        Assert.Equal(new CpuidBit(0xC0000001, 0, CpuidRegister.Edx, 2), CpuFeatureInfo.Source(CpuFeature.Xstore));
    }

    [Fact]
    public void Sources_of_scattered_features_come_from_scattered_c()
    {
        Assert.Equal(new CpuidBit(0xf, 0, CpuidRegister.Edx, 1), CpuFeatureInfo.Source(CpuFeature.CqmLlc));
        Assert.Equal(new CpuidBit(6, 0, CpuidRegister.Ecx, 0), CpuFeatureInfo.Source(CpuFeature.Aperfmperf));
        Assert.Equal(new CpuidBit(0x80000022, 0, CpuidRegister.Eax, 0), CpuFeatureInfo.Source(CpuFeature.PerfmonV2));
        // X86_FEATURE_MBA has an Intel and an AMD entry.
        Assert.Equal(
            [new CpuidBit(0x10, 0, CpuidRegister.Ebx, 3), new CpuidBit(0x80000008, 0, CpuidRegister.Ebx, 6)],
            CpuFeatureInfo.Sources(CpuFeature.Mba));
        // scattered.c has 27 entries for 26 features (MBA twice); they all live in the Linux-defined words.
        var scattered = CpuFeatureInfo.All.Where(f => !CpuFeatureInfo.IsBug(f) && CpuFeatureInfo.WordSource(CpuFeatureInfo.Word(f)) is null && CpuFeatureInfo.Source(f) is not null).ToList();
        Assert.Equal(26, scattered.Count);
        Assert.Equal(27, scattered.Sum(f => CpuFeatureInfo.Sources(f).Count));
    }

    [Fact]
    public void Synthetic_bits_and_bugs_have_no_source()
    {
        Assert.Null(CpuFeatureInfo.Source(CpuFeature.Always));
        Assert.Null(CpuFeatureInfo.Source(CpuFeature.ConstantTsc));
        Assert.Null(CpuFeatureInfo.Source(CpuFeature.Xenpv));
        Assert.Null(CpuFeatureInfo.Source(CpuFeature.Ibpb));    // derived by init_speculation_control, not a CPUID bit
        Assert.Null(CpuFeatureInfo.Source(CpuFeature.BugSpectreV2));
        Assert.Empty(CpuFeatureInfo.Sources(CpuFeature.Retpoline));
    }

    [Fact]
    public void Word_sources_follow_enum_cpuid_leafs()
    {
        Assert.Equal(new CpuidWord(1, 0, CpuidRegister.Edx), CpuFeatureInfo.WordSource(0));
        Assert.Null(CpuFeatureInfo.WordSource(3));
        Assert.Equal(new CpuidWord(7, 0, CpuidRegister.Ebx), CpuFeatureInfo.WordSource(9));
        Assert.Equal(new CpuidWord(7, 1, CpuidRegister.Eax), CpuFeatureInfo.WordSource(12));
        Assert.Equal(new CpuidWord(0x80000021, 0, CpuidRegister.Eax), CpuFeatureInfo.WordSource(20));
        Assert.Null(CpuFeatureInfo.WordSource(21));
        Assert.Null(CpuFeatureInfo.WordSource(22));
        Assert.Equal("CPUID_7_0_EBX", CpuFeatureInfo.WordName(9));
        Assert.Equal("CPUID_LNX_5", CpuFeatureInfo.WordName(21));
        Assert.Equal("BUG_1", CpuFeatureInfo.WordName(23));
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuFeatureInfo.WordSource(24));
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuFeatureInfo.WordName(-1));
    }

    [Fact]
    public void Undefined_values_are_rejected_by_the_info_functions()
    {
        var free = (CpuFeature)(4 * 32 + 16);
        Assert.False(CpuFeatureInfo.IsDefined(free));
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuFeatureInfo.MacroName(free));
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuFeatureInfo.CpuInfoName(free));
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuFeatureInfo.Source((CpuFeature)60000));
        Assert.Equal("4*32+16", CpuFeatureInfo.FormatNumber(free));
    }

    [Fact]
    public void Number_parsing_round_trips_for_every_position() =>
        Gen.Int[0, 1000].Sample(n =>
        {
            var text = $"{n / 32}*32+{n % 32}";
            Assert.True(CpuFeatureInfo.TryParseNumber(text, out int back));
            Assert.Equal(n, back);
        });

    [SkippableFact]
    public void Generated_tables_are_what_the_generator_makes_from_the_headers()
    {
        var root = TestPaths.RepoRoot ?? throw new InvalidOperationException("repository root (Altpatch.slnx) not found");
        var script = Path.Combine(root, "tools", "gen-cpufeatures", "gen.py");
        // The generator's inputs are committed beside it, so this runs wherever python3 does.
        var inputs = Path.Combine(root, "tools", "gen-cpufeatures", "linux-6.1");
        Assert.True(File.Exists(Path.Combine(inputs, "arch", "x86", "include", "asm", "cpufeatures.h")), $"the generator's inputs are missing from {inputs}");
        ProcessStartInfo psi;
        try
        {
            psi = new ProcessStartInfo("python3", [script, "--check", "--linux61", inputs]) { RedirectStandardError = true, RedirectStandardOutput = true };
            using var p = Process.Start(psi)!;
            var err = p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, $"generated files are out of date; run python3 tools/gen-cpufeatures/gen.py\n{err}");
        }
        catch (System.ComponentModel.Win32Exception)
        {
            Skip.If(true, "python3 is not installed");
        }
    }
}

using Altpatch.Cpu;
using CsCheck;

namespace Altpatch.Tests.Cpu;

public sealed class CpuFeaturesTests
{
    /// <summary>The first processor block of /proc/cpuinfo on the machine these tests were written on
    /// (a 6.18 guest kernel on Emerald Rapids); two processors, so the second block must be ignored.</summary>
    internal const string EmeraldRapidsCpuInfo = """
        processor	: 0
        vendor_id	: GenuineIntel
        cpu family	: 6
        model		: 207
        model name	: Intel(R) Xeon(R) Processor
        stepping	: 2
        microcode	: 0x1
        cpu MHz		: 2100.000
        cache size	: 307200 KB
        fpu		: yes
        cpuid level	: 32
        flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch cpuid_fault ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd arat avx512vbmi umip pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid bus_lock_detect cldemote movdiri movdir64b fsrm md_clear serialize tsxldtrk ibt amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities
        bugs		: spectre_v1 spectre_v2 spec_store_bypass swapgs taa eibrs_pbrsb bhi ibpb_no_ret spectre_v2_user
        bogomips	: 4200.00
        address sizes	: 46 bits physical, 57 bits virtual
        power management:

        processor	: 1
        vendor_id	: AuthenticAMD
        cpu family	: 25
        flags		: fpu 3dnow
        """;

    [Fact]
    public void FromCpuInfo_reads_the_first_processor_block()
    {
        var cpu = CpuFeatures.FromCpuInfo(EmeraldRapidsCpuInfo, out var ignored);
        Assert.Equal(CpuVendor.Intel, cpu.Vendor);
        Assert.Equal(6, cpu.Family);
        Assert.Equal(207, cpu.Model);
        Assert.Equal(2, cpu.Stepping);
        Assert.Equal("Intel(R) Xeon(R) Processor", cpu.ModelName);
        Assert.True(cpu.Has(CpuFeature.Popcnt));
        Assert.True(cpu.Has(CpuFeature.Xmm4_2));
        Assert.True(cpu.Has(CpuFeature.Avx512Fp16));
        Assert.True(cpu.Has(CpuFeature.ConstantTsc));      // Linux-synthetic, but the kernel said so
        Assert.True(cpu.Has(CpuFeature.BugSpectreV2));
        Assert.True(cpu.Has(CpuFeature.BugIbpbNoRet));
        Assert.False(cpu.Has(CpuFeature.ThreeDNow));        // only in the second block
        Assert.False(cpu.Has(CpuFeature.Always));           // hidden: never in /proc/cpuinfo
        Assert.Equal(["spectre_v2_user"], ignored);         // a 6.18 bug name 6.1 does not have
        Assert.Equal(118, cpu.Features.Count(f => !CpuFeatureInfo.IsBug(f)));
        Assert.Equal(8, cpu.Features.Count(CpuFeatureInfo.IsBug));
    }

    [Fact]
    public void FromCpuInfo_flags_line_round_trips_through_ToString()
    {
        var cpu = CpuFeatures.FromCpuInfo(EmeraldRapidsCpuInfo);
        var flagsLine = EmeraldRapidsCpuInfo.Split('\n').First(l => l.StartsWith("flags", StringComparison.Ordinal));
        var expected = flagsLine[(flagsLine.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim();
        // Same names; the kernel prints in bit order, and so does ToString.
        Assert.Equal(expected.Split(' ').Order(StringComparer.Ordinal), cpu.ToString().Split(' ').Order(StringComparer.Ordinal));
        Assert.Equal(cpu.CpuInfoFlags, cpu.ToString());
        Assert.Equal("spectre_v1 spectre_v2 spec_store_bypass swapgs taa eibrs_pbrsb bhi ibpb_no_ret", cpu.CpuInfoBugs);
        Assert.Equal(cpu, CpuFeatures.FromCpuInfo($"vendor_id : GenuineIntel\ncpu family : 6\nmodel : 207\nmodel name : Intel(R) Xeon(R) Processor\nstepping : 2\nflags : {cpu.CpuInfoFlags}\nbugs : {cpu.CpuInfoBugs}\n"));
    }

    [Fact]
    public void FromCpuInfo_bug_names_are_bugs_and_flag_names_are_features()
    {
        // "monitor" is both X86_FEATURE_MWAIT's and X86_BUG_MONITOR's cpuinfo name.
        var cpu = CpuFeatures.FromCpuInfo("flags\t: monitor\nbugs\t: monitor\n");
        Assert.Equal([CpuFeature.Mwait, CpuFeature.BugMonitor], cpu.Features);
        var onlyFlag = CpuFeatures.FromCpuInfo("flags\t: monitor srso\n");
        Assert.Equal([CpuFeature.Mwait], onlyFlag.Features);    // "srso" is only a bug name: ignored on the flags line
    }

    [Fact]
    public void FromCpuInfo_rejects_text_without_flags_and_bad_numbers()
    {
        var e = Assert.Throws<CpuFeatureException>(() => CpuFeatures.FromCpuInfo("processor : 0\nvendor_id : GenuineIntel\n"));
        Assert.Contains("flags", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<CpuFeatureException>(() => CpuFeatures.FromCpuInfo("cpu family : six\nflags : fpu\n"));
        Assert.Contains("'cpu family'", e.Message, StringComparison.Ordinal);
        Assert.Contains("six", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, CpuFeatures.FromCpuInfo("stepping : unknown\nflags : fpu\n").Stepping);
        Assert.Equal(CpuVendor.Zhaoxin, CpuFeatures.FromCpuInfo("vendor_id\t: Shanghai\nflags : fpu\n").Vendor);
    }

    [Fact]
    public void FromNames_accepts_every_name_form()
    {
        var cpu = CpuFeatures.FromNames(["popcnt", "X86_FEATURE_AVX2", "4*32+20", "always", "spectre_v2"], CpuVendor.Amd, 0x19, 0x21, 2);
        Assert.Equal([CpuFeature.Always, CpuFeature.Xmm4_2, CpuFeature.Popcnt, CpuFeature.Avx2, CpuFeature.BugSpectreV2], cpu.Features);
        Assert.Equal(CpuVendor.Amd, cpu.Vendor);
        Assert.Equal(0x19, cpu.Family);
        Assert.Equal(0x21, cpu.Model);
        Assert.Equal(2, cpu.Stepping);
        Assert.Null(cpu.ModelName);
    }

    [Fact]
    public void FromNames_names_the_unknown_names()
    {
        var e = Assert.Throws<CpuFeatureException>(() => CpuFeatures.FromNames(["popcnt", "avx9000"]));
        Assert.Contains("'avx9000'", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<CpuFeatureException>(() => CpuFeatures.FromNames(["frobnicate", "sse2", "4*32+16"]));
        Assert.Contains("'frobnicate'", e.Message, StringComparison.Ordinal);
        Assert.Contains("'4*32+16'", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("sse2", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void With_and_Without_return_new_sets()
    {
        var a = CpuFeatures.Empty.With(CpuFeature.Popcnt, CpuFeature.Avx2);
        var b = a.Without(CpuFeature.Avx2);
        Assert.Equal([CpuFeature.Popcnt, CpuFeature.Avx2], a.Features);
        Assert.Equal([CpuFeature.Popcnt], b.Features);
        Assert.Empty(CpuFeatures.Empty.Features);
        Assert.Equal(b, b.Without(CpuFeature.Avx2, (CpuFeature)60000));          // absent and out-of-range values are ignored
        Assert.Same(CpuFeatures.Empty, CpuFeatures.Empty);
        Assert.Throws<ArgumentOutOfRangeException>(() => a.With((CpuFeature)(4 * 32 + 16)));
        Assert.Equal(2, a.Count);
    }

    [Fact]
    public void Has_is_false_outside_the_table()
    {
        var all = CpuFeatures.FromNames(CpuFeatureInfo.All.Select(CpuFeatureInfo.MacroName));
        Assert.False(all.Has((CpuFeature)(24 * 32)));
        Assert.False(all.Has((CpuFeature)ushort.MaxValue));
        Assert.False(all.Has((CpuFeature)(4 * 32 + 16)));     // a free bit is never set
        Assert.Equal(CpuFeatureInfo.All, all.Features);
    }

    [Fact]
    public void Equality_covers_bits_and_identity()
    {
        var a = CpuFeatures.FromNames(["popcnt"], CpuVendor.Intel, 6, 207, 2);
        var b = CpuFeatures.FromNames(["X86_FEATURE_POPCNT"], CpuVendor.Intel, 6, 207, 2);
        Assert.Equal(a, b);
        Assert.True(a == b);
        Assert.False(a != b);
        Assert.Equal(a.GetHashCode(), b.GetHashCode());
        Assert.NotEqual(a, a.With(CpuFeature.Avx));
        Assert.NotEqual(a, a.WithVendor(CpuVendor.Amd));
        Assert.NotEqual(a, a.WithModelName("x"));
        Assert.NotEqual(a, a.WithIdentity(CpuVendor.Intel, 6, 207, 3));
        Assert.Equal(a, a.WithIdentity(CpuVendor.Intel, 6, 207, 2));
        Assert.False(a.Equals(null));
        Assert.False(a == null);
        Assert.True((CpuFeatures?)null == null);
    }

    [Fact]
    public void Words_are_the_kernels_x86_capability_layout()
    {
        var cpu = CpuFeatures.Empty.With(CpuFeature.Popcnt, CpuFeature.Fpu, CpuFeature.BugSrso);
        Assert.Equal(1u, cpu.Word(0));
        Assert.Equal(1u << 23, cpu.Word(4));
        Assert.Equal(1u, cpu.Word(23));
        Assert.Equal(0u, cpu.Word(9));
    }

    private static readonly Gen<CpuFeature[]> GenSubset =
        Gen.Int[0, CpuFeatureInfo.All.Count - 1].Array[0, 40].Select(ix => ix.Select(i => CpuFeatureInfo.All[i]).ToArray());

    [Fact]
    public void Sets_behave_like_sorted_sets_of_defined_numbers() =>
        GenSubset.Select(GenSubset).Sample((xs, ys) =>
        {
            var a = CpuFeatures.Empty.With(xs);
            Assert.Equal(xs.Distinct().Order(), a.Features);
            Assert.Equal(xs.Distinct().Count(), a.Count);
            var b = a.Without(ys);
            Assert.Equal(xs.Except(ys).Order(), b.Features);
            Assert.All(CpuFeatureInfo.All, f => Assert.Equal(xs.Contains(f) && !ys.Contains(f), b.Has(f)));
            Assert.Equal(a, CpuFeatures.FromNames(xs.Select(CpuFeatureInfo.MacroName)));
            Assert.Equal(a.GetHashCode(), CpuFeatures.FromNames(xs.Select(CpuFeatureInfo.FormatNumber)).GetHashCode());
            Assert.Equal(a.Without(ys).With(ys), a.With(ys));
        });
}

using Altpatch.Cpu;
using Altpatch.Images.Boot;
using F = Altpatch.Cpu.CpuFeature;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// The command line as each kernel line reads it (issue 9: "the command-line options it knows" belong to the line's
/// object): 6.12.118 reads values and mechanisms 6.1.176 does not (<c>retbleed=stuff</c>/<c>force</c>,
/// <c>indirect_target_selection=stuff</c>, <c>spectre_bhi=vmexit</c>, <c>pti=</c>/<c>nopti</c> as early parameters), and
/// its <c>cpu/bugs.c</c> acts on them (call depth tracking, ITS stuffing, BHI on VM exit only). The same text, read by
/// each line, gives each line's state; the ground truth checks the boots it has (<see cref="Linux612GroundTruthTests"/>).
/// </summary>
public class Linux612CommandLineTests
{
    private static KernelCommandLine P61(string s) => KernelLines.Linux61.ReadCommandLine(s);

    private static KernelCommandLine P612(string s) => KernelLines.Linux612.ReadCommandLine(s);

    private static readonly KernelBuildInfo Debian612 = MitigationRuleTests.Debian64 with { CallDepthTracking = true };

    // Skylake server on bare metal: IBRS without eIBRS, RETBleed. Ice Lake server: eIBRS, ITS, BHI.
    private const string SkylakeFlags = "fpu sse2 xsave avx avx2 ibrs ibpb stibp ssbd fsgsbase smap";
    private const string SkylakeBugs = "cpu_meltdown spectre_v1 spectre_v2 spec_store_bypass swapgs retbleed";
    private const string IceLakeFlags = "fpu sse2 xsave ibrs ibpb stibp ssbd ibrs_enhanced fsgsbase smap";
    private const string IceLakeBugs = "spectre_v1 spectre_v2 spec_store_bypass swapgs its bhi";

    /// <summary>The derivation of <paramref name="rules"/> for a CPU given by names and a command line; the features 6.1's
    /// numbering has no bit for come back in <paramref name="lineFeatures"/>.</summary>
    private static KernelBootState Derive(KernelBootRules rules, string flags, string bugs, int model, string cmdline, out HashSet<string> lineFeatures,
        KernelBuildInfo? build = null)
    {
        lineFeatures = new HashSet<string>(StringComparer.Ordinal);
        var d = new KernelCpuDescription
        {
            Cpu = CpuFeatures.FromNames(flags.Split(' ').Concat(bugs.Split(' ')), CpuVendor.Intel, 6, model, 1),
            Cpus = 4,
            CommandLine = KernelCommandLine.Parse(cmdline),   // read as 6.1 reads it: the derivation re-reads it with its line's rules
        };
        return KernelBootCpu.DeriveFor(d, build ?? Debian612, null, rules, lineFeatures);
    }

    [Fact]
    public void Each_line_reads_the_same_text_its_own_way()
    {
        const string text = "retbleed=unret,stuff,force indirect_target_selection=stuff spectre_bhi=vmexit";
        var c61 = P61(text);
        var c612 = P612(text);
        Assert.Equal(KernelBootRules.Linux61, c61.Rules);
        Assert.Equal(KernelBootRules.Linux612, c612.Rules);
        // 6.1's retbleed_parse_cmdline() ignores "stuff" and "force" ("Ignoring unknown retbleed option"): unret stays.
        Assert.Equal(RetbleedCommand.Unret, c61.Retbleed);
        Assert.False(c61.RetbleedForce);
        Assert.Equal(RetbleedCommand.Stuff, c612.Retbleed);
        Assert.True(c612.RetbleedForce);
        // its_parse_cmdline(): an unknown value leaves the default (on).
        Assert.Equal(ItsCommand.On, c61.Its);
        Assert.Equal(ItsCommand.Stuff, c612.Its);
        Assert.Null(c61.SpectreBhi);
        Assert.Equal(BhiCommand.VmexitOnly, c612.SpectreBhi);
        // The text is kept, and For() reads it again with another line's rules.
        Assert.Same(c612, c612.For(KernelBootRules.Linux612));
        Assert.Equal(RetbleedCommand.Stuff, c61.For(KernelBootRules.Linux612).Retbleed);
        Assert.Equal(RetbleedCommand.Unret, c612.For(KernelBootRules.Linux61).Retbleed);
        Assert.Equal(KernelBootRules.Linux61, KernelCommandLine.Parse(text, KernelBootRules.Linux2622).Rules);   // 2.6.22: read as 6.1
    }

    [Theory]
    [InlineData("pti=on nopti", PtiCommand.On, PtiCommand.Off)]          // 6.1: pti= first; 6.12: the last early param wins
    [InlineData("nopti pti=on", PtiCommand.On, PtiCommand.On)]
    [InlineData("pti=\"off\"", PtiCommand.Auto, PtiCommand.Off)]         // 6.1 sees the quotes (raw text, 5-byte buffer); early params strip them
    [InlineData("nopti=1", PtiCommand.Auto, PtiCommand.Off)]             // 6.1 wants the whole word; 6.12's handler ignores the value
    [InlineData("pti=bogus nopti", PtiCommand.Off, PtiCommand.Off)]
    [InlineData("nopti pti=bogus", PtiCommand.Off, PtiCommand.Off)]      // 6.12: pti=bogus is refused and changes nothing
    [InlineData("pti=on mitigations=off", PtiCommand.On, PtiCommand.Off)] // 6.12's pti_check_boottime_disable() checks mitigations=off first
    public void Pti_and_nopti_are_read_as_each_line_reads_them(string text, PtiCommand in61, PtiCommand in612)
    {
        Assert.Equal(in61, P61(text).Pti);
        Assert.Equal(in612, P612(text).Pti);
        Assert.Empty(P612(text).Unknown);
    }

    [Fact]
    public void Every_option_a_line_lists_is_read_by_its_rules_and_others_are_reported_unknown()
    {
        foreach (var line in new[] { KernelLines.Linux61, KernelLines.Linux612 })
        {
            Assert.NotEmpty(line.CommandLineOptions);
            foreach (var option in line.CommandLineOptions)
            {
                var c = line.ReadCommandLine(option + "=1");
                Assert.True(c.Unknown.IsEmpty, $"{line.Name}: {option} is listed but not read ({string.Join(" ", c.Unknown)})");
            }
            // cfi= and fred= are 6.12 options that change nothing on Debian's builds (no CONFIG_CFI_CLANG, no CONFIG_X86_FRED):
            // not modelled, so reported.
            Assert.Equal(["cfi=kcfi", "fred=on"], line.ReadCommandLine("cfi=kcfi fred=on").Unknown.AsEnumerable());
        }
    }

    [Fact]
    public void Retbleed_stuff_on_skylake_turns_on_call_depth_tracking_under_6_12_and_nothing_under_6_1()
    {
        var s612 = Derive(KernelBootRules.Linux612, SkylakeFlags, SkylakeBugs, 85, "retbleed=stuff", out var f612);
        // spectre_v2=auto does not pick IBRS with retbleed=stuff: retpolines, then the accounting thunks and their return thunk.
        Assert.False(s612.Has(F.KernelIbrs));
        Assert.True(s612.Has(F.Retpoline));
        Assert.True(s612.Has(F.Rethunk));
        Assert.False(s612.Has(F.Unret));
        Assert.Contains("X86_FEATURE_CALL_DEPTH", f612);
        Assert.Equal(ReturnThunkKind.CallDepth, s612.ReturnThunk);
        Assert.Equal(KernelBootRules.Linux612, s612.CommandLine.Rules);

        var s61 = Derive(KernelBootRules.Linux61, SkylakeFlags, SkylakeBugs, 85, "retbleed=stuff", out var f61);
        Assert.True(s61.Has(F.KernelIbrs));            // "stuff" is unknown to 6.1: retbleed=auto, IBRS on Intel
        Assert.False(s61.Has(F.Rethunk));
        Assert.Empty(f61);
        Assert.Equal(ReturnThunkKind.Default, s61.ReturnThunk);
    }

    [Fact]
    public void Retbleed_stuff_without_call_depth_tracking_built_in_falls_back_to_auto()
    {
        var s = Derive(KernelBootRules.Linux612, SkylakeFlags, SkylakeBugs, 85, "retbleed=stuff", out var f, Debian612 with { CallDepthTracking = false });
        // spectre_v2 still avoids IBRS (the command said stuff); RETBleed auto on Intel does nothing, and stays unmitigated.
        Assert.True(s.Has(F.Retpoline));
        Assert.False(s.Has(F.KernelIbrs));
        Assert.False(s.Has(F.Rethunk));
        Assert.Empty(f);
        Assert.Contains(s.Decisions, d => d.Contains("not compiled with MITIGATION_CALL_DEPTH_TRACKING", StringComparison.Ordinal));
    }

    [Fact]
    public void Its_stuff_uses_call_depth_tracking_with_retpolines_and_the_aligned_thunks_without()
    {
        var withRetpolines = Derive(KernelBootRules.Linux612, IceLakeFlags, IceLakeBugs, 106, "spectre_v2=retpoline indirect_target_selection=stuff", out var f1);
        Assert.Contains("X86_FEATURE_CALL_DEPTH", f1);
        Assert.Equal(ReturnThunkKind.CallDepth, withRetpolines.ReturnThunk);
        Assert.False(withRetpolines.Has(F.IndirectThunkIts));

        // eIBRS, no retpolines: "RSB stuff mitigation not supported, using default": the ITS thunks.
        var eibrs = Derive(KernelBootRules.Linux612, IceLakeFlags, IceLakeBugs, 106, "indirect_target_selection=stuff", out var f2);
        Assert.Empty(f2);
        Assert.True(eibrs.Has(F.IndirectThunkIts));
        Assert.Equal(ReturnThunkKind.Its, eibrs.ReturnThunk);
    }

    [Fact]
    public void Spectre_bhi_vmexit_clears_the_bhb_on_vm_exit_only_under_6_12()
    {
        var s612 = Derive(KernelBootRules.Linux612, IceLakeFlags, IceLakeBugs, 106, "spectre_bhi=vmexit", out _);
        Assert.True(s612.Has(F.ClearBhbLoopOnVmexit));
        Assert.False(s612.Has(F.ClearBhbLoop));
        var s61 = Derive(KernelBootRules.Linux61, IceLakeFlags, IceLakeBugs, 106, "spectre_bhi=vmexit", out _);
        Assert.True(s61.Has(F.ClearBhbLoopOnVmexit));   // unknown value: the default (on)
        Assert.True(s61.Has(F.ClearBhbLoop));
    }

    [Fact]
    public void Retbleed_force_sets_the_bug_under_6_12_only()
    {
        // Ice Lake has no RETBleed bug; retbleed=force,unret sets it (and eIBRS then covers RETBleed on Intel).
        var s612 = Derive(KernelBootRules.Linux612, IceLakeFlags, IceLakeBugs, 106, "retbleed=force", out _);
        Assert.True(s612.Has(F.BugRetbleed));
        var s61 = Derive(KernelBootRules.Linux61, IceLakeFlags, IceLakeBugs, 106, "retbleed=force", out _);
        Assert.False(s61.Has(F.BugRetbleed));
    }
}

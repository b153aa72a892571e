using Altpatch.Cpu;
using Altpatch.Images.Boot;
using F = Altpatch.Cpu.CpuFeature;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// The kernel command line through the derivation: each option that changes patched text, read as
/// <see cref="KernelCommandLine"/> reads it and acted on as 6.1.176's cpu/bugs.c, mm/pti.c and alternative.c act on it,
/// checked on the feature bits, the return thunk and the SMP switch it gives (the ground truth checks the same on the
/// boots it has: <see cref="BootCpuTests"/>, <see cref="WholeTextTests"/>).
/// </summary>
public class CommandLineDerivationTests
{
    private static KernelBuildInfo Debian64 => MitigationRuleTests.Debian64;

    // Skylake server on bare metal: IBRS without eIBRS, Meltdown, RETBleed, MDS, TAA (with TSX), MMIO, L1TF, SWAPGS, GDS.
    private const string SkylakeFlags = "fpu sse2 xsave avx avx2 ibrs ibpb stibp ssbd fsgsbase smap rtm md_clear flush_l1d";
    private const string SkylakeBugs = "cpu_meltdown spectre_v1 spectre_v2 spec_store_bypass swapgs retbleed mds taa mmio_stale_data l1tf gds";
    // Ice Lake server: eIBRS, ITS, PBRSB.
    private const string IceLakeFlags = "fpu sse2 xsave ibrs ibpb stibp ssbd ibrs_enhanced fsgsbase smap";
    private const string IceLakeBugs = "spectre_v1 spectre_v2 spec_store_bypass swapgs its eibrs_pbrsb";
    // Zen 2: RETBleed, SRSO, VMSCAPE.
    private const string Zen2Flags = "fpu sse2 xsave ibpb ibrs stibp ssbd";
    private const string Zen2Bugs = "spectre_v1 spectre_v2 spec_store_bypass retbleed srso vmscape";

    private static KernelBootState Skylake(string cmdline, KernelBuildInfo? build = null, int cpus = 4) =>
        Derive(CpuVendor.Intel, 6, 85, SkylakeFlags, SkylakeBugs, cmdline, build, cpus);

    private static KernelBootState IceLake(string cmdline) => Derive(CpuVendor.Intel, 6, 106, IceLakeFlags, IceLakeBugs, cmdline);

    private static KernelBootState Zen2(string cmdline, KernelBuildInfo? build = null) => Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs, cmdline, build);

    private static KernelBootState Derive(CpuVendor v, int family, int model, string flags, string bugs, string cmdline, KernelBuildInfo? build = null, int cpus = 4) =>
        MitigationRuleTests.Derive(v, family, model, flags, bugs, build, cpus, cmdline);

    /// <summary>What bugs.c turns on for a CPU with every bug, and what mitigations=off leaves of it.</summary>
    private static readonly F[] MitigationBits =
    [
        F.Pti, F.Retpoline, F.RetpolineLfence, F.KernelIbrs, F.RsbCtxsw, F.RsbVmexit, F.RsbVmexitLite, F.UseIbpb, F.UseIbrsFw,
        F.UseIbpbFw, F.FenceSwapgsUser, F.FenceSwapgsKernel, F.ClearCpuBuf, F.ClearCpuBufVm, F.Rethunk, F.Unret, F.Srso, F.SrsoAlias,
        F.IbpbBrtype, F.Sbpb, F.EntryIbpb, F.IbpbOnVmexit, F.IndirectThunkIts, F.ClearBhbLoop, F.ClearBhbLoopOnVmexit,
        F.SpecStoreBypassDisable, F.IbpbExitToUser,
    ];

    private static void AssertNoMitigation(KernelBootState s)
    {
        var on = MitigationBits.Where(s.Has).ToList();
        Assert.True(on.Count == 0, "set: " + string.Join(", ", on.Select(CpuFeatureInfo.MacroName)));
    }

    // ------------------------------------------------------------------ mitigations=off

    [Fact]
    public void Mitigations_off_turns_off_every_mitigation_of_an_intel_cpu()
    {
        var on = Skylake("");
        Assert.True(on.Has(F.Pti));
        Assert.True(on.Has(F.KernelIbrs));             // RETBleed + IBRS on Intel: spectre_v2=auto picks IBRS
        Assert.True(on.Has(F.ClearCpuBuf));
        Assert.True(on.Has(F.FenceSwapgsKernel));
        Assert.True(on.Has(F.UseIbpb));
        var off = Skylake("mitigations=off");
        AssertNoMitigation(off);
        Assert.Equal(ReturnThunkKind.Default, off.ReturnThunk);
        Assert.True(off.Has(F.L1tfPteinv));            // PTE inversion whatever l1tf_mitigation is (the dumps show it)
        Assert.True(off.Has(F.Avx));
        Assert.Contains("mitigations=off: cpu_mitigations_off()", off.Decisions);
        // The hidden bits the vendor code sets do not depend on the command line.
        Assert.True(off.Has(F.MsrSpecCtrl));
        Assert.True(off.Has(F.SpecCtrlSsbd));
    }

    [Fact]
    public void Mitigations_off_on_zen2_leaves_the_default_return_thunk_and_no_srso_probe()
    {
        var on = Zen2("");
        Assert.Equal(ReturnThunkKind.Srso, on.ReturnThunk);
        Assert.True(on.Has(F.IbpbExitToUser));         // VMSCAPE
        var off = Zen2("mitigations=off");
        AssertNoMitigation(off);
        Assert.Equal(ReturnThunkKind.Default, off.ReturnThunk);
        Assert.False(off.Has(F.IbpbBrtype));           // srso_select_mitigation() returns before it probes the microcode
        Assert.False(off.Has(F.SrsoNo));
    }

    [Fact]
    public void Mitigations_off_wins_over_explicit_options_read_after_it()
    {
        // spectre_v2_parse_cmdline() and ssb_parse_cmdline() check cpu_mitigations_off() first; retbleed, srso, mds… too.
        var s = Skylake("mitigations=off spectre_v2=retpoline spec_store_bypass_disable=on retbleed=unret mds=full");
        AssertNoMitigation(s);
        var z = Zen2("spec_rstack_overflow=ibpb mitigations=off");
        Assert.Equal(ReturnThunkKind.Default, z.ReturnThunk);
        Assert.False(z.Has(F.EntryIbpb));
        // …but pti= is read before nopti and mitigations=off (pti_check_boottime_disable()).
        var pti = Skylake("mitigations=off pti=on");
        Assert.True(pti.Has(F.Pti));
        Assert.Equal([F.Pti], MitigationBits.Where(pti.Has));
        // The last mitigations= wins, as each occurrence runs the early handler.
        Assert.True(Skylake("mitigations=off mitigations=auto").Has(F.Retpoline) || Skylake("mitigations=off mitigations=auto").Has(F.KernelIbrs));
    }

    // ------------------------------------------------------------------ spectre_v2=, nospectre_v2, spectre_v2_user=

    [Fact]
    public void Spectre_v2_retpoline_on_an_eibrs_cpu_uses_retpolines_and_its_takes_only_the_returns()
    {
        var auto = IceLake("");
        Assert.False(auto.Has(F.Retpoline));
        Assert.True(auto.Has(F.IndirectThunkIts));
        var s = IceLake("spectre_v2=retpoline");
        Assert.True(s.Has(F.Retpoline));
        Assert.False(s.Has(F.RetpolineLfence));
        Assert.True(s.Has(F.RsbCtxsw));                 // SPECTRE_V2_RETPOLINE fills the RSB, unlike eIBRS
        Assert.True(s.Has(F.RsbVmexit));
        Assert.False(s.Has(F.RsbVmexitLite));
        Assert.True(s.Has(F.UseIbrsFw));                // IBRS around firmware: not an IBRS mode
        Assert.False(s.Has(F.IndirectThunkIts));        // RETPOLINE set: ITS leaves the indirect branches to it
        Assert.True(s.Has(F.Rethunk));
        Assert.Equal(ReturnThunkKind.Its, s.ReturnThunk);
        Assert.Contains("Spectre V2 : Retpoline", s.Decisions);
    }

    [Fact]
    public void Nospectre_v2_and_spectre_v2_off_leave_spectre_v2_and_user_ibpb_off()
    {
        foreach (var c in new[] { "nospectre_v2", "spectre_v2=off", "spectre_v2=retpoline nospectre_v2" })
        {
            var s = IceLake(c);
            Assert.False(s.Has(F.Retpoline), c);
            Assert.False(s.Has(F.IndirectThunkIts), c);  // "Spectre-v2 mitigation is off, disabling ITS"
            Assert.False(s.Has(F.Rethunk), c);
            Assert.False(s.Has(F.UseIbpb), c);           // spectre_v2_cmd NONE: spectre_v2_user is NONE
            Assert.False(s.Has(F.UseIbrsFw), c);         // spectre_v2_select_mitigation() returns before the firmware rule
            Assert.True(s.Has(F.FenceSwapgsKernel), c);  // Spectre v1 is separate
        }
    }

    [Fact]
    public void Spectre_v2_user_off_drops_ibpb_unless_spectre_v2_on_forces_it()
    {
        Assert.True(IceLake("").Has(F.UseIbpb));
        Assert.False(IceLake("spectre_v2_user=off").Has(F.UseIbpb));
        Assert.True(IceLake("spectre_v2_user=prctl").Has(F.UseIbpb));
        Assert.True(IceLake("spectre_v2=on spectre_v2_user=off").Has(F.UseIbpb));   // SPECTRE_V2_CMD_FORCE → USER_CMD_FORCE
    }

    [Fact]
    public void An_unknown_spectre_v2_value_is_auto_as_the_kernel_reads_it()
    {
        Assert.Equal(IceLake("").Features, IceLake("spectre_v2=bogus").Features);
        // cmdline_find_option() takes the last spectre_v2=
        Assert.True(IceLake("spectre_v2=eibrs spectre_v2=retpoline").Has(F.Retpoline));
    }

    // ------------------------------------------------------------------ pti=, nopti, nospectre_v1

    [Fact]
    public void Nopti_turns_pti_off_and_brings_the_swapgs_user_fence()
    {
        var on = Skylake("");
        Assert.True(on.Has(F.Pti));
        Assert.False(on.Has(F.FenceSwapgsUser));        // PTI's CR3 write serialises
        var off = Skylake("nopti");
        Assert.False(off.Has(F.Pti));
        Assert.True(off.Has(F.FenceSwapgsUser));        // SWAPGS bug without PTI
        Assert.False(Skylake("pti=off").Has(F.Pti));
        Assert.True(Skylake("pti=auto nopti").Has(F.Pti));   // pti=auto goes to autosel past nopti
        Assert.True(IceLake("pti=on").Has(F.Pti));            // forced on a CPU without Meltdown
        Assert.False(IceLake("").Has(F.Pti));
        Assert.False(Skylake("", Debian64 with { PageTableIsolation = false }).Has(F.Pti));
    }

    [Fact]
    public void Nospectre_v1_drops_the_swapgs_fences()
    {
        var s = Skylake("nospectre_v1 nopti");
        Assert.False(s.Has(F.FenceSwapgsKernel));
        Assert.False(s.Has(F.FenceSwapgsUser));
        Assert.True(s.Has(F.KernelIbrs));
    }

    // ------------------------------------------------------------------ retbleed=, spec_rstack_overflow=

    [Fact]
    public void Retbleed_off_on_intel_makes_spectre_v2_auto_pick_retpolines_instead_of_ibrs()
    {
        var s = Skylake("retbleed=off");
        Assert.False(s.Has(F.KernelIbrs));
        Assert.True(s.Has(F.Retpoline));
        Assert.True(s.Has(F.UseIbrsFw));
    }

    [Fact]
    public void Retbleed_ibpb_on_zen2_takes_ibpb_on_entry_for_retbleed_and_srso()
    {
        var s = Zen2("retbleed=ibpb");
        Assert.True(s.Has(F.EntryIbpb));
        Assert.True(s.Has(F.IbpbOnVmexit));
        Assert.False(s.Has(F.Rethunk));
        Assert.False(s.Has(F.Unret));
        Assert.False(s.Has(F.Srso));                    // "Retbleed IBPB mitigation enabled, using same for SRSO"
        Assert.Equal(ReturnThunkKind.Default, s.ReturnThunk);
        Assert.False(s.Has(F.UseIbpbFw));               // retbleed_cmd IBPB: no IBPB around firmware
        Assert.False(s.Has(F.IbpbExitToUser));          // VMSCAPE: IBPB on VM exit already
    }

    [Fact]
    public void Retbleed_falls_back_to_auto_when_the_build_cannot_do_it()
    {
        // retbleed=unret without CONFIG_CPU_UNRET_ENTRY: "goto do_cmd_auto", which on AMD takes IBPB.
        var noUnret = Debian64 with { CpuUnretEntry = false, CpuSrso = false };
        var s = Zen2("retbleed=unret", noUnret);
        Assert.Contains("RETBleed: retbleed=unret: kernel not compiled with CPU_UNRET_ENTRY", s.Decisions);
        Assert.True(s.Has(F.EntryIbpb));
        // retbleed=ibpb on a CPU without IBPB: auto, the untrained return thunk.
        var noIbpb = Derive(CpuVendor.Amd, 0x17, 0x31, "fpu sse2", "spectre_v2 retbleed", "retbleed=ibpb", Debian64 with { CpuSrso = false });
        Assert.Contains("RETBleed: retbleed=ibpb: CPU does not support IBPB", noIbpb.Decisions);
        Assert.Equal(ReturnThunkKind.Retbleed, noIbpb.ReturnThunk);
    }

    [Fact]
    public void Retbleed_off_on_zen2_leaves_the_srso_safe_ret()
    {
        var s = Zen2("retbleed=off");
        Assert.Equal(ReturnThunkKind.Srso, s.ReturnThunk);
        Assert.True(s.Has(F.Unret));                     // set by srso_select_mitigation()
        var both = Zen2("retbleed=off spec_rstack_overflow=off");
        Assert.Equal(ReturnThunkKind.Default, both.ReturnThunk);
        Assert.False(both.Has(F.Rethunk));
        Assert.True(both.Has(F.IbpbBrtype));             // the microcode is still probed and flagged
    }

    [Fact]
    public void Nosmt_force_makes_zen2_with_microcode_not_vulnerable_to_srso()
    {
        var s = Zen2("nosmt=force");
        Assert.True(s.Has(F.SrsoNo));
        Assert.False(s.Has(F.Srso));
        Assert.Equal(ReturnThunkKind.Retbleed, s.ReturnThunk);
        Assert.False(Zen2("nosmt").Has(F.SrsoNo));       // plain nosmt: CPU_SMT_DISABLED, SMT still possible
    }

    // ------------------------------------------------------------------ spec_store_bypass_disable=

    [Fact]
    public void Spec_store_bypass_disable_on_forces_the_ssbd_bit()
    {
        Assert.False(Skylake("").Has(F.SpecStoreBypassDisable));
        Assert.True(Skylake("spec_store_bypass_disable=on").Has(F.SpecStoreBypassDisable));
        Assert.False(Skylake("spec_store_bypass_disable=prctl").Has(F.SpecStoreBypassDisable));
        Assert.False(Skylake("spec_store_bypass_disable=on nospec_store_bypass_disable").Has(F.SpecStoreBypassDisable));
        // A CPU without SSBD cannot: __ssb_select_mitigation() returns first.
        Assert.False(Derive(CpuVendor.Intel, 6, 85, "fpu sse2", "spec_store_bypass", "spec_store_bypass_disable=on").Has(F.SpecStoreBypassDisable));
    }

    // ------------------------------------------------------------------ mds=, tsx_async_abort=, mmio_stale_data=

    [Fact]
    public void Mds_off_alone_is_undone_while_taa_or_mmio_still_clear_the_buffers()
    {
        var mdsOnly = "fpu sse2 md_clear";
        Assert.True(Derive(CpuVendor.Intel, 6, 85, mdsOnly, "mds", "").Has(F.ClearCpuBuf));
        Assert.False(Derive(CpuVendor.Intel, 6, 85, mdsOnly, "mds", "mds=off").Has(F.ClearCpuBuf));
        // Skylake: TAA with TSX and MMIO keep CLEAR_CPU_BUF on (md_clear_update_mitigation() then turns MDS back on).
        Assert.True(Skylake("mds=off").Has(F.ClearCpuBuf));
        Assert.True(Skylake("mds=off tsx_async_abort=off").Has(F.ClearCpuBuf));   // MMIO with MDS
        Assert.False(Skylake("mds=off tsx_async_abort=off mmio_stale_data=off").Has(F.ClearCpuBuf));
        // tsx_async_abort=off alone is ignored while MDS is mitigated ("TAA mitigation via VERW is turned off if both …").
        Assert.True(Skylake("tsx_async_abort=off mmio_stale_data=off").Has(F.ClearCpuBuf));
    }

    // ------------------------------------------------------------------ spectre_bhi=, indirect_target_selection=, gds, tsa, vmscape

    [Fact]
    public void Spectre_bhi_off_drops_the_bhb_clearing_loop()
    {
        const string flags = "fpu sse2 xsave ibrs ibpb ibrs_enhanced", bugs = "spectre_v2 bhi";
        Assert.True(Derive(CpuVendor.Intel, 6, 106, flags, bugs, "").Has(F.ClearBhbLoop));
        var off = Derive(CpuVendor.Intel, 6, 106, flags, bugs, "spectre_bhi=off");
        Assert.False(off.Has(F.ClearBhbLoop));
        Assert.False(off.Has(F.ClearBhbLoopOnVmexit));
        Assert.True(Derive(CpuVendor.Intel, 6, 106, flags, bugs, "spectre_bhi=on", Debian64 with { MitigationSpectreBhi = false }).Has(F.ClearBhbLoop));
    }

    [Fact]
    public void Indirect_target_selection_off_force_and_vmexit()
    {
        var off = IceLake("indirect_target_selection=off");
        Assert.False(off.Has(F.IndirectThunkIts));
        Assert.False(off.Has(F.Rethunk));
        Assert.Equal(ReturnThunkKind.Default, off.ReturnThunk);
        // force: the ITS bug on a CPU that does not have it, and the aligned thunks.
        var forced = Derive(CpuVendor.Intel, 6, 106, IceLakeFlags, "spectre_v2", "indirect_target_selection=force");
        Assert.True(forced.Has(F.BugIts));
        Assert.True(forced.Has(F.IndirectThunkIts));
        Assert.Equal(ReturnThunkKind.Its, forced.ReturnThunk);
        // vmexit on a CPU affected natively only: no thunks; otherwise as on.
        Assert.False(Derive(CpuVendor.Intel, 6, 106, IceLakeFlags, IceLakeBugs + " its_native_only", "indirect_target_selection=vmexit").Has(F.Rethunk));
        Assert.True(IceLake("indirect_target_selection=vmexit").Has(F.IndirectThunkIts));
    }

    [Fact]
    public void Gather_data_sampling_force_clears_avx_without_microcode()
    {
        Assert.True(Skylake("").Has(F.Avx));
        var forced = Skylake("gather_data_sampling=force");
        Assert.False(forced.Has(F.Avx));
        Assert.False(forced.Has(F.Avx2));                // setup_clear_cpu_cap(): what depends on AVX goes too
        Assert.True(Skylake("gather_data_sampling=force mitigations=off").Has(F.Avx));
        Assert.False(Skylake("", Debian64 with { GdsForceMitigation = true }).Has(F.Avx));
        Assert.True(Skylake("gather_data_sampling=off", Debian64 with { GdsForceMitigation = true }).Has(F.Avx));
    }

    [Fact]
    public void Tsa_modes_choose_which_buffers_are_cleared()
    {
        const string flags = "fpu sse2 ibpb X86_FEATURE_VERW_CLEAR", bugs = "tsa";
        var full = Derive(CpuVendor.Amd, 0x19, 0x01, flags, bugs, "");
        Assert.True(full.Has(F.ClearCpuBuf) && full.Has(F.ClearCpuBufVm));
        var user = Derive(CpuVendor.Amd, 0x19, 0x01, flags, bugs, "tsa=user");
        Assert.True(user.Has(F.ClearCpuBuf) && !user.Has(F.ClearCpuBufVm));
        var vm = Derive(CpuVendor.Amd, 0x19, 0x01, flags, bugs, "tsa=vm");
        Assert.True(!vm.Has(F.ClearCpuBuf) && vm.Has(F.ClearCpuBufVm));
        var off = Derive(CpuVendor.Amd, 0x19, 0x01, flags, bugs, "tsa=off");
        Assert.False(off.Has(F.ClearCpuBuf) || off.Has(F.ClearCpuBufVm));
    }

    [Fact]
    public void Vmscape_off_and_force()
    {
        Assert.False(Zen2("vmscape=off").Has(F.IbpbExitToUser));
        var forced = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, "spectre_v2", "vmscape=force");
        Assert.True(forced.Has(F.BugVmscape));
        Assert.True(forced.Has(F.IbpbExitToUser));
    }

    // ------------------------------------------------------------------ clearcpuid=, noxsave, nofsgsbase, …

    [Fact]
    public void Noxsave_clears_xsave_and_everything_that_depends_on_it()
    {
        var s = Skylake("noxsave");
        Assert.False(s.Has(F.Xsave));
        Assert.False(s.Has(F.Avx));                     // cpuid_deps[]: AVX needs XSAVE, AVX2 needs AVX
        Assert.False(s.Has(F.Avx2));
        Assert.False(s.Has(F.Osxsave));                 // fpu__init_system_xstate() finds no XSAVE
        Assert.True(s.Has(F.Xmm2));
        Assert.True(Skylake("").Has(F.Osxsave));
    }

    [Fact]
    public void Nofsgsbase_lets_smap_mitigate_spectre_v1_and_clearcpuid_does_the_same()
    {
        Assert.True(IceLake("").Has(F.FenceSwapgsKernel));        // FSGSBASE: the swapgs fences
        var s = IceLake("nofsgsbase");
        Assert.False(s.Has(F.Fsgsbase));
        Assert.False(s.Has(F.FenceSwapgsKernel));                 // SMAP works (no Meltdown): no fences
        Assert.Equal(s.Features, IceLake("clearcpuid=fsgsbase").Features);
        Assert.Equal(s.Features, IceLake("clearcpuid=288").Features);   // 9*32+0
        var bogus = IceLake("clearcpuid=bogus,spectre_v2");           // unknown, and a bug name (not in x86_cap_flags)
        Assert.Equal(IceLake("").Features, bogus.Features);
        Assert.Contains("clearcpuid: unknown CPU flag 'bogus', ignored", bogus.Decisions);
        var pcid = Derive(CpuVendor.Intel, 6, 106, IceLakeFlags + " pcid invpcid", IceLakeBugs, "nopcid noinvpcid");
        Assert.False(pcid.Has(F.Pcid));
        Assert.False(pcid.Has(F.Invpcid));
    }

    // ------------------------------------------------------------------ noreplace-smp, nosmp, maxcpus=

    [Theory]
    [InlineData(1, "", true, false)]
    [InlineData(1, "noreplace-smp", false, false)]
    [InlineData(2, "", false, false)]
    [InlineData(2, "nosmp", true, false)]                  // setup_max_cpus 0, one possible CPU: for good
    [InlineData(2, "maxcpus=1", true, true)]               // 2 possible: the lock prefixes come back with the second CPU
    [InlineData(2, "maxcpus=1 noreplace-smp", false, false)]
    [InlineData(4, "nr_cpus=1", true, false)]
    public void The_smp_switch_follows_the_cpus_and_the_command_line(int cpus, string cmdline, bool up, bool dynamic)
    {
        var s = Skylake(cmdline, cpus: cpus);
        Assert.Equal(up, s.Smp.Up);
        Assert.Equal(dynamic, s.Smp.Dynamic);
        Assert.Contains(s.Decisions, d => d == "SMP: " + s.Smp.Decision);
        Assert.Equal(cmdline, s.CommandLine.Text);
    }

    [Fact]
    public void Exact_descriptions_keep_their_bits_but_still_take_the_smp_switch()
    {
        var d = new KernelCpuDescription
        {
            Cpu = CpuFeatures.FromNames(["fpu", "retpoline", "pti"]),
            Cpus = 1,
            Exact = true,
            CommandLine = KernelCommandLine.Parse("mitigations=off noreplace-smp"),
        };
        var s = KernelBootCpu.Derive(d, Debian64);
        Assert.True(s.Has(F.Retpoline));                 // the given words are boot_cpu_data
        Assert.False(s.Smp.Up);
    }
}

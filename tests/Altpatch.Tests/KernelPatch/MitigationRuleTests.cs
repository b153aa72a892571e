using Altpatch.Cpu;
using Altpatch.Images.Boot;
using F = Altpatch.Cpu.CpuFeature;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// The 6.1.176 rules of cpu/bugs.c and the vendor init code on CPUs the QEMU ground truth does not cover (real
/// hardware features TCG filters out: eIBRS, IBRS, BHI_CTRL, AMD's IBPB…), each against the kernel function's logic.
/// </summary>
public class MitigationRuleTests
{
    /// <summary>The build options of the Debian x86-64 images.</summary>
    internal static readonly KernelBuildInfo Debian64 = new()
    {
        X86_64 = true, Rethunk = true, CpuUnretEntry = true, CpuIbpbEntry = true, CpuIbrsEntry = true,
        CpuSrso = true, MitigationIts = true, PageTableIsolation = true, PgtableLevelsAbove2 = true,
    };

    private static readonly KernelBuildInfo Debian686 = new() { X86_64 = false };

    /// <summary>The derivation for a CPU given by names, a build and a kernel command line.</summary>
    internal static KernelBootState Derive(CpuVendor v, int family, int model, string flags, string bugs, KernelBuildInfo? build = null, int cpus = 4,
                                          string? commands = null) =>
        KernelBootCpu.Derive(new KernelCpuDescription
        {
            Cpu = CpuFeatures.FromNames(flags.Split(' ', StringSplitOptions.RemoveEmptyEntries).Concat(bugs.Split(' ', StringSplitOptions.RemoveEmptyEntries)), v, family, model, 1),
            Cpus = cpus,
            CommandLine = KernelCommandLine.Parse(commands ?? ""),
        }, build ?? Debian64);

    private static string SpectreV2(SpectreV2Command c) => "spectre_v2=" + KernelMitigationCommands.Name(c);

    private static string Srso(SrsoCommand c) => "spec_rstack_overflow=" + KernelMitigationCommands.Name(c);

    // Ice Lake server on bare metal (eIBRS, the ITS and PBRSB bugs) and Zen 2 (RETBleed, SRSO; no eIBRS).
    private const string IceLakeFlags = "fpu sse2 xsave ibrs ibpb stibp ssbd ibrs_enhanced fsgsbase smap", IceLakeBugs = "spectre_v1 spectre_v2 spec_store_bypass swapgs its eibrs_pbrsb";
    private const string Zen2Flags = "fpu sse2 xsave ibpb ibrs stibp ssbd", Zen2Bugs = "spectre_v1 spectre_v2 spec_store_bypass retbleed srso vmscape";

    [Fact]
    public void Intel_with_eibrs_and_its_uses_its_branch_and_return_thunks()
    {
        // Ice Lake server on bare metal: eIBRS, ITS bug; no retpolines, so ITS takes the indirect branches too.
        var s = Derive(CpuVendor.Intel, 6, 106, "fpu sse2 xsave ibrs ibpb stibp ssbd ibrs_enhanced fsgsbase smap", "spectre_v1 spectre_v2 spec_store_bypass swapgs its bhi");
        Assert.False(s.Has(F.Retpoline));
        Assert.True(s.Has(F.IndirectThunkIts));
        Assert.True(s.Has(F.Rethunk));
        Assert.Equal(ReturnThunkKind.Its, s.ReturnThunk);
        Assert.False(s.Has(F.RsbCtxsw));              // eIBRS: no RSB filling
        Assert.True(s.Has(F.ClearBhbLoop));           // BHI without BHI_CTRL: SW clearing
        Assert.True(s.Has(F.ClearBhbLoopOnVmexit));
        Assert.True(s.Has(F.UseIbpb));
        Assert.False(s.Has(F.UseIbrsFw));              // IBRS mode protects firmware already
        Assert.True(s.Has(F.MsrSpecCtrl));
        Assert.True(s.Has(F.SpecCtrlSsbd));
        Assert.True(s.Has(F.FenceSwapgsUser));        // SWAPGS bug and no PTI
    }

    [Fact]
    public void Bhi_ctrl_clears_the_history_in_hardware()
    {
        var s = Derive(CpuVendor.Intel, 6, 143, "fpu sse2 ibrs ibpb ibrs_enhanced bhi_ctrl", "spectre_v2 bhi");
        Assert.True(s.Has(F.ClearBhbHw));
        Assert.False(s.Has(F.ClearBhbLoop));
    }

    [Fact]
    public void Intel_with_ibrs_and_retbleed_uses_kernel_ibrs()
    {
        // Skylake: IBRS, no eIBRS, RETBleed: spectre_v2=ibrs (CONFIG_CPU_IBRS_ENTRY).
        var s = Derive(CpuVendor.Intel, 6, 85, "fpu sse2 ibrs ibpb stibp", "cpu_meltdown spectre_v2 retbleed");
        Assert.True(s.Has(F.KernelIbrs));
        Assert.False(s.Has(F.Retpoline));
        Assert.True(s.Has(F.RsbCtxsw));
        Assert.False(s.Has(F.UseIbrsFw));
        Assert.True(s.Has(F.Pti));
        Assert.Equal(ReturnThunkKind.Default, s.ReturnThunk);
    }

    [Fact]
    public void Intel_retpolines_with_ibrs_but_no_retbleed_protect_firmware_with_ibrs()
    {
        var s = Derive(CpuVendor.Intel, 6, 62, "fpu sse2 ibrs ibpb", "spectre_v2");
        Assert.True(s.Has(F.Retpoline));
        Assert.True(s.Has(F.UseIbrsFw));
    }

    [Fact]
    public void Zen2_with_microcode_takes_the_srso_safe_ret_over_retbleed_unret()
    {
        var s = Derive(CpuVendor.Amd, 0x17, 0x31, "fpu sse2 xsave ibpb ibrs stibp ssbd", "spectre_v1 spectre_v2 spec_store_bypass retbleed srso");
        Assert.True(s.Has(F.Zen2));
        Assert.True(s.Has(F.AmdSsbd));                 // ssbd with the other AMD bits: AMD_SSBD, not LS_CFG
        Assert.False(s.Has(F.LsCfgSsbd));
        Assert.True(s.Has(F.IbpbBrtype));              // Zen2 + AMD_IBPB: IBPB-extending microcode
        Assert.True(s.Has(F.Unret));
        Assert.True(s.Has(F.Srso));
        Assert.Equal(ReturnThunkKind.Srso, s.ReturnThunk);
        Assert.True(s.Has(F.UseIbpbFw));               // RETBleed on AMD with IBPB
        Assert.False(s.Has(F.ApicMsrsFence));
        Assert.True(s.Has(F.Syscall32));
    }

    [Fact]
    public void Zen1_without_srso_microcode_keeps_the_unret_thunk_choice_until_srso()
    {
        var s = Derive(CpuVendor.Amd, 0x17, 0x01, "fpu sse2 ssbd", "spectre_v2 retbleed srso");
        Assert.True(s.Has(F.Zen1));
        Assert.True(s.Has(F.LsCfgSsbd));
        Assert.Equal(ReturnThunkKind.Srso, s.ReturnThunk);
        var noSrsoBuild = Debian64 with { CpuSrso = false };
        var r = Derive(CpuVendor.Amd, 0x17, 0x01, "fpu sse2 ssbd", "spectre_v2 retbleed srso", noSrsoBuild);
        Assert.Equal(ReturnThunkKind.Retbleed, r.ReturnThunk);
    }

    [Fact]
    public void Zen2_with_microcode_and_no_smt_is_not_vulnerable_to_srso()
    {
        var d = new KernelCpuDescription
        {
            Cpu = CpuFeatures.FromNames(["fpu", "sse2", "ibpb", "ibrs", "stibp", "ssbd", "spectre_v2", "retbleed", "srso"], CpuVendor.Amd, 0x17, 0x31, 0),
            Smt = false,
        };
        var s = KernelBootCpu.Derive(d, Debian64);
        Assert.True(s.Has(F.SrsoNo));
        Assert.False(s.Has(F.Srso));
        Assert.Equal(ReturnThunkKind.Retbleed, s.ReturnThunk);   // RETBleed's untrained return thunk stays
        var cpuinfo = KernelCpuDescription.FromCpuInfo("processor\t: 0\nsiblings\t: 8\ncpu cores\t: 4\nflags\t: fpu\n");
        Assert.True(cpuinfo.Smt);
    }

    [Fact]
    public void Zen4_takes_the_srso_alias_thunk()
    {
        var s = Derive(CpuVendor.Amd, 0x19, 0x11, "fpu sse2 ibpb ibrs_enhanced", "spectre_v2 srso");
        Assert.True(s.Has(F.Zen4));
        Assert.True(s.Has(F.Sbpb));
        Assert.True(s.Has(F.SrsoAlias));
        Assert.Equal(ReturnThunkKind.SrsoAlias, s.ReturnThunk);
        Assert.False(s.Has(F.Retpoline));              // automatic IBRS
    }

    [Fact]
    public void Not_affected_by_spectre_v2_means_no_user_ibpb()
    {
        var s = Derive(CpuVendor.Intel, 6, 183, "fpu sse2 ibpb ibrs", "");
        Assert.False(s.Has(F.UseIbpb));
        Assert.False(s.Has(F.Retpoline));
        Assert.False(s.Has(F.Rethunk));
        Assert.Equal(ReturnThunkKind.Default, s.ReturnThunk);
    }

    [Fact]
    public void Rrsba_keeps_bhi_clearing_on_with_retpolines()
    {
        // ARCH_CAP_RRSBA without RRSBA_CTRL: retpolines do not stop BHI, so the software sequence is used.
        var d = new KernelCpuDescription
        {
            Cpu = CpuFeatures.FromNames(["fpu", "sse2", "spectre_v2", "bhi"], CpuVendor.Intel, 6, 151, 1),
            ArchCapabilities = 1UL << 19,
        };
        var s = KernelBootCpu.Derive(d, Debian64);
        Assert.True(s.Has(F.Retpoline));
        Assert.True(s.Has(F.ClearBhbLoop));
        Assert.False(KernelBootCpu.Derive(d with { ArchCapabilities = 0 }, Debian64).Has(F.ClearBhbLoop));
    }

    [Fact]
    public void Tsa_on_bare_metal_needs_verw_clear()
    {
        var bare = Derive(CpuVendor.Amd, 0x19, 0x01, "fpu sse2", "spectre_v2 tsa");
        Assert.False(bare.Has(F.ClearCpuBuf));
        var ucode = Derive(CpuVendor.Amd, 0x19, 0x01, "fpu sse2 X86_FEATURE_VERW_CLEAR", "spectre_v2 tsa");
        Assert.True(ucode.Has(F.ClearCpuBuf));
        Assert.True(ucode.Has(F.ClearCpuBufVm));
        var vm = Derive(CpuVendor.Amd, 0x19, 0x01, "fpu sse2 hypervisor", "spectre_v2 tsa");
        Assert.True(vm.Has(F.ClearCpuBuf));
    }

    [Fact]
    public void Vmscape_with_ibpb_flushes_before_returning_to_user()
    {
        var s = Derive(CpuVendor.Intel, 6, 106, "fpu sse2 ibpb ibrs ibrs_enhanced", "spectre_v2 vmscape");
        Assert.True(s.Has(F.IbpbExitToUser));
    }

    [Fact]
    public void I386_kernels_get_espfix_p3_and_no_return_thunks()
    {
        var s = Derive(CpuVendor.Intel, 6, 26, "fpu sse2 xsave", "cpu_meltdown spectre_v1 spectre_v2 l1tf its", Debian686);
        Assert.True(s.Has(F.BugEspfix));
        Assert.True(s.Has(F.P3));
        Assert.False(s.Has(F.Sysenter32));
        Assert.False(s.Has(F.Pti));                    // non-PAE i386: no PTI, no L1TF inversion
        Assert.False(s.Has(F.L1tfPteinv));
        Assert.False(s.Has(F.Rethunk));                // no CONFIG_RETHUNK, no ITS
        Assert.True(s.Has(F.Retpoline));
    }

    [Fact]
    public void A_pae_flavour_of_i386_gets_pti_and_l1tf_inversion()
    {
        var pae = new BootImageBuilder(is64: false) { Banner = "Linux version 6.1.0-50-686-pae (debian-kernel@lists.debian.org) (gcc-12) #1 SMP PREEMPT_DYNAMIC" };
        var img = pae.Open();
        var build = KernelBuildInfo.Infer(img, KernelThunks.Find(img));
        Assert.True(build.Pae);
        var s = Derive(CpuVendor.Intel, 6, 26, "fpu sse2", "cpu_meltdown spectre_v2 l1tf", build);
        Assert.True(s.Has(F.Pti));
        Assert.True(s.Has(F.L1tfPteinv));
        var plain = new BootImageBuilder(is64: false) { Banner = "Linux version 6.1.0-50-686 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP PREEMPT_DYNAMIC" }.Open();
        Assert.False(KernelBuildInfo.Infer(plain, KernelThunks.Find(plain)).Pae);
    }

    [Fact]
    public void Set_and_clear_apply_after_the_derivation_and_exact_keeps_the_bits()
    {
        var d = new KernelCpuDescription
        {
            Cpu = CpuFeatures.FromNames(["fpu", "sse2", "spectre_v2"], CpuVendor.Intel, 6, 85, 1),
            Set = [F.RetpolineLfence],
            Clear = [F.RsbCtxsw],
        };
        var s = KernelBootCpu.Derive(d, Debian64);
        Assert.True(s.Has(F.RetpolineLfence));
        Assert.False(s.Has(F.RsbCtxsw));
        Assert.True(s.Has(F.RsbVmexit));
        var exact = KernelBootCpu.Derive(d with { Exact = true, Set = [F.Rethunk, F.Srso] }, Debian64);
        Assert.False(exact.Has(F.Always));
        Assert.Equal(ReturnThunkKind.Srso, exact.ReturnThunk);
    }

    // ---------------------------------------------------------------- command-line choices (spectre_v2=, spec_rstack_overflow=)

    [Fact]
    public void The_default_commands_are_the_default_command_line()
    {
        var implicitDefault = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs);
        var explicitAuto = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs, commands: "spectre_v2=auto spec_rstack_overflow=safe-ret");
        Assert.Equal(implicitDefault.Features, explicitAuto.Features);
        Assert.Equal(implicitDefault.ReturnThunk, explicitAuto.ReturnThunk);
        Assert.Equal(implicitDefault.Decisions.ToArray(), explicitAuto.Decisions.ToArray());
    }

    [Fact]
    public void Spectre_v2_eibrs_lfence_fences_indirect_branches_and_turns_its_off()
    {
        var s = Derive(CpuVendor.Intel, 6, 106, IceLakeFlags, IceLakeBugs, commands: SpectreV2(SpectreV2Command.EibrsLfence));
        Assert.True(s.Has(F.RetpolineLfence));         // SPECTRE_V2_EIBRS_LFENCE: lfence; jmp *%reg at every retpoline site
        Assert.True(s.Has(F.Retpoline));
        Assert.True(s.Has(F.RsbVmexitLite));            // an eIBRS mode with PBRSB
        Assert.False(s.Has(F.RsbCtxsw));
        Assert.False(s.Has(F.IndirectThunkIts));        // "ITS mitigation is not compatible with lfence mitigation"
        Assert.False(s.Has(F.Rethunk));
        Assert.Equal(ReturnThunkKind.Default, s.ReturnThunk);
        Assert.Contains("Spectre V2 : EibrsLfence", s.Decisions);
        Assert.Contains("ITS: not compatible with lfence mitigation", s.Decisions);
    }

    [Fact]
    public void Spectre_v2_eibrs_retpoline_keeps_retpolines_so_its_takes_only_the_returns()
    {
        var s = Derive(CpuVendor.Intel, 6, 106, IceLakeFlags, IceLakeBugs, commands: SpectreV2(SpectreV2Command.EibrsRetpoline));
        Assert.True(s.Has(F.Retpoline));
        Assert.False(s.Has(F.RetpolineLfence));
        Assert.True(s.Has(F.RsbVmexitLite));
        Assert.False(s.Has(F.IndirectThunkIts));        // RETPOLINE set: ITS leaves the indirect branches to them
        Assert.True(s.Has(F.Rethunk));
        Assert.Equal(ReturnThunkKind.Its, s.ReturnThunk);
        Assert.Contains("Spectre V2 : EibrsRetpoline", s.Decisions);
    }

    [Fact]
    public void Spectre_v2_retpoline_lfence_on_zen2_fills_the_rsb_and_fences()
    {
        var s = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs, commands: SpectreV2(SpectreV2Command.RetpolineLfence));
        Assert.True(s.Has(F.LfenceRdtsc));              // the serializing LFENCE the option needs (init_amd(), SSE2)
        Assert.True(s.Has(F.RetpolineLfence));
        Assert.True(s.Has(F.Retpoline));
        Assert.True(s.Has(F.RsbCtxsw));                 // SPECTRE_V2_LFENCE fills the RSB like retpolines
        Assert.True(s.Has(F.RsbVmexit));
        Assert.Contains("Spectre V2 : Lfence", s.Decisions);
    }

    [Fact]
    public void A_spectre_v2_mode_the_cpu_cannot_do_falls_back_to_auto_as_the_kernel_logs()
    {
        // Zen 2 has no eIBRS: spectre_v2=eibrs,lfence is refused and AUTO picks retpolines.
        var s = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs, commands: SpectreV2(SpectreV2Command.EibrsLfence));
        var auto = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs);
        Assert.Contains("Spectre V2 : spectre_v2=eibrs,lfence selected but CPU doesn't have Enhanced or Automatic IBRS. Switching to AUTO select", s.Decisions);
        Assert.Equal(auto.Features, s.Features);
        // spectre_v2=ibrs is Intel-only; retpoline modes need CONFIG_RETPOLINE.
        var ibrs = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs, commands: SpectreV2(SpectreV2Command.Ibrs));
        Assert.Contains("Spectre V2 : spectre_v2=ibrs selected but not Intel CPU. Switching to AUTO select", ibrs.Decisions);
        Assert.False(ibrs.Has(F.KernelIbrs));
        var noRetpoline = Derive(CpuVendor.Intel, 6, 106, IceLakeFlags, IceLakeBugs, Debian64 with { Retpoline = false },
            commands: SpectreV2(SpectreV2Command.EibrsRetpoline));
        Assert.Contains("Spectre V2 : spectre_v2=eibrs,retpoline selected but not compiled in. Switching to AUTO select", noRetpoline.Decisions);
        Assert.False(noRetpoline.Has(F.Retpoline));
    }

    [Fact]
    public void Spectre_v2_off_leaves_the_cmd_none_so_no_user_ibpb_and_forced_retpoline_on_an_unaffected_cpu()
    {
        var off = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs, commands: SpectreV2(SpectreV2Command.Off));
        Assert.False(off.Has(F.Retpoline));
        Assert.False(off.Has(F.UseIbpb));               // spectre_v2_cmd NONE → spectre_v2_user NONE
        Assert.True(Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs).Has(F.UseIbpb));
        // A CPU without the Spectre v2 bug still gets what the command asks for (only AUTO and NONE return early).
        var forced = Derive(CpuVendor.Intel, 6, 183, "fpu sse2 ibpb ibrs", "", commands: SpectreV2(SpectreV2Command.RetpolineGeneric));
        Assert.True(forced.Has(F.Retpoline));
        Assert.True(forced.Has(F.UseIbpb));
        Assert.False(Derive(CpuVendor.Intel, 6, 183, "fpu sse2 ibpb ibrs", "").Has(F.Retpoline));
    }

    [Fact]
    public void Srso_ibpb_vmexit_keeps_the_return_thunks_away_and_vmscape_relies_on_it()
    {
        // Zen 3 (family 0x19) with the microcode (SBPB): safe RET would take srso_alias_return_thunk.
        const string zen3 = "fpu sse2 ibpb ibrs stibp", bugs = "spectre_v2 srso vmscape";
        var safeRet = Derive(CpuVendor.Amd, 0x19, 0x01, zen3, bugs);
        Assert.Equal(ReturnThunkKind.SrsoAlias, safeRet.ReturnThunk);
        Assert.True(safeRet.Has(F.IbpbExitToUser));

        var s = Derive(CpuVendor.Amd, 0x19, 0x01, zen3, bugs, commands: Srso(SrsoCommand.IbpbOnVmexit));
        Assert.True(s.Has(F.IbpbOnVmexit));
        Assert.False(s.Has(F.EntryIbpb));
        Assert.False(s.Has(F.SrsoAlias));
        Assert.False(s.Has(F.Rethunk));
        Assert.False(s.Has(F.RsbVmexit));               // cleared: the IBPB invalidates the RSB too
        Assert.Equal(ReturnThunkKind.Default, s.ReturnThunk);
        Assert.False(s.Has(F.IbpbExitToUser));          // VMSCAPE: IBPB on VM exit already (SRSO_MITIGATION_IBPB_ON_VMEXIT)
        Assert.Contains("Speculative Return Stack Overflow: IbpbOnVmexit", s.Decisions);
    }

    [Fact]
    public void Srso_ibpb_on_zen2_clears_retbleeds_untraining()
    {
        var s = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs, commands: Srso(SrsoCommand.Ibpb));
        Assert.True(s.Has(F.EntryIbpb));
        Assert.True(s.Has(F.IbpbOnVmexit));
        Assert.False(s.Has(F.Unret));                   // set by RETBleed's UNRET, cleared: IBPB on entry needs no untraining
        Assert.False(s.Has(F.Rethunk));
        Assert.False(s.Has(F.Srso));
        Assert.Equal(ReturnThunkKind.Retbleed, s.ReturnThunk);   // x86_return_thunk stays, but no site jumps to it without RETHUNK
        Assert.Contains("Speculative Return Stack Overflow: Ibpb", s.Decisions);
        // Without CONFIG_CPU_IBPB_ENTRY the kernel refuses and keeps RETBleed's choice.
        var r = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs, Debian64 with { CpuIbpbEntry = false }, commands: Srso(SrsoCommand.Ibpb));
        Assert.True(r.Has(F.Rethunk));
        Assert.False(r.Has(F.EntryIbpb));
    }

    [Fact]
    public void Srso_microcode_and_off_take_no_return_thunk_of_their_own()
    {
        var micro = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs, commands: Srso(SrsoCommand.Microcode));
        Assert.False(micro.Has(F.Srso));
        Assert.Equal(ReturnThunkKind.Retbleed, micro.ReturnThunk);  // RETBleed's UNRET stays
        Assert.Contains("Speculative Return Stack Overflow: Microcode", micro.Decisions);
        var off = Derive(CpuVendor.Amd, 0x17, 0x31, Zen2Flags, Zen2Bugs, commands: Srso(SrsoCommand.Off));
        Assert.False(off.Has(F.Srso));
        Assert.True(off.Has(F.IbpbBrtype));             // the microcode is still found and flagged
        Assert.Contains("Speculative Return Stack Overflow: spec_rstack_overflow=off", off.Decisions);
    }
}

using Altpatch.Cpu;
using F = Altpatch.Cpu.CpuFeature;

namespace Altpatch.Images.Boot;

/// <summary>
/// Derives what a Linux 6.1 kernel (6.1.176) knows about the boot CPU when <c>alternative_instructions()</c> runs,
/// from a <see cref="KernelCpuDescription"/>: the hidden (<c>""</c>) capability bits <c>/proc/cpuinfo</c> never shows,
/// set by the vendor init code (<c>cpu/intel.c</c>, <c>amd.c</c>, <c>hygon.c</c>, <c>centaur.c</c>, <c>zhaoxin.c</c>,
/// <c>common.c</c>, <c>fpu/xstate.c</c>), and the mitigation choices of <c>cpu_select_mitigations()</c>
/// (<c>cpu/bugs.c</c>) and <c>pti_check_boottime_disable()</c> for the command line (<see cref="KernelCpuDescription.CommandLine"/>:
/// <c>mitigations=</c>, <c>spectre_v2=</c>, <c>nopti</c>, <c>retbleed=</c>, …, by default the empty one), including the return
/// thunk, and the SMP switch (<see cref="KernelSmpSwitch"/>). Visible flags are taken as given.
/// Every rule names its source function in <c>docs/kernel-patching.md</c>.
/// </summary>
public static class KernelBootCpu
{
    /// <summary>Derives the boot state for an image.</summary>
    /// <param name="description">The machine.</param>
    /// <param name="build">The image's build options (<see cref="KernelBuildInfo.Infer"/>).</param>
    /// <param name="pvOps">The pv_ops changes of a KVM guest (<see cref="KvmGuest.Plan"/>); none on bare metal.</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    public static KernelBootState Derive(KernelCpuDescription description, KernelBuildInfo build, KvmPvOps? pvOps = null) =>
        DeriveFor(description, build, pvOps, KernelBootRules.Linux61, null);

    /// <summary>Derives the boot state with the mitigation rules of <paramref name="rules"/> (6.1.176, or 6.12.118 where
    /// its <c>cpu/bugs.c</c> and <c>amd.c</c> decide differently): the command line is read with that line's rules
    /// (<see cref="KernelCommandLine.For"/>). Features the line sets that 6.1's numbering has no bit for
    /// (<c>X86_FEATURE_CALL_DEPTH</c>) are added to <paramref name="lineFeatures"/> by macro name.</summary>
    internal static KernelBootState DeriveFor(KernelCpuDescription description, KernelBuildInfo build, KvmPvOps? pvOps, KernelBootRules rules, ISet<string>? lineFeatures)
    {
        ArgumentNullException.ThrowIfNull(description);
        ArgumentNullException.ThrowIfNull(build);
        pvOps ??= KvmPvOps.None;
        var cmdline = description.CommandLine.For(rules);
        if (description.Exact)
        {
            var exact = Apply(description.Cpu, description);
            var thunk = ReturnThunkFromFeatures(exact);
            var smp = KernelSmpSwitch.Decide(description.Cpus, cmdline);
            return new KernelBootState(exact, thunk, description.Cpus, description.Hypervisor,
                [$"exact: the given features are boot_cpu_data; return thunk {thunk} inferred from them", .. pvOps.Notes, $"SMP: {smp.Decision}"],
                pvOps.Overrides, cmdline);
        }
        var d = new Derivation(description, build, pvOps, cmdline, lineFeatures ?? new HashSet<string>());
        d.Run();
        var features = Apply(d.Result(), description);
        d.Log.Add($"SMP: {KernelSmpSwitch.Decide(description.Cpus, cmdline).Decision}");
        return new KernelBootState(features, d.ReturnThunk, description.Cpus, description.Hypervisor, d.Log, pvOps.Overrides, cmdline);
    }

    /// <summary>The return thunk the kernel would have chosen for a final feature set: SRSO alias / SRSO safe RET,
    /// else RETBleed untrained return (UNRET), overridden by ITS on a CPU with the ITS bug; default otherwise.</summary>
    public static ReturnThunkKind ReturnThunkFromFeatures(CpuFeatures f)
    {
        ArgumentNullException.ThrowIfNull(f);
        if (!f.Has(F.Rethunk))
            return ReturnThunkKind.Default;
        if (f.Has(F.BugIts) && !f.Has(F.RetpolineLfence) && (f.Has(F.Retpoline) || f.Has(F.IndirectThunkIts)))
            return ReturnThunkKind.Its;
        if (f.Has(F.SrsoAlias))
            return ReturnThunkKind.SrsoAlias;
        if (f.Has(F.Srso))
            return ReturnThunkKind.Srso;
        if (f.Has(F.Unret))
            return ReturnThunkKind.Retbleed;
        return ReturnThunkKind.Default;
    }

    private static CpuFeatures Apply(CpuFeatures f, KernelCpuDescription d)
    {
        if (!d.Set.IsEmpty)
            f = f.With(d.Set.AsSpan());
        if (!d.Clear.IsEmpty)
            f = f.Without(d.Clear.AsSpan());
        return f;
    }

    private enum SpectreV2 { None, Retpoline, Lfence, Eibrs, EibrsLfence, EibrsRetpoline, Ibrs }

    private enum Retbleed { None, Unret, Ibpb, Ibrs, Eibrs, Stuff }

    private enum Srso { None, Microcode, SafeRet, Ibpb, IbpbOnVmexit }

    /// <summary>The derivation, function by function, in the kernel's order.</summary>
    private sealed class Derivation(KernelCpuDescription desc, KernelBuildInfo build, KvmPvOps pvOps, KernelCommandLine cmd, ISet<string> lineFeatures)
    {
        /// <summary>Whether 6.12.118's rules decide (else 6.1.176's).</summary>
        private readonly bool l612 = cmd.Rules == KernelBootRules.Linux612;

        /// <summary><c>X86_FEATURE_CALL_DEPTH</c> (6.12; no bit in 6.1's numbering: kept in <c>lineFeatures</c>).</summary>
        private bool CallDepth => lineFeatures.Contains("X86_FEATURE_CALL_DEPTH");

        private void SetCallDepth(string why)
        {
            if (lineFeatures.Add("X86_FEATURE_CALL_DEPTH"))
                Log.Add($"set X86_FEATURE_CALL_DEPTH: {why}");
        }

        private readonly HashSet<F> bits = [.. desc.Cpu.Features];
        private readonly CpuVendor vendor = desc.Cpu.Vendor;
        private readonly int family = desc.Cpu.Family;
        private readonly int model = desc.Cpu.Model;
        private readonly int stepping = desc.Cpu.Stepping;
        private readonly ulong archCap = desc.ArchCapabilities;
        private SpectreV2 spectreV2 = SpectreV2.None;
        private SpectreV2Command? spectreV2Cmd;   // spectre_v2_cmd: null for SPECTRE_V2_CMD_NONE (0), its value until spectre_v2_select_mitigation() sets it
        private Retbleed retbleed = Retbleed.None;
        private Srso srso = Srso.None;
        private bool rrsbaDisabled;

        public List<string> Log { get; } = [];

        public ReturnThunkKind ReturnThunk { get; private set; } = ReturnThunkKind.Default;

        private const ulong ArchCapRrsba = 1UL << 19, ArchCapRfdsClear = 1UL << 28, ArchCapTsxCtrlMsr = 1UL << 7, ArchCapGdsCtrl = 1UL << 25;

        private bool Has(F f) => bits.Contains(f);

        private bool AmdLike => vendor is CpuVendor.Amd or CpuVendor.Hygon;

        private void Set(F f, string why)
        {
            if (bits.Add(f))
                Log.Add($"set {CpuFeatureInfo.MacroName(f)}: {why}");
        }

        private void ClearBit(F f, string why)
        {
            if (bits.Remove(f))
                Log.Add($"clear {CpuFeatureInfo.MacroName(f)}: {why}");
        }

        private void Note(string line) => Log.Add(line);

        public CpuFeatures Result()
        {
            var c = desc.Cpu;
            return CpuFeatures.Empty.With([.. bits]).WithIdentity(c.Vendor, c.Family, c.Model, c.Stepping, c.ModelName);
        }

        public void Run()
        {
            IdentifyCpu();
            EarlyParamBugs();
            PtiCheckBoottimeDisable();
            CpuSelectMitigations();
            FpuInitSystemXstate();
            ParavirtSetCap();
        }

        // ---------------------------------------------------------------- identify_cpu() and the vendor init

        /// <summary>Features the command line cleared with <c>setup_clear_cpu_cap()</c> (and their dependents): in
        /// <c>cpu_caps_cleared</c>, so <c>apply_forced_caps()</c> keeps them off whatever the vendor code sets.</summary>
        private readonly HashSet<F> capsCleared = [];

        /// <summary><c>setup_clear_cpu_cap()</c>: <paramref name="f"/> and every feature that depends on it (cpuid-deps.c).</summary>
        private void SetupClearCpuCap(F f, string why)
        {
            foreach (var x in KernelCpuidDeps.ClearedWith(f))
            {
                capsCleared.Add(x);
                ClearBit(x, x == f ? why : $"{why}: depends on {CpuFeatureInfo.MacroName(f)} (cpuid_deps[])");
            }
        }

        /// <summary>cpu_parse_early_param() (<c>noxsave</c>, <c>noxsaveopt</c>, <c>noxsaves</c>, <c>clearcpuid=</c>, i386's
        /// <c>nofxsr</c>), the early parameters <c>nopcid</c>, <c>noinvpcid</c> and <c>nofsgsbase</c>.</summary>
        private void CommandLineClearedCaps()
        {
            if (!build.X86_64)
            {
                if (cmd.No387)
                    Note("no387: needs CONFIG_MATH_EMULATION, taken as not built: FPU stays");
                if (cmd.NoFxsr)
                    SetupClearCpuCap(F.Fxsr, "cpu_parse_early_param(): nofxsr");
            }
            int limit = CpuFeatureInfo.CapabilityWords * 32;
            foreach (var name in cmd.ClearedFeatures)
            {
                // clearcpuid= names match x86_cap_flags[] only: cpuinfo names of capability bits.
                if (CpuFeatureInfo.TryParse(name, out var f) && (int)f < limit && CpuFeatureInfo.CpuInfoName(f) == name)
                    SetupClearCpuCap(f, $"command line clears {name}");
                else
                    Note($"clearcpuid: unknown CPU flag '{name}', ignored");
            }
            foreach (int n in cmd.ClearCpuIdNumbers)
            {
                if (n < limit)
                    SetupClearCpuCap((F)n, $"clearcpuid={n}");
            }
        }

        private void IdentifyCpu()
        {
            CommandLineClearedCaps();
            Set(F.Always, "early_identify_cpu(): setup_force_cpu_cap(X86_FEATURE_ALWAYS)");
            if (desc.Hypervisor == KernelHypervisor.Kvm)
                Set(F.Hypervisor, "KVM guest: CPUID.1:ECX[31]");
            InitSpeculationControl();
            // identify_cpu(): "Set default APIC and TSC_DEADLINE MSR fencing flag. AMD and Hygon will clear it in ->c_init()"
            Set(F.ApicMsrsFence, "identify_cpu(): default, cleared by AMD/Hygon init");
            switch (vendor)
            {
                case CpuVendor.Intel:
                    InitIntel();
                    break;
                case CpuVendor.Amd:
                    InitAmd();
                    break;
                case CpuVendor.Hygon:
                    InitHygon();
                    break;
                case CpuVendor.Centaur:
                    if (!build.X86_64 && family == 5)
                        Set(F.CentaurMcr, "early_init_centaur(): family 5 emulates MTRRs with MCRs");
                    if (build.X86_64)
                    {
                        Set(F.Sysenter32, "early_init_centaur() (x86-64)");
                        Set(F.LfenceRdtsc, "init_centaur() (x86-64)");
                    }
                    break;
                case CpuVendor.Zhaoxin:
                    if (build.X86_64)
                    {
                        Set(F.Sysenter32, "early_init_zhaoxin() (x86-64)");
                        Set(F.LfenceRdtsc, "init_zhaoxin() (x86-64)");
                    }
                    break;
                default:
                    break;
            }
            if (!build.X86_64)
                Set(F.BugEspfix, "identify_cpu(): CONFIG_X86_32 sets X86_BUG_ESPFIX");
            foreach (var f in capsCleared)
                ClearBit(f, "apply_forced_caps(): cleared on the command line");
        }

        /// <summary>common.c init_speculation_control(): the hidden MSR_SPEC_CTRL follows from the visible ibrs/stibp/ssbd
        /// and the vendor's (hidden) CPUID bits, which are inferred here.</summary>
        private void InitSpeculationControl()
        {
            if (Has(F.Ssbd) && !Has(F.VirtSsbd) && !Has(F.SpecCtrlSsbd) && !Has(F.AmdSsbd) && !Has(F.LsCfgSsbd))
            {
                if (AmdLike)
                {
                    bool lsCfgFamily = vendor == CpuVendor.Amd ? family is >= 0x15 and <= 0x17 : family == 0x18;
                    bool otherAmdBits = Has(F.Ibpb) || Has(F.Ibrs) || Has(F.Stibp);
                    if (lsCfgFamily && !otherAmdBits)
                    {
                        Set(F.LsCfgSsbd, "bsp_init_amd(): family 15h-17h without AMD_SSBD/VIRT_SSBD uses MSR_AMD64_LS_CFG (ssbd shown, no other AMD speculation-control bit)");
                    }
                    else
                        Set(F.AmdSsbd, "inferred from 'ssbd' on AMD without virt_ssbd (CPUID 0x80000008 EBX[24] is hidden in cpuinfo)");
                }
                else
                    Set(F.SpecCtrlSsbd, "inferred from 'ssbd' (CPUID 7 EDX[31] is hidden in cpuinfo)");
            }
            if (AmdLike && Has(F.Ibpb) && !Has(F.AmdIbpb))
                Set(F.AmdIbpb, "inferred from 'ibpb' on AMD (CPUID 0x80000008 EBX[12] is hidden in cpuinfo)");
            if (Has(F.Ibrs) || (AmdLike && Has(F.Stibp)) || Has(F.AmdSsbd))
                Set(F.MsrSpecCtrl, "init_speculation_control(): SPEC_CTRL / AMD_IBRS / AMD_STIBP / AMD_SSBD");
        }

        private void InitIntel()
        {
            if (build.X86_64)
                Set(F.Sysenter32, "init_intel() (x86-64)");
            else if (family == 15)
                Set(F.P4, "init_intel(): family 15 (i386)");
            else if (family == 6)
                Set(F.P3, "init_intel(): family 6 (i386)");
            if (Has(F.Xmm2))
                Set(F.LfenceRdtsc, "init_intel(): SSE2");
            Set(F.MsrIa32FeatCtl, "init_ia32_feat_ctl()");
            if ((archCap & ArchCapTsxCtrlMsr) != 0)
                Set(F.MsrTsxCtrl, "tsx_init(): ARCH_CAP_TSX_CTRL_MSR");
        }

        private void InitAmd()
        {
            if (family >= 0xf)
                Set(F.K8, "early_init_amd(): family >= 0xf");
            if (build.X86_64)
                Set(F.Syscall32, "early_init_amd() (x86-64)");
            else if (family == 5 && (model == 13 || model == 9 || (model == 8 && stepping >= 8)))
                Set(F.K6Mtrr, "early_init_amd(): K6 with MTRRs (i386)");
            // bsp_init_amd(): Zen generations
            F? zen = family switch
            {
                0x17 => model switch
                {
                    <= 0x2f or (>= 0x50 and <= 0x5f) => F.Zen1,
                    (>= 0x30 and <= 0x4f) or (>= 0x60 and <= 0x7f) or 0x90 or 0x91 or (>= 0xa0 and <= 0xaf) => F.Zen2,
                    _ => null,
                },
                0x19 => model switch
                {
                    <= 0x0f or (>= 0x20 and <= 0x5f) => F.Zen3,
                    (>= 0x10 and <= 0x1f) or (>= 0x60 and <= 0xaf) => F.Zen4,
                    _ => null,
                },
                _ => null,
            };
            if (zen is { } z)
            {
                Set(z, $"bsp_init_amd(): family 0x{family:x} model 0x{model:x}");
                Set(F.Zen, "init_amd_zen_common()");
            }
            if (l612 && !Has(F.Hypervisor) && !Has(F.IbpbBrtype))
            {
                // 6.12 early_init_amd(): the IBPB-extending microcode is detected here, whatever the SRSO bug or the command line.
                if (family == 0x17 && Has(F.AmdIbpb))
                    Set(F.IbpbBrtype, "early_init_amd() (6.12): family 0x17 with AMD_IBPB");
                else if (family >= 0x19)
                {
                    Set(F.IbpbBrtype, "early_init_amd() (6.12): the SBPB write to MSR_IA32_PRED_CMD succeeds");
                    Set(F.Sbpb, "early_init_amd() (6.12): the SBPB write to MSR_IA32_PRED_CMD succeeds");
                }
            }
            if (Has(F.Xmm2))
                Set(F.LfenceRdtsc, "init_amd(): SSE2, LFENCE made serializing");
            ClearBit(F.ApicMsrsFence, "init_amd(): AMD CPUs need no fencing after x2APIC/TSC_DEADLINE MSR writes");
        }

        private void InitHygon()
        {
            Set(F.K8, "early_init_hygon()");
            if (build.X86_64)
                Set(F.Syscall32, "early_init_hygon() (x86-64)");
            Set(F.Zen, "init_hygon()");
            if (Has(F.Xmm2))
                Set(F.LfenceRdtsc, "init_hygon(): SSE2");
            ClearBit(F.ApicMsrsFence, "init_hygon()");
        }

        // ---------------------------------------------------------------- pti.c

        /// <summary>pti_check_boottime_disable(): <c>pti=off</c> (or <c>nopti</c>, <c>mitigations=off</c>) keeps PTI off,
        /// <c>pti=on</c> forces it on, <c>pti=auto</c> or nothing sets it on a CPU with the Meltdown bug.</summary>
        private void PtiCheckBoottimeDisable()
        {
            if (!build.PageTableIsolation)
                return;
            switch (cmd.Pti)
            {
                case PtiCommand.Off:
                    if (Has(F.BugCpuMeltdown))
                        Note("Kernel/User page tables isolation: disabled on command line (pti=off, nopti or mitigations=off)");
                    return;
                case PtiCommand.On:
                    Set(F.Pti, "pti_check_boottime_disable(): pti=on");
                    return;
                default:
                    if (Has(F.BugCpuMeltdown))
                        Set(F.Pti, "pti_check_boottime_disable(): X86_BUG_CPU_MELTDOWN, pti=auto");
                    return;
            }
        }

        // ---------------------------------------------------------------- fpu/xstate.c

        private void FpuInitSystemXstate()
        {
            if (!Has(F.Xsave) || !Has(F.Fpu))
                return;
            if (Has(F.Xsavec) || Has(F.Xsaves))
                Set(F.Xcompacted, "fpu__init_system_xstate(): XSAVEC or XSAVES");
            Set(F.Osxsave, "fpu__init_system_xstate(): XSAVE enabled");
        }

        // ---------------------------------------------------------------- paravirt-spinlocks.c

        private void ParavirtSetCap()
        {
            // pv_ops.lock is native on bare metal (and under TCG); a KVM guest may have changed it (KvmGuest.Plan).
            foreach (var n in pvOps.Notes)
                Note(n);
            if (pvOps.QueuedSpinUnlockChanged)
                Set(F.Pvunlock, "paravirt_set_cap(): pv_ops.lock.queued_spin_unlock is not native");
            if (pvOps.VcpuIsPreemptedChanged)
                Set(F.Vcpupreempt, "paravirt_set_cap(): pv_ops.lock.vcpu_is_preempted is not native");
        }

        // ---------------------------------------------------------------- bugs.c cpu_select_mitigations()

        /// <summary><c>cpu_mitigations_off()</c>: <c>mitigations=off</c>.</summary>
        private bool MitigationsOff => cmd.Mitigations == MitigationsMode.Off;

        /// <summary><c>cpu_smt_possible()</c> as far as the command line decides it: <c>nosmt=force</c> and
        /// <c>l1tf=full,force</c> (on a CPU with L1TF) make <c>cpu_smt_control</c> CPU_SMT_FORCE_DISABLED.</summary>
        private bool smtForceDisabled;

        /// <summary>The early parameters that set a bug bit (<c>setup_force_cpu_bug()</c> in their handlers).</summary>
        private void EarlyParamBugs()
        {
            if (cmd.Its == ItsCommand.Force && build.MitigationIts)
                Set(F.BugIts, "its_parse_cmdline(): indirect_target_selection=force");
            if (cmd.Vmscape == VmscapeCommand.Force)
                Set(F.BugVmscape, "vmscape_parse_cmdline(): vmscape=force");
            if (cmd.RetbleedForce)
                Set(F.BugRetbleed, "retbleed_parse_cmdline() (6.12): retbleed=force");
            if (cmd.NoSmtForce == true)
                smtForceDisabled = true;
            if (MitigationsOff)
                Note("mitigations=off: cpu_mitigations_off()");
        }

        private void CpuSelectMitigations()
        {
            SpectreV1SelectMitigation();
            SpectreV2SelectMitigation();
            RetbleedSelectMitigation();
            SpectreV2UserSelectMitigation();
            SsbSelectMitigation();
            L1tfSelectMitigation();
            MdClearSelectMitigation();
            // srbds_select_mitigation(), l1d_flush_select_mitigation(): MSRs and a static key, no feature bit.
            SrsoSelectMitigation();
            GdsSelectMitigation();
            ItsSelectMitigation();
            TsaSelectMitigation();
            VmscapeSelectMitigation();
        }

        private void SpectreV1SelectMitigation()
        {
            if (!Has(F.BugSpectreV1) || MitigationsOff)
                return;
            if (cmd.NoSpectreV1)
            {
                Note("Spectre V1 : nospectre_v1: no swapgs barriers");
                return;
            }
            bool smapWorks = Has(F.Smap) && !Has(F.BugCpuMeltdown);
            if (Has(F.Fsgsbase) || !smapWorks)
            {
                if (Has(F.BugSwapgs) && !Has(F.Pti))
                    Set(F.FenceSwapgsUser, "spectre_v1_select_mitigation(): SWAPGS bug without PTI");
                Set(F.FenceSwapgsKernel, "spectre_v1_select_mitigation(): FSGSBASE or SMAP not speculation-safe");
            }
        }

        /// <summary>spectre_v2_parse_cmdline(): the command (<c>nospectre_v2</c> and <c>mitigations=off</c> are Off, as
        /// <see cref="KernelCommandLine.SpectreV2"/> reads them), or AUTO when the CPU or the build cannot do it.</summary>
        private SpectreV2Command SpectreV2ParseCmdline()
        {
            var c = cmd.SpectreV2;
            string? problem = null;
            if (c is SpectreV2Command.Retpoline or SpectreV2Command.RetpolineLfence or SpectreV2Command.RetpolineGeneric
                    or SpectreV2Command.EibrsLfence or SpectreV2Command.EibrsRetpoline && !build.Retpoline)
                problem = "selected but not compiled in";
            else if (c is SpectreV2Command.Eibrs or SpectreV2Command.EibrsLfence or SpectreV2Command.EibrsRetpoline && !Has(F.IbrsEnhanced))
                problem = "selected but CPU doesn't have Enhanced or Automatic IBRS";
            else if (c is SpectreV2Command.RetpolineLfence or SpectreV2Command.EibrsLfence && !Has(F.LfenceRdtsc))
                problem = "selected, but CPU doesn't have a serializing LFENCE";
            else if (c == SpectreV2Command.Ibrs && !build.CpuIbrsEntry)
                problem = "selected but not compiled in";
            else if (c == SpectreV2Command.Ibrs && vendor != CpuVendor.Intel)
                problem = "selected but not Intel CPU";
            else if (c == SpectreV2Command.Ibrs && !Has(F.Ibrs))
                problem = "selected but CPU doesn't have IBRS";
            else if (c == SpectreV2Command.Ibrs && Has(F.Xenpv))
                problem = "selected but running as XenPV guest";
            if (problem is null)
                return c;
            Note($"Spectre V2 : spectre_v2={KernelMitigationCommands.Name(c)} {problem}. Switching to AUTO select");
            return SpectreV2Command.Auto;
        }

        /// <summary>spectre_v2_select_retpoline().</summary>
        private SpectreV2 SpectreV2SelectRetpoline() => build.Retpoline ? SpectreV2.Retpoline : SpectreV2.None;

        private void SpectreV2SelectMitigation()
        {
            var c = SpectreV2ParseCmdline();
            if (!Has(F.BugSpectreV2) && c is SpectreV2Command.Auto or SpectreV2Command.Off)
            {
                Note("Spectre V2 : not affected (spectre_v2_cmd stays NONE)");
                return;
            }
            if (c == SpectreV2Command.Off)
            {
                Note(MitigationsOff ? "Spectre V2 : mitigations=off: vulnerable (spectre_v2_cmd stays NONE)"
                    : "Spectre V2 : spectre_v2=off or nospectre_v2: vulnerable (spectre_v2_cmd stays NONE)");
                return;
            }
            SpectreV2 mode = c switch
            {
                SpectreV2Command.RetpolineLfence => SpectreV2.Lfence,
                SpectreV2Command.RetpolineGeneric => SpectreV2.Retpoline,
                SpectreV2Command.Retpoline => SpectreV2SelectRetpoline(),
                SpectreV2Command.Ibrs => SpectreV2.Ibrs,
                SpectreV2Command.Eibrs => SpectreV2.Eibrs,
                SpectreV2Command.EibrsLfence => SpectreV2.EibrsLfence,
                SpectreV2Command.EibrsRetpoline => SpectreV2.EibrsRetpoline,
                _ when Has(F.IbrsEnhanced) => SpectreV2.Eibrs,   // AUTO, FORCE
                _ when build.CpuIbrsEntry && Has(F.BugRetbleed) && cmd.Retbleed is not (RetbleedCommand.Off or RetbleedCommand.Stuff)
                    && Has(F.Ibrs) && vendor == CpuVendor.Intel => SpectreV2.Ibrs,
                _ => SpectreV2SelectRetpoline(),
            };

            switch (mode)
            {
                case SpectreV2.Ibrs:
                    Set(F.KernelIbrs, "spectre_v2_select_mitigation(): IBRS");
                    break;
                case SpectreV2.Lfence:
                case SpectreV2.EibrsLfence:
                    Set(F.RetpolineLfence, "spectre_v2_select_mitigation(): LFENCE");
                    Set(F.Retpoline, "spectre_v2_select_mitigation(): LFENCE");
                    break;
                case SpectreV2.Retpoline:
                case SpectreV2.EibrsRetpoline:
                    Set(F.Retpoline, "spectre_v2_select_mitigation(): retpolines");
                    break;
                default:
                    break;
            }
            if (mode is SpectreV2.EibrsLfence or SpectreV2.EibrsRetpoline or SpectreV2.Retpoline)
                SpecCtrlDisableKernelRrsba();
            if (Has(F.BugBhi))
                BhiSelectMitigation();
            spectreV2 = mode;
            Note($"Spectre V2 : {mode}");

            // spectre_v2_select_rsb_mitigation()
            switch (mode)
            {
                case SpectreV2.Eibrs:
                case SpectreV2.EibrsLfence:
                case SpectreV2.EibrsRetpoline:
                    if (Has(F.BugEibrsPbrsb))
                        Set(F.RsbVmexitLite, "spectre_v2_select_rsb_mitigation(): eIBRS with PBRSB");
                    break;
                case SpectreV2.Retpoline:
                case SpectreV2.Lfence:
                case SpectreV2.Ibrs:
                    Set(F.RsbCtxsw, "spectre_v2_select_rsb_mitigation()");
                    Set(F.RsbVmexit, "spectre_v2_select_rsb_mitigation()");
                    break;
                default:
                    break;
            }
            bool ibrsMode = mode is SpectreV2.Eibrs or SpectreV2.EibrsLfence or SpectreV2.EibrsRetpoline or SpectreV2.Ibrs;
            if (Has(F.BugRetbleed) && Has(F.Ibpb) && AmdLike)
            {
                if (cmd.Retbleed != RetbleedCommand.Ibpb)
                    Set(F.UseIbpbFw, "spectre_v2_select_mitigation(): RETBleed on AMD/Hygon with IBPB");
            }
            else if (Has(F.Ibrs) && !ibrsMode)
                Set(F.UseIbrsFw, "spectre_v2_select_mitigation(): IBRS around firmware calls");
            spectreV2Cmd = c;   // spectre_v2_cmd = cmd
        }

        private void SpecCtrlDisableKernelRrsba()
        {
            if (rrsbaDisabled)
                return;
            if ((archCap & ArchCapRrsba) == 0)
            {
                rrsbaDisabled = true;
                return;
            }
            if (!Has(F.RrsbaCtrl))
                return;
            rrsbaDisabled = true;
        }

        private void BhiSelectMitigation()
        {
            var bhi = cmd.SpectreBhi ?? (build.MitigationSpectreBhi ? BhiCommand.On : BhiCommand.Off);
            if (bhi == BhiCommand.Off)
            {
                Note("Spectre BHI: off (spectre_bhi=off or not compiled in)");
                return;
            }
            if (Has(F.Retpoline) && !Has(F.RetpolineLfence))
            {
                SpecCtrlDisableKernelRrsba();
                if (rrsbaDisabled)
                    return;
            }
            if (!build.X86_64)
                return;
            if (Has(F.BhiCtrl))
            {
                Set(F.ClearBhbHw, "spec_ctrl_bhi_dis(): BHI_DIS_S");
                return;
            }
            if (bhi == BhiCommand.VmexitOnly)
            {
                Set(F.ClearBhbLoopOnVmexit, "bhi_select_mitigation() (6.12): spectre_bhi=vmexit, SW BHB clearing on VM exit only");
                return;
            }
            Set(F.ClearBhbLoopOnVmexit, "bhi_select_mitigation(): SW BHB clearing on vm exit");
            Set(F.ClearBhbLoop, "bhi_select_mitigation(): SW BHB clearing on syscall");
        }

        private void RetbleedSelectMitigation()
        {
            if (!Has(F.BugRetbleed) || MitigationsOff)
                return;
            bool auto = false;
            switch (cmd.Retbleed)
            {
                case RetbleedCommand.Off:
                    Note("RETBleed: retbleed=off: vulnerable");
                    return;
                case RetbleedCommand.Unret:
                    if (build.CpuUnretEntry)
                        retbleed = Retbleed.Unret;
                    else
                    {
                        Note("RETBleed: retbleed=unret: kernel not compiled with CPU_UNRET_ENTRY");
                        auto = true;
                    }
                    break;
                case RetbleedCommand.Ibpb:
                    if (!Has(F.Ibpb))
                    {
                        Note("RETBleed: retbleed=ibpb: CPU does not support IBPB");
                        auto = true;
                    }
                    else if (build.CpuIbpbEntry)
                        retbleed = Retbleed.Ibpb;
                    else
                    {
                        Note("RETBleed: retbleed=ibpb: kernel not compiled with CPU_IBPB_ENTRY");
                        auto = true;
                    }
                    break;
                case RetbleedCommand.Stuff:
                    if (build.CallDepthTracking && spectreV2 == SpectreV2.Retpoline)
                        retbleed = Retbleed.Stuff;
                    else
                    {
                        Note(build.CallDepthTracking ? "RETBleed: retbleed=stuff depends on spectre_v2=retpoline"
                            : "RETBleed: retbleed=stuff: kernel not compiled with MITIGATION_CALL_DEPTH_TRACKING");
                        auto = true;
                    }
                    break;
                default:
                    auto = true;
                    break;
            }
            if (auto && AmdLike)
            {
                if (build.CpuUnretEntry)
                    retbleed = Retbleed.Unret;
                else if (build.CpuIbpbEntry && Has(F.Ibpb))
                    retbleed = Retbleed.Ibpb;
            }
            switch (retbleed)
            {
                case Retbleed.Unret:
                    Set(F.Rethunk, "retbleed_select_mitigation(): untrained return thunk");
                    Set(F.Unret, "retbleed_select_mitigation(): untrained return thunk");
                    if (build.Rethunk || l612)
                        SetReturnThunk(ReturnThunkKind.Retbleed, "retbleed");
                    break;
                case Retbleed.Stuff:
                    Set(F.Rethunk, "retbleed_select_mitigation(): call depth tracking (retbleed=stuff)");
                    SetCallDepth("retbleed_select_mitigation(): retbleed=stuff");
                    SetReturnThunk(ReturnThunkKind.CallDepth, "retbleed=stuff");
                    break;
                case Retbleed.Ibpb:
                    Set(F.EntryIbpb, "retbleed_select_mitigation(): IBPB");
                    Set(F.IbpbOnVmexit, "retbleed_select_mitigation(): IBPB");
                    ClearBit(F.Unret, "retbleed_select_mitigation(): IBPB on entry");
                    ClearBit(F.Rethunk, "retbleed_select_mitigation(): IBPB on entry");
                    ClearBit(F.RsbVmexit, "retbleed_select_mitigation(): IBPB on entry");
                    break;
                default:
                    break;
            }
            if (vendor == CpuVendor.Intel)
            {
                // 6.12: any other Spectre v2 mode leaves RETBleed unmitigated, except call depth tracking.
                retbleed = spectreV2 switch
                {
                    SpectreV2.Ibrs => Retbleed.Ibrs,
                    SpectreV2.Eibrs or SpectreV2.EibrsRetpoline or SpectreV2.EibrsLfence => Retbleed.Eibrs,
                    _ when l612 && retbleed != Retbleed.Stuff => Retbleed.None,
                    _ => retbleed,
                };
            }
            Note($"RETBleed: {retbleed}");
        }

        private void SpectreV2UserSelectMitigation()
        {
            if (!Has(F.Ibpb) && !Has(F.Stibp))
                return;
            // spectre_v2_parse_user_cmdline()
            var user = spectreV2Cmd switch
            {
                null => SpectreV2UserCommand.None,
                SpectreV2Command.On => SpectreV2UserCommand.Force,
                _ => cmd.SpectreV2User,
            };
            if (user == SpectreV2UserCommand.None)
            {
                Note(spectreV2Cmd is null ? "Spectre V2 : User space: Vulnerable (spectre_v2_cmd is NONE)" : "Spectre V2 : User space: Vulnerable (spectre_v2_user=off)");
                return;   // SPECTRE_V2_USER_CMD_NONE: goto set_mode
            }
            if (Has(F.Ibpb))
                Set(F.UseIbpb, "spectre_v2_user_select_mitigation(): IBPB");
        }

        /// <summary>ssb_select_mitigation(): only <c>spec_store_bypass_disable=on</c> sets a feature bit.</summary>
        private void SsbSelectMitigation()
        {
            if (!Has(F.Ssbd))
                return;
            var c = cmd.Ssb;   // nospec_store_bypass_disable and mitigations=off are None
            if (!Has(F.BugSpecStoreBypass) && c is SsbCommand.None or SsbCommand.Auto)
                return;
            if (c == SsbCommand.On)
                Set(F.SpecStoreBypassDisable, "ssb_select_mitigation(): spec_store_bypass_disable=on");
        }

        private void L1tfSelectMitigation()
        {
            if (!Has(F.BugL1tf))
                return;
            var mode = MitigationsOff ? L1tfCommand.Off
                : cmd.Mitigations == MitigationsMode.AutoNosmt ? L1tfCommand.FlushNosmt
                : cmd.L1tf;
            if (mode == L1tfCommand.FullForce)
                smtForceDisabled = true;                      // cpu_smt_disable(true)
            if (!build.PgtableLevelsAbove2)
            {
                Note("L1TF: kernel not compiled for PAE, no mitigation");
                return;
            }
            // PTE inversion is on whatever the mode: only a mode other than off with RAM above MAX_PA/2 returns before it
            // (that much memory is assumed absent). The ground truth's mitigations=off boots have it.
            Set(F.L1tfPteinv, mode == L1tfCommand.Off
                ? "l1tf_select_mitigation(): PTE inversion, also with l1tf=off or mitigations=off"
                : "l1tf_select_mitigation(): PTE inversion (memory below MAX_PA/2 assumed)");
        }

        /// <summary>md_clear_select_mitigation(): mds, taa, mmio, rfds; then md_clear_update_mitigation() turns those left
        /// off back on once X86_FEATURE_CLEAR_CPU_BUF is set, which sets no further bit.</summary>
        private void MdClearSelectMitigation()
        {
            // mds_select_mitigation()
            bool mds = Has(F.BugMds) && !MitigationsOff && cmd.Mds != VerwCommand.Off;
            if (mds)
                Set(F.ClearCpuBuf, "mds_select_mitigation(): MDS");
            // taa_select_mitigation()
            if (Has(F.BugTaa) && Has(F.Rtm) && !MitigationsOff && !(cmd.Taa == VerwCommand.Off && !mds))
                Set(F.ClearCpuBuf, "taa_select_mitigation(): TAA with TSX enabled");
            // mmio_select_mitigation()
            if (Has(F.BugMmioStaleData) && !Has(F.BugMmioUnknown) && !MitigationsOff && cmd.Mmio != VerwCommand.Off
                && (Has(F.BugMds) || (Has(F.BugTaa) && Has(F.Rtm))))
                Set(F.ClearCpuBuf, "mmio_select_mitigation(): MMIO Stale Data with MDS or TAA");
            // rfds_select_mitigation()
            if (Has(F.BugRfds) && !MitigationsOff && (cmd.Rfds ?? build.MitigationRfds) && (archCap & ArchCapRfdsClear) != 0)
                Set(F.ClearCpuBuf, "rfds_select_mitigation(): ARCH_CAP_RFDS_CLEAR");
            if (MitigationsOff && (Has(F.BugMds) || Has(F.BugTaa) || Has(F.BugMmioStaleData) || Has(F.BugRfds)))
                Note("MDS/TAA/MMIO/RFDS: mitigations=off: no CPU buffer clearing");
            else if (!Has(F.ClearCpuBuf) && (Has(F.BugMds) || Has(F.BugTaa) || Has(F.BugMmioStaleData) || Has(F.BugRfds)))
                Note("MDS/TAA/MMIO/RFDS: no CPU buffer clearing (mds=off, tsx_async_abort=off, mmio_stale_data=off, or nothing to do)");
        }

        private void SrsoSelectMitigation()
        {
            if (!Has(F.BugSrso))
                return;
            if (MitigationsOff)
            {
                Note("Speculative Return Stack Overflow: mitigations=off: vulnerable");
                return;
            }
            if (l612 && cmd.Srso == SrsoCommand.Off)
            {
                Note("Speculative Return Stack Overflow: spec_rstack_overflow=off");
                return;
            }
            // 6.12 reads the microcode's IBPB_BRTYPE as early_init_amd() left it; 6.1 probes it here.
            bool hasMicrocode = Has(F.IbpbBrtype) || (!l612 && CpuHasIbpbBrtypeMicrocode());
            if (!hasMicrocode)
                Note("Speculative Return Stack Overflow: IBPB-extending microcode not applied");
            else
            {
                if (!l612)
                    Set(F.IbpbBrtype, "srso_select_mitigation(): IBPB-extending microcode");
                // Zen1/2 without SMT are not vulnerable once the microcode is there (cpu_smt_possible() is false
                // when cpu_smt_check_topology() found one thread per core, or with nosmt=force). Unknown SMT counts as possible.
                if (family < 0x19 && (desc.Smt == false || smtForceDisabled))
                {
                    Set(F.SrsoNo, "srso_select_mitigation(): Zen1/2 without SMT and with microcode");
                    return;
                }
            }
            if (retbleed == Retbleed.Ibpb && hasMicrocode)
            {
                srso = Srso.Ibpb;
                Note("Speculative Return Stack Overflow: Retbleed IBPB mitigation enabled, using same for SRSO");
                return;
            }
            switch (cmd.Srso)
            {
                case SrsoCommand.Off:
                    Note("Speculative Return Stack Overflow: spec_rstack_overflow=off");
                    return;
                case SrsoCommand.Microcode:
                    if (hasMicrocode)
                        srso = Srso.Microcode;
                    break;
                case SrsoCommand.Ibpb:
                    if (!build.CpuIbpbEntry)
                    {
                        Note("Speculative Return Stack Overflow: spec_rstack_overflow=ibpb, kernel not compiled with CPU_IBPB_ENTRY");
                        return;
                    }
                    if (hasMicrocode)
                    {
                        Set(F.EntryIbpb, "srso_select_mitigation(): spec_rstack_overflow=ibpb");
                        Set(F.IbpbOnVmexit, "srso_select_mitigation(): spec_rstack_overflow=ibpb");
                        srso = Srso.Ibpb;
                        ClearBit(F.Unret, "srso_select_mitigation(): IBPB on entry needs no untraining");
                        ClearBit(F.Rethunk, "srso_select_mitigation(): IBPB on entry needs no untraining");
                        ClearBit(F.RsbVmexit, "srso_select_mitigation(): IBPB on entry fills no RSB");
                    }
                    break;
                case SrsoCommand.IbpbOnVmexit:
                    if (!build.CpuIbpbEntry)
                    {
                        Note("Speculative Return Stack Overflow: spec_rstack_overflow=ibpb-vmexit, kernel not compiled with CPU_IBPB_ENTRY");
                        return;
                    }
                    if (hasMicrocode)
                    {
                        Set(F.IbpbOnVmexit, "srso_select_mitigation(): spec_rstack_overflow=ibpb-vmexit");
                        srso = Srso.IbpbOnVmexit;
                        ClearBit(F.RsbVmexit, "srso_select_mitigation(): IBPB on VM exit fills no RSB");
                    }
                    break;
                default:   // SRSO_CMD_SAFE_RET, the default
                    if (build.CpuSrso)
                    {
                        Set(F.Rethunk, "srso_select_mitigation(): safe RET");
                        Set(F.Unret, "srso_select_mitigation(): safe RET");
                        if (family == 0x19)
                        {
                            Set(F.SrsoAlias, "srso_select_mitigation(): family 0x19");
                            SetReturnThunk(ReturnThunkKind.SrsoAlias, "SRSO safe RET");
                        }
                        else
                        {
                            Set(F.Srso, "srso_select_mitigation(): not family 0x19");
                            SetReturnThunk(ReturnThunkKind.Srso, "SRSO safe RET");
                        }
                        srso = Srso.SafeRet;
                    }
                    else
                        Note("Speculative Return Stack Overflow: kernel not compiled with CPU_SRSO");
                    break;
            }
            Note($"Speculative Return Stack Overflow: {srso}");
        }

        /// <summary>amd.c cpu_has_ibpb_brtype_microcode(): Zen1/2 need AMD_IBPB; on family 0x19 the kernel probes
        /// MSR_IA32_PRED_CMD with SBPB, which is taken to succeed (as it does under QEMU and with current microcode).</summary>
        private bool CpuHasIbpbBrtypeMicrocode()
        {
            switch (family)
            {
                case 0x17:
                    return Has(F.AmdIbpb);
                case 0x19:
                    Set(F.Sbpb, "cpu_has_ibpb_brtype_microcode(): the SBPB write to MSR_IA32_PRED_CMD succeeds");
                    return true;
                default:
                    return false;
            }
        }

        private void GdsSelectMitigation()
        {
            if (!Has(F.BugGds) || Has(F.Hypervisor))
                return;
            // gds_mitigation: the build's default (FORCE with CONFIG_GDS_FORCE_MITIGATION, else FULL), gather_data_sampling=
            // off/force, and OFF with mitigations=off.
            bool force = !MitigationsOff && (cmd.Gds ?? build.GdsForceMitigation);
            if ((archCap & ArchCapGdsCtrl) != 0)
                return;                                       // microcode has the mitigation: MSRs only
            if (force && Has(F.Avx))
                SetupClearCpuCap(F.Avx, "gds_select_mitigation(): no microcode, GDS mitigation forced (gather_data_sampling=force or CONFIG_GDS_FORCE_MITIGATION)");
        }

        private void ItsSelectMitigation()
        {
            if (!Has(F.BugIts) || MitigationsOff)
                return;
            if (l612 && Has(F.Retpoline) && CallDepth)
            {
                Note("ITS: Mitigation: Retpolines, Stuffing RSB (retpolines with call depth tracking)");
                return;
            }
            if (!build.MitigationIts)
            {
                Note("ITS: not compiled in");
                return;
            }
            if (cmd.Its == ItsCommand.Off)
            {
                Note("ITS: indirect_target_selection=off: vulnerable");
                return;
            }
            if (spectreV2 == SpectreV2.None)
            {
                Note("ITS: Spectre-v2 mitigation is off, disabling ITS");
                return;
            }
            if (!build.Retpoline || !build.Rethunk)
            {
                Note("ITS: mitigation depends on retpoline and rethunk support");
                return;
            }
            if (Has(F.RetpolineLfence))
            {
                Note("ITS: not compatible with lfence mitigation");
                return;
            }
            if (cmd.Its == ItsCommand.Stuff)
            {
                if (Has(F.Retpoline) && build.CallDepthTracking)
                {
                    Set(F.Rethunk, "its_select_mitigation() (6.12): indirect_target_selection=stuff");
                    SetCallDepth("its_select_mitigation(): indirect_target_selection=stuff");
                    SetReturnThunk(ReturnThunkKind.CallDepth, "ITS: retpolines, stuffing RSB");
                    if (retbleed == Retbleed.None)
                    {
                        retbleed = Retbleed.Stuff;
                        Note("RETBleed: Retbleed mitigation updated to stuffing");
                    }
                    return;
                }
                Note("ITS: RSB stuff mitigation not supported, using default");
            }
            if (cmd.Its == ItsCommand.Vmexit && Has(F.BugItsNativeOnly))
            {
                Note("ITS: indirect_target_selection=vmexit on a CPU affected natively only: KVM not affected, no thunks");
                return;
            }
            if (!Has(F.Retpoline))
                Set(F.IndirectThunkIts, "its_select_mitigation(): aligned branch thunks");
            Set(F.Rethunk, "its_select_mitigation(): aligned return thunks");
            SetReturnThunk(ReturnThunkKind.Its, "ITS aligned thunks");
        }

        private void TsaSelectMitigation()
        {
            var mode = cmd.Tsa ?? (build.MitigationTsa ? TsaCommand.Full : TsaCommand.None);
            if (mode == TsaCommand.None || MitigationsOff || !Has(F.BugTsa))
                return;
            bool ucodeNeeded = !Has(F.VerwClear);
            if (ucodeNeeded)
            {
                if (!Has(F.Hypervisor))
                {
                    Note("Transient Scheduler Attacks: Vulnerable: Clear CPU buffers attempted, no microcode (VERW_CLEAR not given)");
                    return;
                }
                mode = TsaCommand.Full;                       // "Forcing mitigation on in a VM"
            }
            switch (mode)
            {
                case TsaCommand.UserKernel:
                    Set(F.ClearCpuBuf, "tsa_select_mitigation(): tsa=user");
                    break;
                case TsaCommand.Vm:
                    Set(F.ClearCpuBufVm, "tsa_select_mitigation(): tsa=vm");
                    break;
                default:
                    Set(F.ClearCpuBuf, ucodeNeeded ? "tsa_select_mitigation(): forced on in a VM" : "tsa_select_mitigation(): full");
                    Set(F.ClearCpuBufVm, ucodeNeeded ? "tsa_select_mitigation(): forced on in a VM" : "tsa_select_mitigation(): full");
                    break;
            }
        }

        private void VmscapeSelectMitigation()
        {
            var mode = cmd.Vmscape ?? (build.MitigationVmscape ? VmscapeCommand.Auto : VmscapeCommand.None);
            if (MitigationsOff || !Has(F.BugVmscape) || !Has(F.Ibpb) || mode == VmscapeCommand.None)
                return;
            if (retbleed == Retbleed.Ibpb || srso == Srso.IbpbOnVmexit)
                return;   // IBPB on VMEXIT
            Set(F.IbpbExitToUser, "vmscape_select_mitigation(): IBPB before exit to userspace");
        }

        private void SetReturnThunk(ReturnThunkKind kind, string why)
        {
            ReturnThunk = kind;
            Note($"set_return_thunk(): {kind} ({why})");
        }
    }
}

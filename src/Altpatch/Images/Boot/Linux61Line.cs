using System.Collections.Immutable;
using Altpatch.Code;
using Altpatch.Cpu;

namespace Altpatch.Images.Boot;

/// <summary>Linux 6.1 (6.1.176 with its backports: ITS, SRSO, RETBleed, BHI, …): 12-byte relative <c>alt_instr</c>,
/// <c>.parainstructions</c>, the P6 NOPs (longest 8 bytes), the text passes, then <c>alternative_instructions()</c>:
/// <c>apply_paravirt</c>, <c>apply_retpolines</c>, <c>apply_returns</c>, <c>apply_alternatives</c>,
/// <c>apply_ibt_endbr</c>, the SMP-lock switch (<see cref="Linux61Passes"/>).</summary>
internal sealed class Linux61Line : KernelLine
{
    public override KernelBootRules Id => KernelBootRules.Linux61;

    public override string Key => "6.1";

    public override string Name => "Linux 6.1";

    public override string Reference => CpuFeatureTable.LinuxVersion;

    public override ImmutableArray<AltInstrFormat> TableFormats { get; } = [AltInstrFormat.Relative12];

    public override FeatureNumbering? Numbering => FeatureNumbering.Linux61;

    public override ImmutableArray<BootPass> Passes { get; } =
    [
        BootPass.JumpLabels, BootPass.StaticCalls, BootPass.Ftrace, BootPass.PreemptDynamic,
        BootPass.Paravirt, BootPass.Retpolines, BootPass.Returns, BootPass.Alternatives, BootPass.IbtEndbr, BootPass.SmpLocks,
    ];

    /// <summary>What <see cref="KernelCommandLine"/> parses for the 6.1 rules.</summary>
    public override ImmutableArray<string> CommandLineOptions { get; } =
    [
        "mitigations", "nospectre_v1", "nospectre_v2", "spectre_v2", "spectre_v2_user", "spectre_bhi", "retbleed",
        "spec_rstack_overflow", "nospec_store_bypass_disable", "spec_store_bypass_disable", "l1tf", "l1d_flush", "mds",
        "tsx_async_abort", "mmio_stale_data", "reg_file_data_sampling", "srbds", "gather_data_sampling", "indirect_target_selection",
        "tsa", "vmscape", "pti", "nopti", "tsx", "nosmt", "clearcpuid", "nopku", "noreplace-smp", "maxcpus", "nosmp",
        "nr_cpus", "possible_cpus", "preempt", "ftrace", "ftrace_filter", "ftrace_notrace",
    ];

    public override bool HasTextPasses => true;

    public override bool Matches(KernelVersion? version, AltInstrFormat? format) =>
        version is { Major: 6, Minor: 1 } ? format is null or AltInstrFormat.Relative12
        : version is null && format is AltInstrFormat.Relative12;

    public override NopTable NopsFor(KernelImage image, CpuFeatures cpu) => image.Bitness == 64 ? NopTable.X86_64Linux61 : NopTable.X86_32;

    public override KernelBootState DeriveState(KernelImage image, KernelCpuDescription description, KernelThunks thunks, KvmPvOps? pvOps) =>
        KernelBootCpu.Derive(description, KernelBuildInfo.Infer(image, thunks), pvOps);

    public override ImageFeatureNumbering NumberingOf(KernelImage image) => ImageFeatureNumbering.For(image, KernelBootRules.Linux61);

    internal override void RunPasses(BootRun run)
    {
        var tables = run.Context.Tables;
        run.RunTextPasses(KernelTextRules.Linux61);
        run.Run(BootPass.Paravirt, tables.Paravirt.Length, Linux61Passes.Paravirt);
        run.Run(BootPass.Retpolines, tables.Retpolines.Length, Linux61Passes.Retpolines);
        run.Run(BootPass.Returns, tables.Returns.Length, Linux61Passes.Returns);
        run.Run(BootPass.Alternatives, tables.Alternatives.Length, Linux61Passes.Alternatives);
        run.Run(BootPass.IbtEndbr, Linux61Passes.IbtSealCount(run.Context.Image), Linux61Passes.IbtEndbr);
        run.Run(BootPass.SmpLocks, tables.SmpLocks.Length, Linux61Passes.SmpLocks);
    }
}

/// <summary>Linux 2.6.22, the seed's era: absolute-pointer <c>alt_instr</c>, the era's NOP tables chosen for the CPU,
/// no text passes; <c>alternative_instructions()</c>: <c>apply_alternatives</c>, the SMP switch, <c>apply_paravirt</c>
/// (<see cref="Linux2622Passes"/>). The boot CPU is the described one as it is (no mitigation logic in that era).</summary>
internal sealed class Linux2622Line : KernelLine
{
    public override KernelBootRules Id => KernelBootRules.Linux2622;

    public override string Key => "2.6.22";

    public override string Name => "Linux 2.6.22";

    public override string Reference => "2.6.22 era, unchecked";

    public override ImmutableArray<AltInstrFormat> TableFormats { get; } = [AltInstrFormat.AbsoluteByteCpuid, AltInstrFormat.AbsoluteWordCpuid];

    public override FeatureNumbering? Numbering => null;

    public override ImmutableArray<BootPass> Passes { get; } = [BootPass.Alternatives, BootPass.SmpLocks, BootPass.Paravirt];

    public override ImmutableArray<string> CommandLineOptions { get; } = [];

    public override bool Matches(KernelVersion? version, AltInstrFormat? format) =>
        format is AltInstrFormat.AbsoluteByteCpuid or AltInstrFormat.AbsoluteWordCpuid;

    public override NopTable NopsFor(KernelImage image, CpuFeatures cpu) => NopTable.FindSeedEra(cpu.Vendor, cpu.Family, image.Bitness == 64);

    public override string KernelFunction(BootPass pass) => pass == BootPass.SmpLocks ? "alternatives_smp_switch" : pass.KernelFunction();

    public override KernelBootState DeriveState(KernelImage image, KernelCpuDescription description, KernelThunks thunks, KvmPvOps? pvOps) =>
        KernelBootCpu.Derive(description, KernelBuildInfo.Infer(image, thunks), pvOps);

    public override ImageFeatureNumbering NumberingOf(KernelImage image) => ImageFeatureNumbering.For(image, KernelBootRules.Linux2622);

    internal override void RunPasses(BootRun run)
    {
        var tables = run.Context.Tables;
        run.Run(BootPass.Alternatives, tables.Alternatives.Length, Linux2622Passes.Alternatives);
        run.Run(BootPass.SmpLocks, tables.SmpLocks.Length, Linux2622Passes.SmpLocks);
        run.Run(BootPass.Paravirt, tables.Paravirt.Length, Linux2622Passes.Paravirt);
    }
}

using System.Collections.Immutable;
using Altpatch.Code;
using Altpatch.Cpu;

namespace Altpatch.Images.Boot;

/// <summary>Linux 6.12 (6.12.118 with its stable backports): 14-byte relative <c>alt_instr</c> with <c>ft_flags</c>
/// (<c>ALT_FLAG_NOT</c>, <c>ALT_FLAG_DIRECT_CALL</c>: paravirt calls are alternatives since 6.8, no
/// <c>.parainstructions</c>), today's NOPs (longest 11 bytes), the text passes, then <c>alternative_instructions()</c>:
/// <c>apply_retpolines</c>, <c>apply_returns</c>, <c>apply_alternatives</c>, <c>callthunks_patch_builtin_calls</c>,
/// <c>apply_seal_endbr</c>, the SMP-lock switch; <c>runtime_const_init()</c> from <c>start_kernel()</c>
/// (<see cref="Linux612Passes"/>); then the static calls and keys the boot code sets (APIC driver, idle routine, LSM
/// hooks: <see cref="Linux612BootCalls"/>).</summary>
internal sealed class Linux612Line : KernelLine
{
    public override KernelBootRules Id => KernelBootRules.Linux612;

    public override string Key => "6.12";

    public override string Name => "Linux 6.12";

    public override string Reference => "6.12.118";

    public override ImmutableArray<AltInstrFormat> TableFormats { get; } = [AltInstrFormat.Relative14];

    public override FeatureNumbering? Numbering => FeatureNumbering.Linux612;

    public override ImmutableArray<BootPass> Passes { get; } =
    [
        BootPass.JumpLabels, BootPass.StaticCalls, BootPass.Ftrace, BootPass.PreemptDynamic,
        BootPass.Retpolines, BootPass.Returns, BootPass.Alternatives, BootPass.CallThunks, BootPass.IbtEndbr, BootPass.SmpLocks, BootPass.RuntimeConst,
        BootPass.BootCalls,
    ];

    /// <summary>What <see cref="KernelCommandLine"/> reads with the 6.12 rules (<see cref="KernelCommandLine.Parse(string, KernelBootRules)"/>):
    /// the options 6.1 reads, with 6.12's values and mechanisms (<c>retbleed=stuff</c>/<c>force</c>,
    /// <c>indirect_target_selection=stuff</c>, <c>spectre_bhi=vmexit</c>, <c>pti=</c>/<c>nopti</c> as early parameters).</summary>
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
        version is { Major: 6, Minor: 12 } && format is null or AltInstrFormat.Relative14;

    public override NopTable NopsFor(KernelImage image, CpuFeatures cpu) => image.Bitness == 64 ? NopTable.X86_64 : NopTable.X86_32;

    public override string KernelFunction(BootPass pass) => pass switch
    {
        BootPass.IbtEndbr => "apply_seal_endbr",
        _ => pass.KernelFunction(),
    };

    public override KernelBootState DeriveState(KernelImage image, KernelCpuDescription description, KernelThunks thunks, KvmPvOps? pvOps) =>
        KernelBootCpu612.Derive(image, description, thunks, pvOps);

    public override ImageFeatureNumbering NumberingOf(KernelImage image) => ImageFeatureNumbering.For612(image);

    /// <summary><c>dcache_init_early()</c>'s <c>runtime_const_init(shift, d_hash_shift)</c> and <c>(ptr, dentry_hashtable)</c>:
    /// the table is allocated at boot and its size follows the memory, so these immediates are left as built and are legal
    /// as any kernel address / shift. With call depth tracking (<c>retbleed=stuff</c>), the paddings a later static call
    /// may write the accounting thunk into (<see cref="Linux612CallThunks.PaddingSites"/>).</summary>
    internal override IEnumerable<KernelTextSite> BootValueSites(KernelImage image, ElfFile patched, BootContext ctx, TextPassContext? t,
        ImmutableArray<BootPassResult> passes)
    {
        int k = 0;
        foreach (var (sec, index, address, width) in Linux612Passes.RuntimeConstSites(image))
        {
            int n = k++;
            if (sec.Name is not ("runtime_shift_d_hash_shift" or "runtime_ptr_dentry_hashtable"))
                continue;
            var before = image.ReadBytes(address, width).ToArray();
            if (ReferenceEquals(image.Elf, patched))
                KernelPatchResult.Undo(passes, address, before);   // patched in place
            var after = patched.ReadBytes(address, width).ToArray();
            yield return new KernelTextSite(KernelSiteKind.RuntimeConst, n, address, width, before, after, Dynamic: true,
                [new KernelTextState(width == 8 ? "dentry_hashtable" : "d_hash_shift", KernelTextStateForm.BootValue, before),
                 new KernelTextState("as built (the boot-time value is not known offline)", KernelTextStateForm.Bytes, before)], [], 0,
                $"{sec.Name}[{index}], set by dcache_init_early()");
        }
        if (t?.Symbols is { } symbols)
        {
            foreach (var pad in Linux612CallThunks.PaddingSites(ctx, image.Elf, patched, symbols, passes))
                yield return pad;
        }
    }

    internal override void RunPasses(BootRun run)
    {
        var ctx = run.Context;
        var tables = ctx.Tables;
        run.RunTextPasses(KernelTextRules.Linux612);
        run.Run(BootPass.Retpolines, tables.Retpolines.Length, Linux612Passes.Retpolines);
        run.Run(BootPass.Returns, tables.Returns.Length, Linux612Passes.Returns);
        run.Run(BootPass.Alternatives, tables.Alternatives.Length, Linux612Passes.Alternatives);
        run.Run(BootPass.CallThunks, Linux612Passes.CallSiteCount(ctx.Image), Linux612Passes.CallThunks);
        run.Run(BootPass.IbtEndbr, Linux61Passes.IbtSealCount(ctx.Image), Linux612Passes.SealEndbr);
        run.Run(BootPass.SmpLocks, tables.SmpLocks.Length, Linux612Passes.SmpLocks);
        run.Run(BootPass.RuntimeConst, Linux612Passes.RuntimeConstCount(ctx.Image), Linux612Passes.RuntimeConsts);
        if (run.TextContext is { } t)
            run.Run(BootPass.BootCalls, Linux612BootCalls.Count(t), c => Linux612BootCalls.Plan(c, t));
    }
}

using System.Collections.Immutable;
using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>Which kernel's boot-time rules to apply to an image.</summary>
public enum KernelBootRules
{
    /// <summary>Linux 6.1 (6.1.176 with its backports: ITS, SRSO, RETBleed, BHI, …).</summary>
    Linux61,
    /// <summary>Linux 2.6.22, the seed's era: copy + <c>add_nops()</c>, the era's NOP tables, SMP locks to NOP, <c>paravirt_patch_default()</c>.</summary>
    Linux2622,
}

/// <summary>
/// Does the kernel's own boot-time patching on a kernel image: the passes of <c>alternative_instructions()</c> in
/// the kernel's order (6.1: <c>apply_paravirt</c>, <c>apply_retpolines</c>, <c>apply_returns</c>,
/// <c>apply_alternatives</c>, <c>apply_ibt_endbr</c>, then the SMP-lock switch to UP on one CPU), each planned as a <see cref="PatchPlan"/>
/// from the bytes the previous pass left and written through an <see cref="ImagePoker"/> into a copy of the ELF file.
/// </summary>
public static class KernelBootPatcher
{
    /// <summary>The rules for an image: 6.1 for a 6.1 kernel (12-byte relative <c>alt_instr</c>), 2.6.22 for the
    /// absolute-pointer layouts of the 2.6 era.</summary>
    /// <exception cref="KernelPatchException">Another kernel version: its rules are not implemented.</exception>
    public static KernelBootRules RulesFor(KernelImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var format = image.Tables.AltFormat;
        var v = image.Version;
        if (format is AltInstrFormat.AbsoluteByteCpuid or AltInstrFormat.AbsoluteWordCpuid)
            return KernelBootRules.Linux2622;
        if (v is { Major: 6, Minor: 1 } && format is null or AltInstrFormat.Relative12)
            return KernelBootRules.Linux61;
        if (v is null && format is AltInstrFormat.Relative12)
            return KernelBootRules.Linux61;
        throw new KernelPatchException(
            $"{image.Name}: {(v is null ? "unknown kernel version" : $"Linux {v.Release}")} with {format?.ShortName() ?? "no"} alt_instr: Altpatch implements the boot-time rules of Linux 6.1 (6.1.176) and of the 2.6.22 era only");
    }

    /// <summary>
    /// Patches a copy of <paramref name="image"/>'s ELF bytes for the machine <paramref name="description"/> describes:
    /// finds the thunks, infers the build options, derives the boot CPU (<see cref="KernelBootCpu.Derive"/>) and runs
    /// the passes. The image itself is not changed.
    /// </summary>
    /// <param name="image">The kernel image (bzImage or vmlinux).</param>
    /// <param name="description">The machine.</param>
    /// <param name="progress">Told each pass before it runs.</param>
    /// <returns>The patched ELF file and what each pass did.</returns>
    /// <exception cref="ImageFormatException">A table is malformed or points outside the code.</exception>
    /// <exception cref="PatchException">A site cannot be patched; the message names the site.</exception>
    /// <exception cref="KernelPatchException">The image cannot be patched as asked (version, numbering, KVM symbols).</exception>
    public static KernelPatchResult Patch(KernelImage image, KernelCpuDescription description, IProgress<BootPass>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(description);
        var thunks = KernelThunks.Find(image);
        var pvOps = description.Hypervisor == KernelHypervisor.Kvm
            ? KvmGuest.Plan(image, description.KvmFeatures, description.Cpus, description.Symbols)
            : KvmPvOps.None;
        var state = KernelBootCpu.Derive(description, KernelBuildInfo.Infer(image, thunks), pvOps);
        return Patch(image, state, thunks, KernelTextOptions.Default, progress);
    }

    /// <summary>
    /// Patches a copy of <paramref name="image"/>'s ELF bytes for <paramref name="state"/>. The image itself is not changed.
    /// </summary>
    /// <param name="image">The kernel image (bzImage or vmlinux).</param>
    /// <param name="state">The boot CPU (see <see cref="KernelBootCpu.Derive"/>).</param>
    /// <param name="progress">Told each pass before it runs.</param>
    /// <returns>The patched ELF file and what each pass did.</returns>
    /// <exception cref="ImageFormatException">A table is malformed or points outside the code (a replacement longer
    /// than its site is one of these: the tables refuse it when read).</exception>
    /// <exception cref="PatchException">A site cannot be patched (a thunk or <c>pv_ops</c> slot it needs cannot be
    /// located, an alternative's feature is beyond the numbering, …); the message names the site.</exception>
    /// <exception cref="KernelPatchException">The image's version has no implemented rules, or its feature numbering is not
    /// the one the rules need.</exception>
    public static KernelPatchResult Patch(KernelImage image, KernelBootState state, IProgress<BootPass>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        return Patch(image, state, KernelThunks.Find(image), progress);
    }

    /// <summary>Like <see cref="Patch(KernelImage, KernelBootState, IProgress{BootPass}?)"/> with thunks already found.</summary>
    /// <param name="image">The kernel image.</param>
    /// <param name="state">The boot CPU.</param>
    /// <param name="thunks">The image's thunks (<see cref="KernelThunks.Find"/>).</param>
    /// <param name="progress">Told each pass before it runs.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Patch(KernelImage, KernelBootState, IProgress{BootPass}?)"/>.</exception>
    /// <exception cref="PatchException">As for <see cref="Patch(KernelImage, KernelBootState, IProgress{BootPass}?)"/>.</exception>
    /// <exception cref="KernelPatchException">As for <see cref="Patch(KernelImage, KernelBootState, IProgress{BootPass}?)"/>.</exception>
    public static KernelPatchResult Patch(KernelImage image, KernelBootState state, KernelThunks thunks, IProgress<BootPass>? progress = null) =>
        Patch(image, state, thunks, KernelTextOptions.Default, progress);

    /// <summary>Like <see cref="Patch(KernelImage, KernelBootState, IProgress{BootPass}?)"/> with thunks already found and the
    /// text passes' symbols and options.</summary>
    /// <param name="image">The kernel image.</param>
    /// <param name="state">The boot CPU.</param>
    /// <param name="thunks">The image's thunks (<see cref="KernelThunks.Find"/>).</param>
    /// <param name="text">Symbols and options of the text passes (jump labels, static calls, ftrace, preempt mode).</param>
    /// <param name="progress">Told each pass before it runs.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Patch(KernelImage, KernelBootState, IProgress{BootPass}?)"/>, and a malformed jump,
    /// static call or mcount table.</exception>
    /// <exception cref="PatchException">As for <see cref="Patch(KernelImage, KernelBootState, IProgress{BootPass}?)"/>, and a static call site the kernel would BUG() on.</exception>
    /// <exception cref="KernelPatchException">As for <see cref="Patch(KernelImage, KernelBootState, IProgress{BootPass}?)"/>, and a symbol the preempt mode needs is missing.</exception>
    public static KernelPatchResult Patch(KernelImage image, KernelBootState state, KernelThunks thunks, KernelTextOptions text, IProgress<BootPass>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(thunks);
        ArgumentNullException.ThrowIfNull(text);
        var tables = image.Tables;   // read (and checked) from the unpatched bytes
        var rules = RulesFor(image);
        var copy = LargeBuffer.Copy(image.ElfBytes.Span);
        var work = ElfFile.Parse(copy, image.Elf.Name);
        var poker = new ImagePoker(work);
        var numbering = ImageFeatureNumbering.For(image, rules);
        var ctx = new BootContext(image, poker, state, thunks, NopsFor(image, rules, state.Features), numbering);

        var results = ImmutableArray.CreateBuilder<BootPassResult>();
        void Run(BootPass pass, int sites, Func<BootContext, PatchPlan> planner)
        {
            progress?.Report(pass);
            var plan = planner(ctx);
            poker.Apply(plan);
            results.Add(new BootPassResult(pass, sites, plan));
        }

        TextPassContext? tctx = null;
        if (rules == KernelBootRules.Linux61)
        {
            if (text.Enabled)
            {
                var symbols = text.Symbols ?? (image.TryGetSymbols(out var kallsyms) ? kallsyms : null);
                tctx = new TextPassContext(KernelTextTables.Read(image.Elf, ctx.Nops, symbols), symbols, KernelTextRules.Linux61, state.CommandLine);
                RunTextPasses(tctx, Run);
            }
            Run(BootPass.Paravirt, tables.Paravirt.Length, Linux61Passes.Paravirt);
            Run(BootPass.Retpolines, tables.Retpolines.Length, Linux61Passes.Retpolines);
            Run(BootPass.Returns, tables.Returns.Length, Linux61Passes.Returns);
            Run(BootPass.Alternatives, tables.Alternatives.Length, Linux61Passes.Alternatives);
            Run(BootPass.IbtEndbr, Linux61Passes.IbtSealCount(image), Linux61Passes.IbtEndbr);
            Run(BootPass.SmpLocks, tables.SmpLocks.Length, Linux61Passes.SmpLocks);
        }
        else
        {
            // 2.6.22 alternative_instructions(): alternatives, the SMP switch, then apply_paravirt().
            Run(BootPass.Alternatives, tables.Alternatives.Length, Linux2622Passes.Alternatives);
            Run(BootPass.SmpLocks, tables.SmpLocks.Length, Linux2622Passes.SmpLocks);
            Run(BootPass.Paravirt, tables.Paravirt.Length, Linux2622Passes.Paravirt);
        }
        var passes = results.ToImmutable();
        return new KernelPatchResult(image, work, state, thunks, passes, rules == KernelBootRules.Linux61 ? "Linux 6.1" : "Linux 2.6.22", numbering)
        {
            TextTables = tctx?.Tables,
            TextDecisions = tctx is null ? [] : [.. tctx.Decisions],
            TextSites = tctx is null ? [] : Linux61TextPasses.Sites(image, work, state, thunks, ctx.Nops, tctx, passes),
            Preempt = tctx?.PreemptResult,
        };
    }

    /// <summary>The writers of <c>setup_arch()</c> and <c>start_kernel()</c> before <c>alternative_instructions()</c>, in
    /// the kernel's order: <c>jump_label_init()</c>, <c>static_call_init()</c>, (<c>preempt=</c> while the command line is
    /// parsed), <c>ftrace_init()</c>, (<c>preempt_dynamic_init()</c> in <c>sched_init()</c>).</summary>
    private static void RunTextPasses(TextPassContext t, Action<BootPass, int, Func<BootContext, PatchPlan>> run)
    {
        var tables = t.Tables;
        run(BootPass.JumpLabels, tables.JumpEntries.Length, c => Linux61TextPasses.JumpLabels(c, t));
        run(BootPass.StaticCalls, tables.StaticCalls.Length, c => Linux61TextPasses.StaticCallInit(c, t));
        if (t.Preempt is not null)
            run(BootPass.PreemptDynamic, t.Rules.PreemptCalls.Length, c => Linux61TextPasses.PreemptDynamic(c, t));
        run(BootPass.Ftrace, tables.Mcount.Length, c => Linux61TextPasses.Ftrace(c, t));
        if (t.Preempt is null)
            run(BootPass.PreemptDynamic, t.Rules.PreemptCalls.Length, c => Linux61TextPasses.PreemptDynamic(c, t));
    }

    /// <summary>The NOP table the kernel pads with: 6.1's <c>x86_nops[]</c> for the image's bitness; in the 2.6.22 era
    /// the table <c>find_nop_table()</c> picks for the CPU.</summary>
    internal static NopTable NopsFor(KernelImage image, KernelBootRules rules, CpuFeatures cpu) => rules switch
    {
        KernelBootRules.Linux2622 => NopTable.FindSeedEra(cpu.Vendor, cpu.Family, image.Bitness == 64),
        _ => image.Bitness == 64 ? NopTable.X86_64Linux61 : NopTable.X86_32,
    };
}

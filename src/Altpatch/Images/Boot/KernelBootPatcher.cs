using System.Collections.Immutable;
using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>Which kernel line's boot-time rules to apply to an image (the identifier of a <see cref="KernelLine"/>).</summary>
public enum KernelBootRules
{
    /// <summary>Linux 6.1 (6.1.176 with its backports: ITS, SRSO, RETBleed, BHI, …).</summary>
    Linux61,
    /// <summary>Linux 2.6.22, the seed's era: copy + <c>add_nops()</c>, the era's NOP tables, SMP locks to NOP, <c>paravirt_patch_default()</c>.</summary>
    Linux2622,
    /// <summary>Linux 6.12 (6.12.118 with its backports): 14-byte <c>alt_instr</c> with <c>ft_flags</c>, paravirt calls as
    /// alternatives, call depth tracking, ENDBR sealing, runtime constants.</summary>
    Linux612,
}

/// <summary>
/// Does the kernel's own boot-time patching on a kernel image: the passes of <c>alternative_instructions()</c> in
/// the kernel's order (6.1: <c>apply_paravirt</c>, <c>apply_retpolines</c>, <c>apply_returns</c>,
/// <c>apply_alternatives</c>, <c>apply_ibt_endbr</c>, then the SMP-lock switch to UP on one CPU), each planned as a <see cref="PatchPlan"/>
/// from the bytes the previous pass left and written through an <see cref="ImagePoker"/> into a copy of the ELF file.
/// </summary>
public static class KernelBootPatcher
{
    /// <summary>The rules for an image: its kernel line's (<see cref="KernelLines.For"/>), from its version and table formats.</summary>
    /// <exception cref="KernelPatchException">No line has rules for the image's version: the message names it and the lines supported.</exception>
    public static KernelBootRules RulesFor(KernelImage image) => KernelLines.For(image).Id;

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
    public static KernelPatchResult Patch(KernelImage image, KernelCpuDescription description, IProgress<BootPass>? progress = null) =>
        Patch(image, description, null, progress);

    /// <summary>Like <see cref="Patch(KernelImage, KernelCpuDescription, IProgress{BootPass}?)"/> with the rules of
    /// <paramref name="rules"/> (null: the image's own line, <see cref="KernelLines.For"/>).</summary>
    /// <param name="image">The kernel image (bzImage or vmlinux).</param>
    /// <param name="description">The machine.</param>
    /// <param name="rules">The kernel line to apply (<c>--rules</c>); null for the image's own.</param>
    /// <param name="progress">Told each pass before it runs.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Patch(KernelImage, KernelCpuDescription, IProgress{BootPass}?)"/>.</exception>
    /// <exception cref="PatchException">As for <see cref="Patch(KernelImage, KernelCpuDescription, IProgress{BootPass}?)"/>.</exception>
    /// <exception cref="KernelPatchException">As for <see cref="Patch(KernelImage, KernelCpuDescription, IProgress{BootPass}?)"/>.</exception>
    public static KernelPatchResult Patch(KernelImage image, KernelCpuDescription description, KernelLine? rules, IProgress<BootPass>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(description);
        var line = rules ?? KernelLines.For(image);
        var thunks = KernelThunks.Find(image);
        var state = DeriveState(image, description, thunks, line);
        return Patch(image, state, thunks, KernelTextOptions.Default with { Rules = rules }, progress);
    }

    /// <summary>
    /// Like <see cref="Patch(KernelImage, KernelCpuDescription, KernelLine?, IProgress{BootPass}?)"/>, but writes
    /// <paramref name="image"/>'s own ELF bytes instead of a copy of them: no second image-sized buffer (what
    /// <c>altpatch kernel patch</c> does when it writes no report). The passes and the patched bytes are the same (a
    /// pass that reads the image's code as built reads it with the earlier plans undone). Afterwards the image holds the
    /// patched file (<see cref="KernelPatchResult.Patched"/> is its ELF file); the result's <see cref="KernelPatchResult.Sites"/>
    /// and <see cref="KernelPatchResult.TextSites"/> give the bytes before the passes rebuilt from the plans
    /// (<see cref="KernelPatchResult.ReadOriginal"/>).
    /// </summary>
    /// <param name="image">The kernel image; its bytes are patched.</param>
    /// <param name="description">The machine.</param>
    /// <param name="rules">The kernel line to apply (<c>--rules</c>); null for the image's own.</param>
    /// <param name="progress">Told each pass before it runs.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Patch(KernelImage, KernelCpuDescription, IProgress{BootPass}?)"/>.</exception>
    /// <exception cref="PatchException">As for <see cref="Patch(KernelImage, KernelCpuDescription, IProgress{BootPass}?)"/>;
    /// the passes before the failing one have been written into the image.</exception>
    /// <exception cref="KernelPatchException">As for <see cref="Patch(KernelImage, KernelCpuDescription, IProgress{BootPass}?)"/>.</exception>
    public static KernelPatchResult PatchInPlace(KernelImage image, KernelCpuDescription description, KernelLine? rules = null, IProgress<BootPass>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(description);
        var line = rules ?? KernelLines.For(image);
        var thunks = KernelThunks.Find(image);
        var state = DeriveState(image, description, thunks, line);
        return Patch(image, state, thunks, KernelTextOptions.Default with { Rules = rules }, progress, inPlace: true);
    }

    /// <summary>Like <see cref="PatchInPlace(KernelImage, KernelCpuDescription, KernelLine?, IProgress{BootPass}?)"/> for a
    /// boot CPU already derived, with thunks found and the text passes' options (what <c>kernel verify</c> predicts with).</summary>
    /// <param name="image">The kernel image; its bytes are patched.</param>
    /// <param name="state">The boot CPU.</param>
    /// <param name="thunks">The image's thunks (<see cref="KernelThunks.Find"/>).</param>
    /// <param name="text">Symbols and options of the text passes.</param>
    /// <param name="progress">Told each pass before it runs.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Patch(KernelImage, KernelBootState, KernelThunks, KernelTextOptions, IProgress{BootPass}?)"/>.</exception>
    /// <exception cref="PatchException">As for <see cref="Patch(KernelImage, KernelBootState, KernelThunks, KernelTextOptions, IProgress{BootPass}?)"/>;
    /// the passes before the failing one have been written into the image.</exception>
    /// <exception cref="KernelPatchException">As for <see cref="Patch(KernelImage, KernelBootState, KernelThunks, KernelTextOptions, IProgress{BootPass}?)"/>.</exception>
    public static KernelPatchResult PatchInPlace(KernelImage image, KernelBootState state, KernelThunks thunks, KernelTextOptions text, IProgress<BootPass>? progress = null) =>
        Patch(image, state, thunks, text, progress, inPlace: true);

    /// <summary>The boot CPU for <paramref name="description"/> under <paramref name="line"/>'s rules, with KVM's pv_ops
    /// choices when the machine is a KVM guest.</summary>
    /// <param name="image">The image.</param>
    /// <param name="description">The machine.</param>
    /// <param name="thunks">The image's thunks.</param>
    /// <param name="line">The kernel line (null: the image's own).</param>
    /// <exception cref="KernelPatchException">No rules for the image, or KVM symbols missing.</exception>
    public static KernelBootState DeriveState(KernelImage image, KernelCpuDescription description, KernelThunks thunks, KernelLine? line = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(description);
        ArgumentNullException.ThrowIfNull(thunks);
        line ??= KernelLines.For(image);
        var pvOps = description.Hypervisor == KernelHypervisor.Kvm
            ? KvmGuest.Plan(image, description.KvmFeatures, description.Cpus, description.Symbols)
            : KvmPvOps.None;
        return line.DeriveState(image, description, thunks, pvOps);
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
    public static KernelPatchResult Patch(KernelImage image, KernelBootState state, KernelThunks thunks, KernelTextOptions text, IProgress<BootPass>? progress = null) =>
        Patch(image, state, thunks, text, progress, inPlace: false);

    private static KernelPatchResult Patch(KernelImage image, KernelBootState state, KernelThunks thunks, KernelTextOptions text, IProgress<BootPass>? progress, bool inPlace)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(thunks);
        ArgumentNullException.ThrowIfNull(text);
        _ = image.Tables;   // read (and checked) from the unpatched bytes
        var line = text.Rules ?? KernelLines.For(image);
        var numbering = line.NumberingOf(image);
        var work = inPlace ? image.Elf : ElfFile.Parse(LargeBuffer.Copy(image.ElfBytes.Span), image.Elf.Name);
        var poker = new ImagePoker(work);
        var ctx = new BootContext(image, poker, state, thunks, line.NopsFor(image, state.Features), numbering)
        {
            InPlaceWrites = inPlace ? [] : null,
        };

        var results = ImmutableArray.CreateBuilder<BootPassResult>();
        void Run(BootPass pass, int sites, Func<BootContext, PatchPlan> planner)
        {
            progress?.Report(pass);
            var plan = planner(ctx);
            poker.Apply(plan);
            ctx.InPlaceWrites?.Add(plan);
            results.Add(new BootPassResult(pass, sites, plan));
        }

        var run = new BootRun(ctx, text, Run);
        line.RunPasses(run);
        var tctx = run.TextContext;
        var passes = results.ToImmutable();
        var nops = ctx.Nops;
        return new KernelPatchResult(image, work, state, thunks, passes, line.Name, numbering)
        {
            Line = line,
            Warning = text.Rules is { } forced ? KernelLines.ForcedWarning(image, forced) : null,
            TextTables = tctx?.Tables,
            TextDecisions = tctx is null ? [] : [.. tctx.Decisions],
            // Built on first use (neither the image nor the patched copy changes any more): kernel patch without a
            // report never needs them. In place, the bytes before are rebuilt from the plans.
            TextSitesFactory = () =>
                [.. tctx is null ? [] : Linux61TextPasses.Sites(image, work, state, thunks, nops, tctx, passes), .. line.BootValueSites(image, work, ctx, tctx, passes)],
            InPlace = inPlace,
            Preempt = tctx?.PreemptResult,
        };
    }

    /// <summary>The NOP table the kernel pads with: that of <paramref name="rules"/>' line.</summary>
    internal static NopTable NopsFor(KernelImage image, KernelBootRules rules, CpuFeatures cpu) => KernelLines.Of(rules).NopsFor(image, cpu);
}

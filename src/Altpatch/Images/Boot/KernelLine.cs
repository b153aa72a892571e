using System.Collections.Immutable;
using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>
/// One kernel line's boot-time rules as one object: the passes in the kernel's order and the kernel function each
/// follows, the feature numbering its <c>.altinstructions</c> use, its NOP table, the table formats it reads, the
/// command-line options it knows, and how it derives the boot CPU. <see cref="KernelLines.For"/> picks the line from
/// an image's version and table formats; adding a kernel line is adding one such object to <see cref="KernelLines.All"/>.
/// </summary>
public abstract class KernelLine
{
    /// <summary>The identifier (also what <c>KernelPatchResult.Rules</c> reports through <see cref="Name"/>).</summary>
    public abstract KernelBootRules Id { get; }

    /// <summary>The key <c>--rules</c> takes: <c>6.12</c>, <c>6.1</c>, <c>2.6.22</c>.</summary>
    public abstract string Key { get; }

    /// <summary>The name in reports, e.g. <c>Linux 6.1</c>.</summary>
    public abstract string Name { get; }

    /// <summary>The exact kernel the rules were written from and checked against, e.g. <c>6.1.176</c>.</summary>
    public abstract string Reference { get; }

    /// <summary>The <c>struct alt_instr</c> layouts the line's images use.</summary>
    public abstract ImmutableArray<AltInstrFormat> TableFormats { get; }

    /// <summary>The feature numbering of the line (generated from its <c>cpufeatures.h</c>); null when it is read from
    /// the image by name (2.6.22: no generated table).</summary>
    public abstract FeatureNumbering? Numbering { get; }

    /// <summary>The passes, in the order the kernel runs them (the text passes first where the line has them).</summary>
    public abstract ImmutableArray<BootPass> Passes { get; }

    /// <summary>The kernel command-line options the line's rules read (the others are ignored, and reported).</summary>
    public abstract ImmutableArray<string> CommandLineOptions { get; }

    /// <summary>A command line read as this line's kernel reads it (<see cref="KernelCommandLine.Parse(string, KernelBootRules)"/>;
    /// the derivation re-reads any given command line this way).</summary>
    /// <param name="text">The command line.</param>
    public KernelCommandLine ReadCommandLine(string text) => KernelCommandLine.Parse(text, Id);

    /// <summary>Whether the line's text passes (jump labels, static calls, ftrace, preempt) run.</summary>
    public virtual bool HasTextPasses => false;

    /// <summary>Whether an image of version <paramref name="version"/> (null: no banner) with <c>alt_instr</c> layout
    /// <paramref name="format"/> (null: no <c>.altinstructions</c>) belongs to this line.</summary>
    public abstract bool Matches(KernelVersion? version, AltInstrFormat? format);

    /// <summary>The NOP table the kernel pads with (<c>x86_nops[]</c>, or the era's table for the CPU).</summary>
    public abstract NopTable NopsFor(KernelImage image, CpuFeatures cpu);

    /// <summary>The kernel function a pass follows in this line (<c>apply_seal_endbr</c> in 6.12, <c>apply_ibt_endbr</c> in 6.1).</summary>
    public virtual string KernelFunction(BootPass pass) => pass.KernelFunction();

    /// <summary>The boot CPU for <paramref name="description"/>: the line's <c>identify_boot_cpu()</c>,
    /// <c>cpu_select_mitigations()</c> and the rest of what sets the features its alternatives test.</summary>
    /// <param name="image">The image (its build options are inferred from it).</param>
    /// <param name="description">The machine.</param>
    /// <param name="thunks">The image's thunks.</param>
    /// <param name="pvOps">KVM's pv_ops choices, or null.</param>
    public abstract KernelBootState DeriveState(KernelImage image, KernelCpuDescription description, KernelThunks thunks, KvmPvOps? pvOps);

    /// <summary>The image's feature numbering under these rules.</summary>
    /// <exception cref="KernelPatchException">The image's names contradict the line's numbering.</exception>
    public abstract ImageFeatureNumbering NumberingOf(KernelImage image);

    /// <summary>Sites besides the text passes' whose value the running kernel decides from what no image holds (6.12's
    /// dentry hash runtime constants; with call depth tracking, the accounting thunks a later static call writes into
    /// function paddings), as dynamic text sites with their legal values; none by default.</summary>
    /// <param name="image">The image as built.</param>
    /// <param name="patched">The patched ELF (the image's own when patched in place).</param>
    /// <param name="ctx">The context the passes ran in.</param>
    /// <param name="t">The text passes' context (symbols), or null.</param>
    /// <param name="passes">The passes' results: in place, the bytes before are rebuilt from their plans.</param>
    internal virtual IEnumerable<KernelTextSite> BootValueSites(KernelImage image, ElfFile patched, BootContext ctx, TextPassContext? t,
        ImmutableArray<BootPassResult> passes) => [];

    /// <summary>Runs the passes in order through <paramref name="run"/>.</summary>
    internal abstract void RunPasses(BootRun run);

    /// <inheritdoc/>
    public override string ToString() => $"{Name} ({Reference})";
}

/// <summary>One run of a line's passes over one image: the context, the text options and the recorder of each pass.</summary>
internal sealed class BootRun(BootContext ctx, KernelTextOptions text, Action<BootPass, int, Func<BootContext, PatchPlan>> run)
{
    /// <summary>The passes' context.</summary>
    public BootContext Context { get; } = ctx;

    /// <summary>Symbols and options of the text passes.</summary>
    public KernelTextOptions Text { get; } = text;

    /// <summary>The text passes' state, when they ran.</summary>
    public TextPassContext? TextContext { get; set; }

    /// <summary>Plans a pass, writes it and records it.</summary>
    public void Run(BootPass pass, int sites, Func<BootContext, PatchPlan> planner) => run(pass, sites, planner);

    /// <summary>The writers of <c>setup_arch()</c> and <c>start_kernel()</c> before <c>alternative_instructions()</c>, in
    /// the kernel's order: <c>jump_label_init()</c>, <c>static_call_init()</c>, (<c>preempt=</c> while the command line is
    /// parsed), <c>ftrace_init()</c>, (<c>preempt_dynamic_init()</c> in <c>sched_init()</c>).</summary>
    public void RunTextPasses(KernelTextRules rules)
    {
        if (!Text.Enabled)
            return;
        var image = Context.Image;
        var symbols = Text.Symbols ?? (image.TryGetSymbols(out var kallsyms) ? kallsyms : null);
        var t = new TextPassContext(KernelTextTables.Read(image.Elf, Context.Nops, symbols), symbols, rules, Context.State.CommandLine);
        TextContext = t;
        var tables = t.Tables;
        Run(BootPass.JumpLabels, tables.JumpEntries.Length, c => Linux61TextPasses.JumpLabels(c, t));
        Run(BootPass.StaticCalls, tables.StaticCalls.Length, c => Linux61TextPasses.StaticCallInit(c, t));
        if (t.Preempt is not null)
            Run(BootPass.PreemptDynamic, t.Rules.PreemptCalls.Length, c => Linux61TextPasses.PreemptDynamic(c, t));
        Run(BootPass.Ftrace, tables.Mcount.Length, c => Linux61TextPasses.Ftrace(c, t));
        if (t.Preempt is null)
            Run(BootPass.PreemptDynamic, t.Rules.PreemptCalls.Length, c => Linux61TextPasses.PreemptDynamic(c, t));
    }
}

/// <summary>The kernel lines Altpatch has rules for, and the choice of one for an image.</summary>
public static class KernelLines
{
    /// <summary>Linux 6.1 (6.1.176).</summary>
    public static KernelLine Linux61 { get; } = new Linux61Line();

    /// <summary>Linux 6.12 (6.12.118).</summary>
    public static KernelLine Linux612 { get; } = new Linux612Line();

    /// <summary>Linux 2.6.22, the seed's era.</summary>
    public static KernelLine Linux2622 { get; } = new Linux2622Line();

    /// <summary>Every line, newest first: the order they are matched in.</summary>
    public static ImmutableArray<KernelLine> All { get; } = [Linux612, Linux61, Linux2622];

    /// <summary>The lines as a list for messages: <c>Linux 6.12 (6.12.118), Linux 6.1 (6.1.176), Linux 2.6.22 (...)</c>.</summary>
    public static string Supported => string.Join(", ", All.Select(l => l.ToString()));

    /// <summary>The line of <paramref name="image"/>, from its version and <c>alt_instr</c> layout.</summary>
    /// <exception cref="KernelPatchException">No line matches: the message names the version and the supported lines.</exception>
    public static KernelLine For(KernelImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var format = image.Tables.AltFormat;
        var v = image.Version;
        foreach (var line in All)
        {
            if (line.Matches(v, format))
                return line;
        }
        throw new KernelPatchException(
            $"{image.Name}: {(v is null ? "unknown kernel version" : $"Linux {v.Release}")} with {format?.ShortName() ?? "no"} alt_instr: no boot-time rules for this kernel line; Altpatch implements {Supported} (--rules LINE forces one, unverified)");
    }

    /// <summary>The line <c>--rules</c> names: its key (<c>6.12</c>), its name (<c>Linux 6.12</c>) or its enum name.</summary>
    /// <exception cref="KernelPatchException">No such line; the message lists them.</exception>
    public static KernelLine Find(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var s = name.Trim();
        foreach (var line in All)
        {
            if (string.Equals(s, line.Key, StringComparison.OrdinalIgnoreCase) || string.Equals(s, line.Name, StringComparison.OrdinalIgnoreCase)
                || string.Equals(s, line.Id.ToString(), StringComparison.OrdinalIgnoreCase))
                return line;
        }
        throw new KernelPatchException($"no kernel line '{name}': the lines are {string.Join(", ", All.Select(l => l.Key))}");
    }

    /// <summary>The line of an identifier.</summary>
    public static KernelLine Of(KernelBootRules id) => All.First(l => l.Id == id);

    /// <summary>The warning a forced line carries when it is not the image's own (or the image has none).</summary>
    public static string? ForcedWarning(KernelImage image, KernelLine forced)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(forced);
        KernelLine? own = null;
        try
        {
            own = For(image);
        }
        catch (KernelPatchException)
        {
        }
        if (own == forced)
            return null;
        var v = image.Version;
        return $"--rules {forced.Key}: the {forced.Name} rules applied to {(v is null ? "an image of unknown version" : $"Linux {v.Release}")}"
            + (own is null ? ", which has no rules of its own" : $", whose own rules are {own.Name}") + ": the result is unverified";
    }
}

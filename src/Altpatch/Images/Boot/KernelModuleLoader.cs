using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Text;
using Altpatch.Code;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>A module as the loader leaves it: the linked module (<see cref="KernelModuleLink"/>) patched by
/// <c>module_finalize()</c>, <c>ftrace_module_init()</c> and the <c>MODULE_STATE_COMING</c> notifiers.</summary>
public sealed class KernelModuleResult
{
    internal KernelModuleResult(KernelPatchResult kernel, KernelModuleLink link, ElfFile patched, ImmutableArray<BootPassResult> passes,
        ImmutableArray<KernelTextSite> textSites, ImmutableArray<string> decisions)
    {
        Kernel = kernel;
        Link = link;
        Patched = patched;
        Passes = passes;
        TextSites = textSites;
        Decisions = decisions;
    }

    /// <summary>The kernel the module was loaded into, as its own boot left it.</summary>
    public KernelPatchResult Kernel { get; }

    /// <summary>The module linked at its load addresses, before the passes.</summary>
    public KernelModuleLink Link { get; }

    /// <summary>The module as loaded: the linked ELF file with every pass applied (same size and layout).</summary>
    public ElfFile Patched { get; }

    /// <summary>The passes in the order the kernel runs them.</summary>
    public ImmutableArray<BootPassResult> Passes { get; }

    /// <summary>The module's jump labels, static calls and mcount sites after loading, with their legal run-time states.</summary>
    public ImmutableArray<KernelTextSite> TextSites { get; }

    /// <summary>One line per decision, in the order taken.</summary>
    public ImmutableArray<string> Decisions { get; }

    /// <summary>The kernel function that runs <paramref name="pass"/> on a module of this kernel's line
    /// (<c>alternatives_smp_module_add</c>, <c>ftrace_module_init</c>, <c>callthunks_patch_module_calls</c>, the notifiers;
    /// the boot's function for the passes <c>module_finalize()</c> shares with the boot).</summary>
    public string KernelFunction(BootPass pass) => pass switch
    {
        BootPass.SmpLocks => "alternatives_smp_module_add",
        BootPass.Ftrace => "ftrace_module_init",
        BootPass.JumpLabels => "jump_label_add_module",
        BootPass.StaticCalls => "static_call_add_module",
        BootPass.CallThunks => "callthunks_patch_module_calls",
        _ => Kernel.Line.KernelFunction(pass),
    };
}

/// <summary>
/// What the kernel does to a module between relocating it and running its init function (6.1.176,
/// <c>load_module()</c>): <c>module_finalize()</c> (<c>arch/x86/kernel/module.c</c>: <c>apply_paravirt</c>,
/// <c>apply_retpolines</c>, <c>apply_returns</c>, <c>apply_alternatives</c>, <c>apply_ibt_endbr</c>,
/// <c>alternatives_smp_module_add</c>, the same passes as at boot, on the module's own tables), then
/// <c>ftrace_module_init()</c> (mcount sites to NOPs), then the <c>MODULE_STATE_COMING</c> notifiers
/// <c>jump_label_add_module()</c> and <c>static_call_add_module()</c>. Each pass is planned on the bytes the previous
/// one left and written by an <see cref="ImagePoker"/> into a copy of the linked module.
/// </summary>
public static class KernelModuleLoader
{
    /// <summary>Checks that a module was built for the image: its <c>vermagic</c> is the string the kernel compares it
    /// with (<c>VERMAGIC_STRING</c>, which the image holds in its read-only data).</summary>
    /// <exception cref="KernelModuleException">The module has no vermagic or another build's.</exception>
    public static void CheckVermagic(KernelImage image, KernelModule module)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(module);
        if (module.Vermagic is not { Length: > 0 } vm)
            throw new KernelModuleException($"{module.FileName}: no vermagic in {KernelModule.ModinfoSection}: the kernel refuses the module (\"no symbol version\"/\"bad vermagic\")");
        var needle = Encoding.ASCII.GetBytes(vm + "\0");
        bool found = false;
        foreach (var s in image.Elf.Sections)
        {
            if (s.IsAllocated && !s.IsExecutable && s.HasFileBytes && s.Size > 0 && image.Elf.SectionBytes(s).Span.IndexOf(needle) >= 0)
            {
                found = true;
                break;
            }
        }
        if (!found)
            throw new KernelModuleException($"{module.FileName}: vermagic '{vm.TrimEnd()}' is not {image.Name}'s ({image.Version?.Release ?? "unknown release"}): a module of another build (the kernel refuses it: \"disagrees about version of symbol module_layout\" / \"version magic\")");
    }

    /// <summary>A resolver of undefined symbols for <see cref="KernelModuleLinker.Link"/>: the kernel's global symbols
    /// (kallsyms at the runtime address), then the given modules' exports.</summary>
    /// <param name="kernel">The kernel's symbols where it runs.</param>
    /// <param name="modules">Modules already linked (the module's dependencies).</param>
    public static Func<string, (ulong Address, string From)?> Resolver(KernelSymbols kernel, IEnumerable<KernelModuleLink> modules)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(modules);
        var deps = modules.ToList();
        return name =>
        {
            foreach (var sym in kernel.Named(name))
            {
                if (sym.IsGlobal)          // per-CPU variables are typed A on x86-64
                    return (sym.Address, "kernel");
            }
            foreach (var d in deps)
            {
                if (d.Exports.TryGetValue(name, out var a))
                    return (a, d.Module.Name);
            }
            return null;
        };
    }

    /// <summary>Loads a linked module into the kernel <paramref name="kernel"/> describes (the kernel patched for the machine
    /// at its runtime address, e.g. <c>KernelTextVerifier.Predict</c>).</summary>
    /// <param name="kernel">The kernel as its boot left it.</param>
    /// <param name="link">The module, linked where it was loaded (against <paramref name="kernel"/>'s image).</param>
    /// <param name="commandLine">The kernel command line (the text passes' options); null: the one <paramref name="kernel"/> was derived with.</param>
    /// <exception cref="ImageFormatException">A table of the module is malformed.</exception>
    /// <exception cref="PatchException">A site cannot be patched; the message names it.</exception>
    /// <exception cref="KernelPatchException">The kernel has no Linux 6.1 or 6.12 rules.</exception>
    public static KernelModuleResult Load(KernelPatchResult kernel, KernelModuleLink link, KernelCommandLine? commandLine = null) =>
        Load(kernel, link, [], commandLine);

    /// <summary>Like <see cref="Load(KernelPatchResult, KernelModuleLink, KernelCommandLine?)"/> with the modules loaded before
    /// this one (its dependencies): 6.12's call depth tracking aims a call into another module at the thunk in that
    /// module's padding (<c>within_module_coretext()</c>), which it reads from them.</summary>
    /// <param name="kernel">The kernel as its boot left it.</param>
    /// <param name="link">The module, linked where it was loaded (against <paramref name="kernel"/>'s image).</param>
    /// <param name="loaded">The modules already loaded (linked), for calls into them.</param>
    /// <param name="commandLine">The kernel command line (the text passes' options); null: the one <paramref name="kernel"/> was derived with.</param>
    /// <exception cref="ImageFormatException">A table of the module is malformed.</exception>
    /// <exception cref="PatchException">A site cannot be patched; the message names it.</exception>
    /// <exception cref="KernelPatchException">The kernel has no Linux 6.1 or 6.12 rules.</exception>
    public static KernelModuleResult Load(KernelPatchResult kernel, KernelModuleLink link, IEnumerable<KernelModuleLink> loaded, KernelCommandLine? commandLine = null)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(link);
        ArgumentNullException.ThrowIfNull(loaded);
        var image = kernel.Image;
        var rules = KernelBootPatcher.RulesFor(image);
        if (rules is not (KernelBootRules.Linux61 or KernelBootRules.Linux612))
            throw new KernelPatchException($"{image.Name}: module loading is implemented for Linux 6.1 and 6.12 only");
        bool v612 = rules == KernelBootRules.Linux612;
        var module = link.Elf;
        var tables = KernelPatchTables.Read(module, image.Version).WithPvOps(image.Tables.PvOps);
        var work = ElfFile.Parse(module.Bytes.ToArray(), module.Name);
        var poker = new ImagePoker(work);
        var (textStart, textEnd) = ModuleText(module);
        var thunks = kernel.Thunks.WithText(textStart, textEnd);
        var nops = KernelBootPatcher.NopsFor(image, rules, kernel.State.Features);
        var ctx = new BootContext(image, poker, kernel.State, thunks, nops, kernel.Numbering, tables, module);
        var symbols = image.TryGetSymbols(out var ks) ? ks : null;
        var t = new TextPassContext(KernelTextTables.ReadModule(module, nops, image.Elf), symbols, v612 ? KernelTextRules.Linux612 : KernelTextRules.Linux61,
            commandLine ?? kernel.State.CommandLine);
        var others = loaded.Select(l => l.Elf).ToList();

        var results = ImmutableArray.CreateBuilder<BootPassResult>();
        void Run(BootPass pass, int sites, Func<BootContext, PatchPlan> planner)
        {
            var plan = planner(ctx);
            poker.Apply(plan);
            results.Add(new BootPassResult(pass, sites, plan));
        }

        int ibtSeals = module.FindSection(Linux61Passes.IbtSealTable) is { } ibt ? (int)(ibt.Size / 4) : 0;
        if (!v612)
        {
            // 6.1 module_finalize(), in its order
            Run(BootPass.Paravirt, tables.Paravirt.Length, Linux61Passes.Paravirt);
            Run(BootPass.Retpolines, tables.Retpolines.Length, Linux61Passes.Retpolines);
            Run(BootPass.Returns, tables.Returns.Length, Linux61Passes.Returns);
            Run(BootPass.Alternatives, tables.Alternatives.Length, Linux61Passes.Alternatives);
            Run(BootPass.IbtEndbr, ibtSeals, Linux61Passes.IbtEndbr);
        }
        else
        {
            // 6.12 module_finalize(): its_init_mod(); apply_fineibt() (nothing: Debian's GCC build has no .cfi_sites);
            // apply_retpolines(); its_fini_mod(); apply_returns(); apply_alternatives() (paravirt calls are alternatives);
            // callthunks_patch_module_calls(); apply_seal_endbr(); alternatives_smp_module_add()
            Run(BootPass.Retpolines, tables.Retpolines.Length, Linux612Passes.Retpolines);
            Run(BootPass.Returns, tables.Returns.Length, Linux612Passes.Returns);
            Run(BootPass.Alternatives, tables.Alternatives.Length, Linux612Passes.Alternatives);
            Run(BootPass.CallThunks, Linux612CallThunks.CallSiteCount(module), c => Linux612CallThunks.PatchModule(c, kernel, others, t.Decisions));
            Run(BootPass.IbtEndbr, ibtSeals, Linux612Passes.SealEndbr);
        }
        if (textEnd > textStart)                                // if (locks && text) alternatives_smp_module_add(...)
            Run(BootPass.SmpLocks, tables.SmpLocks.Length, Linux61Passes.SmpLocks);
        // ftrace_module_init(), then the MODULE_STATE_COMING notifiers (jump labels: priority 1, static calls: 0)
        Run(BootPass.Ftrace, t.Tables.Mcount.Length, c => Linux61TextPasses.Ftrace(c, t, link.Module.SourcePath ?? link.Module.FileName));
        Run(BootPass.JumpLabels, t.Tables.JumpEntries.Length, c => JumpLabels(c, t, module));
        Run(BootPass.StaticCalls, t.Tables.StaticCalls.Length, c => StaticCalls(c, t, kernel, module, others));

        var passes = results.ToImmutable();
        var sites = Linux61TextPasses.Sites(module, image.Bitness, work, kernel.State, thunks, nops, t, passes);
        return new KernelModuleResult(kernel, link, work, passes, sites, [.. t.Decisions]);
    }

    /// <summary>The module's core text (<c>mod-&gt;mem[MOD_TEXT]</c> in 6.12, <c>core_layout</c>'s text in 6.1): from the
    /// first to the end of the last executable section the loader keeps (not <c>.init.*</c>); (0, 0) without one.</summary>
    internal static (ulong Start, ulong End) ModuleText(ElfFile module)
    {
        ulong start = ulong.MaxValue, end = 0;
        foreach (var s in module.Sections)
        {
            if (!s.IsAllocated || !s.IsExecutable || s.Size == 0 || s.Address == 0 || s.Name.StartsWith(".init", StringComparison.Ordinal))
                continue;
            start = Math.Min(start, s.Address);
            end = Math.Max(end, s.EndAddress);
        }
        return end == 0 ? (0, 0) : (start, end);
    }

    private static bool InModule(ElfFile module, ulong address) =>
        module.Sections.Any(s => s.IsAllocated && s.Size > 0 && s.Address != 0 && s.Contains(address));

    /// <summary>
    /// <c>jump_label_add_module()</c>: a key of the module keeps its entries as built; for a key of the kernel, an entry
    /// whose type (<c>static_key_enabled(key) ^ branch</c>) differs from its initial type (<c>static_key_type(key) ^
    /// branch</c>) is updated (<c>__jump_label_update()</c>): the <c>jmp</c> to its target or the NOP of its size. The
    /// kernel's keys are read as the image holds them (the running kernel may have flipped them since: those sites are
    /// dynamic).
    /// </summary>
    private static PatchPlan JumpLabels(BootContext ctx, TextPassContext t, ElfFile module)
    {
        var entries = t.Tables.JumpEntries;
        if (entries.IsEmpty)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        var kernel = ctx.Image.Elf;
        Span<byte> b = stackalloc byte[5];
        int own = 0, kernelKeys = 0, updated = 0;
        foreach (var e in entries)
        {
            if (InModule(module, e.Key))
            {
                own++;
                continue;
            }
            kernelKeys++;
            bool enabled = Linux61TextPasses.KeyEnabled(ctx, e.Key);
            bool type = kernel.TryReadPointer(e.Key + 8, out ulong kt) && (kt & 1) != 0;     // static_key_type(): JUMP_TYPE_TRUE
            bool jmp = enabled ^ e.Branch;
            if (jmp == (type ^ e.Branch))
                continue;
            var site = new SiteRef(SiteKind.Raw, e.Index, KernelTextTables.JumpTable);
            var w = b[..e.Length];
            if (jmp)
            {
                if (e.Length == 2)
                {
                    w[0] = X86.Jmp8;
                    w[1] = unchecked((byte)(sbyte)(long)(e.Target - (e.Code + 2)));
                }
                else
                {
                    w[0] = X86.Jmp32;
                    BinaryPrimitives.WriteInt32LittleEndian(w[1..], ctx.Rel32(e.Code, 5, e.Target, site));
                }
            }
            else
                ctx.Nops[e.Length].CopyTo(w);
            if (text.Write(e.Code, w, site, "jump_label_add_module: kernel key changed from its initial state"))
                updated++;
        }
        t.Decisions.Add($"jump_label_add_module(): {entries.Length} jump labels, {own} with the module's own keys (kept as built), {kernelKeys} with the kernel's keys ({updated} updated: a key not in its initial state)");
        return text.ToPlan();
    }

    /// <summary>
    /// <c>static_call_add_module()</c> → <c>__static_call_init()</c>: every site to its key's function,
    /// <c>arch_static_call_transform(site, NULL, key-&gt;func, tail)</c> with RETHUNK as the CPU has it. A key of the
    /// module: its <c>func</c> in the module's data. A key of the kernel (or its trampoline, for a key that is not exported:
    /// <c>tramp_key_lookup()</c>): the function the kernel's <c>__SCT__</c> trampoline jumps to after the kernel's boot (a
    /// return form is NULL). 6.12 with call depth tracking: <c>arch_static_call_transform()</c> first takes
    /// <c>callthunks_translate_call_dest(func)</c>, the accounting thunk in the function's padding.
    /// </summary>
    private static PatchPlan StaticCalls(BootContext ctx, TextPassContext t, KernelPatchResult kernel, ElfFile module, IReadOnlyList<ElfFile> others)
    {
        var sites = t.Tables.StaticCalls;
        if (sites.IsEmpty)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        Span<byte> cur = stackalloc byte[6];
        Span<byte> buf = stackalloc byte[6];
        var funcs = new Dictionary<ulong, ulong>();
        int own = 0;
        foreach (var s in sites)
        {
            var site = new SiteRef(SiteKind.Raw, s.Index, KernelTextTables.StaticCallSites);
            ulong func;
            if (InModule(module, s.Key))
            {
                own++;
                func = module.TryReadPointer(s.Key, out ulong f) ? f : 0;   // a key in .bss: NULL
            }
            else if (!funcs.TryGetValue(s.Key, out func))
                funcs[s.Key] = func = KernelKeyFunc(ctx, t, kernel, s.Key, site, s.Address);
            if (t.Rules == KernelTextRules.Linux612 && func != 0)
                func = Linux612CallThunks.TranslateCallDest(ctx, func, kernel, others, text);
            var c = cur[..s.Length];
            text.Read(s.Address, c, site);
            int n = Linux61TextPasses.Transform(ctx, t, s.Address, c, s.Tail, func, rethunk: true, buf, site, isTrampoline: false, out string why);
            text.Write(s.Address, buf[..n], site, "static_call_add_module: " + why);
        }
        t.Decisions.Add($"static_call_add_module(): {sites.Length} static call sites to their key's function ({own} with the module's own keys, {sites.Length - own} with the kernel's)");
        return text.ToPlan();
    }

    /// <summary>The <c>func</c> of a kernel key named by its key (<c>__SCK__name</c>) or its trampoline
    /// (<c>__SCT__name</c>): where the trampoline jumps in the kernel as booted.</summary>
    private static ulong KernelKeyFunc(BootContext ctx, TextPassContext t, KernelPatchResult kernel, ulong key, SiteRef site, ulong at)
    {
        if (t.Symbols is null)
            throw new PatchException(site, at, $"static call key 0x{key:x} is the kernel's: its function needs the kernel's kallsyms");
        string? name = null;
        foreach (var sym in t.Symbols.All.Skip(Math.Max(0, t.Symbols.LastAtOrBelow(key) - 8)).TakeWhile(x => x.Address <= key))
        {
            if (sym.Address != key)
                continue;
            if (sym.Name.StartsWith(KernelTextTables.TrampolinePrefix, StringComparison.Ordinal))
                name = sym.Name[KernelTextTables.TrampolinePrefix.Length..];
            else if (sym.Name.StartsWith("__SCK__", StringComparison.Ordinal))
                name = sym.Name["__SCK__".Length..];
        }
        if (name is null)
            throw new PatchException(site, at, $"static call key 0x{key:x} names neither a __SCK__ key nor a __SCT__ trampoline of {t.Symbols.Origin} (tramp_key_lookup() fails: \"Failed to fixup __raw_static_call() usage\")");
        ulong tramp = t.Need(KernelTextTables.TrampolinePrefix + name, $"{site}");
        if (!kernel.Patched.TryReadBytes(tramp, 5, out var b))
            throw new PatchException(site, at, $"the kernel's trampoline {KernelTextTables.TrampolinePrefix}{name} at 0x{tramp:x} has no bytes in the image");
        if (b[0] == X86.Ret)
            return 0;
        if (b[0] != X86.Jmp32)
            throw new PatchException(site, at, $"the kernel's trampoline {KernelTextTables.TrampolinePrefix}{name} at 0x{tramp:x} holds {Convert.ToHexStringLower(b)}, neither jmp nor ret");
        ulong target = unchecked(tramp + 5 + (ulong)(long)BinaryPrimitives.ReadInt32LittleEndian(b[1..]));
        var th = ctx.Thunks;
        return target == th.ReturnThunk || target == th.ItsReturnThunk || target == th.RetbleedReturnThunk
            || target == th.SrsoReturnThunk || target == th.SrsoAliasReturnThunk ? 0 : target;
    }
}

using System.Buffers.Binary;
using System.Collections.Immutable;
using Altpatch.Cpu;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>What the text passes need besides the <see cref="BootContext"/>: their tables, the symbols, the rules and
/// the boot options that steer them; and where they leave their decisions.</summary>
internal sealed class TextPassContext(KernelTextTables tables, KernelSymbols? symbols, KernelTextRules rules, KernelCommandLine commandLine)
{
    /// <summary>The tables of the text writers.</summary>
    public KernelTextTables Tables { get; } = tables;

    /// <summary>Symbols of the image's build, or null.</summary>
    public KernelSymbols? Symbols { get; } = symbols;

    /// <summary>The version's facts.</summary>
    public KernelTextRules Rules { get; } = rules;

    /// <summary>The kernel command line.</summary>
    public KernelCommandLine CommandLine { get; } = commandLine;

    /// <summary><c>preempt=</c> from the command line, or null for the build's default.</summary>
    public PreemptMode? Preempt => CommandLine.Preempt;

    /// <summary>One line per decision, in the order taken.</summary>
    public List<string> Decisions { get; } = [];

    /// <summary>The mode <c>sched_dynamic_update()</c> left, once the pass ran (null: no PREEMPT_DYNAMIC, or not known).</summary>
    public PreemptMode? PreemptResult { get; set; }

    /// <summary>Whether ftrace was disabled by <c>ftrace_bug()</c> during <c>ftrace_init()</c>.</summary>
    public bool FtraceDisabled { get; set; }

    /// <summary>A symbol's address, or null.</summary>
    public ulong? Symbol(string name) => Symbols is not null && Symbols.TryGetAddress(name, out var a) ? a : null;

    /// <summary>A symbol the pass cannot go on without.</summary>
    public ulong Need(string name, string why) => Symbol(name)
        ?? throw new KernelPatchException($"{why} needs the address of {name}, which {Symbols?.Origin ?? "no symbols"} does not give");
}

/// <summary>
/// The boot-time text writers of Linux 6.1 besides <c>alternative_instructions()</c>, in the order
/// <c>start_kernel()</c> runs them: <c>jump_label_init()</c> and <c>static_call_init()</c> (from <c>setup_arch()</c>),
/// <c>ftrace_init()</c>, and <c>sched_dynamic_update()</c> for the <c>preempt=</c> mode (<c>setup_preempt_mode()</c>
/// while the command line is parsed, else <c>preempt_dynamic_init()</c> from <c>sched_init()</c>). Each is a pure
/// function from its table, the bytes the previous pass left and the boot state to a <see cref="PatchPlan"/>; the
/// comments name the kernel functions (kernel/jump_label.c, kernel/static_call_inline.c, arch/x86/kernel/static_call.c,
/// kernel/trace/ftrace.c, arch/x86/kernel/ftrace.c, kernel/sched/core.c of 6.1.176).
/// </summary>
internal static class Linux61TextPasses
{
    private const byte Int3 = 0xcc, Ret = 0xc3, Call = 0xe8, Jmp32 = 0xe9, Jmp8 = 0xeb;

    // ------------------------------------------------------------------ jump_label_init

    /// <summary>
    /// <c>jump_label_init()</c>: sorts the table (data only) and calls <c>arch_jump_label_transform_static()</c> for the
    /// entries whose type (<c>static_key_enabled(key) ^ branch</c>) is NOP — which x86 does not define: objtool already
    /// NOPed them at build time. Nothing is written; the decision notes entries whose bytes disagree with their key.
    /// </summary>
    public static PatchPlan JumpLabels(BootContext ctx, TextPassContext t)
    {
        var entries = t.Tables.JumpEntries;
        if (entries.IsEmpty)
            return PatchPlan.Empty;
        int jumps = 0, disagree = 0;
        foreach (var e in entries)
        {
            if (e.IsJump)
                jumps++;
            if (e.IsJump != (KeyEnabled(ctx, e.Key) ^ e.Branch))
                disagree++;
        }
        t.Decisions.Add($"jump_label_init(): {entries.Length} jump labels ({jumps} jmp, {entries.Length - jumps} NOP as built); "
            + (t.Rules.JumpLabelInitWrites ? "initial states written" : "x86 writes nothing at boot (no arch_jump_label_transform_static(): the labels are built in their initial state)")
            + (disagree > 0 ? $"; {disagree} disagree with their key's initial value and stay as built" : ""));
        if (!t.Rules.JumpLabelInitWrites)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        foreach (var e in entries)
        {
            if (KeyEnabled(ctx, e.Key) ^ e.Branch)
                continue;
            var site = new SiteRef(SiteKind.Raw, e.Index, KernelTextTables.JumpTable);
            text.Write(e.Code, ctx.Nops[e.Length], site, "jump_label_init: NOP");
        }
        return text.ToPlan();
    }

    /// <summary><c>static_key_enabled()</c> of a key as the image holds it: <c>atomic_read(&amp;key-&gt;enabled) &gt; 0</c>
    /// (0 for a key in <c>.bss</c>).</summary>
    internal static bool KeyEnabled(BootContext ctx, ulong key) =>
        ctx.Image.Elf.TryReadBytes(key, 4, out var b) && BinaryPrimitives.ReadInt32LittleEndian(b) > 0;

    // ------------------------------------------------------------------ static_call_init

    /// <summary>
    /// <c>static_call_init()</c> → <c>__static_call_init()</c>: every site of <c>.static_call_sites</c> (whatever section it is
    /// in) gets <c>arch_static_call_transform(site, NULL, key-&gt;func, tail)</c> with the key's initial function. Runs in
    /// <c>setup_arch()</c>, before <c>X86_FEATURE_RETHUNK</c> is set: the RET form is <c>ret; int3×4</c>.
    /// </summary>
    public static PatchPlan StaticCallInit(BootContext ctx, TextPassContext t)
    {
        var sites = t.Tables.StaticCalls;
        if (sites.IsEmpty)
            return PatchPlan.Empty;
        if (t.Symbol(t.Rules.Return0) is null)
        {
            // Without the name, a key starting at __static_call_return0 cannot be told from any other function: its
            // sites would get a call where the kernel writes xor5rax.
            t.Decisions.Add($"static_call_init(): NOT DONE: {sites.Length} static call sites keep their build-time call to the trampoline: "
                + $"no symbols name {t.Rules.Return0} (give kallsyms or a System.map of the build)");
            return PatchPlan.Empty;
        }
        var text = new PassText(ctx.Poker);
        Span<byte> cur = stackalloc byte[6];
        Span<byte> buf = stackalloc byte[6];
        int calls = 0, nops = 0, ret0 = 0, tails = 0;
        foreach (var s in sites)
        {
            var site = new SiteRef(SiteKind.Raw, s.Index, KernelTextTables.StaticCallSites);
            ulong func = KeyFunc(ctx, s.Key, site, s.Address);
            var c = cur[..s.Length];
            text.Read(s.Address, c, site);
            int n = Transform(ctx, t, s.Address, c, s.Tail, func, rethunk: false, buf, site, isTrampoline: false, out string why);
            text.Write(s.Address, buf[..n], site, "static_call_init: " + why);
            if (s.Tail) tails++;
            else if (func == 0) nops++;
            else if (func == t.Symbol(t.Rules.Return0)) ret0++;
            else calls++;
        }
        t.Decisions.Add($"static_call_init(): {sites.Length} static call sites to their key's function: {calls} call, {ret0} xor5rax (__static_call_return0), {nops} NOP (NULL), {tails} tail calls");
        return text.ToPlan();
    }

    /// <summary><c>key-&gt;func</c> as the image holds it, 0 for a key without bytes (<c>.bss</c>) or not found.</summary>
    internal static ulong KeyFuncOrZero(BootContext ctx, ulong key) => ctx.Image.Elf.TryReadPointer(key, out ulong func) ? func : 0;

    /// <summary><c>key-&gt;func</c> as the image holds it (0 for a key in <c>.bss</c>).</summary>
    private static ulong KeyFunc(BootContext ctx, ulong key, SiteRef site, ulong at)
    {
        var elf = ctx.Image.Elf;
        if (elf.TryReadPointer(key, out ulong func))
            return func;
        if (elf.Sections.Any(s => s.IsAllocated && !s.HasFileBytes && s.Contains(key)))
            return 0;
        throw new PatchException(site, at, $"static call key 0x{key:x} has no bytes in the image");
    }

    private enum ScType { Call, Nop, Jmp, Ret, Jcc }

    /// <summary>
    /// <c>__static_call_validate()</c> and <c>__static_call_transform()</c>: the bytes of a static call site or trampoline
    /// that calls (or tail-calls) <paramref name="func"/> (0: NULL). Returns the length (5, or 6 for a Jcc).
    /// </summary>
    internal static int Transform(BootContext ctx, TextPassContext t, ulong insn, ReadOnlySpan<byte> cur, bool tail, ulong func,
        bool rethunk, Span<byte> buf, SiteRef site, bool isTrampoline, out string why)
    {
        // __static_call_validate(insn, tail, tramp)
        var nop5 = ctx.Nops[5];
        bool isJcc = cur.Length >= 6 && cur[0] == 0x0f && (cur[1] & 0xf0) == 0x80;
        bool valid = tail
            ? cur[0] is Jmp32 or Ret || isJcc
            : cur[0] == Call || cur[..5].SequenceEqual(nop5) || cur[..5].SequenceEqual(KernelTextTables.Xor5Rax);
        if (!valid)
            throw new PatchException(site, insn, $"unexpected static_call insn {Hex(cur)} for a {(tail ? "tail" : "non-tail")} {(isTrampoline ? "trampoline" : "call")} (the kernel's BUG() in __static_call_validate())");

        var type = (ScType)(2 * (tail ? 1 : 0) + (func == 0 ? 1 : 0));   // __sc_insn(!func, tail)
        if (type is ScType.Jmp or ScType.Ret && isJcc)
            type = ScType.Jcc;
        switch (type)
        {
            case ScType.Call:
                if (t.Symbol(t.Rules.Return0) is { } r0 && func == r0)
                {
                    KernelTextTables.Xor5Rax.CopyTo(buf);
                    why = "xor5rax (__static_call_return0)";
                }
                else
                {
                    buf[0] = Call;
                    BinaryPrimitives.WriteInt32LittleEndian(buf[1..], ctx.Rel32(insn, 5, func, site));
                    why = $"call 0x{func:x}";
                }
                return 5;
            case ScType.Nop:
                nop5.CopyTo(buf);
                why = "NOP (NULL)";
                return 5;
            case ScType.Jmp:
                buf[0] = Jmp32;
                BinaryPrimitives.WriteInt32LittleEndian(buf[1..], ctx.Rel32(insn, 5, func, site));
                why = $"jmp 0x{func:x}";
                return 5;
            case ScType.Ret:
                if (rethunk && Linux61Passes.CpuWantsRethunkAt(ctx, insn))
                {
                    buf[0] = Jmp32;
                    BinaryPrimitives.WriteInt32LittleEndian(buf[1..], ctx.Rel32(insn, 5, Linux61Passes.ReturnThunkAddress(ctx, insn, site), site));
                    why = "jmp x86_return_thunk (NULL)";
                }
                else
                {
                    buf[0] = Ret;
                    buf[1..5].Fill(Int3);
                    why = "ret (NULL)";
                }
                return 5;
            default:
            {
                ulong target = func;
                if (target == 0)
                {
                    target = rethunk && ctx.State.Has(CpuFeature.Rethunk)
                        ? ctx.Thunks.ReturnThunk ?? throw new PatchException(site, insn, "__x86_return_thunk could not be located")
                        : t.Need(t.Rules.StaticCallReturn, $"{site}: a NULL conditional tail call");
                }
                buf[0] = 0x0f;
                buf[1] = cur[1];
                BinaryPrimitives.WriteInt32LittleEndian(buf[2..], ctx.Rel32(insn, 6, target, site));
                why = $"j{Cc(cur[1])} 0x{target:x}";
                return 6;
            }
        }
    }

    private static string Cc(byte op) => (op & 0xf) switch
    {
        0 => "o", 1 => "no", 2 => "b", 3 => "ae", 4 => "e", 5 => "ne", 6 => "be", 7 => "a",
        8 => "s", 9 => "ns", 10 => "p", 11 => "np", 12 => "l", 13 => "ge", 14 => "le", _ => "g",
    };

    // ------------------------------------------------------------------ ftrace_init

    /// <summary>
    /// <c>ftrace_init()</c> → <c>ftrace_process_locs()</c> → <c>ftrace_update_code()</c>: each record in address order,
    /// <c>ftrace_init_nop()</c> → <c>ftrace_make_nop(rec, MCOUNT_ADDR)</c> → <c>ftrace_modify_code_direct()</c>: the 5 bytes
    /// must be <c>call __fentry__</c> (<c>ftrace_verify_code()</c>) and become <c>x86_nops[5]</c>. A record that is not is
    /// the kernel's <c>ftrace_bug()</c>: ftrace is disabled and that record and all later ones keep their call.
    /// </summary>
    /// <param name="ctx">The pass context.</param>
    /// <param name="t">The text passes' tables and decisions.</param>
    /// <param name="module">For a module: its file, and the decision lines name <c>ftrace_module_init()</c> and it.</param>
    public static PatchPlan Ftrace(BootContext ctx, TextPassContext t, string? module = null)
    {
        string fn = module is null ? "ftrace_init()" : $"ftrace_module_init({module})";
        var sites = t.Tables.Mcount;
        if (sites.IsEmpty)
            return PatchPlan.Empty;
        ulong fentry = t.Tables.Fentry ?? throw new KernelPatchException($"{fn}: __fentry__ could not be located");
        var text = new PassText(ctx.Poker);
        Span<byte> cur = stackalloc byte[5];
        Span<byte> old = stackalloc byte[5];
        var nop = ctx.Nops[5];
        int done = 0;
        // In address order (ftrace_process_locs() sorts them); the linker usually left them sorted already.
        var ordered = sites;
        for (int i = 1; i < sites.Length; i++)
        {
            if (sites[i].Address < sites[i - 1].Address)
            {
                ordered = [.. sites.OrderBy(s => s.Address)];
                break;
            }
        }
        foreach (var s in ordered)
        {
            var site = new SiteRef(SiteKind.Raw, s.Index, KernelTextTables.McountLoc);
            text.Read(s.Address, cur, site);
            old[0] = Call;
            BinaryPrimitives.WriteInt32LittleEndian(old[1..], ctx.Rel32(s.Address, 5, fentry, site));
            if (!cur.SequenceEqual(old))
            {
                t.FtraceDisabled = true;
                t.Decisions.Add($"{fn}: ftrace bug: record {s.Index} at 0x{s.Address:x} holds {Hex(cur)}, not call __fentry__ (0x{fentry:x}): "
                    + $"ftrace_bug() disables ftrace; {done} of {sites.Length} records became NOPs, the rest keep their call");
                return text.ToPlan();
            }
            text.Write(s.Address, nop, site, "ftrace_init: NOP");
            done++;
        }
        t.Decisions.Add($"{fn}: {done} call __fentry__ (0x{fentry:x}) to NOP ({Hex(nop)})");
        if (t.CommandLine.Ftrace is { } tracer)
            t.Decisions.Add($"ftrace={tracer}: the boot tracer starts in early_trace_init() and turns the traced records"
                + (t.CommandLine.FtraceFilters.IsEmpty ? "" : $" ({string.Join(" ", t.CommandLine.FtraceFilters)})")
                + " into calls to an ftrace trampoline the kernel allocates at run time: not predicted, the NOPs stay (the sites are dynamic)");
        return text.ToPlan();
    }

    // ------------------------------------------------------------------ sched_dynamic_update (PREEMPT_DYNAMIC)

    /// <summary>Whether the image is a <c>CONFIG_PREEMPT_DYNAMIC</c> kernel with static calls (its symbols name the
    /// first call's trampoline and <c>sched_dynamic_update</c>).</summary>
    public static bool HasPreemptDynamic(TextPassContext t) =>
        t.Rules.PreemptCalls.Length > 0
        && t.Symbol(KernelTextTables.TrampolinePrefix + t.Rules.PreemptCalls[0].Name) is not null
        && t.Symbol(t.Rules.PreemptDefault.Update) is not null;

    /// <summary>
    /// <c>sched_dynamic_update(mode)</c>: first <c>preempt_dynamic_enable()</c> of every call, then the mode's
    /// enable/disable, each a <c>static_call_update()</c> → <c>__static_call_update()</c>: nothing when
    /// <c>key-&gt;func</c> is already the function, else the trampoline and every site of the key in kernel text
    /// (<c>.exit.text</c> is skipped: not <c>kernel_text_address()</c>). The mode is <c>preempt=</c>'s, else the build's
    /// default (read from <c>preempt_dynamic_init()</c>'s call in <c>sched_init</c>). Before RETHUNK is set, as both run.
    /// </summary>
    public static PatchPlan PreemptDynamic(BootContext ctx, TextPassContext t)
    {
        var rules = t.Rules;
        if (t.Symbols is null)
        {
            t.Decisions.Add("sched_dynamic_update(): NOT DONE: without symbols the PREEMPT_DYNAMIC static calls cannot be found (give kallsyms or a System.map of the build)");
            return PatchPlan.Empty;
        }
        if (!HasPreemptDynamic(t))
        {
            t.Decisions.Add($"no CONFIG_PREEMPT_DYNAMIC static calls (no {KernelTextTables.TrampolinePrefix}{rules.PreemptCalls[0].Name} or {rules.PreemptDefault.Update})");
            return PatchPlan.Empty;
        }
        var keys = PreemptKeyAddresses(t);
        bool realTime = IsPreemptRt(ctx);
        PreemptMode mode;
        string source;
        var accepted = t.CommandLine.PreemptRequests.Where(m => PreemptModeAccepted(t, keys, realTime, m)).ToList();
        foreach (var refused in t.CommandLine.PreemptRequests.Where(m => !PreemptModeAccepted(t, keys, realTime, m)).Distinct())
            t.Decisions.Add($"preempt={refused.ToString().ToLowerInvariant()}: not a mode this build's sched_dynamic_mode() knows"
                + (realTime ? " (PREEMPT_RT)" : keys is null ? " (no lazy preemption)" : "") + ": \"Dynamic Preempt: unsupported mode\", ignored");
        if (accepted.Count > 0)
        {
            mode = accepted[^1];
            source = "preempt= on the command line (setup_preempt_mode())";
        }
        else
        {
            (mode, source) = DefaultPreemptMode(ctx, t);
            if (!PreemptModeAccepted(t, keys, realTime, mode))
                throw new KernelPatchException($"the default preempt= mode: {source} names mode {(int)mode} ({mode.ToString().ToLowerInvariant()}), which this build's rules do not define"
                    + (keys is null ? $" without its static keys ({string.Join(", ", t.Rules.PreemptKeys)})" : ""));
        }
        t.PreemptResult = mode;
        var text = new PassText(ctx.Poker);
        var calls = rules.PreemptCalls;
        var state = new ulong[calls.Length];      // key->func
        var tramps = new ulong[calls.Length];
        var sitesOf = new List<KernelStaticCallSite>[calls.Length];
        for (int i = 0; i < calls.Length; i++)
        {
            string name = calls[i].Name;
            tramps[i] = t.Need(KernelTextTables.TrampolinePrefix + name, $"sched_dynamic_update() ({name})");
            sitesOf[i] = [.. t.Tables.StaticCalls.Where(s => s.Trampoline == tramps[i])];
            state[i] = InitialFunc(ctx, t, tramps[i], sitesOf[i], name);
        }
        Span<byte> cur = stackalloc byte[6];
        Span<byte> buf = stackalloc byte[6];
        Span<byte> sig = stackalloc byte[3];
        int writes = 0;
        var en = rules.PreemptModes[mode];
        // "Avoid {NONE,VOLUNTARY} -> FULL transitions from ever ending up in the ZERO state": every call enabled first.
        var steps = Enumerable.Range(0, calls.Length).Select(i => (i, true)).Concat(Enumerable.Range(0, calls.Length).Select(i => (i, en[i])));
        foreach (var (i, enable) in steps)
        {
            var c = calls[i];
            string? fname = enable ? c.Enabled : c.Disabled;
            ulong func = fname is null ? 0 : t.Need(fname, $"sched_dynamic_update() ({c.Name})");
            if (state[i] == func)
                continue;                               // if (key->func == func) goto done;
            state[i] = func;
            var tsite = new SiteRef(SiteKind.Raw, i, KernelTextTables.TrampolinePrefix + c.Name);
            var tc = cur[..5];
            text.Read(tramps[i], tc, tsite);
            text.Read(tramps[i] + 5, sig, tsite);
            if (!sig.SequenceEqual(KernelTextTables.TrampolineSignature))
                throw new PatchException(tsite, tramps[i], "trampoline signature fail (the kernel's BUG() in __static_call_validate())");
            int n = Transform(ctx, t, tramps[i], tc, tail: true, func, rethunk: false, buf, tsite, isTrampoline: true, out string why);
            if (text.Write(tramps[i], buf[..n], tsite, $"{c.Name}: {why}"))
                writes++;
            foreach (var s in sitesOf[i])
            {
                if (!IsKernelText(ctx, s.Address))
                    continue;                           // built-in __exit: not kernel_text_address()
                var site = new SiteRef(SiteKind.Raw, s.Index, KernelTextTables.StaticCallSites);
                var sc = cur[..s.Length];
                text.Read(s.Address, sc, site);
                n = Transform(ctx, t, s.Address, sc, s.Tail, func, rethunk: false, buf, site, isTrampoline: false, out why);
                if (text.Write(s.Address, buf[..n], site, $"{c.Name}: {why}"))
                    writes++;
            }
        }
        string keyText = "";
        if (keys is not null)
        {
            // static_key_disable() of every key, then the mode's static_key_enable()s: the keys start disabled (.bss).
            var on = t.Rules.PreemptKeyModes.TryGetValue(mode, out var k) ? k : [.. keys.Select(_ => false)];
            var enabled = keys.Where((_, i) => on[i]).ToHashSet();
            int labels = StaticBranchEnable(ctx, t, text, enabled, "sched_dynamic_update(): static_key_enable()");
            keyText = "; " + string.Join(", ", t.Rules.PreemptKeys.Select((name, i) => $"{name} {(on[i] ? "enabled" : "disabled")}"))
                + $" ({labels} jump labels rewritten)";
        }
        t.Decisions.Add($"Dynamic Preempt: {mode.ToString().ToLowerInvariant()} ({source}): "
            + string.Join(", ", calls.Select((c, i) => $"{c.Name} = {(en[i] ? c.Enabled : c.Disabled ?? "NULL")}"))
            + $"; {writes} sites and trampolines rewritten" + keyText);
        return text.ToPlan();
    }

    /// <summary>The addresses of <see cref="KernelTextRules.PreemptKeys"/>, or null when the build has not all of them.</summary>
    private static ulong[]? PreemptKeyAddresses(TextPassContext t)
    {
        if (t.Rules.PreemptKeys.IsEmpty)
            return null;
        var addresses = t.Rules.PreemptKeys.Select(t.Symbol).ToArray();
        return addresses.All(a => a is not null) ? [.. addresses.Select(a => a!.Value)] : null;
    }

    /// <summary><c>CONFIG_PREEMPT_RT</c>: the build's version string says so (<c>scripts/mkcompile_h</c> adds
    /// <c>PREEMPT_RT</c> to <c>UTS_VERSION</c>, "#1 SMP PREEMPT_RT Debian ...").</summary>
    private static bool IsPreemptRt(BootContext ctx) =>
        ctx.Image.Version?.Banner.Split(' ').Contains("PREEMPT_RT") == true;

    /// <summary>Whether this build's <c>sched_dynamic_mode()</c> knows <paramref name="mode"/>: the modes of the rules
    /// whose static keys the build has, without <see cref="KernelTextRules.PreemptNotRealTime"/> under PREEMPT_RT there.</summary>
    private static bool PreemptModeAccepted(TextPassContext t, ulong[]? keys, bool realTime, PreemptMode mode) =>
        t.Rules.PreemptModes.ContainsKey(mode)
        && (keys is not null || !t.Rules.PreemptKeyModes.ContainsKey(mode))
        && !(keys is not null && realTime && t.Rules.PreemptNotRealTime.Contains(mode));

    /// <summary>
    /// <c>static_branch_enable()</c> at boot of every key of <paramref name="keys"/> that the image holds disabled: each
    /// of its jump labels in kernel text becomes <c>JUMP_LABEL_JMP</c> when <c>enabled ^ branch</c> (a jump to its
    /// target, 2 or 5 bytes), else the NOP of its size (<c>arch_jump_label_transform()</c>). Returns how many it rewrote.
    /// </summary>
    internal static int StaticBranchEnable(BootContext ctx, TextPassContext t, PassText text, IReadOnlySet<ulong> keys, string why)
    {
        int labels = 0;
        Span<byte> jb = stackalloc byte[5];
        foreach (var e in t.Tables.JumpEntries)
        {
            if (!keys.Contains(e.Key) || KeyEnabled(ctx, e.Key) || !IsKernelText(ctx, e.Code))
                continue;
            var site = new SiteRef(SiteKind.Raw, e.Index, KernelTextTables.JumpTable);
            var code = jb[..e.Length];
            if (!e.Branch)
            {
                code[0] = e.Length == 2 ? Jmp8 : Jmp32;
                long rel = unchecked((long)(e.Target - (e.Code + (ulong)e.Length)));
                if (e.Length == 2)
                {
                    if (rel is < sbyte.MinValue or > sbyte.MaxValue)
                        throw new PatchException(site, e.Code, "a 2-byte jump label's target is out of reach");
                    code[1] = unchecked((byte)(sbyte)rel);
                }
                else
                    BinaryPrimitives.WriteInt32LittleEndian(code[1..], ctx.Rel32(e.Code, 5, e.Target, site));
            }
            else
                ctx.Nops[e.Length].CopyTo(code);
            if (text.Write(e.Code, code, site, why))
                labels++;
        }
        return labels;
    }

    /// <summary>The key's initial <c>func</c>: from the key of the call's sites (x86-64), else what the trampoline's
    /// build-time bytes jump to (i386: <c>DEFINE_STATIC_CALL</c> builds the trampoline from the same function; a RET
    /// form, or a jump to the return thunk, is NULL).</summary>
    private static ulong InitialFunc(BootContext ctx, TextPassContext t, ulong tramp, List<KernelStaticCallSite> sites, string name)
    {
        if (sites.Count > 0)
        {
            ulong key = sites[0].Key;
            if (sites.Any(s => s.Key != key))
                throw new KernelPatchException($"sched_dynamic_update(): the sites calling {KernelTextTables.TrampolinePrefix}{name} name different keys");
            return KeyFunc(ctx, key, new SiteRef(SiteKind.Raw, sites[0].Index, KernelTextTables.StaticCallSites), sites[0].Address);
        }
        var b = ctx.ReadOriginal(tramp, 5).AsSpan();
        if (b[0] != Jmp32)
            return 0;
        ulong target = ctx.Image.Elf.AddressPlus(tramp + 5, BinaryPrimitives.ReadInt32LittleEndian(b[1..]));
        return target == ctx.Thunks.ReturnThunk ? 0 : target;
    }

    /// <summary>The build's default mode: <c>preempt_dynamic_init()</c> (inlined into <c>sched_init()</c>) calls
    /// <c>sched_dynamic_update(0 or 1)</c> for CONFIG_PREEMPT_NONE/VOLUNTARY and nothing for CONFIG_PREEMPT (full).</summary>
    internal static (PreemptMode, string) DefaultPreemptMode(BootContext ctx, TextPassContext t)
    {
        var (callerName, updateName) = t.Rules.PreemptDefault;
        ulong caller = t.Need(callerName, "the default preempt= mode");
        var updates = new Dictionary<ulong, string> { [t.Need(updateName, "the default preempt= mode")] = updateName };
        foreach (var inlined in t.Rules.PreemptUpdateInlined)
        {
            if (t.Symbol(inlined) is { } a)
                updates.TryAdd(a, inlined);
        }
        ulong end = t.Symbols!.TryFind(caller, out _, out ulong at, out ulong size) && at == 0 && size > 0 ? caller + size : caller + 0x4000;
        var elf = ctx.Image.Elf;
        int len = (int)Math.Min(end - caller, 0x4000);
        if (elf.SectionContaining(caller) is { } sec)
            len = (int)Math.Min((ulong)len, sec.EndAddress - caller);   // not past the end of its section
        if (!elf.TryReadBytes(caller, len, out _))
            throw new KernelPatchException($"the default preempt= mode: {callerName} at 0x{caller:x} has no bytes in the image");
        var decoder = Iced.Intel.Decoder.Create(ctx.Bitness, new Iced.Intel.ByteArrayCodeReader(ctx.ReadOriginal(caller, len)));
        decoder.IP = caller;
        Iced.Intel.Instruction prev = default;
        var arg = ctx.Bitness == 64 ? Iced.Intel.Register.EDI : Iced.Intel.Register.EAX;
        while (decoder.IP < caller + (ulong)len)
        {
            decoder.Decode(out var insn);
            if (insn.IsInvalid)
                break;
            if (insn.Mnemonic == Iced.Intel.Mnemonic.Call && insn.Op0Kind is Iced.Intel.OpKind.NearBranch64 or Iced.Intel.OpKind.NearBranch32
                && updates.TryGetValue(insn.NearBranchTarget, out var calledName))
            {
                long? value = prev.Mnemonic == Iced.Intel.Mnemonic.Mov && prev.Op0Register == arg && prev.Op1Kind == Iced.Intel.OpKind.Immediate32 ? prev.Immediate32
                    : prev.Mnemonic == Iced.Intel.Mnemonic.Xor && prev.Op0Register == arg && prev.Op1Register == arg ? 0
                    : null;
                if (value is >= 0 and <= (int)PreemptMode.Laziest)
                    return ((PreemptMode)value.Value, $"the build's default: {callerName}+0x{insn.IP - caller:x} calls {calledName}({value})");
                throw new KernelPatchException($"the default preempt= mode: {callerName}+0x{insn.IP - caller:x} calls {calledName} with an argument Altpatch cannot read ({prev})");
            }
            prev = insn;
        }
        return (PreemptMode.Full, $"the build's default: {callerName} does not call {updateName} (CONFIG_PREEMPT)");
    }

    /// <summary><c>kernel_text_address()</c> during boot: <c>.text</c> (<c>_stext</c>..<c>_etext</c>) or <c>.init.text</c>.</summary>
    internal static bool IsKernelText(BootContext ctx, ulong addr)
    {
        if (addr >= ctx.Thunks.TextStart && addr < ctx.Thunks.TextEnd)
            return true;
        return ctx.Image.Elf.FindSection(".init.text") is { } init && init.Contains(addr);
    }

    // ------------------------------------------------------------------ the sites and their legal states

    /// <summary>
    /// Every site of the text writers after patching, with its legal run-time states: jump labels (NOP or <c>jmp</c> to
    /// their target), static call sites and trampolines (a branch to any function, the NULL forms), mcount sites (NOP or a
    /// call to <c>ftrace_caller</c>, <c>ftrace_regs_caller</c> or a run-time trampoline). Sites in <c>.exit.text</c> are
    /// not dynamic (jump labels and static calls there are never updated after boot).
    /// </summary>
    public static ImmutableArray<KernelTextSite> Sites(KernelImage image, ElfFile patched, KernelBootState state, KernelThunks thunks,
        Code.NopTable nops, TextPassContext t, ImmutableArray<BootPassResult> passes) =>
        Sites(image.Elf, image.Bitness, patched, state, thunks, nops, t, passes);

    /// <summary>As <see cref="Sites(KernelImage, ElfFile, KernelBootState, KernelThunks, Code.NopTable, TextPassContext, ImmutableArray{BootPassResult})"/>
    /// for any ELF file before (<paramref name="original"/>) and after (<paramref name="patched"/>) the passes: a kernel's,
    /// or a linked module's. When both are the same file (patched in place), the code before is the patched code with
    /// <paramref name="passes"/>' writes undone (<see cref="KernelPatchResult.Undo"/>).</summary>
    public static ImmutableArray<KernelTextSite> Sites(ElfFile original, int bitness, ElfFile patched, KernelBootState state, KernelThunks thunks,
        Code.NopTable nops, TextPassContext t, ImmutableArray<BootPassResult> passes)
    {
        var tables = t.Tables;
        int total = tables.Mcount.Length + tables.JumpEntries.Length + tables.StaticCalls.Length + tables.Trampolines.Length + tables.FtraceCalls.Length;
        var sites = new Pending[total];
        var elf = original;
        var exit = elf.FindSection(".exit.text");
        bool InExit(ulong a) => exit is { } e && e.Contains(a);
        int n = 0;

        // Before/After are views of the original and the patched ELF bytes (neither changes any more); patched in place,
        // Before is rebuilt from the plans into one buffer for all sites.
        ReadOnlyMemory<byte> View(ElfFile f, ulong address, int length) => f.Bytes.Slice((int)f.FileOffsetOf(address, length), length);
        bool inPlace = ReferenceEquals(original, patched);
        byte[] originals = [];
        int originalsUsed = 0;
        ReadOnlyMemory<byte> Before(ulong address, int length)
        {
            if (!inPlace)
                return View(elf, address, length);
            if (originalsUsed + length > originals.Length)
                Array.Resize(ref originals, Math.Max(originals.Length * 2, Math.Max(length, 4096)));
            var into = originals.AsMemory(originalsUsed, length);
            View(patched, address, length).Span.CopyTo(into.Span);
            KernelPatchResult.Undo(passes, address, into.Span);
            originalsUsed += length;
            return into;
        }
        void Add(KernelSiteKind kind, int index, ulong address, int length, bool dynamic, ImmutableArray<KernelTextState> states, ulong target, string detail) =>
            sites[n++] = new(kind, index, address, length, dynamic, states, target, detail);

        static KernelTextState Exact(string name, ReadOnlySpan<byte> b) => new(name, KernelTextStateForm.Bytes, b.ToArray());
        static KernelTextState Branch(string name, KernelTextStateForm form, byte[] opcode, ulong target = 0) => new(name, form, opcode, target);
        byte[] call = [Call], jmp32 = [Jmp32], jmp8 = [Jmp8];
        byte[] retForm = [Ret, Int3, Int3, Int3, Int3];
        ulong? rethunk = state.Has(CpuFeature.Rethunk) ? ReturnThunkOrNull(state, thunks) : null;

        // ftrace: NOP, or a call to ftrace_caller / ftrace_regs_caller / a run-time trampoline
        var ftrace = ImmutableArray.CreateBuilder<KernelTextState>();
        ftrace.Add(Exact("nop", nops[5]));
        foreach (var caller in t.Rules.FtraceCallers)
        {
            if (t.Symbol(caller) is { } a)
                ftrace.Add(Branch("call " + caller, KernelTextStateForm.BranchToAddress, call, a));
        }
        ftrace.Add(Branch("call ftrace trampoline", KernelTextStateForm.BranchToTrampoline, call));
        var ftraceStates = ftrace.ToImmutable();
        foreach (var s in tables.Mcount)
            Add(KernelSiteKind.Mcount, s.Index, s.Address, 5, dynamic: true, ftraceStates, 0, "call __fentry__");

        // jump labels: the NOP of their size, or the jmp to their own target
        ImmutableArray<KernelTextState> jump2 = [Exact("nop", nops[2]), Branch("jmp target", KernelTextStateForm.BranchToSiteTarget, jmp8)];
        ImmutableArray<KernelTextState> jump5 = [Exact("nop", nops[5]), Branch("jmp target", KernelTextStateForm.BranchToSiteTarget, jmp32)];
        foreach (var j in tables.JumpEntries)
        {
            bool enabled = KeyEnabled(elf, j.Key);
            Add(KernelSiteKind.JumpLabel, j.Index, j.Code, j.Length, !InExit(j.Code), j.Length == 2 ? jump2 : jump5, j.Target,
                $"key 0x{j.Key:x} {(enabled ? "enabled" : "disabled")}, branch {(j.Branch ? 1 : 0)}");
        }

        // static call sites: a branch to any function, or the NULL forms
        var nullTail = ImmutableArray.CreateBuilder<KernelTextState>();
        nullTail.Add(Branch("jmp any function", KernelTextStateForm.BranchToFunction, jmp32));
        nullTail.Add(Exact("ret (NULL)", retForm));
        ImmutableArray<KernelTextState> tail = nullTail.ToImmutable();
        ImmutableArray<KernelTextState> nonTail =
        [
            Branch("call any function", KernelTextStateForm.BranchToFunction, call),
            Exact("nop (NULL)", nops[5]),
            Exact("xor5rax (__static_call_return0)", KernelTextTables.Xor5Rax),
        ];
        // call depth tracking (6.12 retbleed=stuff): static_call_update() and static_call_init() aim a call at the callee's
        // accounting thunk, the thunk's size before it (callthunks_translate_call_dest())
        if (state.HasMacro("X86_FEATURE_CALL_DEPTH") && t.Symbols is { } syms && Linux612CallThunks.TemplateSize(syms) is > 0 and var tsize)
            nonTail = nonTail.Add(new KernelTextState("call the accounting thunk of any function", KernelTextStateForm.BranchToFunctionThunk, call, (ulong)tsize));
        var jcc = new Dictionary<byte, ImmutableArray<KernelTextState>>();
        var names = tables.Trampolines.Where(x => x.Name is not null).ToDictionary(x => x.Address, x => x.Name!);
        Span<byte> jr = stackalloc byte[5];
        foreach (var s in tables.StaticCalls)
        {
            ImmutableArray<KernelTextState> states;
            if (s.Length == 6)
            {
                byte cc = Before(s.Address, 2).Span[1];
                if (!jcc.TryGetValue(cc, out states))
                {
                    var b = ImmutableArray.CreateBuilder<KernelTextState>();
                    b.Add(Branch($"j{Cc(cc)} any function", KernelTextStateForm.BranchToFunction, [0x0f, cc]));
                    if (t.Symbol(t.Rules.StaticCallReturn) is { } scr)
                        b.Add(Branch($"j{Cc(cc)} {t.Rules.StaticCallReturn} (NULL)", KernelTextStateForm.BranchToAddress, [0x0f, cc], scr));
                    if (thunks.ReturnThunk is { } xrt)
                        b.Add(Branch($"j{Cc(cc)} __x86_return_thunk (NULL)", KernelTextStateForm.BranchToAddress, [0x0f, cc], xrt));
                    jcc[cc] = states = b.ToImmutable();
                }
            }
            else if (s.Tail)
                states = rethunk is { } rt && TailRethunk(s.Address, rt, bitness, jr)
                    ? tail.Add(Branch("jmp x86_return_thunk (NULL)", KernelTextStateForm.BranchToAddress, jmp32, rt))
                    : tail;
            else
                states = nonTail;
            string name = names.TryGetValue(s.Trampoline, out var nm) ? nm : $"key 0x{s.Key:x}";
            Add(KernelSiteKind.StaticCall, s.Index, s.Address, s.Length, !InExit(s.Address), states, 0, s.Tail ? name + ", tail call" : name);
        }

        // trampolines (the 5-byte instruction; the signature after it never changes)
        foreach (var tr in tables.Trampolines)
        {
            var states = rethunk is { } rt && TailRethunk(tr.Address, rt, bitness, jr)
                ? tail.Add(Branch("jmp x86_return_thunk (NULL)", KernelTextStateForm.BranchToAddress, jmp32, rt))
                : tail;
            var after = patched.ReadBytes(tr.Address, 5);
            if (after[0] != Jmp32 && !after.SequenceEqual(retForm))
                states = states.Add(Exact("as booted", after));    // e.g. i386's NULL trampoline "ret; int3; nop; nop; nop"
            Add(KernelSiteKind.StaticCallTrampoline, tr.Index, tr.Address, 5, dynamic: true, states, 0,
                tr.Name is null ? "static call trampoline" : KernelTextTables.TrampolinePrefix + tr.Name);
        }

        // ftrace's own: ftrace_call/ftrace_regs_call call the tracing function (ftrace_stub, ftrace_ops_list_func, an ops'
        // function: any function); ftrace_graph_call jumps to ftrace_stub or ftrace_graph_caller
        ImmutableArray<KernelTextState> callAny = [Branch("call any function", KernelTextStateForm.BranchToFunction, call)];
        foreach (var f in tables.FtraceCalls)
        {
            var states = callAny;
            if (f.Name == "ftrace_graph_call")
            {
                states = [Branch("jmp ftrace_stub", KernelTextStateForm.BranchToAddress, jmp32, f.Stub)];
                if (t.Symbol("ftrace_graph_caller") is { } g)
                    states = states.Add(Branch("jmp ftrace_graph_caller", KernelTextStateForm.BranchToAddress, jmp32, g));
            }
            Add(KernelSiteKind.FtraceCall, f.Index, f.Address, 5, dynamic: true, states, 0, f.Name);
        }

        var writers = Writers(sites, passes);
        var result = new KernelTextSite[total];
        for (int i = 0; i < total; i++)
        {
            var p = sites[i];
            result[i] = new KernelTextSite(p.Kind, p.Index, p.Address, p.Length, Before(p.Address, p.Length), View(patched, p.Address, p.Length),
                p.Dynamic, p.Dynamic ? p.States : [], writers[i], p.Target, p.Detail);
        }
        return ImmutableArray.Create(result);
    }

    private readonly record struct Pending(KernelSiteKind Kind, int Index, ulong Address, int Length, bool Dynamic,
        ImmutableArray<KernelTextState> States, ulong Target, string Detail);

    /// <summary>Whether a NULL tail call at <paramref name="at"/> may be a <c>jmp</c> to the return thunk: only where
    /// <c>cpu_wants_rethunk_at()</c> could say so and rel32 reaches.</summary>
    private static bool TailRethunk(ulong at, ulong thunk, int bitness, Span<byte> scratch) => TryBranch(Jmp32, at, thunk, bitness, scratch);

    /// <summary><c>static_key_enabled()</c> of a key as the image holds it.</summary>
    private static bool KeyEnabled(ElfFile elf, ulong key) =>
        elf.TryReadBytes(key, 4, out var b) && BinaryPrimitives.ReadInt32LittleEndian(b) > 0;

    private static ulong? ReturnThunkOrNull(KernelBootState state, KernelThunks th) => th.Address(state.ReturnThunk);

    private static bool TryBranch(byte op, ulong at, ulong target, int bitness, Span<byte> bytes)
    {
        bytes[0] = op;
        long delta = unchecked((long)(target - (at + 5)));
        if (bitness == 32)
            delta = unchecked((int)(uint)delta);
        else if (delta is < int.MinValue or > int.MaxValue)
            return false;
        BinaryPrimitives.WriteInt32LittleEndian(bytes[1..], (int)delta);
        return true;
    }

    /// <summary>Each site's writers: the passes that changed one of its bytes, found by one sweep per pass over the
    /// sites and the pass's pokes in address order.</summary>
    private static ImmutableArray<BootPass>[] Writers(Pending[] sites, ImmutableArray<BootPassResult> passes)
    {
        var order = Enumerable.Range(0, sites.Length).ToArray();
        Array.Sort(order, (a, b) => sites[a].Address.CompareTo(sites[b].Address));
        var masks = new int[sites.Length];
        for (int p = 0; p < passes.Length; p++)
        {
            var pokes = passes[p].Plan.AsSpan();
            int k = 0;
            foreach (int i in order)
            {
                var s = sites[i];
                ulong end = s.Address + (ulong)s.Length;
                while (k < pokes.Length && pokes[k].End <= s.Address)
                    k++;
                for (int q = k; q < pokes.Length && pokes[q].Address < end; q++)
                {
                    var pk = pokes[q];
                    ulong from = Math.Max(pk.Address, s.Address), to = Math.Min(pk.End, end);
                    int o = (int)(from - pk.Address), len = (int)(to - from);
                    if (!pk.Old.Span.Slice(o, len).SequenceEqual(pk.New.Span.Slice(o, len)))
                    {
                        masks[i] |= 1 << p;
                        break;
                    }
                }
            }
        }
        var cache = new Dictionary<int, ImmutableArray<BootPass>> { [0] = [] };
        var result = new ImmutableArray<BootPass>[sites.Length];
        for (int i = 0; i < sites.Length; i++)
        {
            int m = masks[i];
            if (!cache.TryGetValue(m, out var w))
                cache[m] = w = [.. Enumerable.Range(0, passes.Length).Where(p => (m & (1 << p)) != 0).Select(p => passes[p].Pass)];
            result[i] = w;
        }
        return result;
    }

    private static string Hex(ReadOnlySpan<byte> b) => Convert.ToHexString(b).ToLowerInvariant();
}

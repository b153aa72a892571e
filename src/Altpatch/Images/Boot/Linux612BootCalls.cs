using System.Buffers.Binary;
using System.Text;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>
/// The static calls and static keys that Linux 6.12's own boot code sets with values the image, the CPU and the command
/// line decide, in the order <c>start_kernel()</c> runs it:
/// <list type="bullet">
/// <item><c>apic_setup_apic_calls()</c> (<c>setup_arch()</c>): the <c>apic_call_*</c> static calls from the default APIC
/// driver (<c>apic</c> = <c>&amp;apic_physflat</c>), read by following the function's code over the image's data. The
/// driver stays physflat unless the kernel runs in x2APIC mode (<c>x86_64_probe_apic()</c>) or a hypervisor overrides
/// callbacks (KVM's <c>apic_update_callback()</c>): then they are left as dynamic.</item>
/// <item><c>select_idle_routine()</c> (<c>arch_cpu_finalize_init()</c>): <c>x86_idle</c> = <c>default_idle</c> without
/// MWAIT (or with <c>idle=halt|nomwait</c>, a MONITOR bug or AMD C1E); with MWAIT the choice reads CPUID leaf 5, which
/// cpuinfo does not show, so <c>x86_idle</c> is left as dynamic.</item>
/// <item><c>security_init()</c> (after <c>arch_cpu_finalize_init()</c>), and <c>early_security_init()</c> before it: the
/// LSMs in the order <c>ordered_lsm_parse()</c> gives (<c>CONFIG_LSM</c> from the image, <c>lsm=</c>, <c>security=</c>,
/// each LSM's enable flag and <c>apparmor=</c>/<c>selinux=</c>, exclusive LSMs), each LSM's hooks as its init function
/// registers them (<c>security_add_hooks()</c> calls read from the code), every hook into the first free slot of its
/// <c>static_calls_table</c> entry: <c>__static_call_update()</c> of the slot's static call and
/// <c>static_branch_enable()</c> of its <c>security_hook_active_*</c> key.</item>
/// </list>
/// The final state is written as <c>static_call_update()</c> and <c>static_branch_enable()</c> write it: the trampoline
/// <c>jmp func</c>, each site of the key in kernel text <c>call func</c> / <c>jmp func</c>, each jump label of an enabled
/// key its <c>jmp</c> (arch/x86/kernel/static_call.c, jump_label.c, security/security.c, apic/init.c, process.c of 6.12.118).
/// </summary>
internal static class Linux612BootCalls
{
    private const byte Jmp32 = 0xe9, Jmp8 = 0xeb;
    private const int LsmInfoSize = 48, HookSize = 24, SlotSize = 32;
    private const ulong LsmFlagExclusive = 2, LsmFlagLegacyMajor = 1;

    /// <summary>What the boot code set: per static call key its function (in update order), and the keys enabled.</summary>
    private sealed class Updates
    {
        public readonly List<(ulong Key, ulong Trampoline, ulong Func, string Who)> Calls = [];
        public readonly List<(ulong Key, string Who)> Keys = [];
    }

    /// <summary>The pass: collects the updates, then writes their final state.</summary>
    public static PatchPlan Plan(BootContext ctx, TextPassContext t)
    {
        if (ctx.Bitness != 64)
            return PatchPlan.Empty;
        if (t.Symbols is null)
        {
            t.Decisions.Add("boot static-call updates (apic_setup_apic_calls(), select_idle_routine(), security_init()): NOT DONE: no symbols (give kallsyms or a System.map of the build)");
            return PatchPlan.Empty;
        }
        var u = new Updates();
        Apic(ctx, t, u);
        Idle(ctx, t, u);
        Lsm(ctx, t, u);
        return Write(ctx, t, u);
    }

    /// <summary>How many updates the pass can make at most (for the pass table): the <c>apic_call_*</c>, <c>x86_idle</c> and
    /// LSM trampolines of the image.</summary>
    public static int Count(TextPassContext? t) => t is null ? 0
        : t.Tables.Trampolines.Count(x => x.Name is { } n && (n.StartsWith("apic_call_", StringComparison.Ordinal) || n == "x86_idle" || n.StartsWith("lsm_static_call_", StringComparison.Ordinal)));

    // ------------------------------------------------------------------ apic_setup_apic_calls

    private static void Apic(BootContext ctx, TextPassContext t, Updates u)
    {
        const string fn = "apic_setup_apic_calls";
        if (t.Symbol(fn) is not { } setup || t.Symbol("__static_call_update") is not { } update)
        {
            t.Decisions.Add($"apic_setup_apic_calls(): no {fn} or __static_call_update in the symbols: the apic_call_* static calls are left as dynamic");
            return;
        }
        var state = ctx.State;
        string? dynamic = state.Hypervisor == KernelHypervisor.Kvm ? "a KVM guest: kvm_guest_init()/kvm_setup_pv_ipi() may override apic callbacks (apic_update_callback())"
            : state.HasMacro("X86_FEATURE_X2APIC") ? "the CPU has x2APIC: x86_64_probe_apic() installs an x2APIC driver when the firmware or interrupt remapping enabled x2APIC mode (not known offline)"
            : !state.HasMacro("X86_FEATURE_APIC") ? "no local APIC: the kernel installs apic_noop"
            : t.CommandLine.Arguments.Any(a => a.Name is "nolapic" or "disableapic" or "nox2apic" or "x2apic_phys") ? "nolapic/disableapic/x2apic options on the command line"
            : null;
        if (dynamic is not null)
        {
            t.Decisions.Add($"apic_setup_apic_calls(): not predicted ({dynamic}): the apic_call_* static calls are left as dynamic");
            return;
        }
        var scan = new InitCodeScan(ctx.Image);
        var calls = new List<InitCodeScan.Call>();
        if (!scan.Scan(setup, 0, new HashSet<ulong> { update }, t.Symbols, calls) || calls.Count == 0 || calls.Any(c => c.Rdi is null || c.Rsi is null || c.Rdx is null))
        {
            t.Decisions.Add($"apic_setup_apic_calls(): its static_call_update() calls could not be read ({scan.Failure ?? "no constant key, trampoline and function"}): the apic_call_* static calls are left as dynamic");
            return;
        }
        string driver = t.Symbol("apic") is { } apicVar && scan.TryRead(apicVar, out ulong drv) ? Describe(t, drv) : "?";
        foreach (var c in calls)
            u.Calls.Add((c.Rdi!.Value, c.Rsi!.Value, c.Rdx!.Value, $"apic_setup_apic_calls() ({driver})"));
        t.Decisions.Add($"apic_setup_apic_calls(): APIC driver {driver} (apic's initial value; x86_64_probe_apic() keeps it without x2APIC mode): "
            + string.Join(", ", calls.Select(c => $"{TrampolineName(t, c.Rsi!.Value)} = {(c.Rdx == 0 ? "NULL" : Describe(t, c.Rdx!.Value))}")));
    }

    // ------------------------------------------------------------------ select_idle_routine

    private static void Idle(BootContext ctx, TextPassContext t, Updates u)
    {
        if (t.Symbol(KernelTextTables.TrampolinePrefix + "x86_idle") is not { } tramp || t.Symbol("select_idle_routine") is null)
            return;
        var state = ctx.State;
        string? idle = t.CommandLine.Arguments.LastOrDefault(a => a.Name == "idle").Value;
        string func, why;
        if (idle == "poll")
        {
            t.Decisions.Add("select_idle_routine(): idle=poll: x86_idle stays NULL");
            return;
        }
        if (state.HasMacro("X86_FEATURE_TDX_GUEST") && !(state.HasMacro("X86_FEATURE_MWAIT") && idle is null))
            (func, why) = ("tdx_halt", "a TDX guest");
        else if (idle is "halt" or "nomwait")
            (func, why) = ("default_idle", $"idle={idle}");
        else if (!state.HasMacro("X86_FEATURE_MWAIT"))
            (func, why) = ("default_idle", "no MWAIT");
        else if (state.HasMacro("X86_BUG_MONITOR") || state.HasMacro("X86_BUG_AMD_APIC_C1E"))
            (func, why) = ("default_idle", "MONITOR bug / AMD C1E");
        else
        {
            t.Decisions.Add("select_idle_routine(): the CPU has MWAIT: mwait_idle or default_idle follows CPUID leaf 5 (MWAIT extensions and C1 sub-states), which cpuinfo does not show: x86_idle is left as dynamic");
            return;
        }
        if (t.Symbol(func) is not { } f)
        {
            t.Decisions.Add($"select_idle_routine(): no {func} in the symbols: x86_idle is left as dynamic");
            return;
        }
        ulong key = t.Tables.StaticCalls.FirstOrDefault(s => s.Trampoline == tramp).Key;
        if (key == 0 && t.Symbol("__SCK__x86_idle") is { } k)
            key = k;
        u.Calls.Add((key, tramp, f, "select_idle_routine()"));
        t.Decisions.Add($"select_idle_routine(): x86_idle = {func} ({why})");
    }

    // ------------------------------------------------------------------ security_init

    private sealed class LsmInfo
    {
        public required string Name { get; init; }
        public int Order { get; init; }
        public ulong Flags { get; init; }
        public ulong EnabledPtr { get; init; }
        public ulong Init { get; init; }
        public bool Early { get; init; }
        /// <summary>null: no enabled pointer (unset); else its value.</summary>
        public bool? Enabled { get; set; }
    }

    private static void Lsm(BootContext ctx, TextPassContext t, Updates u)
    {
        if (t.Symbol("__start_lsm_info") is not { } start || t.Symbol("__end_lsm_info") is not { } end
            || t.Symbol("security_add_hooks") is not { } addHooks)
        {
            if (t.Tables.Trampolines.Any(x => x.Name?.StartsWith("lsm_static_call_", StringComparison.Ordinal) == true))
                t.Decisions.Add("security_init(): no __start_lsm_info/__end_lsm_info/security_add_hooks in the symbols: the LSM static calls are left as dynamic");
            return;
        }
        var elf = ctx.Image.Elf;
        var lsms = new List<LsmInfo>();
        var early = new List<LsmInfo>();
        if (!ReadLsmInfos(ctx, start, end, false, lsms, out string? bad)
            || (t.Symbol("__start_early_lsm_info") is { } es && t.Symbol("__end_early_lsm_info") is { } ee && !ReadLsmInfos(ctx, es, ee, true, early, out bad)))
        {
            t.Decisions.Add($"security_init(): {bad}: the LSM static calls are left as dynamic");
            return;
        }
        // apparmor= and selinux= (the enable flags those LSMs point lsm_info.enabled at)
        foreach (var (name, value) in t.CommandLine.Arguments)
        {
            if (name is "apparmor" or "selinux" && value is not null && lsms.FirstOrDefault(l => l.Name == name) is { EnabledPtr: not 0 } l
                && ulong.TryParse(value, out ulong v))
                l.Enabled = v != 0;
        }
        string? chosenLsm = t.CommandLine.Arguments.LastOrDefault(a => a.Name == "lsm").Value;
        string? chosenMajor = t.CommandLine.Arguments.LastOrDefault(a => a.Name == "security").Value;
        string order;
        string source;
        if (chosenLsm is not null)
        {
            order = chosenLsm;
            source = "lsm= on the command line";
            chosenMajor = null;                         // "security=%s is ignored because it is superseded by lsm=%s"
        }
        else if (FindBuiltinOrder(ctx, lsms.Concat(early)) is { } builtin)
        {
            order = builtin;
            source = "CONFIG_LSM, read from the image";
        }
        else
        {
            t.Decisions.Add("security_init(): the image's CONFIG_LSM string (builtin_lsm_order) was not found: the LSM static calls are left as dynamic");
            return;
        }

        // early_security_init(): each early LSM enabled unless its flag says otherwise, prepared and initialised
        var initOrder = new List<LsmInfo>();
        LsmInfo? exclusive = null;
        foreach (var l in early)
        {
            l.Enabled ??= true;
            if (Prepare(l, ref exclusive))
                initOrder.Add(l);
        }
        // ordered_lsm_parse()
        var ordered = new List<LsmInfo>();
        void Append(LsmInfo l)
        {
            if (ordered.Contains(l))
                return;
            l.Enabled ??= true;
            ordered.Add(l);
        }
        foreach (var l in lsms.Where(l => l.Order == -1))
            Append(l);
        if (chosenMajor is not null)
        {
            foreach (var l in lsms.Where(l => (l.Flags & LsmFlagLegacyMajor) != 0 && l.Name != chosenMajor))
                l.Enabled = false;
        }
        foreach (var name in order.Split(','))
        {
            foreach (var l in lsms.Where(l => l.Name == name && l.Order == 0))
                Append(l);
        }
        if (chosenMajor is not null)
        {
            foreach (var l in lsms.Where(l => l.Name == chosenMajor && !ordered.Contains(l)))
                Append(l);
        }
        foreach (var l in lsms.Where(l => l.Order == 1))
            Append(l);
        foreach (var l in lsms.Where(l => !ordered.Contains(l)))
            l.Enabled = false;
        foreach (var l in ordered)
        {
            if (Prepare(l, ref exclusive))
                initOrder.Add(l);
        }

        // each initialised LSM's security_add_hooks() calls, then lsm_static_call_init() per hook
        var scan = new InitCodeScan(ctx.Image);
        var registrations = new List<(LsmInfo Lsm, ulong Hooks, int Count)>();
        foreach (var l in initOrder)
        {
            var calls = new List<InitCodeScan.Call>();
            if (!scan.Scan(l.Init, 0, new HashSet<ulong> { addHooks }, t.Symbols, calls))
            {
                t.Decisions.Add($"security_init(): {l.Name}'s init function could not be read ({scan.Failure}): the LSM static calls are left as dynamic");
                return;
            }
            foreach (var c in calls)
            {
                if (c.Rdi is not { } hooks || c.Rsi is not { } count || count is 0 or > 4096)
                {
                    t.Decisions.Add($"security_init(): {l.Name}: security_add_hooks() at 0x{c.At:x} without a constant array and count: the LSM static calls are left as dynamic");
                    return;
                }
                registrations.Add((l, hooks, (int)count));
            }
        }
        // MAX_LSM_COUNT slots per hook: the distance between consecutive hooks' slot arrays in static_calls_table
        var hooksRead = new List<(LsmInfo Lsm, ulong Scalls, ulong Func)>();
        var starts = new SortedSet<ulong>();
        foreach (var (l, hooks, count) in registrations)
        {
            for (int i = 0; i < count; i++)
            {
                ulong at = hooks + (ulong)(i * HookSize);
                if (!elf.TryReadPointer(at, out ulong scalls) || !elf.TryReadPointer(at + 8, out ulong func) || scalls == 0 || func == 0)
                {
                    t.Decisions.Add($"security_init(): {l.Name}: hook {i} of the array at 0x{hooks:x} cannot be read: the LSM static calls are left as dynamic");
                    return;
                }
                hooksRead.Add((l, scalls, func));
                starts.Add(scalls);
            }
        }
        int maxLsm = MaxLsmCount(ctx, t, starts);
        if (maxLsm <= 0)
        {
            t.Decisions.Add("security_init(): MAX_LSM_COUNT could not be found from static_calls_table: the LSM static calls are left as dynamic");
            return;
        }
        var used = new HashSet<ulong>();
        int n = 0;
        foreach (var (l, scalls, func) in hooksRead)
        {
            ulong? slot = null;
            for (int i = 0; i < maxLsm; i++)
            {
                ulong s = scalls + (ulong)(i * SlotSize);
                if (used.Add(s))
                {
                    slot = s;
                    break;
                }
            }
            if (slot is not { } sl || !elf.TryReadPointer(sl, out ulong key) || !elf.TryReadPointer(sl + 8, out ulong tramp) || !elf.TryReadPointer(sl + 24, out ulong active))
            {
                t.Decisions.Add($"security_init(): {l.Name}: no free static call slot at 0x{scalls:x} (the kernel panics: \"Ran out of static slots\"): the LSM static calls are left as dynamic");
                return;
            }
            u.Calls.Add((key, tramp, func, $"security_init() ({l.Name})"));
            u.Keys.Add((active, $"security_init() ({l.Name})"));
            n++;
        }
        t.Decisions.Add($"security_init(): LSM order from {source}: initializing lsm={string.Join(",", initOrder.Select(l => l.Name))}; "
            + $"{registrations.Count} security_add_hooks() calls, {n} hooks into their static call slots (MAX_LSM_COUNT {maxLsm}), as many security_hook_active keys enabled");
    }

    /// <summary><c>lsm_allowed()</c> and <c>prepare_lsm()</c>: whether the LSM is initialised.</summary>
    private static bool Prepare(LsmInfo l, ref LsmInfo? exclusive)
    {
        bool enabled = l.Enabled == true && !((l.Flags & LsmFlagExclusive) != 0 && exclusive is not null);
        l.Enabled = enabled;
        if (enabled && (l.Flags & LsmFlagExclusive) != 0 && exclusive is null)
            exclusive = l;
        return enabled;
    }

    private static bool ReadLsmInfos(BootContext ctx, ulong start, ulong end, bool early, List<LsmInfo> into, out string? bad)
    {
        bad = null;
        var elf = ctx.Image.Elf;
        if (end < start || (end - start) % LsmInfoSize != 0 || end - start > 64 * LsmInfoSize)
        {
            bad = $"the lsm_info table 0x{start:x}..0x{end:x} is not a whole number of {LsmInfoSize}-byte entries";
            return false;
        }
        for (ulong a = start; a < end; a += LsmInfoSize)
        {
            if (!elf.TryReadBytes(a, LsmInfoSize, out var e))
            {
                bad = $"the lsm_info at 0x{a:x} has no bytes in the image";
                return false;
            }
            ulong namePtr = BinaryPrimitives.ReadUInt64LittleEndian(e);
            string? name = ReadString(elf, namePtr);
            ulong enabledPtr = BinaryPrimitives.ReadUInt64LittleEndian(e[24..]);
            bool? enabled = null;
            if (enabledPtr != 0)
            {
                if (!elf.TryReadBytes(enabledPtr, 4, out var ev))
                {
                    bad = $"the lsm_info at 0x{a:x}: its enabled flag at 0x{enabledPtr:x} has no bytes";
                    return false;
                }
                enabled = BinaryPrimitives.ReadInt32LittleEndian(ev) != 0;
            }
            ulong init = BinaryPrimitives.ReadUInt64LittleEndian(e[32..]);
            int order = BinaryPrimitives.ReadInt32LittleEndian(e[8..]);
            if (name is null || init == 0 || order is < -1 or > 1)
            {
                bad = $"the lsm_info at 0x{a:x} is not one (name, order {order}, init 0x{init:x})";
                return false;
            }
            into.Add(new LsmInfo
            {
                Name = name, Order = order, Flags = BinaryPrimitives.ReadUInt64LittleEndian(e[16..]), EnabledPtr = enabledPtr, Init = init,
                Early = early, Enabled = enabled,
            });
        }
        return true;
    }

    private static string? ReadString(ElfFile elf, ulong at)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < 64; i++)
        {
            if (!elf.TryReadBytes(at + (ulong)i, 1, out var b))
                return null;
            if (b[0] == 0)
                return sb.Length > 0 ? sb.ToString() : null;
            if (b[0] is < 0x20 or > 0x7e)
                return null;
            sb.Append((char)b[0]);
        }
        return null;
    }

    /// <summary><c>builtin_lsm_order</c> (<c>CONFIG_LSM</c>, a constant the compiler folds): the one NUL-terminated string of
    /// comma-separated words in the image's data that names the most built-in LSMs (at least two).</summary>
    private static string? FindBuiltinOrder(BootContext ctx, IEnumerable<LsmInfo> lsms)
    {
        var names = lsms.Select(l => l.Name).ToHashSet(StringComparer.Ordinal);
        var data = ctx.Image.Elf.Sections.Where(s => s.IsAllocated && !s.IsExecutable && s.HasFileBytes && s.Size > 0).ToList();
        // a string literal: .rodata first (where Debian's build has it), every data section only if it is not there
        return FindBuiltinOrder(ctx, data.Where(s => s.Name == ".rodata"), names) ?? FindBuiltinOrder(ctx, data, names);
    }

    private static string? FindBuiltinOrder(BootContext ctx, IEnumerable<ElfSection> sections, HashSet<string> names)
    {
        string? best = null;
        int bestScore = 1;
        bool tie = false;
        foreach (var sec in sections)
        {
            var b = ctx.Image.Elf.SectionBytes(sec).Span;
            int i = 0;
            while (i < b.Length)
            {
                // a run of [a-z0-9_,] after a NUL and ending in a NUL
                if (!IsWord(b[i]) || (i > 0 && b[i - 1] != 0))
                {
                    i++;
                    continue;
                }
                int j = i;
                int commas = 0;
                while (j < b.Length && (IsWord(b[j]) || b[j] == (byte)','))
                {
                    if (b[j] == (byte)',')
                        commas++;
                    j++;
                }
                if (j < b.Length && b[j] == 0 && commas > 0 && j - i < 512)
                {
                    string s = Encoding.ASCII.GetString(b[i..j]);
                    int score = s.Split(',').Count(names.Contains);
                    if (score > bestScore)
                    {
                        (best, bestScore, tie) = (s, score, false);
                    }
                    else if (score == bestScore && best is not null && s != best)
                        tie = true;
                }
                i = j + 1;
            }
        }
        return tie ? null : best;
    }

    private static bool IsWord(byte c) => c is >= (byte)'a' and <= (byte)'z' or >= (byte)'0' and <= (byte)'9' or (byte)'_';

    /// <summary><c>MAX_LSM_COUNT</c>: the smallest distance between two hooks' slot arrays, in slots; checked against the
    /// trampoline names when the symbols name them (<c>lsm_static_call_HOOK_I</c>).</summary>
    private static int MaxLsmCount(BootContext ctx, TextPassContext t, SortedSet<ulong> starts)
    {
        ulong min = ulong.MaxValue;
        ulong? prev = null;
        foreach (var s in starts)
        {
            if (prev is { } p && s - p < min)
                min = s - p;
            prev = s;
        }
        if (min == ulong.MaxValue || min % SlotSize != 0 || min / SlotSize is 0 or > 64)
            return 0;
        int max = (int)(min / SlotSize);
        // every start's slots must be its hook's 0..max-1
        foreach (var s in starts)
        {
            string? hook = null;
            for (int i = 0; i < max; i++)
            {
                if (!ctx.Image.Elf.TryReadPointer(s + (ulong)(i * SlotSize) + 8, out ulong tramp))
                    return 0;
                if (TrampolineName(t, tramp) is not { } name || !name.StartsWith("lsm_static_call_", StringComparison.Ordinal))
                    continue;
                string suffix = "_" + i.ToString(System.Globalization.CultureInfo.InvariantCulture);
                if (!name.EndsWith(suffix, StringComparison.Ordinal))
                    return 0;
                string h = name[..^suffix.Length];
                if (hook is not null && h != hook)
                    return 0;
                hook = h;
            }
        }
        return max;
    }

    // ------------------------------------------------------------------ the final state

    private static PatchPlan Write(BootContext ctx, TextPassContext t, Updates u)
    {
        var text = new PassText(ctx.Poker);
        // key->func after all updates, in order; static_call_update() of an equal function does nothing
        var final = new Dictionary<ulong, (ulong Tramp, ulong Func, string Who)>();
        foreach (var (key, tramp, func, who) in u.Calls)
            final[key] = (tramp, func, who);
        var byTrampoline = t.Tables.StaticCalls.GroupBy(s => s.Trampoline).ToDictionary(g => g.Key, g => g.ToList());
        var byKey = t.Tables.StaticCalls.GroupBy(s => s.Key).ToDictionary(g => g.Key, g => g.ToList());
        Span<byte> cur = stackalloc byte[6];
        Span<byte> buf = stackalloc byte[6];
        Span<byte> sig = stackalloc byte[3];
        int writes = 0;
        foreach (var (key, (tramp, func, who)) in final)
        {
            ulong initial = Linux61TextPasses.KeyFuncOrZero(ctx, key);
            if (func == initial)
                continue;
            var tsite = new SiteRef(SiteKind.Raw, 0, KernelTextTables.TrampolinePrefix + (TrampolineName(t, tramp) ?? $"0x{tramp:x}"));
            var tc = cur[..5];
            text.Read(tramp, tc, tsite);
            text.Read(tramp + 5, sig, tsite);
            if (!sig.SequenceEqual(KernelTextTables.TrampolineSignature))
                throw new PatchException(tsite, tramp, "trampoline signature fail (the kernel's BUG() in __static_call_validate())");
            int n = Linux61TextPasses.Transform(ctx, t, tramp, tc, tail: true, func, rethunk: true, buf, tsite, isTrampoline: true, out string why);
            if (text.Write(tramp, buf[..n], tsite, $"{who}: {why}"))
                writes++;
            var sites = byKey.TryGetValue(key, out var k) ? k : byTrampoline.TryGetValue(tramp, out var tr) ? tr : [];
            foreach (var s in sites)
            {
                if (!Linux61TextPasses.IsKernelText(ctx, s.Address))
                    continue;                           // built-in __exit: not kernel_text_address()
                var site = new SiteRef(SiteKind.Raw, s.Index, KernelTextTables.StaticCallSites);
                var sc = cur[..s.Length];
                text.Read(s.Address, sc, site);
                n = Linux61TextPasses.Transform(ctx, t, s.Address, sc, s.Tail, func, rethunk: true, buf, site, isTrampoline: false, out why);
                if (text.Write(s.Address, buf[..n], site, $"{who}: {why}"))
                    writes++;
            }
        }
        // static_branch_enable(): each jump label of the key to JUMP_LABEL_JMP when enabled ^ branch
        var enabled = u.Keys.Select(k => k.Key).ToHashSet();
        int labels = Linux61TextPasses.StaticBranchEnable(ctx, t, text, enabled, "static_branch_enable()");
        if (final.Count > 0 || enabled.Count > 0)
            t.Decisions.Add($"boot static-call updates: {final.Count} static calls set ({writes} sites and trampolines rewritten), {enabled.Count} keys enabled ({labels} jump labels rewritten)");
        ForceReinit(ctx, t, text);
        return text.ToPlan();
    }

    /// <summary>
    /// 6.12's <c>apply_returns()</c> calls <c>static_call_force_reinit()</c> when <c>cpu_wants_rethunk()</c>, and
    /// <c>static_call_init()</c> runs again as an <c>early_initcall</c> (after <c>security_init()</c>): every site (all
    /// sections) is transformed once more for its key's function, now with <c>X86_FEATURE_RETHUNK</c> set, so a NULL tail
    /// call becomes <c>jmp x86_return_thunk</c> where <c>cpu_wants_rethunk_at()</c> says so (a NULL <c>jcc</c> goes to the
    /// return thunk instead of <c>__static_call_return</c>).
    /// <para>With call depth tracking (<c>retbleed=stuff</c>, which sets <c>X86_FEATURE_RETHUNK</c> too) the thunks are
    /// initialised by then, so each non-tail site with a function goes through <c>callthunks_translate_call_dest()</c>:
    /// <c>call F</c> becomes <c>call F - tsize</c> and the accounting thunk is written into <c>F</c>'s padding
    /// (<see cref="Linux612CallThunks.KernelTranslator"/>). That includes <c>__static_call_return0</c>: translated first,
    /// it is no longer <c>&amp;__static_call_return0</c>, so its sites get the call instead of <c>xor5rax</c>. The
    /// trampolines (<c>JMP</c>/<c>RET</c>) and tail calls are never translated. The static calls <c>security_init()</c>
    /// updated after <c>callthunks_patch_builtin_calls()</c> were translated then already: the same final bytes.</para>
    /// </summary>
    private static void ForceReinit(BootContext ctx, TextPassContext t, PassText text)
    {
        if (!ctx.State.Has(Cpu.CpuFeature.Rethunk))
            return;
        ulong? scr = t.Symbol(t.Rules.StaticCallReturn);
        ulong? thunk = ctx.Thunks.ReturnThunk, chosen = ctx.Thunks.Address(ctx.State.ReturnThunk);
        ulong? return0 = t.Symbol(t.Rules.Return0);
        var translate = Linux612CallThunks.KernelTranslator(ctx, text);
        Span<byte> cur = stackalloc byte[6];
        Span<byte> buf = stackalloc byte[6];
        int n = 0, translated = 0;
        foreach (var s in t.Tables.StaticCalls)
        {
            var site = new SiteRef(SiteKind.Raw, s.Index, KernelTextTables.StaticCallSites);
            var c = cur[..s.Length];
            if (!s.Tail)
            {
                if (translate is null || s.Length != 5)
                    continue;
                text.Read(s.Address, c, site);
                // the key's function as static_call_init() left it: call F, or xor5rax (__static_call_return0); a NOP is NULL
                ulong? func = c[0] == X86Call ? ctx.Image.Elf.AddressPlus(s.Address + 5, BinaryPrimitives.ReadInt32LittleEndian(c[1..]))
                    : c.SequenceEqual(KernelTextTables.Xor5Rax) ? return0 : null;
                if (func is not { } f)
                    continue;
                ulong dest = translate(f, site);
                if (dest == f)
                    continue;                               // skipped, not core text, or no usable padding: as it was
                buf[0] = X86Call;
                BinaryPrimitives.WriteInt32LittleEndian(buf[1..5], ctx.Rel32(s.Address, 5, dest, site));
                if (text.Write(s.Address, buf[..5], site, $"static_call_init() again: callthunks_translate_call_dest(0x{f:x}): call 0x{dest:x}"))
                    translated++;
                continue;
            }
            text.Read(s.Address, c, site);
            bool isNull = s.Length == 6
                ? c[0] == 0x0f && (c[1] & 0xf0) == 0x80 && ctx.Image.Elf.AddressPlus(s.Address + 6, BinaryPrimitives.ReadInt32LittleEndian(c[2..])) is var jt && (jt == scr || jt == thunk || jt == chosen)
                : c.SequenceEqual(RetForm) || (c[0] == Jmp32 && ctx.Image.Elf.AddressPlus(s.Address + 5, BinaryPrimitives.ReadInt32LittleEndian(c[1..])) is var target && (target == thunk || target == chosen));
            if (!isNull)
                continue;
            int len = Linux61TextPasses.Transform(ctx, t, s.Address, c, tail: true, 0, rethunk: true, buf, site, isTrampoline: false, out string why);
            if (text.Write(s.Address, buf[..len], site, "static_call_force_reinit(): " + why))
                n++;
        }
        t.Decisions.Add($"static_call_force_reinit() (apply_returns() with RETHUNK) and static_call_init() again as an early_initcall: {n} NULL tail-call sites rewritten for the return thunk"
            + (translate is null ? "" : $"; call depth tracking: {translated} calls aimed at their callee's accounting thunk (callthunks_translate_call_dest())"));
    }

    private const byte X86Call = 0xe8;

    private static ReadOnlySpan<byte> RetForm => [0xc3, 0xcc, 0xcc, 0xcc, 0xcc];

    private static string? TrampolineName(TextPassContext t, ulong tramp) =>
        t.Symbols!.TryFind(tramp, out var s, out ulong off) && off == 0 && s.Name.StartsWith(KernelTextTables.TrampolinePrefix, StringComparison.Ordinal)
            ? s.Name[KernelTextTables.TrampolinePrefix.Length..] : null;

    private static string Describe(TextPassContext t, ulong a) =>
        t.Symbols!.TryFind(a, out var s, out ulong off) && off == 0 ? s.Name : $"0x{a:x}";
}

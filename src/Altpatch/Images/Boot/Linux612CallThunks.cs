using System.Collections.Immutable;
using System.Buffers.Binary;
using Altpatch.Code;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>
/// 6.12 <c>callthunks_patch_builtin_calls()</c> (<c>arch/x86/kernel/callthunks.c</c>, call depth tracking for
/// <c>retbleed=stuff</c>): for every call in <c>.call_sites</c>, then every <c>.altinstructions</c> site, inside
/// <c>[_text, _etext)</c> whose direct callee is in the core text and not one the kernel skips, the callee's padding
/// (<c>CONFIG_CALL_PADDING</c>: NOPs before the function) gets <c>skl_call_thunk_template</c> (<c>sarq $5,
/// %gs:pcpu_hot+X86_call_depth(%rip)</c>, its displacement moved for where it lands), and the call is aimed at it.
/// </summary>
internal static class Linux612CallThunks
{
    /// <summary>The callees <c>skip_addr()</c> leaves alone (symbols; a missing one is skipped).</summary>
    private static readonly string[] Skipped = ["error_entry", "paranoid_entry", "xen_error_entry", "__switch_to_asm", "ret_from_fork", "__fentry__"];

    /// <summary><c>KEXEC_CONTROL_CODE_MAX_SIZE</c>.</summary>
    private const ulong KexecControlCodeMaxSize = 2048;

    /// <summary>What <c>patch_dest()</c> needs: the template (<c>skl_call_thunk_template</c>) and its size, and the callees
    /// <c>skip_addr()</c> leaves alone.</summary>
    private sealed record Setup(ulong Template, byte[] TemplateBytes, HashSet<ulong> Skip, ulong? Kexec)
    {
        public int Size => TemplateBytes.Length;

        /// <summary><c>skip_addr()</c>.</summary>
        public bool Skips(ulong dest) => Skip.Contains(dest) || (Kexec is { } k && dest >= k && dest < k + KexecControlCodeMaxSize);
    }

    private static Setup Prepare(BootContext ctx, SiteRef anySite)
    {
        var image = ctx.Image;
        if (!image.TryGetSymbols(out var symbols))
            throw new PatchException(anySite, 0, "call depth tracking needs the image's symbols (kallsyms): skl_call_thunk_template and the skipped callees");
        ulong Sym(string name) => symbols.TryGetAddress(name, out var a) ? a
            : throw new PatchException(anySite, 0, $"call depth tracking: the image has no symbol {name}");
        ulong template = Sym("skl_call_thunk_template");
        int tsize = (int)(Sym("skl_call_thunk_tail") - template);
        if (tsize is <= 0 or > 32)
            throw new PatchException(anySite, template, $"skl_call_thunk_template is {tsize} bytes");
        var skip = new HashSet<ulong>();
        foreach (var s in Skipped)
        {
            if (symbols.TryGetAddress(s, out var a))
                skip.Add(a);
        }
        ulong? kexec = symbols.TryGetAddress("relocate_kernel", out var rk) ? rk : null;
        return new Setup(template, ctx.ReadOriginal(template, tsize), skip, kexec);
    }

    /// <summary><c>patch_dest()</c>'s thunk: the template relocated for the padding at <paramref name="padAt"/>.</summary>
    private static byte[] ThunkFor(BootContext ctx, Setup setup, ulong padAt, SiteRef site)
    {
        var buf = new byte[64];
        setup.TemplateBytes.CopyTo(buf, 0);
        Linux612Passes.ApplyRelocation(ctx, buf, padAt, setup.Size, setup.Template, setup.Size, site);
        Linux612Passes.OptimizeNops(ctx, buf, setup.Size, padAt, default);
        return buf[..setup.Size];
    }

    /// <summary><c>patch_dest()</c> on padding bytes <paramref name="pad"/>: "already patched" or all NOPs is the pad (which
    /// then holds the thunk), anything else is NULL ("Invalid padding area").</summary>
    private static bool PadUsable(ReadOnlySpan<byte> pad, ReadOnlySpan<byte> thunk)
    {
        if (pad.SequenceEqual(thunk))
            return true;
        foreach (byte b in pad)
        {
            if (b != X86.Nop)
                return false;
        }
        return true;
    }

    /// <summary><c>patch_dest()</c> on padding that <paramref name="text"/> writes: false when the padding at
    /// <paramref name="padAt"/> is neither NOPs nor the thunk ("Invalid padding area"); else the thunk is there after it,
    /// written unless it already was (<paramref name="wrote"/>).</summary>
    private static bool PatchDest(PassText text, ulong padAt, byte[] thunk, SiteRef site, string why, out bool wrote)
    {
        Span<byte> pad = stackalloc byte[thunk.Length];
        text.Read(padAt, pad, site);
        wrote = false;
        if (!PadUsable(pad, thunk))
            return false;
        wrote = text.Write(padAt, thunk, site, why);   // nothing when the thunk is there already
        return true;
    }

    /// <summary><c>call_get_dest()</c>: the callee of the call at <paramref name="addr"/>; null for a patched-out call or a
    /// callee <c>skip_addr()</c> names.</summary>
    private static ulong? CallGetDest(BootContext ctx, PassText text, Setup setup, ulong addr, byte[] window, SiteRef site)
    {
        var code = Linux61Passes.ReadWindow(text, addr, window, site);
        var insn = KernelInsn.Decode(code, addr, ctx.Bitness);
        if (!insn.IsValid || insn.Op1 != X86.Call)
            return null;                                    // "Patched out call?"
        return setup.Skips(insn.Target) ? null : insn.Target;
    }

    /// <summary>The calls <c>callthunks_setup()</c> walks: every <c>.call_sites</c> entry of <paramref name="elf"/>, then every
    /// <c>.altinstructions</c> site.</summary>
    private static IEnumerable<(ulong Address, SiteRef Site)> CallSites(ElfFile elf, ImmutableArray<KernelAltSite> alternatives)
    {
        if (elf.FindSection(".call_sites") is { } sec && sec.HasFileBytes)
        {
            var table = elf.SectionBytes(sec).ToArray();
            for (int i = 0; i + 4 <= table.Length; i += 4)
                yield return (elf.AddressPlus(sec.Address + (ulong)i, BinaryPrimitives.ReadInt32LittleEndian(table.AsSpan(i))), new SiteRef(new SiteKind("call"), i / 4, ".call_sites"));
        }
        foreach (var a in alternatives)
            yield return (a.Address, new SiteRef(SiteKind.Alternative, a.Index, KernelPatchTables.AltInstructions));
    }

    /// <summary>Entries of a module's <c>.call_sites</c>.</summary>
    public static int CallSiteCount(ElfFile elf) => elf.FindSection(".call_sites") is { } s && s.HasFileBytes ? (int)(s.Size / 4) : 0;

    /// <summary>
    /// 6.12 <c>callthunks_patch_module_calls()</c> → <c>callthunks_setup(cs, ct)</c> with the module's core text as
    /// <c>ct</c>: nothing unless the boot initialised the thunks (<c>X86_FEATURE_CALL_DEPTH</c>); then every call of the
    /// module's <c>.call_sites</c> and <c>.altinstructions</c> inside its core text whose callee is core text (the module's,
    /// the kernel's, or another loaded module's: <c>is_coretext()</c>) and not skipped is aimed at the thunk in the callee's
    /// padding, which is written into the module when the callee is the module's (<c>direct</c>; the kernel's and other
    /// modules' paddings are poked in their own text, outside the module).
    /// </summary>
    /// <param name="ctx">The module's context (its tables, its poker).</param>
    /// <param name="kernel">The kernel as booted (its text range and patched bytes: a kernel callee's padding).</param>
    /// <param name="others">Modules loaded before, linked (their paddings as built).</param>
    /// <param name="decisions">Where the pass says what it did.</param>
    public static PatchPlan PatchModule(BootContext ctx, KernelPatchResult kernel, IReadOnlyList<ElfFile> others, List<string> decisions)
    {
        var module = ctx.TableElf;
        if (!ctx.State.HasMacro("X86_FEATURE_CALL_DEPTH"))
            return PatchPlan.Empty;                         // !thunks_initialized
        var anySite = new SiteRef(new SiteKind("call"), 0, ".call_sites");
        var setup = Prepare(ctx, anySite);
        var text = new PassText(ctx.Poker);
        var window = new byte[16];
        var call = new byte[5];
        ulong ctStart = ctx.Thunks.TextStart, ctEnd = ctx.Thunks.TextEnd;
        int patched = 0, pads = 0;

        void PatchCall(ulong addr, SiteRef site)
        {
            if (addr < ctStart || addr >= ctEnd)
                return;                                     // !within_coretext(ct, addr)
            if (CallGetDest(ctx, text, setup, addr, window, site) is not { } dest)
                return;
            bool direct = dest >= ctStart && dest < ctEnd;
            ulong padAt = dest - (ulong)setup.Size;
            var thunk = ThunkFor(ctx, setup, padAt, site);
            if (direct)
            {
                if (!PatchDest(text, padAt, thunk, site, "call depth accounting thunk", out bool wrote))
                    return;
                if (wrote)
                    pads++;
            }
            else if (!OtherPadUsable(kernel, others, dest, padAt, thunk))
                return;                                     // !is_coretext() or invalid padding
            call[0] = X86.Call;
            BinaryPrimitives.WriteInt32LittleEndian(call.AsSpan(1), ctx.Rel32(addr, X86.CallSize, padAt, site));
            text.Write(addr, call, site, $"call the accounting thunk of 0x{dest:x}");
            patched++;
        }

        foreach (var (addr, site) in CallSites(module, ctx.Tables.Alternatives))
            PatchCall(addr, site);
        decisions.Add($"callthunks_patch_module_calls(): {patched} calls aimed at their callee's accounting thunk, {pads} thunks written into the module's padding");
        return text.ToPlan();
    }

    /// <summary>For a callee outside the module: whether it is core text of the kernel or of a module loaded before
    /// (<c>is_coretext()</c>) and its padding is NOPs or the thunk already.</summary>
    private static bool OtherPadUsable(KernelPatchResult kernel, IReadOnlyList<ElfFile> others, ulong dest, ulong padAt, byte[] thunk)
    {
        if (dest >= kernel.Thunks.TextStart && dest < kernel.Thunks.TextEnd)
            return kernel.Patched.TryReadBytes(padAt, thunk.Length, out var kb) && PadUsable(kb, thunk);
        foreach (var o in others)
        {
            var (s, e) = KernelModuleLoader.ModuleText(o);
            if (dest >= s && dest < e)
                return o.TryReadBytes(padAt, thunk.Length, out var ob) && PadUsable(ob, thunk);
        }
        return false;
    }

    /// <summary>6.12 <c>callthunks_translate_call_dest()</c> for a module's static call: with the thunks initialised, a core
    /// text callee that is not skipped becomes its padding's thunk when the padding can hold it (a callee of the module
    /// gets the thunk written into its padding, <c>patch_dest(dest, false)</c>); else the callee itself.</summary>
    public static ulong TranslateCallDest(BootContext ctx, ulong dest, KernelPatchResult kernel, IReadOnlyList<ElfFile> others, PassText moduleText)
    {
        if (!ctx.State.HasMacro("X86_FEATURE_CALL_DEPTH"))
            return dest;
        var site = new SiteRef(SiteKind.Raw, 0, KernelTextTables.StaticCallSites);
        var setup = Prepare(ctx, site);
        if (setup.Skips(dest))
            return dest;
        ulong padAt = dest - (ulong)setup.Size;
        var thunk = ThunkFor(ctx, setup, padAt, site);
        var (s, e) = KernelModuleLoader.ModuleText(ctx.TableElf);
        if (dest >= s && dest < e)
            return PatchDest(moduleText, padAt, thunk, site, "callthunks_translate_call_dest: call depth accounting thunk", out _) ? padAt : dest;
        return OtherPadUsable(kernel, others, dest, padAt, thunk) ? padAt : dest;
    }

    /// <summary>
    /// 6.12 <c>callthunks_translate_call_dest()</c> in the kernel once <c>callthunks_patch_builtin_calls()</c> has run
    /// (<c>thunks_initialized</c>, <c>X86_FEATURE_CALL_DEPTH</c>): what <c>__static_call_transform(CALL)</c> aims a
    /// static call at. A callee in <c>[_text, _etext)</c> that <c>skip_addr()</c> does not name and whose padding is NOPs
    /// or the thunk already gets the thunk written into its padding (<c>patch_dest(dest, false)</c>) and the call aims at
    /// it; any other callee is returned as it is. Null without call depth tracking.
    /// </summary>
    /// <param name="ctx">The kernel's context (the template is read as built).</param>
    /// <param name="text">Where the thunks are written (and the paddings read as the boot left them so far).</param>
    public static Func<ulong, SiteRef, ulong>? KernelTranslator(BootContext ctx, PassText text)
    {
        if (!ctx.State.HasMacro("X86_FEATURE_CALL_DEPTH"))
            return null;
        Setup? setup = null;
        ulong start = ctx.Thunks.TextStart, end = ctx.Thunks.TextEnd;
        return (dest, site) =>
        {
            setup ??= Prepare(ctx, site);
            if (setup.Skips(dest) || dest < start || dest >= end)
                return dest;                                // skip_addr() or !is_coretext(NULL, dest)
            ulong padAt = dest - (ulong)setup.Size;
            var thunk = ThunkFor(ctx, setup, padAt, site);
            return PatchDest(text, padAt, thunk, site, $"callthunks_translate_call_dest(): call depth accounting thunk of 0x{dest:x}", out _)
                ? padAt
                : dest;                                     // "Invalid padding area": patch_dest() is NULL
        };
    }

    /// <summary>The bytes of <c>skl_call_thunk_template</c> (<c>skl_call_thunk_tail - skl_call_thunk_template</c>), read
    /// from the symbols; 0 when the image has no such symbols.</summary>
    public static int TemplateSize(KernelSymbols symbols) =>
        symbols.TryGetAddress("skl_call_thunk_template", out var t) && symbols.TryGetAddress("skl_call_thunk_tail", out var e) && e > t && e - t <= 32
            ? (int)(e - t) : 0;

    /// <summary>Whether <c>skip_addr()</c> names the function called <paramref name="name"/> (the kexec control code is
    /// not a function start).</summary>
    public static bool IsSkippedName(string name) => Skipped.Contains(name, StringComparer.Ordinal);

    /// <summary>
    /// 6.12 <c>patch_dest()</c>'s thunk for a padding (<c>skl_call_thunk_template</c> relocated to its address): what the
    /// verifier allows in the padding of any function a static call may be aimed at.
    /// </summary>
    public static Func<ulong, byte[]> Thunks(BootContext ctx)
    {
        var site = new SiteRef(new SiteKind("call"), 0, ".call_sites");
        var setup = Prepare(ctx, site);
        return padAt => ThunkFor(ctx, setup, padAt, site);
    }

    /// <summary>
    /// For <c>kernel verify</c> with call depth tracking: the padding of every function in <c>[_text, _etext)</c> that
    /// <c>skip_addr()</c> does not name and whose last <c>tsize</c> padding bytes are still NOPs after the boot passes. The
    /// running kernel may aim a static call at any such function later (<c>static_call_update()</c> →
    /// <c>callthunks_translate_call_dest()</c>) and then writes the thunk there, so each is dynamic: NOPs or that thunk.
    /// Paddings the boot already gave the thunk are predicted as they are (a thunk is never taken out again).
    /// </summary>
    /// <param name="ctx">The kernel's context after the passes (its poker holds the patched bytes).</param>
    /// <param name="original">The image's ELF as built.</param>
    /// <param name="patched">The patched ELF.</param>
    /// <param name="symbols">The kernel's symbols (the function starts).</param>
    /// <param name="passes">The passes' results (in place, the bytes before are rebuilt from their plans).</param>
    public static IEnumerable<KernelTextSite> PaddingSites(BootContext ctx, ElfFile original, ElfFile patched, KernelSymbols symbols,
        ImmutableArray<BootPassResult> passes)
    {
        if (!ctx.State.HasMacro("X86_FEATURE_CALL_DEPTH") || TemplateSize(symbols) is not (> 0 and var tsize))
            yield break;
        var thunkAt = Thunks(ctx);
        ulong start = ctx.Thunks.TextStart, end = ctx.Thunks.TextEnd;
        var nops = new byte[tsize];
        Array.Fill(nops, X86.Nop);
        ulong last = 0;
        int index = 0;
        foreach (var f in symbols.All.Where(s => s.IsText && s.Address >= start + (ulong)tsize && s.Address < end).OrderBy(s => s.Address))
        {
            if (f.Address == last || f.Name.StartsWith("__pfx_", StringComparison.Ordinal) || f.Name.StartsWith("__cfi_", StringComparison.Ordinal)
                || IsSkippedName(f.Name))
                continue;
            last = f.Address;
            ulong padAt = f.Address - (ulong)tsize;
            if (!patched.TryReadBytes(padAt, tsize, out var after) || !after.SequenceEqual(nops))
                continue;
            var thunk = thunkAt(padAt);
            var before = original.ReadBytes(padAt, tsize).ToArray();
            if (ReferenceEquals(original, patched))
                KernelPatchResult.Undo(passes, padAt, before);   // patched in place
            yield return new KernelTextSite(KernelSiteKind.CallThunk, index++, padAt, tsize, before, nops, Dynamic: true,
                [new KernelTextState("nops", KernelTextStateForm.Bytes, nops), new KernelTextState("accounting thunk", KernelTextStateForm.Bytes, thunk)],
                [], 0, $"padding of {f.Name}");
        }
    }

    public static PatchPlan Patch(BootContext ctx)
    {
        var image = ctx.Image;
        var anySite = new SiteRef(new SiteKind("call"), 0, ".call_sites");
        var setup = Prepare(ctx, anySite);
        ulong textStart = ctx.Thunks.TextStart, textEnd = ctx.Thunks.TextEnd;
        var text = new PassText(ctx.Poker);
        var window = new byte[16];
        var call = new byte[5];

        void PatchCall(ulong addr, SiteRef site)
        {
            if (addr < textStart || addr >= textEnd)
                return;
            if (CallGetDest(ctx, text, setup, addr, window, site) is not { } dest)
                return;
            if (dest < textStart || dest >= textEnd)
                return;                                     // !is_coretext()
            ulong padAt = dest - (ulong)setup.Size;
            if (!PatchDest(text, padAt, ThunkFor(ctx, setup, padAt, site), site, "call depth accounting thunk", out _))
                return;                                     // "Invalid padding area"
            call[0] = X86.Call;
            BinaryPrimitives.WriteInt32LittleEndian(call.AsSpan(1), ctx.Rel32(addr, X86.CallSize, padAt, site));
            text.Write(addr, call, site, $"call the accounting thunk of 0x{dest:x}");
        }

        foreach (var (addr, site) in CallSites(image.Elf, ctx.Tables.Alternatives))
            PatchCall(addr, site);
        return text.ToPlan();
    }
}

using System.Buffers.Binary;
using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>
/// The boot-time passes of Linux 6.1 (<c>arch/x86/kernel/alternative.c</c>, <c>paravirt.c</c>, <c>static_call.c</c>
/// of 6.1.176 with its backports), each a pure function from the sites and the boot state to a
/// <see cref="PatchPlan"/>. The code follows the kernel function by function; the comments name them.
/// </summary>
internal static class Linux61Passes
{
    // ------------------------------------------------------------------ apply_paravirt

    /// <summary>
    /// <c>apply_paravirt()</c> with 6.1's <c>paravirt_patch()</c>: a direct <c>call</c> to the function in the site's
    /// <c>pv_ops</c> slot (a <c>call paravirt_BUG</c> for an empty slot), nothing for <c>_paravirt_nop</c>; then
    /// <c>add_nops()</c> for the rest of the site. Every site is written whole.
    /// </summary>
    public static PatchPlan Paravirt(BootContext ctx)
    {
        var pv = ctx.Tables.PvOps;
        var sites = ctx.Tables.Paravirt;
        if (sites.IsEmpty)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        Span<byte> buf = stackalloc byte[X86.MaxPatchLength];
        foreach (var p in sites)
        {
            var site = new SiteRef(SiteKind.Paravirt, p.Index, KernelPatchTables.ParaInstructions);
            if (pv is null)
                throw new PatchException(site, p.Address, "pv_ops could not be located: no paravirt site is an indirect call through it");
            int len = p.Len;
            var b = buf[..len];
            text.Read(p.Address, b, site);   // "prep the buffer with the original instructions"
            ulong opfunc = ctx.State.PvOpsOverrides.TryGetValue(p.Type, out var o) ? o : ctx.PvOpsSlot(pv, p, site);
            int used;
            string why;
            if (opfunc == 0)
                throw new PatchException(site, p.Address,
                    $"pv_ops slot {p.Type} is NULL: the kernel would call paravirt_BUG, which a stripped image does not name");
            if (ctx.Thunks.ParavirtNop is { } nop && opfunc == nop)
            {
                used = 0;
                why = $"pv_ops[{p.Type}] = _paravirt_nop";
            }
            else
            {
                if (len < X86.CallSize)
                    throw new PatchException(site, p.Address, $"a {len}-byte site cannot hold the 5-byte call to pv_ops[{p.Type}] (0x{opfunc:x})");
                b[0] = X86.Call;
                BinaryPrimitives.WriteInt32LittleEndian(b[1..], ctx.Rel32(p.Address, X86.CallSize, opfunc, site));
                used = X86.CallSize;
                why = $"call pv_ops[{p.Type}] = 0x{opfunc:x}";
            }
            ctx.AddNops(b[used..]);
            text.Write(p.Address, b, site, why);
        }
        return text.ToPlan();
    }

    // ------------------------------------------------------------------ apply_retpolines

    /// <summary><c>apply_retpolines()</c> / <c>patch_retpoline()</c>: rewrites <c>call/jmp/jcc __x86_indirect_thunk_reg</c>
    /// unless plain retpolines are in use (<c>X86_FEATURE_RETPOLINE</c> without <c>RETPOLINE_LFENCE</c>).</summary>
    public static PatchPlan Retpolines(BootContext ctx)
    {
        var sites = ctx.Tables.Retpolines;
        if (sites.IsEmpty)
            return PatchPlan.Empty;
        // patch_retpoline() returns -1 for every site in this case: nothing is written.
        if (ctx.State.Has(CpuFeature.Retpoline) && !ctx.State.Has(CpuFeature.RetpolineLfence))
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        Span<byte> window = stackalloc byte[16];
        Span<byte> bytes = stackalloc byte[16];
        foreach (var s in sites)
        {
            var site = new SiteRef(KernelSiteKinds.Retpoline, s.Index, KernelPatchTables.RetpolineSites);
            var code = ReadWindow(text, s.Address, window, site);
            var insn = KernelInsn.Decode(code, s.Address, ctx.Bitness);
            if (!insn.IsValid)
                continue;                                   // WARN_ON_ONCE(ret < 0)
            if (!(insn.Op1 is X86.Call or X86.Jmp32 || insn.IsJcc32))
                continue;                                   // WARN_ON_ONCE(1)
            int len = PatchRetpoline(ctx, s.Address, insn, bytes, site, out string why);
            if (len != insn.Length)
                continue;
            OptimizeNops(ctx, bytes[..len], s.Address);
            text.Write(s.Address, bytes[..len], site, why);
        }
        return text.ToPlan();
    }

    private static int PatchRetpoline(BootContext ctx, ulong addr, KernelInsn insn, Span<byte> bytes, SiteRef site, out string why)
    {
        why = "";
        ulong array = ctx.Thunks.RetpolineThunkArray
            ?? throw new PatchException(site, addr, "__x86_indirect_thunk_array could not be located (no retpoline thunk with the 6.1 layout)");
        long diff = unchecked((long)(insn.Target - array));
        long reg = diff / KernelThunks.RetpolineThunkSize;   // pointer difference of retpoline_thunk_t
        if ((reg & ~0xfL) != 0)
            return -1;                                      // WARN_ON_ONCE(reg & ~0xf)
        if (reg == 4)
            throw new PatchException(site, addr, "call/jmp through %rsp (BUG_ON(reg == 4))");
        if (ctx.State.Has(CpuFeature.Retpoline) && !ctx.State.Has(CpuFeature.RetpolineLfence))
            return -1;
        int r = (int)reg;
        int i = 0;
        byte op = insn.Op1;
        if (insn.IsJcc32)
        {
            int cc = (insn.Op2 & 0xf) ^ 1;                  // invert the condition
            bytes[i++] = (byte)(X86.Jcc8 + cc);              // Jcc.d8
            bytes[i++] = (byte)(insn.Length - 2);
            op = X86.Jmp32;
        }
        if (ctx.State.Has(CpuFeature.RetpolineLfence))
        {
            X86.Lfence.CopyTo(bytes[i..]);
            i += X86.Lfence.Length;
        }
        if (ctx.State.Has(CpuFeature.IndirectThunkIts) && ((addr + (ulong)i + 1 + (ulong)(r / 8)) & 0x20) == 0)
        {
            why = $"ITS: branch to __x86_indirect_its_thunk_array[{r}]";
            return EmitItsTrampoline(ctx, addr, insn, r, bytes, site);
        }
        // emit_indirect()
        byte modrm = op == X86.Call ? (byte)0x10 : (byte)0x20;
        if (r >= 8)
        {
            bytes[i++] = X86.RexB;
            r -= 8;
        }
        bytes[i++] = X86.IndirectBranch;
        bytes[i++] = (byte)(modrm | 0xc0 | r);
        if (op == X86.Jmp32 && i < insn.Length)
            bytes[i++] = X86.Int3;
        while (i < insn.Length)
            bytes[i++] = X86.Nop;
        why = ctx.State.Has(CpuFeature.RetpolineLfence) ? "retpoline,lfence: lfence; indirect branch" : "no retpoline: indirect branch";
        return i;
    }

    /// <summary><c>emit_its_trampoline()</c> / <c>__emit_trampoline()</c>, with the static
    /// <c>__x86_indirect_its_thunk_array[reg]</c> (<c>its_static_thunk()</c>): the kernel takes a thunk from a page
    /// it allocates at boot, whose address no image holds.</summary>
    private static int EmitItsTrampoline(BootContext ctx, ulong addr, KernelInsn insn, int reg, Span<byte> bytes, SiteRef site)
    {
        ulong thunk = (ctx.Thunks.ItsThunkArray
            ?? throw new PatchException(site, addr, "__x86_indirect_its_thunk_array could not be located")) + (ulong)(reg * KernelThunks.ItsThunkSize);
        int i = 0;
        byte op = insn.Op1;
        if (insn.IsJcc32)
        {
            bytes[i++] = op;                                // 0x0f
            op = insn.Op2;
        }
        else if (insn.Length == 6)
            bytes[i++] = X86.CsPrefix;
        if (op is not (X86.Call or X86.Jmp32) && !insn.IsJcc32)
            return -1;
        bytes[i] = op;
        BinaryPrimitives.WriteInt32LittleEndian(bytes[(i + 1)..], ctx.Rel32(addr + (ulong)i, X86.CallSize, thunk, site));
        i += 5;
        return i;
    }

    // ------------------------------------------------------------------ apply_returns

    /// <summary><c>apply_returns()</c> / <c>patch_return()</c>, with <c>__static_call_fixup()</c> for the static-call
    /// trampolines among the sites.</summary>
    public static PatchPlan Returns(BootContext ctx)
    {
        var sites = ctx.Tables.Returns;
        if (sites.IsEmpty)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        Span<byte> window = stackalloc byte[16];
        Span<byte> bytes = stackalloc byte[16];
        ulong? thunk = ctx.Thunks.ReturnThunk;
        foreach (var s in sites)
        {
            var site = new SiteRef(KernelSiteKinds.Return, s.Index, KernelPatchTables.ReturnSites);
            var code = ReadWindow(text, s.Address, window, site);
            var insn = KernelInsn.Decode(code, s.Address, ctx.Bitness);
            if (!insn.IsValid)
                continue;                                   // WARN_ON_ONCE(ret < 0)
            byte op = insn.Op1;
            ulong? dest = op == X86.Jmp32 ? insn.Target : null;
            if (StaticCallFixup(ctx, text, s.Address, op, dest, code, site))
                continue;
            if (thunk is null || dest != thunk)
                continue;                                   // WARN_ONCE("missing return thunk")
            int len = PatchReturn(ctx, s.Address, insn.Length, bytes, site, out string why);
            if (len == insn.Length)
                text.Write(s.Address, bytes[..len], site, why);
        }
        return text.ToPlan();
    }

    /// <summary>6.1's <c>cpu_wants_rethunk_at()</c> (apply_returns, and the static call writer's returns).</summary>
    internal static bool CpuWantsRethunkAt(BootContext ctx, ulong addr)
    {
        if (!ctx.State.Has(CpuFeature.Rethunk))
            return false;
        if (ctx.State.ReturnThunk != ReturnThunkKind.Its)
            return true;
        return (addr & 0x20) == 0;
    }

    /// <summary>The address of the chosen <c>x86_return_thunk</c>.</summary>
    internal static ulong ReturnThunkAddress(BootContext ctx, ulong at, SiteRef site)
    {
        var kind = ctx.State.ReturnThunk;
        return ctx.Thunks.Address(kind) ?? throw new PatchException(site, at, $"the chosen return thunk {kind.Symbol()} could not be located in the image");
    }

    private static readonly string[] JmpThunkWhy =
        [.. Enum.GetValues<ReturnThunkKind>().Select(k => $"jmp {k} return thunk")];

    private static int PatchReturn(BootContext ctx, ulong addr, int length, Span<byte> bytes, SiteRef site, out string why)
    {
        int i = 0;
        if (CpuWantsRethunkAt(ctx, addr))
        {
            ulong target = ReturnThunkAddress(ctx, addr, site);
            bytes[0] = X86.Jmp32;
            BinaryPrimitives.WriteInt32LittleEndian(bytes[1..], ctx.Rel32(addr, X86.Jmp32Size, target, site));
            i = 5;
            why = JmpThunkWhy[(int)ctx.State.ReturnThunk];
        }
        else
        {
            bytes[i++] = X86.Ret;
            why = ctx.State.Has(CpuFeature.Rethunk) ? "ret (ITS: return in the upper half of a cache line)" : "ret (no return thunk)";
        }
        while (i < length)
            bytes[i++] = X86.Int3;
        return i;
    }

    /// <summary><c>__static_call_fixup()</c>: a return site followed by the trampoline signature <c>ud1 %esp, %ecx</c>
    /// (0f b9 cc) is a static-call trampoline; if it still returns, it becomes the RET form of
    /// <c>__static_call_transform()</c>.</summary>
    private static bool StaticCallFixup(BootContext ctx, PassText text, ulong addr, byte op, ulong? dest, ReadOnlySpan<byte> code, SiteRef site)
    {
        const ulong Page = 4096;
        if ((addr / Page) != ((addr + 7) / Page) && !text.IsCode(addr + 7, 1))
            return false;
        if (code.Length < 8 || code[5] != X86.TwoByteEscape || code[6] != 0xb9 || code[7] != X86.Int3)
            return false;
        if (op == X86.Ret || (dest is { } d && d == ctx.Thunks.ReturnThunk))
        {
            Span<byte> b = stackalloc byte[5];
            string why;
            if (CpuWantsRethunkAt(ctx, addr))
            {
                b[0] = X86.Jmp32;
                BinaryPrimitives.WriteInt32LittleEndian(b[1..], ctx.Rel32(addr, X86.Jmp32Size, ReturnThunkAddress(ctx, addr, site), site));
                why = "static call trampoline: jmp return thunk";
            }
            else
            {
                b[0] = X86.Ret;
                b[1..].Fill(X86.Int3);
                why = "static call trampoline: ret";
            }
            text.Write(addr, b, site, why);
        }
        return true;
    }

    // ------------------------------------------------------------------ apply_alternatives

    /// <summary><c>apply_alternatives()</c>: entries in table order (a later one overwrites an earlier one), the
    /// replacement copied with the <c>call rel32</c> fix-up and <c>recompute_jump()</c>, padded with 0x90, and
    /// <c>optimize_nops()</c> on every site, patched or not.</summary>
    public static PatchPlan Alternatives(BootContext ctx)
    {
        var sites = ctx.Tables.Alternatives;
        if (sites.IsEmpty)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        Span<byte> buf = stackalloc byte[X86.MaxPatchLength + 16];
        foreach (var a in sites)
        {
            var site = new SiteRef(SiteKind.Alternative, a.Index, KernelPatchTables.AltInstructions);
            if (a.InstrLen > X86.MaxPatchLength)
                throw new PatchException(site, a.Address, $"instrlen {a.InstrLen} exceeds MAX_PATCH_LEN ({X86.MaxPatchLength})");
            if (a.Cpuid >= ctx.FeatureLimit)
                throw new PatchException(site, a.Address, $"feature {a.FeatureText} is beyond the image's (NCAPINTS + NBUGINTS) * 32 = {ctx.FeatureLimit}");
            if (ctx.HasFeature(a.Cpuid) != a.Not)
            {
                if (a.ReplacementLen > a.InstrLen)
                    throw new PatchException(site, a.Address, $"replacement of {a.ReplacementLen} bytes is longer than the {a.InstrLen}-byte site");
                var b = buf[..Math.Max((int)a.InstrLen, (int)a.ReplacementLen)];
                var repl = b[..a.ReplacementLen];
                text.Read(a.ReplacementAddress, repl, site);
                byte firstReplacementByte = repl.IsEmpty ? (byte)0 : repl[0];
                if (a.ReplacementLen == X86.CallSize && repl[0] == X86.Call)
                {
                    // *(s32 *)(insn_buff + 1) += replacement - instr
                    int rel = BinaryPrimitives.ReadInt32LittleEndian(repl[1..]);
                    rel = unchecked(rel + (int)(a.ReplacementAddress - a.Address));
                    BinaryPrimitives.WriteInt32LittleEndian(repl[1..], rel);
                }
                if (a.ReplacementLen > 0 && firstReplacementByte is X86.Jmp8 or X86.Jmp32)
                    RecomputeJump(ctx, a, b);
                b[a.ReplacementLen..a.InstrLen].Fill(X86.Nop);
                string why = $"{(a.Not ? "!" : "")}{FeatureName(a.Cpuid)} {(a.Not ? "absent" : "present")}";
                text.Write(a.Address, b[..a.InstrLen], site, why);
            }
            // next: optimize_nops(instr, a->instrlen) — on the text, patched or not.
            OptimizeNopsInText(ctx, text, a.Address, a.InstrLen, site);
        }
        return text.ToPlan();
    }

    private static string FeatureName(int n) =>
        CpuFeatureInfo.IsDefined((CpuFeature)n) ? CpuFeatureInfo.MacroName((CpuFeature)n) : CpuFeatureInfo.FormatNumber((CpuFeature)n);

    /// <summary><c>recompute_jump()</c>: a 5-byte replacement starting with a jmp gets its displacement re-aimed from the
    /// site, and becomes a 2-byte <c>jmp</c> + NOPs when that reaches (with the kernel's own range tests).</summary>
    private static void RecomputeJump(BootContext ctx, KernelAltSite a, Span<byte> buf)
    {
        if (a.ReplacementLen != 5)
            return;
        int oDspl = BinaryPrimitives.ReadInt32LittleEndian(buf[1..]);
        ulong nextRip = a.ReplacementAddress + a.ReplacementLen;
        ulong tgtRip = unchecked(nextRip + (ulong)(long)oDspl);
        long diff = unchecked((long)(tgtRip - a.Address));
        if (ctx.Bitness == 32)
            diff = unchecked((int)(uint)(tgtRip - a.Address));
        int nDspl = unchecked((int)diff);
        bool two;
        if (diff >= 0)
            two = unchecked(nDspl - 2) <= 127;
        else
            two = (unchecked(nDspl - 2) & 0xff) == unchecked(nDspl - 2);
        if (two)
        {
            nDspl -= 2;
            buf[0] = X86.Jmp8;
            buf[1] = unchecked((byte)(sbyte)nDspl);
            ctx.AddNops(buf.Slice(2, 3));
        }
        else
        {
            nDspl = unchecked(nDspl - 5);
            buf[0] = X86.Jmp32;
            BinaryPrimitives.WriteInt32LittleEndian(buf[1..], nDspl);
        }
    }

    /// <summary><c>optimize_nops()</c> on a buffer: runs of two or more single-byte NOPs (0x90) become the table's NOPs.</summary>
    /// <param name="ctx">The context (bitness, NOP table).</param>
    /// <param name="instr">The bytes, changed in place.</param>
    /// <param name="address">Where they will be (for the decoder).</param>
    /// <param name="after">Bytes after the buffer the decoder may look at (the kernel's decoder reads up to 15 bytes past the end).</param>
    public static void OptimizeNops(BootContext ctx, Span<byte> instr, ulong address, ReadOnlySpan<byte> after = default)
    {
        int len = instr.Length;
        Span<byte> w = stackalloc byte[15];
        int i = 0;
        while (i < len)
        {
            // What insn_decode_kernel(&insn, &instr[i]) sees: the rest of the site, then what follows it.
            int n = 0;
            for (; n < w.Length && i + n < len; n++)
                w[n] = instr[i + n];
            for (int k = 0; n < w.Length && k < after.Length; k++, n++)
                w[n] = after[k];
            var insn = KernelInsn.Decode(w[..n], address + (ulong)i, ctx.Bitness);
            if (!insn.IsValid)
                return;
            if (insn.Length == 1 && insn.Op1 == X86.Nop)
                i += OptimizeNopsRange(ctx, instr, i);
            else
                i += insn.Length;
        }
    }

    /// <summary><c>optimize_nops_range()</c>.</summary>
    private static int OptimizeNopsRange(BootContext ctx, Span<byte> instr, int off)
    {
        int i = off;
        while (i < instr.Length && instr[i] == X86.Nop)
            i++;
        int nnops = i - off;
        if (nnops <= 1)
            return nnops;
        ctx.AddNops(instr.Slice(off, nnops));
        return nnops;
    }

    private static void OptimizeNopsInText(BootContext ctx, PassText text, ulong address, int len, SiteRef site)
    {
        Span<byte> cur = stackalloc byte[X86.MaxPatchLength + 15];
        int after = AvailableAfter(text, address + (ulong)len, 15);
        var all = cur[..(len + after)];
        text.Read(address, all, site);
        var site0 = all[..len];
        OptimizeNops(ctx, site0, address, all[len..]);
        text.Write(address, site0, site, "optimize_nops");   // records nothing when optimize_nops() changed nothing
    }

    // ------------------------------------------------------------------ apply_ibt_endbr

    /// <summary>The ELF section <c>apply_ibt_endbr()</c> walks (objtool --ibt).</summary>
    public const string IbtSealTable = ".ibt_endbr_seal";

    /// <summary>Number of entries of <c>.ibt_endbr_seal</c> (s32 self-relative), 0 without the section.</summary>
    public static int IbtSealCount(KernelImage image) =>
        image.Elf.FindSection(IbtSealTable) is { } s && s.HasFileBytes ? (int)(s.Size / 4) : 0;

    /// <summary>
    /// 6.1 <c>apply_ibt_endbr()</c> (CONFIG_X86_KERNEL_IBT only; the Debian images have no <c>.ibt_endbr_seal</c>):
    /// every listed address that holds an ENDBR (<c>is_endbr()</c>: <c>endbr64</c>/<c>endbr32</c>, or the poison)
    /// gets <c>gen_endbr_poison()</c>, <c>66 0f 1f 00</c> (osp nopl (%rax)), whatever the CPU.
    /// </summary>
    public static PatchPlan IbtEndbr(BootContext ctx)
    {
        var elf = ctx.TableElf;
        if (elf.FindSection(IbtSealTable) is not { } sec || !sec.HasFileBytes || sec.Size < 4)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        var table = elf.ReadBytes(sec.Address, (int)sec.Size).ToArray();
        ReadOnlySpan<byte> poison = [0x66, 0x0f, 0x1f, 0x00];
        Span<byte> cur = stackalloc byte[4];
        for (int i = 0; i + 4 <= table.Length; i += 4)
        {
            ulong entry = sec.Address + (ulong)i;
            ulong addr = elf.AddressPlus(entry, BinaryPrimitives.ReadInt32LittleEndian(table.AsSpan(i)));
            var site = new SiteRef(SiteKind.Raw, i / 4, IbtSealTable);
            if (!text.IsCode(addr, 4))
                continue;                                   // WARN_ON_ONCE(get_kernel_nofault(...))
            text.Read(addr, cur, site);
            uint v = BinaryPrimitives.ReadUInt32LittleEndian(cur);
            bool isEndbr = v == 0x001f0f66 || (v & ~0x01000000u) == 0xfa1e0ff3;
            if (!isEndbr)
                continue;                                   // WARN_ON_ONCE(!is_endbr(endbr))
            text.Write(addr, poison, site, "IBT: sealed ENDBR poisoned");
        }
        return text.ToPlan();
    }

    // ------------------------------------------------------------------ SMP locks

    /// <summary>
    /// <c>alternative_instructions()</c>'s UP switch (<see cref="KernelBootState.Smp"/>: one present CPU or <c>maxcpus=</c>
    /// 0/1, <c>nosmp</c>, and no <c>noreplace-smp</c>): <c>alternatives_smp_module_add(NULL,
    /// "core kernel", __smp_locks, __smp_locks_end, _text, _etext)</c> runs <c>alternatives_smp_unlock()</c>: each
    /// listed <c>lock</c> prefix (0xf0) inside <c>[_text, _etext)</c> becomes a DS prefix (0x3e). Lock prefixes in
    /// <c>.init.text</c> stay.
    /// </summary>
    public static PatchPlan SmpLocks(BootContext ctx)
    {
        var sites = ctx.Tables.SmpLocks;
        if (sites.IsEmpty || !ctx.State.Smp.Up)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        ulong start = ctx.Thunks.TextStart, end = ctx.Thunks.TextEnd;
        Span<byte> b = stackalloc byte[1];
        ReadOnlySpan<byte> ds = [X86.DsPrefix];
        foreach (var l in sites)
        {
            if (l.Address < start || l.Address >= end)
                continue;
            var site = new SiteRef(SiteKind.Lock, l.Index, KernelPatchTables.SmpLocksSection);
            text.Read(l.Address, b, site);
            if (b[0] == X86.LockPrefix)
                text.Write(l.Address, ds, site, "UP: lock -> ds");
        }
        return text.ToPlan();
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>Up to <paramref name="window"/>.Length current bytes from <paramref name="address"/> (fewer at the end of a section).</summary>
    internal static Span<byte> ReadWindow(PassText text, ulong address, Span<byte> window, SiteRef site)
    {
        int n = AvailableAfter(text, address, window.Length);
        if (n == 0)
            throw new PatchException(site, address, "the site is not inside an executable section");
        var w = window[..n];
        text.Read(address, w, site);
        return w;
    }

    /// <summary>How many of the next <paramref name="max"/> bytes from <paramref name="address"/> are code in the same section.</summary>
    internal static int AvailableAfter(PassText text, ulong address, int max)
    {
        int n = max;
        while (n > 0 && !text.IsCode(address, n))
            n--;
        return n;
    }
}

using System.Buffers.Binary;
using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>
/// The boot-time passes of Linux 6.12 (<c>arch/x86/kernel/alternative.c</c>, <c>callthunks.c</c>,
/// <c>runtime-const.h</c> of 6.12.118), each a pure function from the sites and the boot state to a
/// <see cref="PatchPlan"/>. What 6.12 does as 6.1 did (<c>apply_returns()</c>, the ENDBR poison) is
/// <see cref="Linux61Passes"/>'s; the comments name the kernel functions.
/// </summary>
internal static class Linux612Passes
{
    /// <summary>6.12's <c>ASM_NOP_MAX</c> on x86-64.</summary>
    private const int AsmNopMax = 11;

    // ------------------------------------------------------------------ instruction decoding (insn_decode_kernel)

    /// <summary>What 6.12's patching reads of a decoded instruction: length, opcode bytes (after the prefixes), the first
    /// legacy prefix, the immediate (branch displacements included) and a rip-relative displacement.</summary>
    private readonly record struct Insn(int Length, byte Op1, byte Op2, byte Prefix0, int ImmOffset, int ImmSize, long Imm,
        int DispOffset, int DispSize, long Disp, bool RipRelative)
    {
        public bool IsValid => Length > 0;

        /// <summary><c>insn_is_nop()</c>: NOP (not REP NOP) or NOPL.</summary>
        public bool IsNop => (Op1 == X86.Nop && Prefix0 != 0xf3) || (Op1 == X86.TwoByteEscape && Op2 == 0x1f);
    }

    private static Insn Decode(ReadOnlySpan<byte> code, ulong ip, int bitness)
    {
        if (code.IsEmpty)
            return default;
        var d = DecoderCache.Current.Start(code, ip, bitness);
        d.Decode(out var insn);
        if (insn.IsInvalid || insn.Length > code.Length)
            return default;
        var offs = d.GetConstantOffsets(insn);
        int p = 0;
        byte prefix0 = 0;
        while (p < insn.Length - 1 && IsLegacyPrefix(code[p]))
        {
            if (p == 0)
                prefix0 = code[p];
            p++;
        }
        if (bitness == 64 && p < insn.Length - 1 && code[p] is >= 0x40 and <= 0x4f)
            p++;
        byte op1 = code[p];
        byte op2 = p + 1 < insn.Length ? code[p + 1] : (byte)0;
        long imm = 0;
        if (offs.HasImmediate)
            imm = ReadSigned(code.Slice(offs.ImmediateOffset, offs.ImmediateSize));
        long disp = 0;
        if (offs.HasDisplacement)
            disp = ReadSigned(code.Slice(offs.DisplacementOffset, offs.DisplacementSize));
        return new Insn(insn.Length, op1, op2, prefix0, offs.ImmediateOffset, offs.HasImmediate ? offs.ImmediateSize : 0, imm,
            offs.DisplacementOffset, offs.HasDisplacement ? offs.DisplacementSize : 0, disp, insn.IsIPRelativeMemoryOperand);
    }

    private static bool IsLegacyPrefix(byte b) => b is 0x26 or X86.CsPrefix or 0x36 or X86.DsPrefix or 0x64 or 0x65 or 0x66 or 0x67 or X86.LockPrefix or 0xf2 or 0xf3;

    private static long ReadSigned(ReadOnlySpan<byte> b) => b.Length switch
    {
        1 => (sbyte)b[0],
        2 => BinaryPrimitives.ReadInt16LittleEndian(b),
        4 => BinaryPrimitives.ReadInt32LittleEndian(b),
        8 => BinaryPrimitives.ReadInt64LittleEndian(b),
        _ => 0,
    };

    /// <summary>Decodes at <paramref name="i"/> of <paramref name="buf"/>, the kernel's decoder seeing up to 15 bytes: the
    /// buffer's, then <paramref name="after"/> (what follows the site in the text).</summary>
    private static Insn DecodeAt(ReadOnlySpan<byte> buf, int i, ReadOnlySpan<byte> after, ulong address, int bitness)
    {
        Span<byte> w = stackalloc byte[15];
        int n = 0;
        for (; n < w.Length && i + n < buf.Length; n++)
            w[n] = buf[i + n];
        for (int k = 0; n < w.Length && k < after.Length; k++, n++)
            w[n] = after[k];
        return Decode(w[..n], address + (ulong)i, bitness);
    }

    // ------------------------------------------------------------------ add_nop / optimize_nops

    /// <summary>6.12 <c>add_nop()</c>: one NOP up to <c>ASM_NOP_MAX</c>, else a <c>jmp</c> over INT3s.</summary>
    internal static void AddNop(BootContext ctx, Span<byte> buf)
    {
        int len = buf.Length;
        if (len == 0)
            return;
        if (len <= ctx.Nops.MaxLength)
        {
            ctx.Nops[len].CopyTo(buf);
            return;
        }
        int i;
        if (len < 128)
        {
            buf[0] = X86.Jmp8;
            buf[1] = (byte)(len - 2);
            i = 2;
        }
        else
        {
            buf[0] = X86.Jmp32;
            BinaryPrimitives.WriteInt32LittleEndian(buf[1..], len - 5);
            i = 5;
        }
        buf[i..].Fill(X86.Int3);
    }

    /// <summary>6.12 <c>optimize_nops()</c>: every run of NOP/NOPL instructions that does not end the buffer as a single
    /// instruction becomes one <c>add_nop()</c>.</summary>
    /// <param name="ctx">The context.</param>
    /// <param name="buf">The bytes, changed in place (the kernel's buffer may be longer: <c>skip_nops()</c> can pass its end).</param>
    /// <param name="len">The length the kernel passes.</param>
    /// <param name="address">Where the bytes will be.</param>
    /// <param name="after">The text after the site, for the decoder.</param>
    internal static void OptimizeNops(BootContext ctx, Span<byte> buf, int len, ulong address, ReadOnlySpan<byte> after)
    {
        var view = buf[..len];
        for (int next, i = 0; i < len; i = next)
        {
            var insn = DecodeAt(view, i, after, address, ctx.Bitness);
            if (!insn.IsValid)
                return;
            next = i + insn.Length;
            if (insn.IsNop)
            {
                int nop = i;
                if (i + insn.Length == len)
                    return;                                 // "Has the NOP already been optimized?"
                next = SkipNops(ctx, view, next, len, after, address);
                if (next > buf.Length)
                    return;
                AddNop(ctx, buf[nop..next]);
            }
        }
    }

    /// <summary><c>skip_nops()</c>.</summary>
    private static int SkipNops(BootContext ctx, ReadOnlySpan<byte> buf, int offset, int len, ReadOnlySpan<byte> after, ulong address)
    {
        while (offset < len)
        {
            var insn = DecodeAt(buf, offset, after, address, ctx.Bitness);
            if (!insn.IsValid || !insn.IsNop)
                break;
            offset += insn.Length;
        }
        return offset;
    }

    // ------------------------------------------------------------------ apply_alternatives

    /// <summary>
    /// 6.12 <c>apply_alternatives()</c>: entries in table order; consecutive entries of one site (nested
    /// <c>ALTERNATIVE</c>s) all take the longest <c>instrlen</c>; an entry whose condition fails gets <c>optimize_nops()</c>
    /// on the current bytes; one that applies copies its replacement (<c>ALT_FLAG_DIRECT_CALL</c>: the call aimed at the
    /// <c>pv_ops</c> slot's function, nothing for <c>nop_func</c>), pads with 0x90 and runs
    /// <c>text_poke_apply_relocation()</c> (branch and rip-relative fix-ups, <c>jmp.d32</c> to <c>jmp.d8</c>, then
    /// <c>optimize_nops()</c>).
    /// </summary>
    public static PatchPlan Alternatives(BootContext ctx)
    {
        var sites = ctx.Tables.Alternatives;
        if (sites.IsEmpty)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        var lens = new int[sites.Length];
        for (int k = 0; k < sites.Length; k++)
            lens[k] = sites[k].InstrLen;
        ulong? nopFunc = ctx.Image.TryGetSymbols(out var symbols) && symbols.TryGetAddress("nop_func", out var nf) ? nf : null;
        var buf = new byte[X86.MaxPatchLength + 32];
        Span<byte> after = stackalloc byte[15];
        for (int k = 0; k < sites.Length; k++)
        {
            var a = sites[k];
            var site = new SiteRef(SiteKind.Alternative, a.Index, KernelPatchTables.AltInstructions);
            for (int j = k + 1; j < sites.Length && sites[j].Address == a.Address; j++)
            {
                int l = Math.Max(lens[k], lens[j]);
                lens[k] = lens[j] = l;
            }
            int instrlen = lens[k];
            if (instrlen > X86.MaxPatchLength)
                throw new PatchException(site, a.Address, $"instrlen {instrlen} exceeds MAX_PATCH_LEN ({X86.MaxPatchLength})");
            if (a.Cpuid >= ctx.FeatureLimit)
                throw new PatchException(site, a.Address, $"feature {a.FeatureText} is beyond the image's (NCAPINTS + NBUGINTS) * 32 = {ctx.FeatureLimit}");
            int nAfter = Linux61Passes.AvailableAfter(text, a.Address + (ulong)instrlen, after.Length);
            text.Read(a.Address + (ulong)instrlen, after[..nAfter], site);
            var tail = after[..nAfter];
            Array.Clear(buf);
            if (ctx.HasFeature(a.Cpuid) == a.Not)
            {
                text.Read(a.Address, buf.AsSpan(0, instrlen), site);
                OptimizeNops(ctx, buf, instrlen, a.Address, tail);
                text.Write(a.Address, buf.AsSpan(0, instrlen), site, "optimize_nops");
                continue;
            }
            int replen = a.ReplacementLen;
            text.Read(a.ReplacementAddress, buf.AsSpan(0, replen), site);
            int size = replen;
            string why = $"{(a.Not ? "!" : "")}{FeatureName(ctx, a.Cpuid)} {(a.Not ? "absent" : "present")}";
            if ((a.Flags & 2) != 0)
            {
                size = AltReplaceCall(ctx, text, a, instrlen, buf, nopFunc, site, out string target);
                why += $": direct call {target}";
            }
            for (; size < instrlen; size++)
                buf[size] = X86.Nop;
            ApplyRelocation(ctx, buf, a.Address, instrlen, a.ReplacementAddress, replen, site);
            OptimizeNops(ctx, buf, instrlen, a.Address, tail);
            text.Write(a.Address, buf.AsSpan(0, size), site, why);
        }
        return text.ToPlan();
    }

    private static string FeatureName(BootContext ctx, int n) =>
        FeatureNumbering.Linux612.NameOf(n) ?? $"{n / 32}*32+{n % 32}";

    /// <summary><c>alt_replace_call()</c>: the replacement <c>call BUG_func</c> re-aimed at the function in the
    /// <c>pv_ops</c> slot the original <c>call *disp(%rip)</c> reads; 0 (all NOPs) for <c>nop_func</c>.</summary>
    private static int AltReplaceCall(BootContext ctx, PassText text, KernelAltSite a, int instrlen, Span<byte> buf, ulong? nopFunc, SiteRef site, out string target)
    {
        if (a.ReplacementLen != 5 || buf[0] != X86.Call)
            throw new PatchException(site, a.Address, "ALT_FLAG_DIRECT_CALL set for a non-call replacement instruction (the kernel would BUG())");
        Span<byte> instr = stackalloc byte[6];
        if (instrlen != 6 || !text.IsCode(a.Address, 6))
            throw new PatchException(site, a.Address, "ALT_FLAG_DIRECT_CALL set for unrecognized indirect call (the kernel would BUG())");
        text.Read(a.Address, instr, site);
        if (instr[0] != 0xff || instr[1] != 0x15)
            throw new PatchException(site, a.Address, "ALT_FLAG_DIRECT_CALL set for unrecognized indirect call (the kernel would BUG())");
        int disp = BinaryPrimitives.ReadInt32LittleEndian(instr[2..]);
        ulong slot = ctx.Bitness == 64 ? unchecked(a.Address + (ulong)instrlen + (ulong)(long)disp) : (uint)disp;
        if (!ctx.Image.Elf.TryReadPointer(slot, out ulong fn))
            throw new PatchException(site, a.Address, $"the pv_ops slot at 0x{slot:x} has no bytes in the image");
        ulong bug = unchecked(a.ReplacementAddress + 5 + (ulong)(long)BinaryPrimitives.ReadInt32LittleEndian(buf[1..]));
        if (fn == 0)
            fn = bug;
        int rel = unchecked(BinaryPrimitives.ReadInt32LittleEndian(buf[1..]) + (int)(long)(fn - bug));
        BinaryPrimitives.WriteInt32LittleEndian(buf[1..], rel);
        var name = ctx.Image.TryGetSymbols(out var symbols) && symbols.TryFind(fn, out var s, out ulong off) && off == 0 ? s.Name : $"0x{fn:x}";
        target = $"pv_ops slot 0x{slot:x} = {name}";
        if (nopFunc is { } nop && fn == nop)
            return 0;
        return 5;
    }

    /// <summary><c>__apply_relocation()</c>: each branch (<c>jcc</c>, <c>jmp</c>, <c>call</c>) and rip-relative operand whose
    /// target lies outside the replacement is moved by <c>repl - instr</c>; every <c>jmp.d32</c> that can becomes a
    /// <c>jmp.d8</c> + INT3s.</summary>
    internal static void ApplyRelocation(BootContext ctx, Span<byte> buf, ulong instr, int instrlen, ulong repl, int replLen, SiteRef site)
    {
        long diff = unchecked((long)(repl - instr));
        for (int next, i = 0; i < instrlen; i = next)
        {
            var insn = DecodeAt(buf[..instrlen], i, buf[instrlen..Math.Min(buf.Length, instrlen + 15)], instr, ctx.Bitness);
            if (!insn.IsValid)
                return;                                     // WARN_ON_ONCE(insn_decode_kernel())
            next = i + insn.Length;
            bool branch = insn.Op1 is X86.Jmp8 or X86.Jmp32 or X86.Call or (>= 0x70 and <= 0x7f)
                || (insn.Op1 == X86.TwoByteEscape && insn.Op2 is >= 0x80 and <= 0x8f);
            if (branch && insn.ImmSize > 0)
            {
                if (NeedReloc(next + insn.Imm, replLen))
                    ApplyReloc(buf.Slice(i + insn.ImmOffset, insn.ImmSize), diff, site, instr);
                if (insn.Op1 == X86.Jmp32)
                {
                    int imm = unchecked((int)insn.Imm);
                    imm = unchecked(imm + (int)diff);
                    imm += X86.Jmp32Size - 2;
                    if ((imm >> 31) == (imm >> 7))
                    {
                        buf[i] = X86.Jmp8;
                        buf[i + 1] = unchecked((byte)(sbyte)imm);
                        buf.Slice(i + 2, insn.Length - 2).Fill(X86.Int3);
                    }
                }
            }
            if (insn.RipRelative && insn.DispSize > 0 && NeedReloc(next + insn.Disp, replLen))
                ApplyReloc(buf.Slice(i + insn.DispOffset, insn.DispSize), diff, site, instr);
        }
    }

    /// <summary><c>need_reloc()</c>: the target, as an offset from the replacement's start, is outside it.</summary>
    private static bool NeedReloc(long offset, int replLen) => offset < 0 || offset > replLen;

    private static void ApplyReloc(Span<byte> field, long diff, SiteRef site, ulong at)
    {
        switch (field.Length)
        {
            case 1:
            {
                int v = unchecked((sbyte)field[0] + (int)diff);
                if (v is < sbyte.MinValue or > sbyte.MaxValue)
                    throw new PatchException(site, at, "an 8-bit branch of the replacement does not reach its target from the site (the kernel would BUG())");
                field[0] = unchecked((byte)(sbyte)v);
                break;
            }
            case 2:
            {
                int v = unchecked(BinaryPrimitives.ReadInt16LittleEndian(field) + (int)diff);
                if (v is < short.MinValue or > short.MaxValue)
                    throw new PatchException(site, at, "a 16-bit displacement of the replacement does not reach from the site (the kernel would BUG())");
                BinaryPrimitives.WriteInt16LittleEndian(field, (short)v);
                break;
            }
            case 4:
                BinaryPrimitives.WriteInt32LittleEndian(field, unchecked(BinaryPrimitives.ReadInt32LittleEndian(field) + (int)diff));
                break;
            default:
                throw new PatchException(site, at, $"a {field.Length}-byte relative field cannot be relocated (the kernel would BUG())");
        }
    }

    // ------------------------------------------------------------------ apply_retpolines

    /// <summary>6.12 <c>apply_retpolines()</c> / <c>patch_retpoline()</c>: as 6.1, plus call depth tracking (with
    /// retpolines and <c>X86_FEATURE_CALL_DEPTH</c> every site is aimed at <c>__x86_indirect_call_thunk_array</c> /
    /// <c>__x86_indirect_jump_thunk_array</c>), and 6.12's <c>optimize_nops()</c>.</summary>
    public static PatchPlan Retpolines(BootContext ctx)
    {
        var sites = ctx.Tables.Retpolines;
        if (sites.IsEmpty)
            return PatchPlan.Empty;
        var st = ctx.State;
        bool plainRetpoline = st.Has(CpuFeature.Retpoline) && !st.Has(CpuFeature.RetpolineLfence);
        bool callDepth = st.HasMacro("X86_FEATURE_CALL_DEPTH");
        if (plainRetpoline && !callDepth)
            return PatchPlan.Empty;                         // patch_retpoline() returns -1 for every site
        var text = new PassText(ctx.Poker);
        Span<byte> window = stackalloc byte[16];
        var bytes = new byte[32];
        Span<byte> after = stackalloc byte[15];
        ulong array = ctx.Thunks.RetpolineThunkArray
            ?? throw new PatchException(new SiteRef(KernelSiteKinds.Retpoline, 0, KernelPatchTables.RetpolineSites), sites[0].Address,
                "__x86_indirect_thunk_array could not be located");
        foreach (var s in sites)
        {
            var site = new SiteRef(KernelSiteKinds.Retpoline, s.Index, KernelPatchTables.RetpolineSites);
            var code = Linux61Passes.ReadWindow(text, s.Address, window, site);
            var insn = KernelInsn.Decode(code, s.Address, ctx.Bitness);
            if (!insn.IsValid || !(insn.Op1 is X86.Call or X86.Jmp32 || insn.IsJcc32))
                continue;                                   // WARN_ON_ONCE
            long reg = unchecked((long)(insn.Target - array)) / KernelThunks.RetpolineThunkSize;
            if ((reg & ~0xfL) != 0)
                continue;                                   // WARN_ON_ONCE(reg & ~0xf)
            if (reg == 4)
                throw new PatchException(site, s.Address, "call/jmp through %rsp (BUG_ON(reg == 4))");
            Array.Clear(bytes);
            int len;
            string why;
            if (plainRetpoline)
            {
                len = EmitTrampoline(ctx, s.Address, insn, bytes, Need(ctx, "__x86_indirect_call_thunk_array", site, s.Address) + (ulong)(reg * KernelThunks.RetpolineThunkSize),
                    Need(ctx, "__x86_indirect_jump_thunk_array", site, s.Address) + (ulong)(reg * KernelThunks.RetpolineThunkSize), site);
                why = "call depth tracking: call/jump thunk";
            }
            else
                len = PatchRetpoline(ctx, s.Address, insn, (int)reg, bytes, site, out why);
            if (len != insn.Length)
                continue;
            int nAfter = Linux61Passes.AvailableAfter(text, s.Address + (ulong)len, after.Length);
            text.Read(s.Address + (ulong)len, after[..nAfter], site);
            OptimizeNops(ctx, bytes, len, s.Address, after[..nAfter]);
            text.Write(s.Address, bytes.AsSpan(0, len), site, why);
        }
        return text.ToPlan();
    }

    private static ulong Need(BootContext ctx, string symbol, SiteRef site, ulong at) =>
        ctx.Image.TryGetSymbols(out var symbols) && symbols.TryGetAddress(symbol, out var a)
            ? a
            : throw new PatchException(site, at, $"{symbol} could not be located (the image has no such symbol)");

    private static int PatchRetpoline(BootContext ctx, ulong addr, KernelInsn insn, int r, Span<byte> bytes, SiteRef site, out string why)
    {
        int i = 0;
        byte op = insn.Op1;
        if (insn.IsJcc32)
        {
            int cc = (insn.Op2 & 0xf) ^ 1;
            bytes[i++] = (byte)(X86.Jcc8 + cc);
            bytes[i++] = (byte)(insn.Length - 2);
            op = X86.Jmp32;
        }
        bool lfence = ctx.State.Has(CpuFeature.RetpolineLfence);
        if (lfence)
        {
            X86.Lfence.CopyTo(bytes[i..]);
            i += X86.Lfence.Length;
        }
        if (ctx.State.Has(CpuFeature.IndirectThunkIts) && ((addr + (ulong)i + 1 + (ulong)(r / 8)) & 0x20) == 0)
        {
            // emit_its_trampoline(): its_allocate_thunk() takes a thunk from a page allocated at boot (no image holds its
            // address); the static __x86_indirect_its_thunk_array[reg] is what it falls back to.
            why = $"ITS: branch to __x86_indirect_its_thunk_array[{r}]";
            ulong thunk = (ctx.Thunks.ItsThunkArray ?? throw new PatchException(site, addr, "__x86_indirect_its_thunk_array could not be located"))
                + (ulong)(r * KernelThunks.ItsThunkSize);
            return EmitTrampoline(ctx, addr, insn, bytes, thunk, thunk, site);
        }
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
        why = lfence ? "retpoline,lfence: lfence; indirect branch" : "no retpoline: indirect branch";
        return i;
    }

    /// <summary><c>__emit_trampoline()</c>: the call/jmp/jcc re-aimed at <paramref name="callDest"/> or <paramref name="jmpDest"/>
    /// (a 6-byte non-jcc site keeps a CS prefix).</summary>
    private static int EmitTrampoline(BootContext ctx, ulong addr, KernelInsn insn, Span<byte> bytes, ulong callDest, ulong jmpDest, SiteRef site)
    {
        int i = 0;
        byte op = insn.Op1;
        if (insn.IsJcc32)
        {
            bytes[i++] = op;
            op = insn.Op2;
            bytes[i] = op;
            BinaryPrimitives.WriteInt32LittleEndian(bytes[(i + 1)..], ctx.Rel32(addr + (ulong)i, X86.CallSize, jmpDest, site));
            return i + 5;
        }
        if (insn.Length == 6)
            bytes[i++] = X86.CsPrefix;
        if (op is not (X86.Call or X86.Jmp32))
            return -1;
        bytes[i] = op;
        ulong dest = op == X86.Call ? callDest : jmpDest;
        BinaryPrimitives.WriteInt32LittleEndian(bytes[(i + 1)..], ctx.Rel32(addr + (ulong)i, X86.CallSize, dest, site));
        return i + 5;
    }

    // ------------------------------------------------------------------ apply_returns, apply_seal_endbr

    /// <summary>6.12 <c>apply_returns()</c>: as 6.1's (<c>cpu_wants_rethunk_at()</c>, <c>__static_call_fixup()</c>).</summary>
    public static PatchPlan Returns(BootContext ctx) => Linux61Passes.Returns(ctx);

    /// <summary>6.12 <c>apply_seal_endbr()</c> (<c>CONFIG_X86_KERNEL_IBT</c>, no FineIBT in Debian's GCC build):
    /// <c>poison_endbr()</c> on every <c>.ibt_endbr_seal</c> entry, as 6.1's <c>apply_ibt_endbr()</c>.</summary>
    public static PatchPlan SealEndbr(BootContext ctx) => Linux61Passes.IbtEndbr(ctx);

    // ------------------------------------------------------------------ SMP locks

    /// <summary>6.12's UP switch: the same condition as 6.1's (<c>!noreplace_smp &amp;&amp; (num_present_cpus() == 1 ||
    /// setup_max_cpus &lt;= 1)</c>, decided once in <see cref="KernelBootState.Smp"/>) and the same
    /// <c>alternatives_smp_unlock()</c> over <c>[_text, _etext)</c>.</summary>
    public static PatchPlan SmpLocks(BootContext ctx) => Linux61Passes.SmpLocks(ctx);

    // ------------------------------------------------------------------ runtime_const_init

    /// <summary>The sections <c>runtime_const_init()</c> walks, in the image's section order.</summary>
    internal static IEnumerable<ElfSection> RuntimeConstSections(KernelImage image) =>
        image.Elf.Sections.Where(s => (s.Name.StartsWith("runtime_ptr_", StringComparison.Ordinal) || s.Name.StartsWith("runtime_shift_", StringComparison.Ordinal))
            && s.HasFileBytes);

    /// <summary>Entries of every <c>runtime_ptr_*</c> / <c>runtime_shift_*</c> section.</summary>
    public static int RuntimeConstCount(KernelImage image) => RuntimeConstSections(image).Sum(s => (int)(s.Size / 4));

    /// <summary>Every runtime-constant site: its section, index in it, address and width (8 for a pointer, 1 for a shift).</summary>
    internal static IEnumerable<(ElfSection Section, int Index, ulong Address, int Width)> RuntimeConstSites(KernelImage image)
    {
        foreach (var sec in RuntimeConstSections(image))
        {
            var table = image.ReadBytes(sec.Address, (int)sec.Size).ToArray();
            int width = sec.Name.StartsWith("runtime_ptr_", StringComparison.Ordinal) ? 8 : 1;
            for (int i = 0; i + 4 <= table.Length; i += 4)
                yield return (sec, i / 4, image.Elf.AddressPlus(sec.Address + (ulong)i, BinaryPrimitives.ReadInt32LittleEndian(table.AsSpan(i))), width);
        }
    }

    /// <summary>
    /// <c>runtime_const_init(ptr, USER_PTR_MAX)</c> (<c>arch_cpu_finalize_init()</c>, after the alternatives):
    /// <c>TASK_SIZE_MAX</c> = 2^47 − 4096, or 2^56 − 4096 with 5-level paging (<c>la57</c>), into every
    /// <c>runtime_ptr_USER_PTR_MAX</c> immediate. <c>d_hash_shift</c> and <c>dentry_hashtable</c> (<c>dcache_init_early()</c>)
    /// depend on the memory size and a boot-time allocation: they are left as built (the verifier counts them as dynamic).
    /// </summary>
    public static PatchPlan RuntimeConsts(BootContext ctx)
    {
        if (ctx.Bitness != 64)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        ulong userPtrMax = (1UL << (ctx.State.HasMacro("X86_FEATURE_LA57") ? 56 : 47)) - 4096;
        Span<byte> v = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(v, userPtrMax);
        foreach (var (sec, index, address, width) in RuntimeConstSites(ctx.Image))
        {
            if (sec.Name != "runtime_ptr_USER_PTR_MAX")
                continue;
            var site = new SiteRef(SiteKind.Raw, index, sec.Name);
            if (!text.IsCode(address, width))
                throw new PatchException(site, address, "the runtime constant is not inside an executable section");
            text.Write(address, v, site, $"USER_PTR_MAX = 0x{userPtrMax:x}");
        }
        return text.ToPlan();
    }

    // ------------------------------------------------------------------ call depth tracking

    /// <summary>Entries of <c>.call_sites</c> (s32 self-relative).</summary>
    public static int CallSiteCount(KernelImage image) =>
        image.Elf.FindSection(".call_sites") is { } s && s.HasFileBytes ? (int)(s.Size / 4) : 0;

    /// <summary><c>callthunks_patch_builtin_calls()</c>: nothing without <c>X86_FEATURE_CALL_DEPTH</c>.</summary>
    public static PatchPlan CallThunks(BootContext ctx) =>
        ctx.State.HasMacro("X86_FEATURE_CALL_DEPTH") ? Linux612CallThunks.Patch(ctx) : PatchPlan.Empty;
}

using System.Buffers.Binary;
using Altpatch.Code;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>
/// The boot-time passes of the seed's era, Linux 2.6.22 after "i386: Make patching more robust, fix paravirt
/// issue" (every site assembled in a buffer and written with one <c>text_poke()</c>). Order in 2.6.22's
/// <c>alternative_instructions()</c>: <c>apply_alternatives()</c>, the SMP-lock switch, then <c>apply_paravirt()</c>.
/// No 2.6.22 kernel was available to check these against; see <c>docs/kernel-patching.md</c>.
/// </summary>
internal static class Linux2622Passes
{
    /// <summary>2.6.22's <c>CLBR_ANY</c> on i386: eax | ecx | edx.</summary>
    private const ushort ClobberAny = 0x7;

    /// <summary>
    /// 2.6.22 <c>apply_alternatives()</c>: for each entry whose feature the CPU has (no inversion flag in that era),
    /// the replacement copied into a buffer, <c>add_nops()</c> with the era's table for the rest, one
    /// <c>text_poke()</c>. No call/jmp fix-up and no <c>optimize_nops()</c> yet.
    /// </summary>
    public static PatchPlan Alternatives(BootContext ctx)
    {
        var sites = ctx.Tables.Alternatives;
        if (sites.IsEmpty)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        Span<byte> buf = stackalloc byte[X86.MaxPatchLength];
        foreach (var a in sites)
        {
            var site = new SiteRef(SiteKind.Alternative, a.Index, KernelPatchTables.AltInstructions);
            if (a.ReplacementLen > a.InstrLen)
                throw new PatchException(site, a.Address, $"replacement of {a.ReplacementLen} bytes is longer than the {a.InstrLen}-byte site (BUG_ON(a->replacementlen > a->instrlen))");
            if (a.InstrLen > X86.MaxPatchLength)
                throw new PatchException(site, a.Address, $"instrlen {a.InstrLen} exceeds MAX_PATCH_LEN ({X86.MaxPatchLength})");
            if (!ctx.HasFeature(a.Cpuid))
                continue;
            var b = buf[..a.InstrLen];
            text.Read(a.ReplacementAddress, b[..a.ReplacementLen], site);
            ctx.AddNops(b[a.ReplacementLen..]);
            text.Write(a.Address, b, site, $"feature {a.FeatureText} present");
        }
        return text.ToPlan();
    }

    /// <summary>
    /// 2.6.22's UP switch: with one possible CPU, <c>alternatives_smp_unlock(__smp_locks, __smp_locks_end, _text,
    /// _etext)</c> writes a one-byte NOP (<c>add_nops(insn, 1)</c>) over every listed address in
    /// <c>[_text, _etext]</c> — inclusive end, no check of the byte there.
    /// </summary>
    public static PatchPlan SmpLocks(BootContext ctx)
    {
        var sites = ctx.Tables.SmpLocks;
        if (sites.IsEmpty || ctx.State.Cpus != 1)
            return PatchPlan.Empty;
        var text = new PassText(ctx.Poker);
        Span<byte> nop = stackalloc byte[1];
        ctx.AddNops(nop);
        ulong start = ctx.Thunks.TextStart, end = ctx.Thunks.TextEnd;
        foreach (var l in sites)
        {
            if (l.Address < start || l.Address > end)
                continue;
            var site = new SiteRef(SiteKind.Lock, l.Index, KernelPatchTables.SmpLocksSection);
            text.Write(l.Address, nop, site, "UP: lock -> nop");
        }
        return text.ToPlan();
    }

    /// <summary>
    /// 2.6.22 <c>apply_paravirt()</c> with the native backend's default rule (<c>paravirt_patch_default()</c>): an empty
    /// slot becomes <c>ud2a</c>, <c>paravirt_nop</c> becomes NOPs, anything else a direct <c>call</c> when the site
    /// lets the callee clobber every caller-saved register (CLBR_ANY) and has 5 bytes; otherwise the site keeps its
    /// indirect call. The <c>DEF_NATIVE</c> inline forms (cli, sti, …) and the iret/sysexit <c>jmp</c>s need 2.6.22's
    /// <c>struct paravirt_ops</c> layout, which we do not have: those sites get the default rule too.
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
                throw new PatchException(site, p.Address, "paravirt_ops could not be located: no paravirt site is an indirect call through it");
            var b = buf[..p.Len];
            text.Read(p.Address, b, site);   // the seed leaves the buffer uninitialised when nothing fits; we keep the original
            ulong opfunc = ctx.PvOpsSlot(pv, p, site);
            int used;
            string why;
            if (opfunc == 0)
            {
                // paravirt_patch_insns(insnbuf, len, start_ud2a, end_ud2a)
                if (p.Len >= X86.Ud2.Length)
                {
                    X86.Ud2.CopyTo(b);
                    used = X86.Ud2.Length;
                }
                else
                    used = p.Len;
                why = "NULL op: ud2a";
            }
            else if (ctx.Thunks.ParavirtNop is { } nop && opfunc == nop)
            {
                used = 0;
                why = "paravirt_nop";
            }
            else if ((ClobberAny & ~p.Clobbers) != 0 || p.Len < X86.CallSize)
            {
                used = p.Len;   // "target would clobber too much for this site" / "call too long for patch site"
                why = "kept: site too small or clobbers too few";
            }
            else
            {
                b[0] = X86.Call;
                BinaryPrimitives.WriteInt32LittleEndian(b[1..], ctx.Rel32(p.Address, X86.CallSize, opfunc, site));
                used = X86.CallSize;
                why = $"call paravirt_ops[{p.Type}] = 0x{opfunc:x}";
            }
            ctx.AddNops(b[used..]);
            text.Write(p.Address, b, site, why);
        }
        return text.ToPlan();
    }
}

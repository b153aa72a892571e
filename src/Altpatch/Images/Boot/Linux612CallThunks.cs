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

    public static PatchPlan Patch(BootContext ctx)
    {
        var image = ctx.Image;
        var anySite = new SiteRef(new SiteKind("call"), 0, ".call_sites");
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
        var templateBytes = ctx.ReadOriginal(template, tsize);
        ulong textStart = ctx.Thunks.TextStart, textEnd = ctx.Thunks.TextEnd;
        var text = new PassText(ctx.Poker);
        var window = new byte[16];
        var call = new byte[5];
        var buf = new byte[64];
        var pad = new byte[32];

        void PatchCall(ulong addr, SiteRef site)
        {
            if (addr < textStart || addr >= textEnd)
                return;
            var code = Linux61Passes.ReadWindow(text, addr, window, site);
            var insn = KernelInsn.Decode(code, addr, ctx.Bitness);
            if (!insn.IsValid || insn.Op1 != X86.Call)
                return;                                     // "Patched out call?"
            ulong dest = insn.Target;
            if (skip.Contains(dest) || (kexec is { } k && dest >= k && dest < k + KexecControlCodeMaxSize))
                return;
            if (dest < textStart || dest >= textEnd)
                return;                                     // !is_coretext()
            ulong padAt = dest - (ulong)tsize;
            // patch_dest(): the template relocated for the pad
            Array.Clear(buf);
            templateBytes.CopyTo(buf, 0);
            Linux612Passes.ApplyRelocation(ctx, buf, padAt, tsize, template, tsize, site);
            Linux612Passes.OptimizeNops(ctx, buf, tsize, padAt, default);
            var want = buf.AsSpan(0, tsize);
            var cur = pad.AsSpan(0, tsize);
            text.Read(padAt, cur, site);
            if (!cur.SequenceEqual(want))
            {
                foreach (byte b in cur)
                {
                    if (b != X86.Nop)
                        return;                             // "Invalid padding area"
                }
                text.Write(padAt, want, site, "call depth accounting thunk");
            }
            call[0] = X86.Call;
            BinaryPrimitives.WriteInt32LittleEndian(call.AsSpan(1), ctx.Rel32(addr, X86.CallSize, padAt, site));
            text.Write(addr, call, site, $"call the accounting thunk of 0x{dest:x}");
        }

        if (image.Elf.FindSection(".call_sites") is { } sec && sec.HasFileBytes)
        {
            var table = image.ReadBytes(sec.Address, (int)sec.Size).ToArray();
            for (int i = 0; i + 4 <= table.Length; i += 4)
            {
                ulong addr = image.Elf.AddressPlus(sec.Address + (ulong)i, BinaryPrimitives.ReadInt32LittleEndian(table.AsSpan(i)));
                PatchCall(addr, new SiteRef(new SiteKind("call"), i / 4, ".call_sites"));
            }
        }
        foreach (var a in ctx.Tables.Alternatives)
            PatchCall(a.Address, new SiteRef(SiteKind.Alternative, a.Index, KernelPatchTables.AltInstructions));
        return text.ToPlan();
    }
}

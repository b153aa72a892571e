using System.Buffers.Binary;
using Altpatch.Code;
using Iced.Intel;

namespace Altpatch.Images.Boot;

/// <summary>
/// The addresses of the functions the boot-time passes branch to, found in a stripped image by rules taken
/// from the code that defines them (Linux 6.1 <c>arch/x86/lib/retpoline.S</c>, <c>arch/x86/kernel/paravirt.c</c>,
/// <c>nospec-branch.h</c>), never from a symbol table: the return thunks, the retpoline and ITS thunk arrays,
/// <c>_paravirt_nop</c>, and the <c>_text</c>…<c>_etext</c> range of the SMP-lock pass.
/// </summary>
/// <remarks>Every address is checked against the bytes the defining code puts there; a thunk whose rule finds
/// nothing (the kernel was built without it) is null. How each is found is in <c>docs/kernel-patching.md</c>.</remarks>
public sealed class KernelThunks
{
    private KernelThunks() { }

    /// <summary><c>__x86_return_thunk</c>: the target of (most) <c>jmp</c>s at <c>.return_sites</c>.</summary>
    public ulong? ReturnThunk { get; private init; }

    /// <summary><c>its_return_thunk</c> (CONFIG_MITIGATION_ITS): <c>ret; int3</c> in the upper half of a cache line after the ITS thunk array.</summary>
    public ulong? ItsReturnThunk { get; private init; }

    /// <summary><c>retbleed_return_thunk</c>: <c>retbleed_untrain_ret</c> + 1.</summary>
    public ulong? RetbleedReturnThunk { get; private init; }

    /// <summary><c>srso_return_thunk</c> (CONFIG_CPU_SRSO): <c>call srso_safe_ret; ud2</c> after <c>srso_untrain_ret</c>.</summary>
    public ulong? SrsoReturnThunk { get; private init; }

    /// <summary><c>srso_alias_return_thunk</c> (CONFIG_CPU_SRSO): the <c>jmp</c> target of <c>srso_alias_untrain_ret</c>.</summary>
    public ulong? SrsoAliasReturnThunk { get; private init; }

    /// <summary><c>__x86_indirect_thunk_array</c>: 16 retpoline thunks of <see cref="RetpolineThunkSize"/> bytes, one per register.</summary>
    public ulong? RetpolineThunkArray { get; private init; }

    /// <summary><c>__x86_indirect_its_thunk_array</c> (CONFIG_MITIGATION_ITS): 16 thunks of <see cref="ItsThunkSize"/> bytes.</summary>
    public ulong? ItsThunkArray { get; private init; }

    /// <summary><c>_paravirt_nop</c>: the <c>pv_ops</c> target whose code is nothing but a return.</summary>
    public ulong? ParavirtNop { get; private init; }

    /// <summary>How many distinct <c>pv_ops</c> targets (of the slots sites use) look like <c>_paravirt_nop</c>; more than 1 is ambiguous.</summary>
    public int ParavirtNopCandidates { get; private init; }

    /// <summary><c>_text</c>: the start of <c>.text</c>.</summary>
    public ulong TextStart { get; private init; }

    /// <summary><c>_etext</c>: the end of <c>.text</c>.</summary>
    public ulong TextEnd { get; private init; }

    /// <summary>The address of the return thunk <paramref name="kind"/> (<see cref="ReturnThunkKinds.Symbol"/>), or null when the image has none.</summary>
    public ulong? Address(ReturnThunkKind kind) => kind switch
    {
        ReturnThunkKind.Its => ItsReturnThunk,
        ReturnThunkKind.Retbleed => RetbleedReturnThunk,
        ReturnThunkKind.Srso => SrsoReturnThunk,
        ReturnThunkKind.SrsoAlias => SrsoAliasReturnThunk,
        ReturnThunkKind.CallDepth => CallDepthReturnThunk,
        _ => ReturnThunk,
    };

    /// <summary><c>call_depth_return_thunk</c> (6.2+, <c>retbleed=stuff</c>), from the image's symbols; null without.</summary>
    public ulong? CallDepthReturnThunk { get; private init; }

    /// <summary>
    /// Every thunk and range boundary this class finds, by its kernel symbol, in a fixed order: the return thunks
    /// (the default one, then ITS, RETBleed, SRSO, SRSO alias, call depth), the two thunk arrays, <c>_paravirt_nop</c>,
    /// <c>_text</c> and <c>_etext</c>.
    /// </summary>
    public IReadOnlyList<(string Symbol, ulong? Address)> Symbols =>
    [
        .. ((ReturnThunkKind[])[ReturnThunkKind.Default, ReturnThunkKind.Its, ReturnThunkKind.Retbleed, ReturnThunkKind.Srso, ReturnThunkKind.SrsoAlias, ReturnThunkKind.CallDepth])
            .Select(k => (k.Symbol(), Address(k))),
        ("__x86_indirect_thunk_array", RetpolineThunkArray),
        ("__x86_indirect_its_thunk_array", ItsThunkArray),
        ("_paravirt_nop", ParavirtNop),
        ("_text", (ulong?)TextStart),
        ("_etext", (ulong?)TextEnd),
    ];

    /// <summary>RETPOLINE_THUNK_SIZE (6.1 <c>nospec-branch.h</c>): 32.</summary>
    public const int RetpolineThunkSize = 32;

    /// <summary>ITS_THUNK_SIZE (6.1.176 <c>nospec-branch.h</c>): 64.</summary>
    public const int ItsThunkSize = 64;

    /// <summary>Finds the thunks of <paramref name="image"/> (reads its tables).</summary>
    /// <param name="image">The kernel image, unpatched.</param>
    /// <exception cref="ImageFormatException">The image's tables are malformed (<see cref="KernelImage.Tables"/>).</exception>
    public static KernelThunks Find(KernelImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var elf = image.Elf;
        var tables = image.Tables;
        int bitness = image.Bitness;
        var text = elf.FindSection(".text");
        ulong textStart = text?.Address ?? 0, textEnd = text?.EndAddress ?? 0;

        ulong? ret = MostCommonTarget(elf, tables.Returns.Select(r => r.Address), X86.Jmp32, bitness);
        ulong? retpolineArray = FindRetpolineArray(elf, tables, bitness);
        ulong? itsArray = bitness == 64 ? FindItsArray(elf, text) : null;
        ulong? itsRet = null;
        if (itsArray is { } ia)
        {
            // retpoline.S: after the 16 ITS thunks, ".align 64, 0xcc" ends the array, then
            // ".align 64, 0xcc; .skip 32, 0xcc; its_return_thunk: ret; int3".
            ulong candidate = AlignUp(ia + 16 * ItsThunkSize, 64) + 32;
            if (BytesAre(elf, candidate, [X86.Ret, X86.Int3]))
                itsRet = candidate;
        }
        var (retbleed, srso) = FindUntrainThunks(elf, tables, bitness);
        ulong? srsoAlias = FindSrsoAliasThunk(elf, tables, bitness);
        var (pvNop, candidates) = FindParavirtNop(image, ret);
        ulong? callDepthRet = null;
        if (tables.AltFormat == AltInstrFormat.Relative14 && image.TryGetSymbols(out var symbols))
        {
            // 6.3+ layouts (6.12): the untraining thunks are no longer where the 6.1 scans look; take the
            // symbols where the image names them (the scans' results, where they found one, are kept).
            ulong? Sym(string name) => symbols.TryGetAddress(name, out var a) ? a : null;
            retbleed ??= Sym(ReturnThunkKind.Retbleed.Symbol());
            srso ??= Sym(ReturnThunkKind.Srso.Symbol());
            srsoAlias = Sym(ReturnThunkKind.SrsoAlias.Symbol()) ?? srsoAlias;
            itsRet ??= Sym(ReturnThunkKind.Its.Symbol());
            callDepthRet = Sym(ReturnThunkKind.CallDepth.Symbol());
        }

        return new KernelThunks
        {
            CallDepthReturnThunk = callDepthRet,
            ReturnThunk = ret,
            ItsReturnThunk = itsRet,
            RetbleedReturnThunk = retbleed,
            SrsoReturnThunk = srso,
            SrsoAliasReturnThunk = srsoAlias,
            RetpolineThunkArray = retpolineArray,
            ItsThunkArray = itsArray,
            ParavirtNop = pvNop,
            ParavirtNopCandidates = candidates,
            TextStart = textStart,
            TextEnd = textEnd,
        };
    }

    /// <summary>The same thunks with another <c>.text</c> range: a module's, whose SMP lock sites
    /// <c>alternatives_smp_module_add()</c> bounds by the module's <c>.text</c>.</summary>
    internal KernelThunks WithText(ulong start, ulong end) => new()
    {
        ReturnThunk = ReturnThunk,
        ItsReturnThunk = ItsReturnThunk,
        RetbleedReturnThunk = RetbleedReturnThunk,
        SrsoReturnThunk = SrsoReturnThunk,
        SrsoAliasReturnThunk = SrsoAliasReturnThunk,
        RetpolineThunkArray = RetpolineThunkArray,
        ItsThunkArray = ItsThunkArray,
        ParavirtNop = ParavirtNop,
        ParavirtNopCandidates = ParavirtNopCandidates,
        TextStart = start,
        TextEnd = end,
    };

    private static ulong AlignUp(ulong a, ulong align) => (a + align - 1) & ~(align - 1);

    private static bool BytesAre(ElfFile elf, ulong address, ReadOnlySpan<byte> expected) =>
        elf.TryReadBytes(address, expected.Length, out var bytes) && bytes.SequenceEqual(expected);

    private static KernelInsn DecodeAt(ElfFile elf, ulong address, int bitness)
    {
        if (!elf.TryGetFileOffset(address, 1, out long off))
            return default;
        var span = elf.Bytes.Span[(int)off..];
        return KernelInsn.Decode(span[..Math.Min(span.Length, 15)], address, bitness);
    }

    /// <summary>The most common target of the branches with opcode <paramref name="op"/> at the sites.</summary>
    private static ulong? MostCommonTarget(ElfFile elf, IEnumerable<ulong> sites, byte op, int bitness)
    {
        var votes = new Dictionary<ulong, int>();
        foreach (var a in sites)
        {
            var insn = DecodeAt(elf, a, bitness);
            if (insn.IsValid && insn.Op1 == op && insn.Target != 0)
                votes[insn.Target] = votes.GetValueOrDefault(insn.Target) + 1;
        }
        return votes.Count == 0 ? null : votes.MaxBy(kv => kv.Value).Key;
    }

    /// <summary>
    /// <c>__x86_indirect_thunk_array</c>: every retpoline site calls or jumps to the thunk of one register,
    /// <c>array + reg × 32</c>. Each thunk starts with <c>RETPOLINE reg</c> (retpoline.S: <c>call 1f; pause; lfence;
    /// jmp; 1: mov %reg, (%rsp); ret</c>), so the <c>mov</c> names the register and target − reg × 32 the array.
    /// The array is taken when every target decoded that way agrees.
    /// </summary>
    private static ulong? FindRetpolineArray(ElfFile elf, KernelPatchTables tables, int bitness)
    {
        var targets = new HashSet<ulong>();
        foreach (var s in tables.Retpolines)
        {
            var insn = DecodeAt(elf, s.Address, bitness);
            if (insn.IsValid && insn.Target != 0)
                targets.Add(insn.Target);
        }
        ulong? array = null;
        foreach (var t in targets)
        {
            int reg = ThunkRegister(elf, t, bitness);
            if (reg < 0)
                continue;
            ulong a = t - (ulong)(reg * RetpolineThunkSize);
            if (array is null)
                array = a;
            else if (array != a)
                return null;   // inconsistent: not the 6.1 layout
        }
        return array;
    }

    /// <summary>The register of a retpoline thunk: the source of the <c>mov %reg, (%rsp)</c> its RETPOLINE macro ends with, or -1.</summary>
    private static int ThunkRegister(ElfFile elf, ulong thunk, int bitness)
    {
        if (!elf.TryReadBytes(thunk, RetpolineThunkSize, out var code))
            return -1;
        var d = Altpatch.Code.DecoderCache.Current.Start(code, thunk, bitness);
        var first = default(Instruction);
        for (int n = 0; n < 8 && d.IP < thunk + RetpolineThunkSize; n++)
        {
            d.Decode(out var insn);
            if (insn.IsInvalid)
                return -1;
            if (n == 0)
                first = insn;
            if (insn.Mnemonic == Mnemonic.Mov && insn.Op0Kind == OpKind.Memory && insn.Op1Kind == OpKind.Register
                && insn.MemoryBase is Register.RSP or Register.ESP && insn.MemoryDisplacement64 == 0 && insn.MemoryIndex == Register.None
                && first.Mnemonic == Mnemonic.Call)
            {
                return insn.Op1Register switch
                {
                    >= Register.RAX and <= Register.R15 => insn.Op1Register - Register.RAX,
                    >= Register.EAX and <= Register.R15D => insn.Op1Register - Register.EAX,
                    _ => -1,
                };
            }
        }
        return -1;
    }

    /// <summary>
    /// <c>__x86_indirect_its_thunk_array</c> (retpoline.S, CONFIG_MITIGATION_ITS): 16 thunks, one per register in
    /// <c>GEN-for-each-reg.h</c> order, each <c>jmp *%reg; int3</c> at the upper half (offset 32) of its own
    /// 64-byte cache line. Found by scanning <c>.text</c> for that run of 16.
    /// </summary>
    private static ulong? FindItsArray(ElfFile elf, ElfSection? text)
    {
        if (text is not { } t || !elf.TryReadBytes(t.Address, (int)Math.Min(t.Size, int.MaxValue), out var span))
            return null;
        // Thunk 0 (rax) is "ff e0 cc" at an address = 32 (mod 64).
        ulong first = AlignUp(t.Address, 64) + 32;
        for (ulong a = first; a + 16 * ItsThunkSize <= t.EndAddress; a += 64)
        {
            int i = (int)(a - t.Address);
            if (span[i] != 0xff || span[i + 1] != 0xe0 || span[i + 2] != 0xcc)
                continue;
            bool all = true;
            for (int reg = 1; reg < 16 && all; reg++)
            {
                var s = span[(i + reg * ItsThunkSize)..];
                all = reg < 8
                    ? s[0] == 0xff && s[1] == 0xe0 + reg && s[2] == 0xcc
                    : s[0] == 0x41 && s[1] == 0xff && s[2] == 0xe0 + (reg - 8) && s[3] == 0xcc;
            }
            if (all)
                return a;
        }
        return null;
    }

    /// <summary>
    /// retbleed_return_thunk and srso_return_thunk through <c>entry_untrain_ret</c> (retpoline.S:
    /// <c>ALTERNATIVE "jmp retbleed_untrain_ret", "jmp srso_untrain_ret", X86_FEATURE_SRSO</c>): the one
    /// alternative on X86_FEATURE_SRSO whose original and replacement are both 5-byte <c>jmp</c>s.
    /// <c>retbleed_return_thunk</c> = <c>retbleed_untrain_ret</c> + 1 (after the <c>0xf6</c> byte: <c>f6 c3 cc</c>);
    /// <c>srso_safe_ret</c> = <c>srso_untrain_ret</c> + 2 (after <c>48 b8</c>); <c>srso_return_thunk</c> is the
    /// <c>call srso_safe_ret; ud2</c> after <c>srso_untrain_ret</c>'s own.
    /// </summary>
    private static (ulong? Retbleed, ulong? Srso) FindUntrainThunks(ElfFile elf, KernelPatchTables tables, int bitness)
    {
        const ushort Srso = (ushort)Altpatch.Cpu.CpuFeature.Srso;
        foreach (var a in tables.Alternatives)
        {
            if (a.Cpuid != Srso || a.Not || a.InstrLen != 5 || a.ReplacementLen != 5)
                continue;
            var orig = DecodeAt(elf, a.Address, bitness);
            var repl = DecodeAt(elf, a.ReplacementAddress, bitness);
            if (orig.Op1 != X86.Jmp32 || repl.Op1 != X86.Jmp32 || orig.Length != X86.Jmp32Size || repl.Length != X86.Jmp32Size)
                continue;
            ulong? retbleed = BytesAre(elf, orig.Target, [0xf6, 0xc3, 0xcc]) ? orig.Target + 1 : null;
            ulong untrain = repl.Target;
            ulong? srso = null;
            if (BytesAre(elf, untrain, [0x48, 0xb8, 0x48, 0x8d, 0x64, 0x24, 0x08, 0xc3, 0xcc, 0xcc]))
            {
                ulong safeRet = untrain + 2;
                int seen = 0;
                for (ulong p = untrain + 10; p < untrain + 256; p++)
                {
                    if (!BytesAre(elf, p, [X86.Call]))
                        continue;
                    var call = DecodeAt(elf, p, bitness);
                    if (call.Length == X86.CallSize && call.Target == safeRet && BytesAre(elf, p + X86.CallSize, X86.Ud2))
                    {
                        if (++seen == 2)
                        {
                            srso = p;
                            break;
                        }
                    }
                }
            }
            return (retbleed, srso);
        }
        return (null, null);
    }

    /// <summary>
    /// srso_alias_return_thunk through <c>CALL_UNTRAIN_RET</c> (nospec-branch.h: <c>"call srso_alias_untrain_ret",
    /// X86_FEATURE_SRSO_ALIAS</c>): the callee is <c>nop2; lfence; jmp srso_alias_return_thunk</c>, and the thunk is
    /// <c>call srso_alias_safe_ret; ud2</c>.
    /// </summary>
    private static ulong? FindSrsoAliasThunk(ElfFile elf, KernelPatchTables tables, int bitness)
    {
        const ushort SrsoAlias = (ushort)Altpatch.Cpu.CpuFeature.SrsoAlias;
        foreach (var a in tables.Alternatives)
        {
            if (a.Cpuid != SrsoAlias || a.Not || a.ReplacementLen != 5)
                continue;
            var call = DecodeAt(elf, a.ReplacementAddress, bitness);
            if (call.Op1 != X86.Call || call.Length != X86.CallSize)
                continue;
            ulong untrain = call.Target;
            if (!BytesAre(elf, untrain, [0x66, 0x90, 0x0f, 0xae, 0xe8, 0xe9]))
                continue;
            var jmp = DecodeAt(elf, untrain + 5, bitness);
            if (jmp.Length != 5)
                continue;
            var thunk = DecodeAt(elf, jmp.Target, bitness);
            if (thunk.Op1 == X86.Call && thunk.Length == X86.CallSize && BytesAre(elf, jmp.Target + X86.CallSize, X86.Ud2))
                return jmp.Target;
        }
        return null;
    }

    /// <summary>
    /// <c>_paravirt_nop</c> (paravirt.c: <c>ASM_ENDBR; ASM_RET</c> in <c>.entry.text</c>): the <c>pv_ops</c>
    /// target (among the slots sites use) whose code is only a return — <c>ret</c>, or with return thunks a
    /// <c>jmp __x86_return_thunk</c> — optionally after an <c>endbr</c>. Native ops are C functions that at
    /// least call <c>__fentry__</c> or do something, so only the nop stub looks like this. When several targets
    /// do, the one most slots point at is taken and <see cref="ParavirtNopCandidates"/> says so.
    /// </summary>
    private static (ulong?, int) FindParavirtNop(KernelImage image, ulong? returnThunk)
    {
        var pv = image.Tables.PvOps;
        if (pv is null)
            return (null, 0);
        var elf = image.Elf;
        var counts = new Dictionary<ulong, int>();
        foreach (var target in pv.Slots)
        {
            if (target == 0 || !IsReturnOnly(elf, target, image.Bitness, returnThunk))
                continue;
            counts[target] = counts.GetValueOrDefault(target) + 1;
        }
        return counts.Count == 0 ? (null, 0) : (counts.MaxBy(kv => kv.Value).Key, counts.Count);
    }

    private static bool IsReturnOnly(ElfFile elf, ulong target, int bitness, ulong? returnThunk)
    {
        if (!elf.TryGetFileOffset(target, 1, out long off))
            return false;
        var code = elf.Bytes.Span[(int)off..];
        int p = 0;
        if (code.Length >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(code) is 0xfa1e0ff3 or 0xfb1e0ff3)
            p = 4;   // endbr64 / endbr32
        if (code.Length <= p)
            return false;
        if (code[p] == X86.Ret)
            return true;
        var insn = KernelInsn.Decode(code.Slice(p, Math.Min(15, code.Length - p)), target + (ulong)p, bitness);
        return insn.Op1 == X86.Jmp32 && returnThunk is { } rt && insn.Target == rt;
    }
}

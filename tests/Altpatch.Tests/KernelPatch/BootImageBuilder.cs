using System.Buffers.Binary;
using System.Text;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Tests.Images;
using static Altpatch.Tests.Images.SyntheticTables;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// A small kernel ELF for the boot-time passes: <c>.text</c> with the thunks of 6.1's <c>retpoline.S</c> laid out as
/// that file lays them out (retpoline thunk array, ITS thunk array and <c>its_return_thunk</c>,
/// <c>__x86_return_thunk</c>, the RETBleed and SRSO untraining sequences), <c>_paravirt_nop</c> and native pv_ops
/// targets; <c>.init.text</c>, <c>.altinstr_replacement</c>, <c>.rodata</c> (banner, optional cap-flag names),
/// <c>.data</c> (pv_ops) and the five site tables. Tests write code with <see cref="Put"/> and add entries, then
/// <see cref="Build"/>; the entries are encoded by <see cref="SyntheticTables"/>.
/// </summary>
internal sealed class BootImageBuilder
{
    private readonly byte[] text = Filled(0x4000, 0xcc);
    private readonly byte[] init = Filled(0x400, 0xcc);
    private readonly byte[] repl = Filled(0x400, 0xcc);
    private int replUsed;

    public BootImageBuilder(bool is64 = true, AltInstrFormat format = AltInstrFormat.Relative12)
    {
        Is64 = is64;
        Format = format;
        Base = is64 ? 0xffffffff81000000UL : 0xc1000000UL;
        for (int i = 0; i < 32; i++)
            PvOpsSlots.Add(NativeFunction(i));
        LayOutThunks();
    }

    public bool Is64 { get; }
    public AltInstrFormat Format { get; }
    public ulong Base { get; }
    public ulong Text => Base;
    public ulong Rodata => Base + 0x10000;
    public ulong Data => Base + 0x6000;
    public ulong PvOps => Data + 0x100;
    public ulong Replacement => Base + 0x7000;
    public ulong AltTable => Base + 0x8000;
    public ulong ParaTable => Base + 0x9000;
    public ulong LockTable => Base + 0xa000;
    public ulong RetpolineTable => Base + 0xb000;
    public ulong ReturnTable => Base + 0xc000;
    public ulong InitText => Base + 0xd000;
    public int PointerSize => Is64 ? 8 : 4;

    // retpoline.S layout (x86-64)
    public ulong RetpolineArray => Text + 0x3000;
    public ulong ItsArray => Text + 0x3220;
    public ulong ItsReturnThunk => Text + 0x3660;
    public ulong ReturnThunk => Text + 0x3670;
    public ulong RetbleedUntrainRet => Text + 0x36bf;
    public ulong RetbleedReturnThunk => RetbleedUntrainRet + 1;
    public ulong SrsoUntrainRet => Text + 0x373e;
    public ulong SrsoReturnThunk => Text + 0x3760;
    public ulong EntryUntrainRet => Text + 0x3770;
    public ulong SrsoAliasUntrainRet => Text + 0x3800;
    public ulong SrsoAliasReturnThunk => Text + 0x3820;
    public ulong SrsoAliasSafeRet => Text + 0x3840;
    public ulong ParavirtNop => Text + 0x3900;
    public ulong NativeFunction(int slot) => Text + 0x3a00 + (ulong)slot * 0x10;
    public ulong RetpolineThunk(int reg) => RetpolineArray + (ulong)reg * 32;

    public List<Alt> Alts { get; } = [];
    public List<Para> Paras { get; } = [];
    public List<ulong> Locks { get; } = [];
    public List<ulong> Returns { get; } = [];
    public List<ulong> Retpolines { get; } = [];
    public List<ulong> PvOpsSlots { get; } = [];
    public List<ulong> IbtSeal { get; } = [];
    public ulong IbtSealTable => Base + 0xe000;

    // ---- the text writers' tables (jump labels, static calls, mcount) and the symbols that name them ----

    /// <summary>A jump entry: code, target, key (an address in <see cref="Keys"/>), branch bit.</summary>
    public List<(ulong Code, ulong Target, ulong Key, bool Branch)> JumpEntries { get; } = [];

    /// <summary>A static call site: address, key, tail flag.</summary>
    public List<(ulong Address, ulong Key, bool Tail)> StaticCallSites { get; } = [];

    /// <summary>mcount records (0 = padding).</summary>
    public List<ulong> McountRecords { get; } = [];

    /// <summary>Symbols the text passes look up (kallsyms of the image); null: none given.</summary>
    public Dictionary<string, ulong>? Symbols { get; set; }

    /// <summary>.data of static keys and static call keys (0x400 bytes).</summary>
    public ulong Keys => Base + 0x18000;

    /// <summary>.exit.text (0x100 bytes).</summary>
    public ulong ExitText => Base + 0x19000;

    /// <summary>Where the tables go (an .init.data section: jump table at +0, static call sites at +0x800, mcount at +0xc00).</summary>
    public ulong TextTables => Base + 0x1a000;

    private readonly byte[] keys = new byte[0x400];
    private readonly byte[] exit = Filled(0x100, 0xcc);

    /// <summary>Writes a pointer (a static call key's func) or an int (a static key's enabled count) into <see cref="Keys"/>.</summary>
    public void PutKey(ulong key, ulong value, bool pointer = true)
    {
        var span = keys.AsSpan((int)(key - Keys));
        if (pointer)
            WritePointer(span, PointerSize, value);
        else
            BinaryPrimitives.WriteInt32LittleEndian(span, (int)value);
    }

    /// <summary>A static-call trampoline at <paramref name="at"/>: <c>jmp func</c> (or the RET form for 0) + ud1 signature.</summary>
    public void PutTrampoline(ulong at, ulong func) =>
        Put(at, [.. func == 0 ? Hex("c3cc909090") : Branch(0xe9, at, func), 0x0f, 0xb9, 0xcc]);

    private byte[] TextTableBytes()
    {
        var b = new byte[0x1000 + McountRecords.Count * PointerSize];
        int es = Is64 ? 16 : 12;
        for (int i = 0; i < JumpEntries.Count; i++)
        {
            var (code, target, key, branch) = JumpEntries[i];
            ulong at = TextTables + (ulong)(i * es);
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(i * es), (int)(long)(code - at));
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(i * es + 4), (int)(long)(target - (at + 4)));
            long k = (long)(key - (at + 8)) + (branch ? 1 : 0) + 2;   // objtool's "2 | branch" addend
            if (Is64)
                BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(i * es + 8), k);
            else
                BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(i * es + 8), (int)k);
        }
        for (int i = 0; i < StaticCallSites.Count; i++)
        {
            var (addr, key, tail) = StaticCallSites[i];
            ulong at = TextTables + 0x800 + (ulong)(i * 8);
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(0x800 + i * 8), (int)(long)(addr - at));
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(0x800 + i * 8 + 4), (int)(long)(key - (at + 4)) + (tail ? 1 : 0));
        }
        for (int i = 0; i < McountRecords.Count; i++)
            WritePointer(b.AsSpan(0xc00 + i * PointerSize), PointerSize, McountRecords[i]);
        return b;
    }

    /// <summary>Symbols naming the text tables' bounds (what kallsyms of a KALLSYMS_ALL kernel gives), merged into
    /// <see cref="Symbols"/>.</summary>
    public KernelSymbols TableSymbols()
    {
        var d = TableSymbolMap();
        var text = string.Join("\n", d.OrderBy(kv => kv.Value).Select(kv => $"{kv.Value:x} {(kv.Key.StartsWith("__start_", StringComparison.Ordinal) || kv.Key.StartsWith("__stop_", StringComparison.Ordinal) ? 'D' : 'T')} {kv.Key}"));
        return KernelSymbols.FromSystemMap(text, "synthetic System.map");
    }

    private Dictionary<string, ulong> TableSymbolMap()
    {
        var d = Symbols is null ? new Dictionary<string, ulong>() : new Dictionary<string, ulong>(Symbols);
        int es = Is64 ? 16 : 12;
        d["__start___jump_table"] = TextTables;
        d["__stop___jump_table"] = TextTables + (ulong)(JumpEntries.Count * es);
        if (Is64)
        {
            d["__start_static_call_sites"] = TextTables + 0x800;
            d["__stop_static_call_sites"] = TextTables + 0x800 + (ulong)(StaticCallSites.Count * 8);
        }
        d["__start_mcount_loc"] = TextTables + 0xc00;
        d["__stop_mcount_loc"] = TextTables + 0xc00 + (ulong)(McountRecords.Count * PointerSize);
        return d;
    }

    /// <summary>cpuinfo names in <c>x86_cap_flags</c> (feature number → name); null: no table in the image.</summary>
    public Dictionary<int, string>? CapFlags { get; set; }

    public string? Banner { get; set; } = "Linux version 6.1.0-synthetic (test@altpatch) (gcc) #1 SMP PREEMPT_DYNAMIC";

    private static byte[] Filled(int n, byte b) => Enumerable.Repeat(b, n).ToArray();

    /// <summary>Bytes written as hex, spaces allowed: <c>"0f ae e8"</c>.</summary>
    public static byte[] Hex(string s) => Convert.FromHexString(s.Replace(" ", "", StringComparison.Ordinal));

    /// <summary>Where the rel32 call or jmp at <paramref name="at"/> in the patched image leads.</summary>
    public static ulong BranchTarget(KernelPatchResult r, ulong at) =>
        at + 5 + (ulong)(long)BinaryPrimitives.ReadInt32LittleEndian(r.Patched.ReadBytes(at + 1, 4));

    /// <summary>Writes bytes at an address in .text, .init.text or .altinstr_replacement.</summary>
    public void Put(ulong address, params byte[] bytes)
    {
        if (address >= Text && address + (ulong)bytes.Length <= Text + (ulong)text.Length)
            bytes.CopyTo(text, (int)(address - Text));
        else if (address >= InitText && address + (ulong)bytes.Length <= InitText + (ulong)init.Length)
            bytes.CopyTo(init, (int)(address - InitText));
        else if (address >= Replacement && address + (ulong)bytes.Length <= Replacement + (ulong)repl.Length)
            bytes.CopyTo(repl, (int)(address - Replacement));
        else if (address >= ExitText && address + (ulong)bytes.Length <= ExitText + (ulong)exit.Length)
            bytes.CopyTo(exit, (int)(address - ExitText));
        else
            throw new ArgumentOutOfRangeException(nameof(address), $"0x{address:x} is not in a code section of the synthetic image");
    }

    /// <summary>Appends a replacement to .altinstr_replacement and returns its address.</summary>
    public ulong AddReplacement(params byte[] bytes)
    {
        ulong a = Replacement + (ulong)replUsed;
        bytes.CopyTo(repl, replUsed);
        replUsed += bytes.Length;
        return a;
    }

    /// <summary>Adds an alternative: the original bytes at <paramref name="instr"/>, the replacement appended.</summary>
    public ulong AddAlt(ulong instr, byte[] original, byte[] replacement, int cpuid, bool not = false)
    {
        Put(instr, original);
        ulong r = AddReplacement(replacement);
        Alts.Add(new Alt(instr, r, (ushort)cpuid, not, (byte)original.Length, (byte)replacement.Length));
        return r;
    }

    /// <summary>A paravirt site: <c>call *pv_ops+type*ptr</c> (ff 15) at <paramref name="instr"/>.</summary>
    public void AddPara(ulong instr, byte type, byte len = 6, ushort clobbers = 0x1ff)
    {
        Put(instr, ParavirtCall(Is64, PvOps, instr, type, len));
        Paras.Add(new Para(instr, type, len, clobbers));
    }

    /// <summary>A return site: <c>jmp __x86_return_thunk</c>.</summary>
    public void AddReturn(ulong at)
    {
        Put(at, Branch(0xe9, at, ReturnThunk));
        Returns.Add(at);
    }

    /// <summary>A retpoline site: call/jmp (5 bytes) or jcc (<paramref name="opcode"/> = 0x80..0x8f: jcc, 6 bytes) to the register's thunk.</summary>
    public void AddRetpoline(ulong at, int reg, byte opcode = 0xe8)
    {
        var b = opcode is >= 0x80 and <= 0x8f ? Branch(opcode, at, RetpolineThunk(reg), 6) : Branch(opcode, at, RetpolineThunk(reg));
        Put(at, b);
        Retpolines.Add(at);
    }

    private void LayOutThunks()
    {
        if (!Is64)
        {
            Put(ParavirtNop, 0xc3);
            for (int i = 0; i < 32; i++)
                Put(NativeFunction(i), 0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3);
            return;
        }
        for (int reg = 0; reg < 16; reg++)
        {
            ulong t = RetpolineThunk(reg);
            // RETPOLINE reg: call 1f; 2: pause; lfence; jmp 2b; 1: mov %reg, (%rsp); ret
            byte rex = (byte)(reg >= 8 ? 0x4c : 0x48);
            byte modrm = (byte)(0x04 | ((reg & 7) << 3));
            Put(t, 0xe8, 0x07, 0, 0, 0, 0xf3, 0x90, 0x0f, 0xae, 0xe8, 0xeb, 0xf9, rex, 0x89, modrm, 0x24, 0xc3, 0xcc);
            ulong its = ItsArray + (ulong)reg * 64;
            Put(its, reg < 8 ? [0xff, (byte)(0xe0 + reg), 0xcc] : [0x41, 0xff, (byte)(0xe0 + reg - 8), 0xcc]);
        }
        Put(ItsReturnThunk, 0xc3, 0xcc);
        Put(ReturnThunk, 0xc3, 0xcc);
        Put(RetbleedUntrainRet, 0xf6, 0xc3, 0xcc, 0x0f, 0xae, 0xe8, 0xeb, 0xf9, 0xcc);
        ulong safeRet = SrsoUntrainRet + 2;
        Put(SrsoUntrainRet, 0x48, 0xb8, 0x48, 0x8d, 0x64, 0x24, 0x08, 0xc3, 0xcc, 0xcc, 0x0f, 0xae, 0xe8);
        Put(SrsoUntrainRet + 13, [.. Branch(0xe8, SrsoUntrainRet + 13, safeRet), 0x0f, 0x0b]);
        Put(SrsoReturnThunk, [.. Branch(0xe8, SrsoReturnThunk, safeRet), 0x0f, 0x0b]);
        // entry_untrain_ret: ALTERNATIVE "jmp retbleed_untrain_ret", "jmp srso_untrain_ret", X86_FEATURE_SRSO
        ulong r = AddReplacement(Branch(0xe9, Replacement + (ulong)replUsed, SrsoUntrainRet));
        Put(EntryUntrainRet, Branch(0xe9, EntryUntrainRet, RetbleedUntrainRet));
        Alts.Add(new Alt(EntryUntrainRet, r, 11 * 32 + 24, false, 5, 5));
        // srso_alias_untrain_ret: nop2; lfence; jmp srso_alias_return_thunk
        Put(SrsoAliasUntrainRet, [0x66, 0x90, 0x0f, 0xae, 0xe8, .. Branch(0xe9, SrsoAliasUntrainRet + 5, SrsoAliasReturnThunk)]);
        Put(SrsoAliasReturnThunk, [.. Branch(0xe8, SrsoAliasReturnThunk, SrsoAliasSafeRet), 0x0f, 0x0b]);
        Put(SrsoAliasSafeRet, 0x48, 0x8d, 0x64, 0x24, 0x08, 0xc3, 0xcc);
        // CALL_UNTRAIN_RET's SRSO_ALIAS entry: "call srso_alias_untrain_ret" over a 5-byte NOP in .init.text
        ulong site = InitText + 0x3f0;
        ulong cr = AddReplacement(Branch(0xe8, Replacement + (ulong)replUsed, SrsoAliasUntrainRet));
        Put(site, 0x0f, 0x1f, 0x44, 0x00, 0x00);
        Alts.Add(new Alt(site, cr, 11 * 32 + 25, false, 5, 5));
        // _paravirt_nop: jmp __x86_return_thunk (RET with return thunks)
        Put(ParavirtNop, Branch(0xe9, ParavirtNop, ReturnThunk));
        for (int i = 0; i < 32; i++)
            Put(NativeFunction(i), [.. Branch(0xe8, NativeFunction(i), Text + 0x3f00), 0xc3, 0xcc]);
        Put(Text + 0x3f00, 0xc3);
    }

    public KernelImage Open(string name = "synthetic") => KernelImage.Load(Build(), name);

    public byte[] Build()
    {
        var rodata = new byte[0x4000];
        if (Banner is not null)
            Encoding.ASCII.GetBytes(Banner + "\n").CopyTo(rodata, 0x10);
        if (CapFlags is { } caps)
        {
            // strings at 0x100.., the pointer array at 0x2000
            int strAt = 0x100;
            int max = Math.Max(caps.Keys.DefaultIfEmpty(0).Max() + 1, 64);
            var ptrs = new ulong[max];
            foreach (var (n, s) in caps.OrderBy(kv => kv.Key))
            {
                Encoding.ASCII.GetBytes(s + "\0").CopyTo(rodata, strAt);
                ptrs[n] = Rodata + (ulong)strAt;
                strAt += s.Length + 1;
            }
            for (int i = 0; i < ptrs.Length; i++)
                WritePointer(rodata.AsSpan(0x2000 + i * PointerSize), PointerSize, ptrs[i]);
        }
        var data = new byte[0x400];
        for (int i = 0; i < PvOpsSlots.Count; i++)
            WritePointer(data.AsSpan(0x100 + i * PointerSize), PointerSize, PvOpsSlots[i]);

        var elf = new SyntheticElf(Is64, Is64 ? ElfFile.MachineX86_64 : ElfFile.MachineI386, Base)
            .Section(".text", Text, text, SyntheticElf.Alloc | SyntheticElf.Exec)
            .Section(".rodata", Rodata, rodata)
            .Section(".data", Data, data, SyntheticElf.Alloc | SyntheticElf.Write)
            .Section(".altinstr_replacement", Replacement, repl, SyntheticElf.Alloc | SyntheticElf.Exec)
            .Section(".altinstructions", AltTable, AltEntries(Format, PointerSize, AltTable, Alts))
            .Section(".parainstructions", ParaTable, ParaEntries(PointerSize, Paras))
            // the 2.6 era's absolute .smp_locks go with its absolute alt_instr; two entries of section padding
            .Section(".smp_locks", LockTable, LockEntries(Format == AltInstrFormat.AbsoluteByteCpuid, PointerSize, LockTable, Locks, padding: 2))
            .Section(".init.text", InitText, init, SyntheticElf.Alloc | SyntheticElf.Exec);
        if (Retpolines.Count > 0)
            elf.Section(".retpoline_sites", RetpolineTable, RelativeEntries(RetpolineTable, Retpolines));
        if (Returns.Count > 0)
            elf.Section(".return_sites", ReturnTable, RelativeEntries(ReturnTable, Returns));
        if (IbtSeal.Count > 0)
            elf.Section(".ibt_endbr_seal", IbtSealTable, RelativeEntries(IbtSealTable, IbtSeal));
        if (JumpEntries.Count + StaticCallSites.Count + McountRecords.Count > 0)
        {
            elf.Section(".keys", Keys, keys, SyntheticElf.Alloc | SyntheticElf.Write)
                .Section(".exit.text", ExitText, exit, SyntheticElf.Alloc | SyntheticElf.Exec)
                .Section(".init.data", TextTables, TextTableBytes(), SyntheticElf.Alloc | SyntheticElf.Write);
        }
        return elf.Build();
    }
}

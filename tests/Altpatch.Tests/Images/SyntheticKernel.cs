using System.Buffers.Binary;
using System.Text;
using Altpatch.Images;

namespace Altpatch.Tests.Images;

/// <summary>
/// A small kernel-shaped ELF for table tests: <c>.text</c>, <c>.init.text</c>, <c>.rodata</c> (banner),
/// <c>.data</c> (pv_ops), <c>.altinstr_replacement</c> and the five site tables, in any
/// <see cref="AltInstrFormat"/> and either pointer size. Tests edit the entry lists before <see cref="Build"/>.
/// </summary>
internal sealed class SyntheticKernel
{
    public readonly record struct Alt(ulong Instr, ulong Repl, ushort Cpuid, bool Not, ushort Flags, byte InstrLen, byte ReplLen, byte PadLen);
    public readonly record struct Para(ulong Instr, byte Type, byte Len, ushort Clobbers);

    public static readonly byte[] Nop5 = [0x0f, 0x1f, 0x44, 0x00, 0x00];
    public static readonly byte[] Lfence = [0x0f, 0xae, 0xe8];
    public static readonly byte[] LockXadd = [0xf0, 0x0f, 0xc1, 0x07];

    public SyntheticKernel(bool is64, AltInstrFormat format)
    {
        Is64 = is64;
        Format = format;
        Base = is64 ? 0xffffffff81000000UL : 0xc1000000UL;
        for (int k = 0; k < 4; k++)
        {
            Alts.Add(new Alt(Text + 0x10 + (ulong)k * 0x10, Replacement + (ulong)k * 8, (ushort)(3 * 32 + 19 + k), k == 1 && SupportsNot, 
                (ushort)(format == AltInstrFormat.Relative14 ? (k == 1 ? 1 : k == 2 ? 2 : 0) : 0), 5, (byte)(k == 3 ? 0 : 3),
                (byte)(format == AltInstrFormat.Relative13 ? 2 : 0)));
        }
        Alts.Add(new Alt(InitText + 0x10, Replacement + 0x40, 7 * 32 + 1, false, 0, 5, 3, 0));
        byte[] types = [0, 5, 12];
        for (int k = 0; k < types.Length; k++)
            Paras.Add(new Para(Text + 0x100 + (ulong)k * 0x10, types[k], 6, (ushort)(k == 0 ? 0x1ff : 0x1)));
        for (int k = 0; k < 3; k++)
            Locks.Add(Text + 0x200 + (ulong)k * 8);
        Locks.Add(InitText + 0x40);
        LockPadding = 3;
        for (int k = 0; k < 2; k++)
            Returns.Add(Text + 0x300 + (ulong)k * 8);
        Retpolines.Add(Text + 0x380);
    }

    public bool Is64 { get; }
    public AltInstrFormat Format { get; set; }
    public bool AbsoluteLocks { get; set; }
    public int LockPadding { get; set; }
    public string? Banner { get; set; } = "Linux version 6.1.0-synthetic (test@altpatch) (gcc) #1 SMP PREEMPT_DYNAMIC";
    public bool WithSymbols { get; set; }
    /// <summary>Leave out the last alt_instr entry's trailing padding, as the 2.6-era asm (".align" before each entry) does.</summary>
    public bool TrimTrailingPadding { get; set; }
    public ulong Base { get; }
    public ulong Text => Base;
    public ulong Rodata => Base + 0x1000;
    public ulong Data => Base + 0x2000;
    public ulong PvOps => Data + 0x100;
    public ulong Replacement => Base + 0x3000;
    public ulong AltTable => Base + 0x4000;
    public ulong ParaTable => Base + 0x5000;
    public ulong LockTable => Base + 0x6000;
    public ulong RetpolineTable => Base + 0x7000;
    public ulong ReturnTable => Base + 0x8000;
    public ulong InitText => Base + 0x9000;
    public int PointerSize => Is64 ? 8 : 4;
    private bool SupportsNot => Format is AltInstrFormat.Relative12 or AltInstrFormat.Relative13 or AltInstrFormat.Relative14;

    public List<Alt> Alts { get; } = [];
    public List<Para> Paras { get; } = [];
    public List<ulong> Locks { get; } = [];
    public List<ulong> Returns { get; } = [];
    public List<ulong> Retpolines { get; } = [];

    /// <summary>Slot i of pv_ops initially points at .text + 0x800 + 0x10·i.</summary>
    public ulong SlotValue(int i) => Text + 0x800 + (ulong)i * 0x10;

    public byte[] Build()
    {
        var text = Enumerable.Repeat((byte)0xcc, 0x1000).ToArray();
        var init = Enumerable.Repeat((byte)0xcc, 0x100).ToArray();
        var repl = Enumerable.Repeat((byte)0xcc, 0x100).ToArray();
        void Put(ulong address, ReadOnlySpan<byte> bytes)
        {
            if (address >= Text && address + (ulong)bytes.Length <= Text + (ulong)text.Length)
                bytes.CopyTo(text.AsSpan((int)(address - Text)));
            else if (address >= InitText && address + (ulong)bytes.Length <= InitText + (ulong)init.Length)
                bytes.CopyTo(init.AsSpan((int)(address - InitText)));
        }
        foreach (var a in Alts)
        {
            Put(a.Instr, Nop5.AsSpan(0, Math.Min(5, (int)a.InstrLen)));
            if (a.Repl >= Replacement && a.Repl + a.ReplLen <= Replacement + (ulong)repl.Length)
                Lfence.AsSpan(0, Math.Min(3, (int)a.ReplLen)).CopyTo(repl.AsSpan((int)(a.Repl - Replacement)));
        }
        foreach (var p in Paras)
        {
            var call = new byte[6];
            call[0] = 0xff;
            call[1] = 0x15;
            ulong slot = PvOps + (ulong)p.Type * (ulong)PointerSize;
            uint operand = Is64 ? (uint)(int)(long)(slot - (p.Instr + 6)) : (uint)slot;
            BinaryPrimitives.WriteUInt32LittleEndian(call.AsSpan(2), operand);
            Put(p.Instr, call);
        }
        foreach (var l in Locks) Put(l, LockXadd);
        foreach (var r in Returns) Put(r, Jump(0xe9, r, Text + 0xf00));
        foreach (var r in Retpolines) Put(r, Jump(0xe8, r, Text + 0xf80));

        var rodata = new byte[0x200];
        if (Banner is not null)
            Encoding.ASCII.GetBytes(Banner + "\n").CopyTo(rodata, 0x10);
        var data = new byte[0x400];
        for (int i = 0; i < 16; i++)
            WritePtr(data.AsSpan(0x100 + i * PointerSize), SlotValue(i));

        var elf = new SyntheticElf(Is64, Is64 ? ElfFile.MachineX86_64 : ElfFile.MachineI386, Base)
            .Section(".text", Text, text, SyntheticElf.Alloc | SyntheticElf.Exec)
            .Section(".rodata", Rodata, rodata)
            .Section(".data", Data, data, SyntheticElf.Alloc | SyntheticElf.Write)
            .Section(".altinstr_replacement", Replacement, repl, SyntheticElf.Alloc | SyntheticElf.Exec)
            .Section(".altinstructions", AltTable, TrimTrailingPadding ? AltEntries()[..^Format.TrailingPadding(PointerSize)] : AltEntries())
            .Section(".parainstructions", ParaTable, ParaEntries())
            .Section(".smp_locks", LockTable, LockEntries())
            .Section(".retpoline_sites", RetpolineTable, RelativeEntries(RetpolineTable, Retpolines))
            .Section(".return_sites", ReturnTable, RelativeEntries(ReturnTable, Returns))
            .Section(".init.text", InitText, init, SyntheticElf.Alloc | SyntheticElf.Exec);
        if (WithSymbols)
        {
            elf.Symbol("_text", Text, 0, 0x10);
            elf.Symbol("pv_ops", PvOps, (ulong)(16 * PointerSize), 0x11, 3);
            elf.Symbol("native_io_delay", SlotValue(0), 16, 0x12, 1);
        }
        return elf.Build();
    }

    private static byte[] Jump(byte opcode, ulong at, ulong target)
    {
        var b = new byte[5];
        b[0] = opcode;
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(1), (int)(long)(target - (at + 5)));
        return b;
    }

    private void WritePtr(Span<byte> d, ulong value)
    {
        if (Is64) BinaryPrimitives.WriteUInt64LittleEndian(d, value);
        else BinaryPrimitives.WriteUInt32LittleEndian(d, (uint)value);
    }

    private static int Rel(ulong from, ulong to) => unchecked((int)(uint)(to - from));

    public byte[] AltEntries()
    {
        int es = Format.EntrySize(PointerSize);
        var t = new byte[Alts.Count * es];
        for (int i = 0; i < Alts.Count; i++)
        {
            var a = Alts[i];
            var e = t.AsSpan(i * es, es);
            ulong ea = AltTable + (ulong)(i * es);
            switch (Format)
            {
                case AltInstrFormat.Relative12:
                case AltInstrFormat.Relative13:
                    BinaryPrimitives.WriteInt32LittleEndian(e, Rel(ea, a.Instr));
                    BinaryPrimitives.WriteInt32LittleEndian(e[4..], Rel(ea + 4, a.Repl));
                    BinaryPrimitives.WriteUInt16LittleEndian(e[8..], (ushort)(a.Cpuid | (a.Not ? 0x8000 : 0)));
                    e[10] = a.InstrLen;
                    e[11] = a.ReplLen;
                    if (Format == AltInstrFormat.Relative13) e[12] = a.PadLen;
                    break;
                case AltInstrFormat.Relative14:
                    BinaryPrimitives.WriteInt32LittleEndian(e, Rel(ea, a.Instr));
                    BinaryPrimitives.WriteInt32LittleEndian(e[4..], Rel(ea + 4, a.Repl));
                    BinaryPrimitives.WriteUInt32LittleEndian(e[8..], a.Cpuid | ((uint)a.Flags << 16));
                    e[12] = a.InstrLen;
                    e[13] = a.ReplLen;
                    break;
                default:
                    WritePtr(e, a.Instr);
                    WritePtr(e[PointerSize..], a.Repl);
                    int o = 2 * PointerSize;
                    if (Format == AltInstrFormat.AbsoluteByteCpuid)
                    {
                        e[o] = (byte)a.Cpuid;
                        e[o + 1] = a.InstrLen;
                        e[o + 2] = a.ReplLen;
                    }
                    else
                    {
                        BinaryPrimitives.WriteUInt16LittleEndian(e[o..], a.Cpuid);
                        e[o + 2] = a.InstrLen;
                        e[o + 3] = a.ReplLen;
                    }
                    break;
            }
        }
        return t;
    }

    private byte[] ParaEntries()
    {
        int es = 2 * PointerSize;
        var t = new byte[Paras.Count * es];
        for (int i = 0; i < Paras.Count; i++)
        {
            var e = t.AsSpan(i * es, es);
            WritePtr(e, Paras[i].Instr);
            e[PointerSize] = Paras[i].Type;
            e[PointerSize + 1] = Paras[i].Len;
            BinaryPrimitives.WriteUInt16LittleEndian(e[(PointerSize + 2)..], Paras[i].Clobbers);
        }
        return t;
    }

    private byte[] LockEntries()
    {
        int es = AbsoluteLocks ? PointerSize : 4;
        var t = new byte[(Locks.Count + LockPadding) * es];
        for (int i = 0; i < Locks.Count; i++)
        {
            if (AbsoluteLocks) WritePtr(t.AsSpan(i * es), Locks[i]);
            else BinaryPrimitives.WriteInt32LittleEndian(t.AsSpan(i * 4), Rel(LockTable + (ulong)(i * 4), Locks[i]));
        }
        return t;
    }

    private static byte[] RelativeEntries(ulong table, List<ulong> targets)
    {
        var t = new byte[targets.Count * 4];
        for (int i = 0; i < targets.Count; i++)
            BinaryPrimitives.WriteInt32LittleEndian(t.AsSpan(i * 4), Rel(table + (ulong)(i * 4), targets[i]));
        return t;
    }
}

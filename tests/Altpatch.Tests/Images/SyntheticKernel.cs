using System.Text;
using Altpatch.Images;
using static Altpatch.Tests.Images.SyntheticTables;

namespace Altpatch.Tests.Images;

/// <summary>
/// A small kernel-shaped ELF for table tests: <c>.text</c>, <c>.init.text</c>, <c>.rodata</c> (banner),
/// <c>.data</c> (pv_ops), <c>.altinstr_replacement</c> and the five site tables, in any
/// <see cref="AltInstrFormat"/> and either pointer size. Tests edit the entry lists before <see cref="Build"/>;
/// the entries are encoded by <see cref="SyntheticTables"/>.
/// </summary>
internal sealed class SyntheticKernel
{
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
                InstrLen: 5, ReplLen: (byte)(k == 3 ? 0 : 3),
                Flags: (ushort)(format == AltInstrFormat.Relative14 ? (k == 1 ? 1 : k == 2 ? 2 : 0) : 0),
                PadLen: (byte)(format == AltInstrFormat.Relative13 ? 2 : 0)));
        }
        Alts.Add(new Alt(InitText + 0x10, Replacement + 0x40, 7 * 32 + 1, false, InstrLen: 5, ReplLen: 3));
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
            Put(p.Instr, ParavirtCall(Is64, PvOps, p.Instr, p.Type));
        foreach (var l in Locks) Put(l, LockXadd);
        foreach (var r in Returns) Put(r, Branch(0xe9, r, Text + 0xf00));
        foreach (var r in Retpolines) Put(r, Branch(0xe8, r, Text + 0xf80));

        var rodata = new byte[0x200];
        if (Banner is not null)
            Encoding.ASCII.GetBytes(Banner + "\n").CopyTo(rodata, 0x10);
        var data = new byte[0x400];
        for (int i = 0; i < 16; i++)
            WritePointer(data.AsSpan(0x100 + i * PointerSize), PointerSize, SlotValue(i));

        var elf = new SyntheticElf(Is64, Is64 ? ElfFile.MachineX86_64 : ElfFile.MachineI386, Base)
            .Section(".text", Text, text, SyntheticElf.Alloc | SyntheticElf.Exec)
            .Section(".rodata", Rodata, rodata)
            .Section(".data", Data, data, SyntheticElf.Alloc | SyntheticElf.Write)
            .Section(".altinstr_replacement", Replacement, repl, SyntheticElf.Alloc | SyntheticElf.Exec)
            .Section(".altinstructions", AltTable, TrimTrailingPadding ? AltEntries()[..^Format.TrailingPadding(PointerSize)] : AltEntries())
            .Section(".parainstructions", ParaTable, ParaEntries(PointerSize, Paras))
            .Section(".smp_locks", LockTable, LockEntries(AbsoluteLocks, PointerSize, LockTable, Locks, LockPadding))
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

    /// <summary>The <c>.altinstructions</c> bytes of <see cref="Alts"/> in <see cref="Format"/>.</summary>
    public byte[] AltEntries() => SyntheticTables.AltEntries(Format, PointerSize, AltTable, Alts);
}

using System.Buffers.Binary;
using System.Text;

namespace Altpatch.Tests.Images;

/// <summary>
/// Builds small little-endian ELF32/ELF64 executables for tests: the sections given, a
/// <c>.shstrtab</c>, optional <c>.symtab</c>/<c>.strtab</c>, and one PT_LOAD per allocated section.
/// Section data is placed at file offset <see cref="DataOffset"/> + (address − <see cref="BaseAddress"/>)
/// so the file mirrors the address layout.
/// </summary>
internal sealed class SyntheticElf(bool is64, ushort machine, ulong baseAddress)
{
    public const int DataOffset = 0x1000;
    public const ulong Alloc = 2, Exec = 4, Write = 1;

    private readonly List<(string Name, uint Type, ulong Flags, ulong Address, byte[] Data, ulong EntSize)> sections = [];
    private readonly List<(string Name, ulong Value, ulong Size, byte Info, ushort Shndx)> symbols = [];

    public bool Is64 { get; } = is64;
    public ulong BaseAddress { get; } = baseAddress;

    public SyntheticElf Section(string name, ulong address, byte[] data, ulong flags = Alloc, uint type = 1)
    {
        sections.Add((name, type, flags, address, data, 0));
        return this;
    }

    public SyntheticElf Symbol(string name, ulong value, ulong size, byte info = 0x12, ushort shndx = 1)
    {
        symbols.Add((name, value, size, info, shndx));
        return this;
    }

    public byte[] Build()
    {
        var secs = sections.ToList();
        ulong dataEnd = secs.Count == 0 ? DataOffset : secs.Max(s => DataOffset + (s.Address - BaseAddress) + (ulong)s.Data.Length);
        var ms = new MemoryStream();
        ms.SetLength((long)dataEnd);
        foreach (var s in secs)
        {
            ms.Position = (long)(DataOffset + (s.Address - BaseAddress));
            ms.Write(s.Data);
        }
        var fileSections = new List<(string Name, uint Type, ulong Flags, ulong Address, ulong Offset, ulong Size, uint Link, ulong EntSize)>();
        fileSections.Add(("", 0, 0, 0, 0, 0, 0, 0));
        foreach (var s in secs)
            fileSections.Add((s.Name, s.Type, s.Flags, s.Address, DataOffset + (s.Address - BaseAddress), (ulong)s.Data.Length, 0, 0));
        if (symbols.Count > 0)
        {
            var str = new MemoryStream();
            str.WriteByte(0);
            var sym = new MemoryStream();
            int es = Is64 ? 24 : 16;
            sym.Write(new byte[es]);
            foreach (var y in symbols)
            {
                uint nameOff = (uint)str.Length;
                str.Write(Encoding.UTF8.GetBytes(y.Name));
                str.WriteByte(0);
                var e = new byte[es];
                if (Is64)
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(e, nameOff);
                    e[4] = y.Info;
                    BinaryPrimitives.WriteUInt16LittleEndian(e.AsSpan(6), y.Shndx);
                    BinaryPrimitives.WriteUInt64LittleEndian(e.AsSpan(8), y.Value);
                    BinaryPrimitives.WriteUInt64LittleEndian(e.AsSpan(16), y.Size);
                }
                else
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(e, nameOff);
                    BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(4), (uint)y.Value);
                    BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(8), (uint)y.Size);
                    e[12] = y.Info;
                    BinaryPrimitives.WriteUInt16LittleEndian(e.AsSpan(14), y.Shndx);
                }
                sym.Write(e);
            }
            ms.Position = ms.Length;
            ulong symOff = (ulong)ms.Length;
            ms.Write(sym.ToArray());
            ulong strOff = (ulong)ms.Length;
            ms.Write(str.ToArray());
            int strIndex = fileSections.Count + 1;
            fileSections.Add((".symtab", 2, 0, 0, symOff, (ulong)sym.Length, (uint)strIndex, (ulong)es));
            fileSections.Add((".strtab", 3, 0, 0, strOff, (ulong)str.Length, 0, 0));
        }
        // .shstrtab
        var shstr = new MemoryStream();
        shstr.WriteByte(0);
        var nameOffsets = new List<uint>();
        foreach (var s in fileSections)
        {
            if (s.Name.Length == 0) { nameOffsets.Add(0); continue; }
            nameOffsets.Add((uint)shstr.Length);
            shstr.Write(Encoding.UTF8.GetBytes(s.Name));
            shstr.WriteByte(0);
        }
        nameOffsets.Add((uint)shstr.Length);
        shstr.Write(".shstrtab\0"u8);
        ms.Position = ms.Length;
        ulong shstrOff = (ulong)ms.Length;
        ms.Write(shstr.ToArray());
        fileSections.Add((".shstrtab", 3, 0, 0, shstrOff, (ulong)shstr.Length, 0, 0));

        while (ms.Length % 8 != 0) ms.WriteByte(0);
        ulong shoff = (ulong)ms.Length;
        int shentsize = Is64 ? 64 : 40;
        for (int i = 0; i < fileSections.Count; i++)
        {
            var s = fileSections[i];
            var h = new byte[shentsize];
            BinaryPrimitives.WriteUInt32LittleEndian(h, nameOffsets[i]);
            BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(4), s.Type);
            if (Is64)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), s.Flags);
                BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(16), s.Address);
                BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(24), s.Offset);
                BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(32), s.Size);
                BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(40), s.Link);
                BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(48), 1);
                BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(56), s.EntSize);
            }
            else
            {
                BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(8), (uint)s.Flags);
                BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(12), (uint)s.Address);
                BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(16), (uint)s.Offset);
                BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(20), (uint)s.Size);
                BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(24), s.Link);
                BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(32), 1);
                BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(36), (uint)s.EntSize);
            }
            ms.Write(h);
        }
        var bytes = ms.ToArray();

        // Header + program headers (one PT_LOAD per allocated section) right after it.
        var loads = secs.Where(s => (s.Flags & Alloc) != 0).ToList();
        int ehsize = Is64 ? 64 : 52, phentsize = Is64 ? 56 : 32;
        if (ehsize + loads.Count * phentsize > DataOffset)
            throw new InvalidOperationException("too many sections for the synthetic layout");
        var d = bytes.AsSpan();
        "\x7f"u8.CopyTo(d);
        "ELF"u8.CopyTo(d[1..]);
        d[4] = (byte)(Is64 ? 2 : 1);
        d[5] = 1;
        d[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(d[16..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(d[18..], machine);
        BinaryPrimitives.WriteUInt32LittleEndian(d[20..], 1);
        if (Is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(d[24..], BaseAddress);
            BinaryPrimitives.WriteUInt64LittleEndian(d[32..], (ulong)ehsize);
            BinaryPrimitives.WriteUInt64LittleEndian(d[40..], shoff);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(d[24..], (uint)BaseAddress);
            BinaryPrimitives.WriteUInt32LittleEndian(d[28..], (uint)ehsize);
            BinaryPrimitives.WriteUInt32LittleEndian(d[32..], (uint)shoff);
        }
        int o = Is64 ? 52 : 40;
        BinaryPrimitives.WriteUInt16LittleEndian(d[o..], (ushort)ehsize);
        BinaryPrimitives.WriteUInt16LittleEndian(d[(o + 2)..], (ushort)phentsize);
        BinaryPrimitives.WriteUInt16LittleEndian(d[(o + 4)..], (ushort)loads.Count);
        BinaryPrimitives.WriteUInt16LittleEndian(d[(o + 6)..], (ushort)shentsize);
        BinaryPrimitives.WriteUInt16LittleEndian(d[(o + 8)..], (ushort)fileSections.Count);
        BinaryPrimitives.WriteUInt16LittleEndian(d[(o + 10)..], (ushort)(fileSections.Count - 1));
        for (int i = 0; i < loads.Count; i++)
        {
            var s = loads[i];
            var p = d.Slice(ehsize + i * phentsize, phentsize);
            ulong off = DataOffset + (s.Address - BaseAddress), size = (ulong)s.Data.Length;
            uint pflags = 4u | ((s.Flags & Write) != 0 ? 2u : 0) | ((s.Flags & Exec) != 0 ? 1u : 0);
            BinaryPrimitives.WriteUInt32LittleEndian(p, 1);
            if (Is64)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(p[4..], pflags);
                BinaryPrimitives.WriteUInt64LittleEndian(p[8..], off);
                BinaryPrimitives.WriteUInt64LittleEndian(p[16..], s.Address);
                BinaryPrimitives.WriteUInt64LittleEndian(p[24..], s.Address - BaseAddress + 0x1000000);
                BinaryPrimitives.WriteUInt64LittleEndian(p[32..], size);
                BinaryPrimitives.WriteUInt64LittleEndian(p[40..], size);
                BinaryPrimitives.WriteUInt64LittleEndian(p[48..], 0x1000);
            }
            else
            {
                BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)off);
                BinaryPrimitives.WriteUInt32LittleEndian(p[8..], (uint)s.Address);
                BinaryPrimitives.WriteUInt32LittleEndian(p[12..], (uint)(s.Address - BaseAddress + 0x1000000));
                BinaryPrimitives.WriteUInt32LittleEndian(p[16..], (uint)size);
                BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)size);
                BinaryPrimitives.WriteUInt32LittleEndian(p[24..], pflags);
                BinaryPrimitives.WriteUInt32LittleEndian(p[28..], 0x1000);
            }
        }
        return bytes;
    }
}

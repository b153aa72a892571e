using System.Buffers.Binary;
using System.Text;
using Altpatch.Images;
using Altpatch.Tests.Images;

namespace Altpatch.Tests.Symbols;

/// <summary>
/// Writes kallsyms tables as <c>scripts/kallsyms.c</c> (6.1 and 6.12) does, in any of the three layouts: its token
/// compression (the most profitable pair of codes into each unused code, from 0xff down), the ULEB128 lengths, the
/// markers, the offsets in both encodings and the name-sorted seqs. Symbols must come sorted by address (as
/// sort_symbols() leaves them); per-CPU symbols of the absolute encoding are typed 'A'. For tests of the decoder on
/// tables nobody tuned it on.
/// </summary>
internal static class KallsymsBuilder
{
    /// <summary>The tables as the bytes of a <c>.rodata</c> starting at <paramref name="rodata"/>, padded with
    /// <paramref name="before"/> filler bytes ahead of the first table.</summary>
    public static byte[] Tables(IReadOnlyList<KernelSymbol> symbols, bool is64, KallsymsLayout layout, bool absolutePercpu,
        ulong rodata, int before = 64)
    {
        int align = is64 ? 8 : 4;
        var (names, tokens) = Compress(symbols);
        var ms = new MemoryStream();
        ms.Write(Enumerable.Range(0, before).Select(i => (byte)(0x41 + i % 7)).ToArray());

        void Align() { while ((rodata + (ulong)ms.Length) % (ulong)align != 0) ms.WriteByte(0); }
        void U32(uint v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); ms.Write(b); }
        void Ptr(ulong v) { if (is64) { Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(b, v); ms.Write(b); } else U32((uint)v); }

        int n = symbols.Count;
        ulong relativeBase = symbols.First(s => !(absolutePercpu && s.Type == 'A')).Address;
        void Offsets()
        {
            Align();
            foreach (var s in symbols)
            {
                long off = !absolutePercpu ? (long)(s.Address - relativeBase)
                    : s.Type == 'A' ? (long)s.Address
                    : (long)relativeBase - (long)s.Address - 1;
                U32(unchecked((uint)off));
            }
            Align();
            Ptr(relativeBase);
        }
        void NumSyms() { Align(); U32((uint)n); }
        void Names()
        {
            Align();
            var markers = new List<uint>();
            long start = ms.Length;
            for (int i = 0; i < n; i++)
            {
                if ((i & 0xff) == 0)
                    markers.Add((uint)(ms.Length - start));
                int len = names[i].Length;
                if (len <= 0x7f)
                    ms.WriteByte((byte)len);
                else
                {
                    ms.WriteByte((byte)((len & 0x7f) | 0x80));
                    ms.WriteByte((byte)(len >> 7));
                }
                ms.Write(names[i]);
            }
            Align();
            foreach (var m in markers)
                U32(m);
        }
        void Seqs()
        {
            Align();
            var order = Enumerable.Range(0, n).ToArray();
            Array.Sort(order, (a, b) =>
            {
                int c = string.CompareOrdinal(symbols[a].Name, symbols[b].Name);
                if (c != 0) return c;
                if (symbols[a].Address != symbols[b].Address) return symbols[a].Address < symbols[b].Address ? -1 : 1;
                return a - b;
            });
            foreach (int v in order)
            {
                ms.WriteByte((byte)(v >> 16));
                ms.WriteByte((byte)(v >> 8));
                ms.WriteByte((byte)v);
            }
        }
        void Tokens()
        {
            Align();
            var index = new ushort[256];
            long start = ms.Length;
            for (int i = 0; i < 256; i++)
            {
                index[i] = (ushort)(ms.Length - start);
                ms.Write(tokens[i]);
                ms.WriteByte(0);
            }
            Align();
            foreach (var v in index)
            {
                ms.WriteByte((byte)v);
                ms.WriteByte((byte)(v >> 8));
            }
        }

        switch (layout)
        {
            case KallsymsLayout.OffsetsFirst:
                Offsets(); NumSyms(); Names(); Tokens();
                break;
            case KallsymsLayout.OffsetsFirstWithSeqs:
                Offsets(); NumSyms(); Names(); Seqs(); Tokens();
                break;
            default:
                NumSyms(); Names(); Tokens(); Offsets(); Seqs();
                break;
        }
        ms.Write(Enumerable.Range(0, 32).Select(i => (byte)(0x61 + i % 5)).ToArray());
        return ms.ToArray();
    }

    /// <summary>An ELF file (ELF64 x86-64 or ELF32 i386) whose .text spans the symbols and whose .rodata holds the tables.</summary>
    public static byte[] Elf(IReadOnlyList<KernelSymbol> symbols, bool is64, KallsymsLayout layout, bool absolutePercpu, out ulong rodata)
    {
        ulong text = is64 ? 0xffffffff81000000UL : 0xc1000000UL;
        ulong top = symbols.Where(s => s.Address >= text).Select(s => s.Address).DefaultIfEmpty(text).Max();
        ulong textSize = (top - text + 0x1000) & ~0xfffUL;
        rodata = text + textSize;
        var tables = Tables(symbols, is64, layout, absolutePercpu, rodata);
        return new SyntheticElf(is64, is64 ? ElfFile.MachineX86_64 : ElfFile.MachineI386, text)
            .Section(".text", text, new byte[textSize], SyntheticElf.Alloc | SyntheticElf.Exec)
            .Section(".rodata", rodata, tables)
            .Build();
    }

    /// <summary>scripts/kallsyms.c's compression: each name (type letter first) as token codes, and the 256 tokens.</summary>
    private static (byte[][] Names, byte[][] Tokens) Compress(IReadOnlyList<KernelSymbol> symbols)
    {
        var table = symbols.Select(s => Encoding.UTF8.GetBytes(s.Type + s.Name)).Select(b => new List<byte>(b)).ToList();
        var best = new byte[256][];
        var profit = new int[0x10000];
        void Learn(List<byte> s, int d) { for (int i = 0; i < s.Count - 1; i++) profit[s[i] | (s[i + 1] << 8)] += d; }
        foreach (var s in table)
            Learn(s, 1);
        foreach (var s in table)
            foreach (var c in s)
                best[c] = [c];
        for (int i = 255; i >= 0; i--)
        {
            if (best[i] is not null)
                continue;
            int bestToken = 0, bestProfit = -10000;
            for (int t = 0; t < 0x10000; t++)
            {
                if (profit[t] > bestProfit) { bestToken = t; bestProfit = profit[t]; }
            }
            if (profit[bestToken] == 0)
                break;
            byte a = (byte)bestToken, b = (byte)(bestToken >> 8);
            best[i] = [a, b];
            foreach (var s in table)
            {
                if (!Contains(s, a, b))
                    continue;
                Learn(s, -1);
                for (int k = 0; k < s.Count - 1; k++)
                {
                    if (s[k] == a && s[k + 1] == b)
                    {
                        s[k] = (byte)i;
                        s.RemoveAt(k + 1);
                    }
                }
                Learn(s, 1);
            }
        }
        var tokens = new byte[256][];
        for (int i = 0; i < 256; i++)
            tokens[i] = best[i] is null ? [] : Expand(best, (byte)i);
        return (table.Select(s => s.ToArray()).ToArray(), tokens);

        static bool Contains(List<byte> s, byte a, byte b)
        {
            for (int k = 0; k < s.Count - 1; k++)
                if (s[k] == a && s[k + 1] == b) return true;
            return false;
        }
    }

    private static byte[] Expand(byte[][] best, byte code)
    {
        var t = best[code];
        if (t.Length == 1 && t[0] == code)
            return [code];
        return [.. t.SelectMany(c => Expand(best, c))];
    }
}

using System.Buffers.Binary;
using System.Text;

namespace Altpatch.Images;

/// <summary>What <see cref="ElfSymtabWriter.Write"/> wrote.</summary>
/// <param name="Length">Bytes written in all.</param>
/// <param name="Symbols">Symbols in the new <c>.symtab</c> (without the null entry); 0 when none was added.</param>
/// <param name="Locals">Of those, local ones (they come first, as ELF wants).</param>
/// <param name="InsertedAt">File offset where the new sections and section header table start: the end of the ELF proper.</param>
/// <param name="InsertedLength">Their size (a multiple of 8, so what follows keeps its alignment); 0 when nothing was added.</param>
public readonly record struct ElfSymtabResult(long Length, int Symbols, int Locals, long InsertedAt, long InsertedLength);

/// <summary>
/// Writes a kernel ELF file with a <c>.symtab</c> and <c>.strtab</c> built from its kernel symbols, so that gdb,
/// objdump and nm show names in a stripped vmlinux.
/// </summary>
/// <remarks>
/// <para>The ELF proper is written unchanged but for its header's <c>e_shoff</c> and <c>e_shnum</c>. At its end
/// (<see cref="ElfFile.ElfEnd"/>) come, inserted: <c>.symtab</c>, <c>.strtab</c>, a new <c>.shstrtab</c> (the old names
/// plus the two new ones; the old section's header now points here) and a new section header table (the old headers,
/// then the two new ones). Whatever followed the ELF proper in the buffer (a bzImage payload's <c>vmlinux.relocs</c>,
/// which the decompressor reads backwards from the payload's end) follows it still, at the end, with its alignment
/// modulo 8 kept. The old section header table and <c>.shstrtab</c> stay where they were, unused.</para>
/// <para>Each symbol: <c>st_shndx</c> is the allocated section containing its address (or ending at it: <c>_etext</c>,
/// <c>__stop_*</c>), else <c>SHN_ABS</c>; <c>STT_FUNC</c> in a section of code, <c>STT_OBJECT</c> in other sections,
/// <c>STT_NOTYPE</c> for linker-script labels (<c>_stext</c>, <c>__start_*</c>, <c>*_end</c>, …) and absolute values;
/// <c>st_size</c> runs to the next symbol at a higher address, at most to the end of the section (0 for labels and
/// absolute values); the binding is <c>STB_WEAK</c> for W/w/V/v, <c>STB_GLOBAL</c> for upper-case types and
/// <c>STB_LOCAL</c> for lower-case ones.</para>
/// </remarks>
public static class ElfSymtabWriter
{
    private const ushort ShnLoReserve = 0xff00, ShnAbs = 0xfff1, ShnXIndex = 0xffff;
    private const byte SttNoType = 0, SttObject = 1, SttFunc = 2;
    private const byte StbLocal = 0, StbGlobal = 1, StbWeak = 2;

    /// <summary>
    /// Writes a kernel's vmlinux (e.g. <c>kernel patch</c>'s output, <paramref name="vmlinux"/>) with a <c>.symtab</c>
    /// from <paramref name="source"/>'s kallsyms when <paramref name="symtab"/> is set and the image has kallsyms; as
    /// <see cref="Write"/> otherwise.
    /// </summary>
    /// <param name="output">Where to write.</param>
    /// <param name="source">The image whose kallsyms name the symbols (decoded once, <see cref="KernelImage.Symbols"/>).</param>
    /// <param name="vmlinux">The ELF file to write (the source's own, or a patched copy with the same layout).</param>
    /// <param name="symtab">Whether to add the symbol table.</param>
    /// <exception cref="ImageFormatException">The image's kallsyms tables are corrupt (<c>--no-symtab</c> does without them).</exception>
    public static ElfSymtabResult WriteVmlinux(Stream output, KernelImage source, ElfFile vmlinux, bool symtab)
    {
        ArgumentNullException.ThrowIfNull(source);
        KernelSymbols? symbols = null;
        if (symtab)
            source.TryGetSymbols(out symbols);
        return Write(output, vmlinux, symbols);
    }

    /// <summary>Writes <paramref name="elf"/>'s buffer to <paramref name="output"/>; with <paramref name="symbols"/>, with a
    /// <c>.symtab</c> built from them inserted at the end of the ELF proper. Without symbols, or when the file has a
    /// <c>.symtab</c> already, the buffer is written as it is.</summary>
    /// <param name="output">Where to write.</param>
    /// <param name="elf">The ELF file (its whole buffer, e.g. a bzImage payload with relocations after the ELF).</param>
    /// <param name="symbols">The symbols, or null.</param>
    /// <exception cref="ImageFormatException">The ELF header's section header fields are inconsistent.</exception>
    public static ElfSymtabResult Write(Stream output, ElfFile elf, KernelSymbols? symbols)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(elf);
        var bytes = elf.Bytes.Span;
        if (symbols is null || elf.Sections.Any(s => s.Type == ElfSection.TypeSymTab))
        {
            WriteInChunks(output, bytes);
            return new ElfSymtabResult(bytes.Length, 0, 0, elf.ElfEnd, 0);
        }

        var (header, block, count, locals) = Build(elf, symbols);
        long end = elf.ElfEnd;
        output.Write(header);
        WriteInChunks(output, bytes[header.Length..(int)end]);
        long inserted = 0;
        foreach (var part in block)
        {
            if (part.Writer is { } writeTo)
                writeTo(output);
            else
                WriteInChunks(output, part.Bytes.Span);
            inserted += part.Length;
        }
        WriteInChunks(output, bytes[(int)end..]);
        return new ElfSymtabResult(bytes.Length + inserted, count, locals, end, inserted);
    }

    /// <summary>Largest single write: the kernel sizes a file's page-cache folios by the write (Linux 6.x, ext4 and xfs with
    /// large folios), and one 50 MB write() took 50-130 ms of system time on the benchmark VM (probably as large folios
    /// come from memory the host has to back first), against 7 ms in 1 MiB writes (docs/benchmarks.md, third round).</summary>
    internal const int WriteChunk = 1 << 20;

    /// <summary>Writes <paramref name="bytes"/> in writes of at most <see cref="WriteChunk"/> bytes.</summary>
    internal static void WriteInChunks(Stream output, ReadOnlySpan<byte> bytes)
    {
        for (int i = 0; i < bytes.Length; i += WriteChunk)
            output.Write(bytes.Slice(i, Math.Min(WriteChunk, bytes.Length - i)));
    }

    /// <summary>One part of the inserted block: bytes, or (the .symtab and .strtab) <paramref name="Length"/> bytes that
    /// <paramref name="Writer"/> writes straight to the output, so the tables are never whole in memory.</summary>
    internal readonly record struct Part(ReadOnlyMemory<byte> Bytes, Action<Stream>? Writer, long Length);

    /// <summary>The new ELF header and the inserted block in parts (padding, .symtab, .strtab, .shstrtab, padding,
    /// section headers, padding).</summary>
    internal static (byte[] Header, List<Part> Block, int Symbols, int Locals) Build(ElfFile elf, KernelSymbols symbols)
    {
        var d = elf.Bytes.Span;
        bool is64 = elf.Is64;
        int ehsize = is64 ? 64 : 52;
        int o = is64 ? 58 : 46;   // e_shentsize, e_shnum, e_shstrndx
        ulong shoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(d[40..]) : BinaryPrimitives.ReadUInt32LittleEndian(d[32..]);
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(d[o..]);
        int shstrndx = BinaryPrimitives.ReadUInt16LittleEndian(d[(o + 4)..]);
        int oldCount = elf.Sections.Count;
        int want = is64 ? 64 : 40;
        if (oldCount > 0 && shentsize < want)
            throw new ImageFormatException($"{elf.Name}: ELF header: e_shentsize {shentsize} is smaller than {want}");
        if (oldCount == 0)
            shentsize = want;
        if (shstrndx == ShnXIndex && oldCount > 0)
            shstrndx = (int)elf.Sections[0].Link;
        bool haveShstrtab = shstrndx > 0 && shstrndx < oldCount && elf.Sections[shstrndx].Type == 3;

        // Section names: the old table's bytes, then the new names.
        var shstr = new MemoryStream();
        if (haveShstrtab)
            shstr.Write(elf.SectionBytes(elf.Sections[shstrndx]).Span);
        else
            shstr.WriteByte(0);
        uint NameOffset(string name)
        {
            uint at = (uint)shstr.Length;
            shstr.Write(Encoding.ASCII.GetBytes(name));
            shstr.WriteByte(0);
            return at;
        }
        uint symtabName = NameOffset(".symtab"), strtabName = NameOffset(".strtab");
        uint shstrtabName = haveShstrtab ? 0 : NameOffset(".shstrtab");

        // The new table: the old headers (a null one when there were none), .symtab, .strtab (and .shstrtab).
        int baseCount = Math.Max(oldCount, 1);
        int symtabIndex = baseCount, strtabIndex = baseCount + 1, newShstrndx = haveShstrtab ? shstrndx : baseCount + 2;
        int newCount = baseCount + (haveShstrtab ? 2 : 3);

        var table = new SymbolTable(elf, symbols, is64);
        int count = table.Count, locals = table.Locals;

        int align = is64 ? 8 : 4;
        long start = elf.ElfEnd;
        var block = new List<Part>();
        long at = start;
        void Add(ReadOnlyMemory<byte> part) { block.Add(new Part(part, null, part.Length)); at += part.Length; }
        void AddWriter(Action<Stream> writer, long length) { block.Add(new Part(default, writer, length)); at += length; }
        void Pad(int to) { if (at % to != 0) Add(new byte[to - at % to]); }
        Pad(align);
        long symtabOffset = at;
        AddWriter(table.WriteSymtab, table.SymtabLength);
        long strtabOffset = at;
        AddWriter(table.WriteStrtab, table.StrtabLength);
        long shstrOffset = at;
        Add(shstr.ToArray());
        Pad(8);
        long newShoff = at;
        var headers = new byte[newCount * shentsize];
        if (oldCount > 0)
            d.Slice((int)shoff, oldCount * shentsize).CopyTo(headers);
        void Header(int index, uint name, uint type, ulong offset, ulong size, uint link, uint info, ulong addralign, ulong entsize)
        {
            var h = headers.AsSpan(index * shentsize, shentsize);
            h.Clear();
            BinaryPrimitives.WriteUInt32LittleEndian(h, name);
            BinaryPrimitives.WriteUInt32LittleEndian(h[4..], type);
            if (is64)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(h[24..], offset);
                BinaryPrimitives.WriteUInt64LittleEndian(h[32..], size);
                BinaryPrimitives.WriteUInt32LittleEndian(h[40..], link);
                BinaryPrimitives.WriteUInt32LittleEndian(h[44..], info);
                BinaryPrimitives.WriteUInt64LittleEndian(h[48..], addralign);
                BinaryPrimitives.WriteUInt64LittleEndian(h[56..], entsize);
            }
            else
            {
                BinaryPrimitives.WriteUInt32LittleEndian(h[16..], (uint)offset);
                BinaryPrimitives.WriteUInt32LittleEndian(h[20..], (uint)size);
                BinaryPrimitives.WriteUInt32LittleEndian(h[24..], link);
                BinaryPrimitives.WriteUInt32LittleEndian(h[28..], info);
                BinaryPrimitives.WriteUInt32LittleEndian(h[32..], (uint)addralign);
                BinaryPrimitives.WriteUInt32LittleEndian(h[36..], (uint)entsize);
            }
        }
        Header(symtabIndex, symtabName, ElfSection.TypeSymTab, (ulong)symtabOffset, (ulong)table.SymtabLength, (uint)strtabIndex,
            (uint)(locals + 1), (ulong)align, (ulong)(is64 ? 24 : 16));
        Header(strtabIndex, strtabName, 3, (ulong)strtabOffset, (ulong)table.StrtabLength, 0, 0, 1, 0);
        if (haveShstrtab)
        {
            // Keep the old header (name offset, flags) but point it at the new bytes.
            var h = headers.AsSpan(shstrndx * shentsize, shentsize);
            if (is64)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(h[24..], (ulong)shstrOffset);
                BinaryPrimitives.WriteUInt64LittleEndian(h[32..], (ulong)shstr.Length);
            }
            else
            {
                BinaryPrimitives.WriteUInt32LittleEndian(h[16..], (uint)shstrOffset);
                BinaryPrimitives.WriteUInt32LittleEndian(h[20..], (uint)shstr.Length);
            }
        }
        else
            Header(newShstrndx, shstrtabName, 3, (ulong)shstrOffset, (ulong)shstr.Length, 0, 0, 1, 0);
        Add(headers);
        Pad(8);

        // The header: e_shoff, e_shnum (extended numbering in section 0 when it does not fit), e_shstrndx.
        var header = d[..ehsize].ToArray();
        if (is64)
            BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(40), (ulong)newShoff);
        else
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(32), (uint)newShoff);
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(o), (ushort)shentsize);
        var first = headers.AsSpan(0, shentsize);
        if (newCount >= ShnLoReserve)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(o + 2), 0);
            if (is64) BinaryPrimitives.WriteUInt64LittleEndian(first[32..], (ulong)newCount);
            else BinaryPrimitives.WriteUInt32LittleEndian(first[20..], (uint)newCount);
        }
        else
        {
            BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(o + 2), (ushort)newCount);
            if (is64) BinaryPrimitives.WriteUInt64LittleEndian(first[32..], 0);
            else BinaryPrimitives.WriteUInt32LittleEndian(first[20..], 0);
        }
        if (newShstrndx >= ShnLoReserve)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(o + 4), ShnXIndex);
            BinaryPrimitives.WriteUInt32LittleEndian(first[(is64 ? 40 : 24)..], (uint)newShstrndx);
        }
        else
            BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(o + 4), (ushort)newShstrndx);
        return (header, block, count, locals);
    }

    /// <summary>
    /// The .symtab (null entry, locals, then globals and weak ones, each in address order) and .strtab of some symbols:
    /// their lengths known up front, their bytes written straight to the output through a small buffer (the two tables,
    /// ~4 MB for 87,000 symbols, were built whole in memory before: docs/benchmarks.md, fourth round).
    /// </summary>
    private sealed class SymbolTable
    {
        private const int BufferSize = 1 << 16;
        private readonly IReadOnlyList<KernelSymbol> all;
        private readonly ElfSection[] sections;
        private readonly ulong[] starts;
        private readonly bool is64;
        private readonly int entry;

        public SymbolTable(ElfFile elf, KernelSymbols symbols, bool is64)
        {
            all = symbols.All;
            this.is64 = is64;
            entry = is64 ? 24 : 16;
            int n = all.Count;
            // Allocated sections by address, for st_shndx.
            sections = [.. elf.Sections.Where(s => s.IsAllocated && s.Size > 0).OrderBy(s => s.Address)];
            starts = [.. sections.Select(s => s.Address)];
            // .strtab: every name once per symbol (no deduplication: few names repeat), UTF-8, NUL-terminated.
            long strSize = 1;
            for (int i = 0; i < n; i++)
                strSize += Encoding.UTF8.GetByteCount(all[i].Name) + 1;
            if (strSize > int.MaxValue)
                throw new ImageFormatException($"{elf.Name}: the symbol names take {strSize} bytes, too many for one .strtab");
            StrtabLength = strSize;
            for (int i = 0; i < n; i++)
            {
                if (Binding(all[i]) == StbLocal)
                    Locals++;
            }
            Count = n;
            SymtabLength = (long)(n + 1) * entry;
        }

        public int Count { get; }

        public int Locals { get; }

        public long SymtabLength { get; }

        public long StrtabLength { get; }

        /// <summary>Writes the .strtab: a NUL, then each name and a NUL, in address order.</summary>
        public void WriteStrtab(Stream output)
        {
            var buffer = new byte[BufferSize];
            int used = 1;   // buffer[0] = 0: the empty name
            for (int i = 0; i < all.Count; i++)
            {
                string name = all[i].Name;
                int max = Encoding.UTF8.GetMaxByteCount(name.Length) + 1;
                if (max > buffer.Length - used)
                {
                    output.Write(buffer, 0, used);
                    used = 0;
                    if (max > buffer.Length)
                        buffer = new byte[max];
                }
                used += Encoding.UTF8.GetBytes(name, buffer.AsSpan(used));
                buffer[used++] = 0;
            }
            output.Write(buffer, 0, used);
        }

        /// <summary>Writes the .symtab: the null entry, the local symbols, then the others, each in address order.</summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public void WriteSymtab(Stream output)
        {
            var buffer = new byte[BufferSize - BufferSize % entry];
            int used = entry;   // the null entry
            foreach (bool locals in (ReadOnlySpan<bool>)[true, false])
            {
                int str = 1;
                int next = 0;   // the first symbol at a higher address than symbol i
                for (int i = 0; i < all.Count; i++)
                {
                    var s = all[i];
                    uint nameOff = (uint)str;
                    str += Encoding.UTF8.GetByteCount(s.Name) + 1;
                    byte bind = Binding(s);
                    if ((bind == StbLocal) != locals)
                        continue;
                    if (next <= i)
                        next = i + 1;
                    while (next < all.Count && all[next].Address <= s.Address)
                        next++;
                    ulong after = next < all.Count ? all[next].Address : ulong.MaxValue;
                    bool label = IsLinkerLabel(s.Name);
                    int k = SectionOf(s.Address, label && IsEndLabel(s.Name));
                    ushort shndx = k < 0 || sections[k].Index >= ShnLoReserve ? ShnAbs : (ushort)sections[k].Index;   // no SHT_SYMTAB_SHNDX is written
                    byte type = k < 0 || label ? SttNoType : sections[k].IsExecutable ? SttFunc : SttObject;
                    ulong size = 0;
                    if (k >= 0 && !label && s.Address >= sections[k].Address && s.Address < sections[k].EndAddress)
                        size = Math.Min(after, sections[k].EndAddress) - s.Address;
                    if (used == buffer.Length)
                    {
                        output.Write(buffer, 0, used);
                        used = 0;
                    }
                    var e = buffer.AsSpan(used, entry);
                    used += entry;
                    e.Clear();
                    if (is64)
                    {
                        BinaryPrimitives.WriteUInt32LittleEndian(e, nameOff);
                        e[4] = (byte)(bind << 4 | type);
                        BinaryPrimitives.WriteUInt16LittleEndian(e[6..], shndx);
                        BinaryPrimitives.WriteUInt64LittleEndian(e[8..], s.Address);
                        BinaryPrimitives.WriteUInt64LittleEndian(e[16..], size);
                    }
                    else
                    {
                        BinaryPrimitives.WriteUInt32LittleEndian(e, nameOff);
                        BinaryPrimitives.WriteUInt32LittleEndian(e[4..], (uint)s.Address);
                        BinaryPrimitives.WriteUInt32LittleEndian(e[8..], (uint)size);
                        e[12] = (byte)(bind << 4 | type);
                        BinaryPrimitives.WriteUInt16LittleEndian(e[14..], shndx);
                    }
                }
            }
            output.Write(buffer, 0, used);
        }

        // The section containing the address; for a label that ends a section (__stop_X, X_end, _etext) the section it
        // ends, as the linker script places it; for an address in a gap between sections the one before it.
        private int SectionOf(ulong a, bool endLabel)
        {
            int i = Array.BinarySearch(starts, a);
            if (i < 0)
                i = ~i - 1;
            if (endLabel)
            {
                for (int k = Math.Min(i, sections.Length - 1); k >= 0 && k > i - 4; k--)
                {
                    if (sections[k].EndAddress == a)
                        return k;
                }
            }
            for (int k = i; k >= 0 && k > i - 4; k--)
            {
                if (sections[k].Contains(a))
                    return k;
            }
            for (int k = i; k >= 0 && k > i - 4; k--)
            {
                if (sections[k].EndAddress <= a && (k + 1 >= sections.Length || sections[k + 1].Address > a))
                    return k;
            }
            return -1;
        }
    }

    private static byte Binding(KernelSymbol s) => s.Type is 'W' or 'w' or 'V' or 'v' ? StbWeak : s.IsGlobal ? StbGlobal : StbLocal;

    /// <summary>Labels that mark where something ends: __stop_X, __end_X, X_end, _etext, _edata, …</summary>
    internal static bool IsEndLabel(string name) =>
        name.StartsWith("__stop_", StringComparison.Ordinal) || name.StartsWith("__end_", StringComparison.Ordinal)
        || name.EndsWith("_end", StringComparison.Ordinal) || name is "_etext" or "_einittext" or "_edata" or "_end" or "__bss_stop" or "_edata_nosave" or "__brk_limit";

    /// <summary>Names the linker script defines to mark places (no size, no type): _stext, _etext, __start_X, __stop_X,
    /// __end_X, X_start, X_end (scripts/kallsyms.c's may_be_linker_script_provide_symbol()) and the like.</summary>
    internal static bool IsLinkerLabel(string name)
    {
        switch (name)
        {
            case "_text" or "_stext" or "_etext" or "_sinittext" or "_einittext" or "_sdata" or "_edata" or "_end"
                or "__bss_start" or "__bss_stop" or "__init_begin" or "__init_end" or "_sdata_nosave" or "_edata_nosave"
                or "__per_cpu_load" or "__brk_base" or "__brk_limit" or "__end_rodata" or "__start_rodata":
                return true;
        }
        if (name.Length < 8 || name[0] != '_' || name[1] != '_')
            return false;
        var rest = name.AsSpan(2);
        return rest.StartsWith("start_") || rest.StartsWith("stop_") || rest.StartsWith("end_")
            || name.EndsWith("_start", StringComparison.Ordinal) || name.EndsWith("_end", StringComparison.Ordinal);
    }
}

using System.Buffers.Binary;

namespace Altpatch.Images;

/// <summary>
/// A little-endian ELF32 or ELF64 file held as one writable byte buffer: header, sections, program
/// headers, symbols (when present) and the mapping between link-time virtual addresses and file
/// offsets.
/// </summary>
/// <remarks>
/// <para>This is a small reader of its own rather than ELFSharp: it parses the headers in place over
/// the buffer the image was decompressed into (no copy, no stream), so a later writer can patch code
/// at <see cref="FileOffsetOf(ulong)"/> in <see cref="Bytes"/> and write the buffer back; it tolerates data
/// after the ELF proper (a bzImage payload is <c>vmlinux.bin</c> followed by <c>vmlinux.relocs</c>);
/// and every malformation becomes an <see cref="ImageFormatException"/> naming the file, the header
/// field or section and the offset. The tests cross-check it against ELFSharp.</para>
/// <para>Virtual addresses map to file offsets through the allocated sections that have file bytes
/// (<c>SHF_ALLOC</c>, not <c>SHT_NOBITS</c>); a file without section headers maps through its
/// <c>PT_LOAD</c> segments instead.</para>
/// </remarks>
public sealed class ElfFile
{
    /// <summary>EM_386.</summary>
    public const ushort MachineI386 = 3;
    /// <summary>EM_X86_64.</summary>
    public const ushort MachineX86_64 = 62;

    private readonly Range[] map;
    private readonly Dictionary<string, ElfSection> byName;
    private readonly Lazy<IReadOnlyList<ElfSymbol>> symbols;

    private readonly record struct Range(ulong Start, ulong End, long FileOffset, int SectionIndex);

    private ElfFile(string name, Memory<byte> bytes, bool is64, ushort type, ushort machine, ulong entry,
        ElfSection[] sections, ElfSegment[] segments, long elfEnd)
    {
        Name = name;
        Bytes = bytes;
        Is64 = is64;
        FileType = type;
        Machine = machine;
        Entry = entry;
        Sections = sections;
        Segments = segments;
        ElfEnd = elfEnd;
        byName = new Dictionary<string, ElfSection>(StringComparer.Ordinal);
        foreach (var s in sections)
            byName.TryAdd(s.Name, s);
        map = BuildMap(sections, segments);
        symbols = new Lazy<IReadOnlyList<ElfSymbol>>(ReadSymbols);
    }

    /// <summary>The name used in error messages (usually the file name).</summary>
    public string Name { get; }

    /// <summary>The whole file (and anything that followed it in the buffer) as one writable buffer;
    /// file offsets index into it.</summary>
    public Memory<byte> Bytes { get; }

    /// <summary>ELFCLASS64 (true) or ELFCLASS32 (false).</summary>
    public bool Is64 { get; }

    /// <summary>Size of a pointer in the file's tables: 8 for ELF64, 4 for ELF32.</summary>
    public int PointerSize => Is64 ? 8 : 4;

    /// <summary>e_type (2 = ET_EXEC, 1 = ET_REL, 3 = ET_DYN).</summary>
    public ushort FileType { get; }

    /// <summary>e_machine (<see cref="MachineI386"/>, <see cref="MachineX86_64"/>, …).</summary>
    public ushort Machine { get; }

    /// <summary>e_entry.</summary>
    public ulong Entry { get; }

    /// <summary>Section headers in file order (index 0 is the null section).</summary>
    public IReadOnlyList<ElfSection> Sections { get; }

    /// <summary>Program headers in file order.</summary>
    public IReadOnlyList<ElfSegment> Segments { get; }

    /// <summary>The end of the ELF proper: the largest end offset of the headers, header tables and
    /// sections with file bytes. Bytes past it (e.g. <c>vmlinux.relocs</c>) are not part of the ELF.</summary>
    public long ElfEnd { get; }

    /// <summary>Symbols of the first <c>SHT_SYMTAB</c> section; empty when the file is stripped.</summary>
    public IReadOnlyList<ElfSymbol> Symbols => symbols.Value;

    /// <summary>Whether a buffer starts with the ELF magic (7f 'E' 'L' 'F').</summary>
    public static bool HasElfMagic(ReadOnlySpan<byte> bytes) =>
        bytes.Length >= 4 && bytes[0] == 0x7f && bytes[1] == (byte)'E' && bytes[2] == (byte)'L' && bytes[3] == (byte)'F';

    /// <summary>Parses the ELF headers over <paramref name="bytes"/> (not copied).</summary>
    /// <param name="bytes">The file; may extend past the ELF proper.</param>
    /// <param name="name">Name for error messages.</param>
    /// <exception cref="ImageFormatException">Not an ELF file, not little-endian, or a header, section or
    /// segment lies outside the buffer.</exception>
    public static ElfFile Parse(Memory<byte> bytes, string name)
    {
        var d = bytes.Span;
        if (d.Length == 0)
            throw new ImageFormatException($"{name}: empty file");
        if (!HasElfMagic(d))
            throw new ImageFormatException($"{name}: not an ELF file (no 7f 45 4c 46 magic at offset 0)");
        if (d.Length < 52)
            throw new ImageFormatException($"{name}: ELF header truncated ({d.Length} bytes, need at least 52)");
        bool is64 = d[4] switch
        {
            1 => false,
            2 => true,
            _ => throw new ImageFormatException($"{name}: ELF header: unknown class {d[4]} at offset 0x4 (want 1 = ELF32 or 2 = ELF64)"),
        };
        if (d[5] != 1)
            throw new ImageFormatException($"{name}: ELF header: data encoding {d[5]} at offset 0x5 is not little-endian (1); only x86 ELF files are read");
        int ehsize = is64 ? 64 : 52;
        if (d.Length < ehsize)
            throw new ImageFormatException($"{name}: ELF64 header truncated ({d.Length} bytes, need {ehsize})");

        ushort type = U16(d, 16), machine = U16(d, 18);
        ulong entry = is64 ? U64(d, 24) : U32(d, 24);
        ulong phoff = is64 ? U64(d, 32) : U32(d, 28);
        ulong shoff = is64 ? U64(d, 40) : U32(d, 32);
        int o = is64 ? 54 : 42;
        int phentsize = U16(d, o), phnum = U16(d, o + 2), shentsize = U16(d, o + 4), shnum = U16(d, o + 6), shstrndx = U16(d, o + 8);
        long elfEnd = ehsize;

        // Program headers.
        var segments = Array.Empty<ElfSegment>();
        if (phnum > 0)
        {
            int want = is64 ? 56 : 32;
            if (phentsize < want)
                throw new ImageFormatException($"{name}: ELF header: e_phentsize {phentsize} is smaller than {want}");
            long end = CheckTable(d.Length, phoff, phnum, phentsize, name, "program header table");
            elfEnd = Math.Max(elfEnd, end);
            segments = new ElfSegment[phnum];
            for (int i = 0; i < phnum; i++)
            {
                var p = d.Slice((int)phoff + i * phentsize, phentsize);
                segments[i] = is64
                    ? new ElfSegment(i, U32(p, 0), U32(p, 4), U64(p, 8), U64(p, 16), U64(p, 24), U64(p, 32), U64(p, 40), U64(p, 48))
                    : new ElfSegment(i, U32(p, 0), U32(p, 24), U32(p, 4), U32(p, 8), U32(p, 12), U32(p, 16), U32(p, 20), U32(p, 28));
            }
        }

        // Section headers (with extended numbering: e_shnum = 0 → section 0's sh_size).
        var sections = Array.Empty<ElfSection>();
        if (shoff != 0)
        {
            int want = is64 ? 64 : 40;
            if (shentsize < want)
                throw new ImageFormatException($"{name}: ELF header: e_shentsize {shentsize} is smaller than {want}");
            CheckTable(d.Length, shoff, 1, shentsize, name, "section header table");
            var first = d.Slice((int)shoff, shentsize);
            // Extended numbering takes the count from a 64-bit field: check it as unsigned before it becomes a size.
            ulong extended = shnum != 0 ? (ulong)shnum : is64 ? U64(first, 32) : U32(first, 20);
            if (shstrndx == 0xffff)
                shstrndx = (int)U32(first, is64 ? 40 : 24);
            if (extended > 65536 * 16)
                throw new ImageFormatException($"{name}: ELF header: {extended} sections is implausible");
            long count = (long)extended;
            long end = CheckTable(d.Length, shoff, count, shentsize, name, "section header table");
            elfEnd = Math.Max(elfEnd, end);
            var raw = new (uint nameOff, ElfSection s)[count];
            for (int i = 0; i < count; i++)
            {
                var s = d.Slice((int)shoff + i * shentsize, shentsize);
                raw[i] = is64
                    ? (U32(s, 0), new ElfSection(i, "", U32(s, 4), U64(s, 8), U64(s, 16), U64(s, 24), U64(s, 32), U64(s, 48), U64(s, 56), U32(s, 40), U32(s, 44)))
                    : (U32(s, 0), new ElfSection(i, "", U32(s, 4), U32(s, 8), U32(s, 12), U32(s, 16), U32(s, 20), U32(s, 32), U32(s, 36), U32(s, 24), U32(s, 28)));
                var sec = raw[i].s;
                if (HasBytesInFile(sec))
                {
                    if (sec.FileOffset > (ulong)d.Length || sec.Size > (ulong)d.Length - sec.FileOffset)
                        throw new ImageFormatException(
                            $"{name}: section [{i}] (offset 0x{sec.FileOffset:x}, size 0x{sec.Size:x}) runs past the end of the file (0x{d.Length:x} bytes); truncated?");
                    elfEnd = Math.Max(elfEnd, (long)(sec.FileOffset + sec.Size));
                }
            }
            ReadOnlySpan<byte> strtab = default;
            if (shstrndx > 0 && shstrndx < count && HasBytesInFile(raw[shstrndx].s))
            {
                var st = raw[shstrndx].s;
                strtab = d.Slice((int)st.FileOffset, (int)st.Size);
            }
            sections = new ElfSection[count];
            var names = new ElfStringTable(name, "section names");
            for (int i = 0; i < count; i++)
                sections[i] = raw[i].s with { Name = names.Get(strtab, raw[i].nameOff) };
        }

        foreach (var seg in segments)
        {
            if (seg.FileSize > 0 && (seg.FileOffset > (ulong)d.Length || seg.FileSize > (ulong)d.Length - seg.FileOffset))
                throw new ImageFormatException(
                    $"{name}: program header [{seg.Index}] (offset 0x{seg.FileOffset:x}, size 0x{seg.FileSize:x}) runs past the end of the file (0x{d.Length:x} bytes); truncated?");
        }

        return new ElfFile(name, bytes, is64, type, machine, entry, sections, segments, elfEnd);
    }

    /// <summary>The first section called <paramref name="name"/>, or null.</summary>
    public ElfSection? FindSection(string name) => byName.TryGetValue(name, out var s) ? s : null;

    /// <summary>The allocated section with file bytes that contains <paramref name="address"/>, or null.</summary>
    public ElfSection? SectionContaining(ulong address)
    {
        int i = Find(address, 1);
        if (i < 0 || map[i].SectionIndex < 0)
            return null;
        return Sections[map[i].SectionIndex];
    }

    /// <summary>The file bytes of a section (empty for <c>SHT_NOBITS</c>).</summary>
    public Memory<byte> SectionBytes(ElfSection section) =>
        HasBytesInFile(section) && section.Size > 0 ? Bytes.Slice((int)section.FileOffset, (int)section.Size) : Memory<byte>.Empty;

    /// <summary>Sections whose bytes are in the file (checked to lie inside it by <see cref="Parse"/>): not SHT_NULL, not SHT_NOBITS.</summary>
    internal static bool HasBytesInFile(ElfSection s) => s.HasFileBytes && s.Type != 0;

    /// <summary>Maps the virtual range [address, address + length) to a file offset when the whole range
    /// has file bytes in one section (or segment).</summary>
    public bool TryGetFileOffset(ulong address, int length, out long fileOffset)
    {
        int i = Find(address, length);
        if (i < 0)
        {
            fileOffset = -1;
            return false;
        }
        fileOffset = map[i].FileOffset + (long)(address - map[i].Start);
        return true;
    }

    /// <summary>The file offset of the byte at virtual address <paramref name="address"/>.</summary>
    /// <exception cref="ImageFormatException">No section with file bytes contains the address.</exception>
    public long FileOffsetOf(ulong address) => FileOffsetOf(address, 1);

    /// <summary>The file offset of the virtual range [address, address + length).</summary>
    /// <exception cref="ImageFormatException">The range is not inside one section with file bytes.</exception>
    public long FileOffsetOf(ulong address, int length)
    {
        if (!TryGetFileOffset(address, length, out long off))
            throw new ImageFormatException(
                $"{Name}: address 0x{address:x} (+{length}) is not inside any section with file bytes");
        return off;
    }

    /// <summary>The bytes at virtual address <paramref name="address"/> (a view of <see cref="Bytes"/>).</summary>
    /// <exception cref="ImageFormatException">The range is not inside one section with file bytes.</exception>
    public Span<byte> ReadBytes(ulong address, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        return Bytes.Span.Slice((int)FileOffsetOf(address, Math.Max(length, 1)), length);
    }

    /// <summary>Like <see cref="ReadBytes"/>, but false (and an empty span) when the range is not inside one section
    /// (or segment) with file bytes.</summary>
    internal bool TryReadBytes(ulong address, int length, out Span<byte> bytes)
    {
        if (length < 0 || !TryGetFileOffset(address, Math.Max(length, 1), out long off))
        {
            bytes = default;
            return false;
        }
        bytes = Bytes.Span.Slice((int)off, length);
        return true;
    }

    /// <summary>Reads a pointer-sized little-endian value (4 bytes in ELF32, 8 in ELF64) at a virtual address.</summary>
    /// <exception cref="ImageFormatException">The address has no file bytes.</exception>
    public ulong ReadPointer(ulong address) => ReadPointer(ReadBytes(address, PointerSize), PointerSize);

    /// <summary>Like <see cref="ReadPointer(ulong)"/>, but false (and 0) when the file has no bytes for the pointer.</summary>
    internal bool TryReadPointer(ulong address, out ulong value)
    {
        if (!TryReadBytes(address, PointerSize, out var bytes))
        {
            value = 0;
            return false;
        }
        value = ReadPointer(bytes, PointerSize);
        return true;
    }

    /// <summary>The little-endian pointer at the start of <paramref name="bytes"/>: 8 bytes when
    /// <paramref name="pointerSize"/> is 8, else 4 (the tables of an ELF64 or ELF32 file).</summary>
    internal static ulong ReadPointer(ReadOnlySpan<byte> bytes, int pointerSize) =>
        pointerSize == 8 ? BinaryPrimitives.ReadUInt64LittleEndian(bytes) : BinaryPrimitives.ReadUInt32LittleEndian(bytes);

    /// <summary>Adds a signed displacement to an address with the file's pointer width (wraps at 2^32 in ELF32).</summary>
    internal ulong AddressPlus(ulong address, long displacement)
    {
        ulong r = unchecked(address + (ulong)displacement);
        return Is64 ? r : r & 0xffff_ffffUL;
    }

    private int Find(ulong address, int length)
    {
        ulong len = (ulong)Math.Max(length, 0);
        int lo = 0, hi = map.Length - 1, found = -1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (map[mid].Start <= address) { found = mid; lo = mid + 1; }
            else hi = mid - 1;
        }
        if (found >= 0 && Fits(map[found], address, len))
            return found;
        // Overlapping ranges (unusual): fall back to a scan.
        for (int i = 0; i < map.Length; i++)
        {
            if (Fits(map[i], address, len))
                return i;
        }
        return -1;

        static bool Fits(Range r, ulong a, ulong n) => a >= r.Start && a < r.End && n <= r.End - a;
    }

    private static Range[] BuildMap(ElfSection[] sections, ElfSegment[] segments)
    {
        var list = new List<Range>();
        foreach (var s in sections)
        {
            if (s.IsAllocated && HasBytesInFile(s) && s.Size > 0)
                list.Add(new Range(s.Address, s.Address + s.Size, (long)s.FileOffset, s.Index));
        }
        if (list.Count == 0)
        {
            foreach (var p in segments)
            {
                if (p.IsLoad && p.FileSize > 0)
                    list.Add(new Range(p.VirtualAddress, p.VirtualAddress + p.FileSize, (long)p.FileOffset, -1));
            }
        }
        list.Sort((a, b) => a.Start.CompareTo(b.Start));
        return [.. list];
    }

    private IReadOnlyList<ElfSymbol> ReadSymbols()
    {
        var symtab = Sections.FirstOrDefault(s => s.Type == ElfSection.TypeSymTab);
        if (symtab.Type != ElfSection.TypeSymTab)
            return Array.Empty<ElfSymbol>();
        int entSize = Is64 ? 24 : 16;
        if (symtab.Link >= Sections.Count)
            throw new ImageFormatException($"{Name}: section [{symtab.Index}] {symtab.Name}: sh_link {symtab.Link} names no string table");
        var strSec = Sections[(int)symtab.Link];
        var str = SectionBytes(strSec).Span;
        var tab = SectionBytes(symtab).Span;
        int n = tab.Length / entSize;
        if (n > ImageLimits.MaxSymbols)
            throw new ImageFormatException($"{Name}: section [{symtab.Index}] {symtab.Name}: {n} symbols is implausible (at most {ImageLimits.MaxSymbols})");
        var names = new ElfStringTable(Name, $"section [{strSec.Index}] {strSec.Name}");
        var result = new ElfSymbol[n];
        for (int i = 0; i < n; i++)
        {
            var e = tab.Slice(i * entSize, entSize);
            result[i] = Is64
                ? new ElfSymbol(names.Get(str, U32(e, 0)), U64(e, 8), U64(e, 16), e[4], e[5], U16(e, 6))
                : new ElfSymbol(names.Get(str, U32(e, 0)), U32(e, 4), U32(e, 8), e[12], e[13], U16(e, 14));
        }
        return result;
    }

    private static long CheckTable(int fileLength, ulong offset, long count, int entrySize, string name, string what)
    {
        ulong end = offset + (ulong)count * (ulong)entrySize;
        if (offset > (ulong)fileLength || end > (ulong)fileLength || end < offset)
            throw new ImageFormatException(
                $"{name}: {what} at offset 0x{offset:x} ({count} x {entrySize} bytes) runs past the end of the file (0x{fileLength:x} bytes); truncated?");
        return (long)end;
    }

    private static ushort U16(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt16LittleEndian(d[o..]);
    private static uint U32(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt32LittleEndian(d[o..]);
    private static ulong U64(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt64LittleEndian(d[o..]);
}

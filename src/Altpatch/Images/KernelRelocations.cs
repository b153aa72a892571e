using System.Buffers.Binary;
using System.Collections.Immutable;

namespace Altpatch.Images;

/// <summary>The kind of a <c>vmlinux.relocs</c> entry: how <c>handle_relocations()</c> changes the field it names.</summary>
public enum KernelRelocationKind
{
    /// <summary><c>*(u32 *)field += delta</c> (absolute 32-bit addresses; the only kind on i386).</summary>
    Absolute32,
    /// <summary><c>*(s32 *)field -= delta</c> (x86-64: 32-bit references from the kernel to the per-CPU area, which does not move).</summary>
    Inverse32,
    /// <summary><c>*(u64 *)field += delta</c> (x86-64: absolute 64-bit addresses).</summary>
    Absolute64,
}

/// <summary>
/// The kernel's own relocation table, <c>vmlinux.relocs</c>, which the build appends to the ELF file in a bzImage's
/// payload (<c>arch/x86/boot/compressed/Makefile</c>, <c>CONFIG_X86_NEED_RELOCS</c>) and the decompressor applies
/// when KASLR (or, on i386, a different physical load address) moves the kernel: <c>handle_relocations()</c> in
/// <c>arch/x86/boot/compressed/misc.c</c>. Read and checked strictly; <see cref="Apply"/> does what the decompressor does.
/// </summary>
/// <remarks>
/// <para>Layout, read backwards from the last 4 bytes of the payload; every entry is a little-endian u32 link-time
/// virtual address of the field to change (sign-extended to 64 bits on x86-64), each list ended by a 0:
/// x86-64 <c>… ELF … | 0 | 64-bit | 0 | inverse 32-bit | 0 | 32-bit |END</c>; i386 <c>… ELF … | 0 | 32-bit |END</c>.</para>
/// <para>Checked here: the table starts exactly where the ELF file ends (<see cref="ElfFile.ElfEnd"/>), every entry
/// lies in <c>[_text, __bss_start]</c> (the decompressor's own bound) and its field in file bytes of a
/// <c>PT_LOAD</c>, and each list is strictly ascending (the <c>relocs</c> tool sorts them): a table that breaks any of
/// these is an <see cref="ImageFormatException"/> naming the list, the entry and the problem.</para>
/// <para>Fields are found as the decompressor finds them: by physical offset (entry − <c>__START_KERNEL_map</c>) in
/// the <c>PT_LOAD</c>s, so an x86-64 per-CPU field (section address 0, loaded inside the image) is found too.</para>
/// </remarks>
public sealed class KernelRelocations
{
    private readonly int[] offsets32, offsetsInverse, offsets64;

    private KernelRelocations(string name, long tableOffset, int tableLength, ulong textStart, ulong bssStart, ulong kernelMap,
        ImmutableArray<ulong> r32, ImmutableArray<ulong> inverse, ImmutableArray<ulong> r64, int[] o32, int[] oInv, int[] o64, bool is64)
    {
        Name = name;
        TableOffset = tableOffset;
        TableLength = tableLength;
        TextStart = textStart;
        BssStart = bssStart;
        StartKernelMap = kernelMap;
        Absolute32 = r32;
        Inverse32 = inverse;
        Absolute64 = r64;
        offsets32 = o32;
        offsetsInverse = oInv;
        offsets64 = o64;
        Is64 = is64;
    }

    /// <summary>The file named in messages.</summary>
    public string Name { get; }

    /// <summary>Whether the table is the x86-64 one (three lists).</summary>
    public bool Is64 { get; }

    /// <summary>Offset of the table's first byte (its lowest terminator) in the payload: the end of the ELF file.</summary>
    public long TableOffset { get; }

    /// <summary>Bytes of the table, terminators included.</summary>
    public int TableLength { get; }

    /// <summary>Link address of <c>_text</c> (the start of <c>.text</c>): the lowest address an entry may name.</summary>
    public ulong TextStart { get; }

    /// <summary>Link address of <c>__bss_start</c>: the highest address an entry may name.</summary>
    public ulong BssStart { get; }

    /// <summary><c>__START_KERNEL_map</c> (x86-64) or <c>PAGE_OFFSET</c> (i386): link virtual minus physical address.</summary>
    public ulong StartKernelMap { get; }

    /// <summary>The 32-bit entries (link addresses of the fields), ascending.</summary>
    public ImmutableArray<ulong> Absolute32 { get; }

    /// <summary>The inverse 32-bit entries (x86-64), ascending.</summary>
    public ImmutableArray<ulong> Inverse32 { get; }

    /// <summary>The 64-bit entries (x86-64), ascending.</summary>
    public ImmutableArray<ulong> Absolute64 { get; }

    /// <summary>Number of entries in all lists.</summary>
    public int Count => Absolute32.Length + Inverse32.Length + Absolute64.Length;

    /// <summary>The entries of one kind, ascending.</summary>
    public ImmutableArray<ulong> Entries(KernelRelocationKind kind) => kind switch
    {
        KernelRelocationKind.Absolute32 => Absolute32,
        KernelRelocationKind.Inverse32 => Inverse32,
        _ => Absolute64,
    };

    /// <summary>The width in bytes of a field of <paramref name="kind"/>: 4 or 8.</summary>
    public static int Width(KernelRelocationKind kind) => kind == KernelRelocationKind.Absolute64 ? 8 : 4;

    /// <summary>Reads the table that follows the ELF file in <paramref name="elf"/>'s buffer.</summary>
    /// <param name="elf">The kernel's ELF file as the decompressed payload holds it (<see cref="KernelImage.Elf"/>).</param>
    /// <returns>The table, or null when nothing follows the ELF file (a plain <c>vmlinux</c>).</returns>
    /// <exception cref="ImageFormatException">Bytes follow the ELF file but are not a valid relocation table for it.</exception>
    public static KernelRelocations? Read(ElfFile elf)
    {
        ArgumentNullException.ThrowIfNull(elf);
        var d = elf.Bytes.Span;
        long elfEnd = elf.ElfEnd;
        if (d.Length <= elfEnd)
            return null;
        string name = $"{elf.Name}: vmlinux.relocs";
        long tail = d.Length - elfEnd;
        if (tail % 4 != 0 || tail < 4)
            throw new ImageFormatException($"{name}: {tail} bytes follow the ELF file (ends at 0x{elfEnd:x}); a relocation table is a whole number of 4-byte entries");

        var text = elf.FindSection(".text") ?? throw new ImageFormatException($"{name}: the ELF file has no .text section");
        var bss = elf.FindSection(".bss") ?? throw new ImageFormatException($"{name}: the ELF file has no .bss section (__bss_start bounds the entries)");
        var textLoad = elf.Segments.FirstOrDefault(p => p.IsLoad && p.VirtualAddress <= text.Address && text.Address - p.VirtualAddress < Math.Max(p.MemorySize, 1));
        if (!textLoad.IsLoad)
            throw new ImageFormatException($"{name}: no PT_LOAD holds .text at 0x{text.Address:x}");
        ulong kernelMap = textLoad.VirtualAddress - textLoad.PhysicalAddress;
        bool is64 = elf.Is64;

        int lists = is64 ? 3 : 1;
        var raw = new List<uint>[lists];
        long pos = d.Length - 4;
        for (int l = 0; l < lists; l++)
        {
            raw[l] = [];
            while (true)
            {
                if (pos < elfEnd)
                    throw new ImageFormatException(
                        $"{name}: the {ListName(is64, l)} list runs into the ELF file (offset 0x{elfEnd:x}) without its 0 terminator; {tail} bytes follow the ELF file");
                uint v = BinaryPrimitives.ReadUInt32LittleEndian(d[(int)pos..]);
                pos -= 4;
                if (v == 0)
                    break;
                raw[l].Add(v);
            }
        }
        long start = pos + 4;
        if (start != elfEnd)
            throw new ImageFormatException(
                $"{name}: {start - elfEnd} bytes between the end of the ELF file (0x{elfEnd:x}) and the relocation table (0x{start:x}): not the table the build appends");

        ulong textStart = text.Address, bssStart = bss.Address;
        var loads = elf.Segments.Where(p => p.IsLoad && p.FileSize > 0).ToArray();
        var entries = new ImmutableArray<ulong>[3];
        var offsets = new int[3][];
        for (int k = 0; k < 3; k++)
        {
            entries[k] = [];
            offsets[k] = [];
        }
        for (int l = 0; l < lists; l++)
        {
            // Read backwards, each list is descending: reverse it to the file's (ascending) order.
            var list = raw[l];
            list.Reverse();
            var kind = KindOf(is64, l);
            int width = Width(kind);
            var addrs = ImmutableArray.CreateBuilder<ulong>(list.Count);
            var offs = new int[list.Count];
            ulong prev = 0;
            for (int i = 0; i < list.Count; i++)
            {
                ulong a = is64 ? (ulong)(long)(int)list[i] : list[i];
                string Entry() => $"{name}: {ListName(is64, l)} entry {i} (0x{a:x})";
                if (i > 0 && a <= prev)
                    throw new ImageFormatException($"{Entry()} is not above the previous entry 0x{prev:x}: the lists are sorted");
                if (a < textStart || a > bssStart)
                    throw new ImageFormatException($"{Entry()} is outside the kernel [_text 0x{textStart:x}, __bss_start 0x{bssStart:x}] (the decompressor stops: \"relocation outside of kernel\")");
                ulong phys = a - kernelMap;
                long off = -1;
                foreach (var p in loads)
                {
                    if (phys >= p.PhysicalAddress && phys - p.PhysicalAddress <= p.FileSize - (ulong)width && p.FileSize >= (ulong)width)
                    {
                        off = (long)(p.FileOffset + (phys - p.PhysicalAddress));
                        break;
                    }
                }
                if (off < 0 || off > int.MaxValue)
                    throw new ImageFormatException($"{Entry()}: its {width}-byte field (physical 0x{phys:x}) is not in the file bytes of any PT_LOAD");
                addrs.Add(a);
                offs[i] = (int)off;
                prev = a;
            }
            entries[(int)kind] = addrs.MoveToImmutable();
            offsets[(int)kind] = offs;
        }
        return new KernelRelocations(elf.Name, start, (int)tail, textStart, bssStart, kernelMap,
            entries[0], entries[1], entries[2], offsets[0], offsets[1], offsets[2], is64);
    }

    private static KernelRelocationKind KindOf(bool is64, int list) => !is64 ? KernelRelocationKind.Absolute32 : list switch
    {
        0 => KernelRelocationKind.Absolute32,
        1 => KernelRelocationKind.Inverse32,
        _ => KernelRelocationKind.Absolute64,
    };

    private static string ListName(bool is64, int list) => KindOf(is64, list) switch
    {
        KernelRelocationKind.Absolute32 => "32-bit",
        KernelRelocationKind.Inverse32 => "inverse 32-bit",
        _ => "64-bit",
    };

    /// <summary>
    /// Relocates the fields in <paramref name="elfBytes"/> (a copy of the ELF file's buffer this table was read from)
    /// for a kernel moved by <paramref name="delta"/>, as <c>handle_relocations()</c> does: 32-bit fields
    /// <c>+= delta</c>, inverse 32-bit fields <c>-= delta</c>, 64-bit fields <c>+= delta</c>; nothing when delta is 0.
    /// </summary>
    /// <param name="elfBytes">The buffer (the same layout as the one read).</param>
    /// <param name="delta">x86-64: the virtual KASLR offset (runtime <c>_text</c> − link <c>_text</c>); i386: the
    /// physical load offset (the same as the virtual one).</param>
    /// <exception cref="ArgumentException">The buffer is shorter than the table's ELF file.</exception>
    public void Apply(Span<byte> elfBytes, long delta)
    {
        if (elfBytes.Length < TableOffset)
            throw new ArgumentException($"the buffer has {elfBytes.Length} bytes, the ELF file {TableOffset}", nameof(elfBytes));
        if (delta == 0)
            return;
        uint d32 = unchecked((uint)delta);
        foreach (int o in offsets32)
        {
            var f = elfBytes.Slice(o, 4);
            BinaryPrimitives.WriteUInt32LittleEndian(f, unchecked(BinaryPrimitives.ReadUInt32LittleEndian(f) + d32));
        }
        foreach (int o in offsetsInverse)
        {
            var f = elfBytes.Slice(o, 4);
            BinaryPrimitives.WriteUInt32LittleEndian(f, unchecked(BinaryPrimitives.ReadUInt32LittleEndian(f) - d32));
        }
        foreach (int o in offsets64)
        {
            var f = elfBytes.Slice(o, 8);
            BinaryPrimitives.WriteUInt64LittleEndian(f, unchecked(BinaryPrimitives.ReadUInt64LittleEndian(f) + (ulong)delta));
        }
    }

    /// <summary>
    /// The relocated fields that lie inside [<paramref name="start"/>, <paramref name="start"/> + <paramref name="length"/>)
    /// (link addresses), by kind, ascending within each kind.
    /// </summary>
    public IEnumerable<(ulong Address, KernelRelocationKind Kind)> FieldsIn(ulong start, ulong length)
    {
        foreach (var kind in AllKinds)
        {
            var list = Entries(kind);
            int i = LowerBound(list, start);
            ulong w = (ulong)Width(kind);
            for (; i < list.Length && list[i] - start < length && length - (list[i] - start) >= w; i++)
                yield return (list[i], kind);
        }
    }

    private static readonly KernelRelocationKind[] AllKinds = [KernelRelocationKind.Absolute32, KernelRelocationKind.Inverse32, KernelRelocationKind.Absolute64];

    private static int LowerBound(ImmutableArray<ulong> list, ulong value)
    {
        int lo = 0, hi = list.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (list[mid] < value)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    }
}

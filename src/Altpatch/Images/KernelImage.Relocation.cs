using System.Buffers.Binary;

namespace Altpatch.Images;

public sealed partial class KernelImage
{
    private Lazy<KernelRelocations?>? relocations;
    private KernelImage? lastRelocated;   // the last Relocate() result: verifying dumps of one boot moves the image once

    /// <summary>The image's relocation table (<c>vmlinux.relocs</c> after the ELF file in a bzImage payload), read and
    /// checked on first use; null when nothing follows the ELF file (a plain <c>vmlinux</c>).</summary>
    /// <exception cref="ImageFormatException">Bytes follow the ELF file but are not a valid table (thrown on every use).</exception>
    public KernelRelocations? Relocations =>
        LazyInitializer.EnsureInitialized(ref relocations, () => new Lazy<KernelRelocations?>(() => KernelRelocations.Read(Elf))).Value;

    /// <summary>How far this image was moved from its link addresses by <see cref="Relocate"/>; 0 for an image as
    /// opened.</summary>
    public long RelocationDelta { get; private set; }

    /// <summary>The image as it is in memory after the decompressor moved it by <paramref name="delta"/>, before the kernel
    /// runs: a new image over a copy of the ELF bytes with every field of <see cref="Relocations"/> relocated
    /// (<see cref="KernelRelocations.Apply"/>) and every allocated section and loaded segment at its runtime address
    /// (the x86-64 per-CPU section, linked at 0, stays). Everything read from it (tables, kallsyms, thunks, boot passes)
    /// then has runtime addresses, as in the running kernel. This image is not changed; the last moved image is kept, and
    /// returned again for the same delta.</summary>
    /// <param name="delta">The KASLR offset: runtime <c>_text</c> − link <c>_text</c> (x86-64: the virtual offset;
    /// i386: the physical load offset, the same virtually). 0 returns this image.</param>
    /// <exception cref="ArgumentOutOfRangeException">The delta is negative (the kernel never moves below its link
    /// address), not a multiple of 4 KiB, or moves the image past the end of the kernel's address range.</exception>
    /// <exception cref="ImageFormatException">The image has no relocation table, or it is malformed.</exception>
    public KernelImage Relocate(long delta)
    {
        if (delta == 0)
            return this;
        if (Volatile.Read(ref lastRelocated) is { } last && last.RelocationDelta == delta)
            return last;
        var moved = Move(delta, LargeBuffer.Copy(ElfBytes.Span));
        Volatile.Write(ref lastRelocated, moved);
        return moved;
    }

    /// <summary>Like <see cref="Relocate"/>, but moves this image's own bytes instead of a copy of them (no second
    /// image-sized buffer): this image is consumed — its bytes are the moved image's afterwards, while its headers and
    /// anything read from it before keep the link addresses. Nothing is remembered for a later <see cref="Relocate"/>.
    /// 0 returns this image.</summary>
    /// <param name="delta">As for <see cref="Relocate"/>.</param>
    /// <exception cref="ArgumentOutOfRangeException">As for <see cref="Relocate"/> (checked before anything is written).</exception>
    /// <exception cref="ImageFormatException">As for <see cref="Relocate"/> (the relocation table is read and checked
    /// before anything is written).</exception>
    internal KernelImage RelocateInPlace(long delta)
    {
        if (delta == 0)
            return this;
        if (!System.Runtime.InteropServices.MemoryMarshal.TryGetArray<byte>(ElfBytes, out var seg) || seg.Offset != 0 || seg.Count != seg.Array!.Length)
            return Relocate(delta);   // not a whole array of its own: a copy
        return Move(delta, seg.Array);
    }

    /// <summary>A new image over <paramref name="copy"/>, a buffer holding this image's ELF bytes, moved by <paramref name="delta"/>.</summary>
    private KernelImage Move(long delta, byte[] copy)
    {
        if (delta < 0 || delta % 4096 != 0)
            throw new ArgumentOutOfRangeException(nameof(delta), $"0x{delta:x}: a kernel moves up from its link address by a multiple of 4 KiB");
        var relocs = Relocations ?? throw new ImageFormatException(
            $"{Name}: no relocation table (vmlinux.relocs) after the ELF file: a kernel moved by KASLR cannot be predicted from it (give the bzImage, or the whole decompressed payload)");
        ulong end = Elf.Sections.Where(s => s.IsAllocated && s.Address != 0).Select(s => s.EndAddress).DefaultIfEmpty(0UL).Max();
        // x86-64: the image must stay inside the kernel text mapping (KERNEL_IMAGE_SIZE = 1 GiB with KASLR); i386: below 4 GiB.
        ulong limit = Elf.Is64 ? relocs.StartKernelMap + (1UL << 30) : 1UL << 32;
        if ((ulong)delta > limit || end > limit - (ulong)delta)
            throw new ArgumentOutOfRangeException(nameof(delta), $"0x{delta:x}: moves the image's end 0x{end:x} past 0x{limit:x}");

        relocs.Apply(copy, delta);
        Rebase(copy, Elf, (ulong)delta);
        var moved = Load(copy, Name);
        moved.RelocationDelta = delta;
        return moved;
    }

    /// <summary>Adds <paramref name="delta"/> to the address of every allocated section with a non-zero address and of
    /// every program header with a non-zero virtual address, in the headers of <paramref name="bytes"/>.</summary>
    private static void Rebase(Span<byte> bytes, ElfFile elf, ulong delta)
    {
        bool is64 = elf.Is64;
        ulong shoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(bytes[40..]) : BinaryPrimitives.ReadUInt32LittleEndian(bytes[32..]);
        ulong phoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(bytes[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(bytes[28..]);
        int o = is64 ? 54 : 42;
        int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(bytes[o..]);
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(bytes[(o + 4)..]);
        foreach (var s in elf.Sections)
        {
            if (!s.IsAllocated || s.Address == 0)
                continue;
            var field = bytes[(int)(shoff + (ulong)s.Index * (ulong)shentsize + (is64 ? 16UL : 12UL))..];
            Add(field, is64, delta);
        }
        foreach (var p in elf.Segments)
        {
            if (p.VirtualAddress == 0)
                continue;
            var field = bytes[(int)(phoff + (ulong)p.Index * (ulong)phentsize + (is64 ? 16UL : 8UL))..];
            Add(field, is64, delta);
        }

        static void Add(Span<byte> field, bool is64, ulong delta)
        {
            if (is64)
                BinaryPrimitives.WriteUInt64LittleEndian(field, BinaryPrimitives.ReadUInt64LittleEndian(field) + delta);
            else
                BinaryPrimitives.WriteUInt32LittleEndian(field, unchecked(BinaryPrimitives.ReadUInt32LittleEndian(field) + (uint)delta));
        }
    }
}

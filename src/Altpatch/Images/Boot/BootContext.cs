using Altpatch.Code;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>Everything a pass needs: the image (tables, original bytes), the working copy it reads and the
/// poker that writes it, the boot state, the thunks, the NOP table and the image's feature numbering. For a module
/// (<c>module_finalize()</c>), the tables are the module's and the poker writes the module, while the image is the
/// kernel the module is loaded into (its <c>pv_ops</c>, thunks and numbering).</summary>
internal sealed class BootContext(KernelImage image, ImagePoker poker, KernelBootState state, KernelThunks thunks,
    NopTable nops, ImageFeatureNumbering numbering, KernelPatchTables? tables = null, ElfFile? tableElf = null)
{
    /// <summary>The ELF file the tables are read from (the image's, or the linked module's).</summary>
    public ElfFile TableElf { get; } = tableElf ?? image.Elf;

    /// <summary>The image: tables and the original (unpatched) bytes; when patched in place
    /// (<see cref="KernelBootPatcher.PatchInPlace(KernelImage, KernelCpuDescription, KernelLine?, IProgress{BootPass}?)"/>) its code holds what the passes so far wrote: read the original
    /// code with <see cref="ReadOriginal"/>.</summary>
    public KernelImage Image { get; } = image;

    /// <summary>The plans written so far, in order, when the passes write the image's own bytes (<see cref="Poker"/>
    /// writes <see cref="Image"/>'s ELF file); null when they write a copy.</summary>
    public List<PatchPlan>? InPlaceWrites { get; init; }

    /// <summary>The image's code bytes at [address, address + length) as built, before any pass: read from the image,
    /// and, when the passes write the image in place, with every plan written so far undone (last first: each poke's
    /// old bytes are what the range held before its plan).</summary>
    /// <exception cref="ImageFormatException">The range is not inside one section with file bytes.</exception>
    public byte[] ReadOriginal(ulong address, int length)
    {
        var bytes = Image.ReadBytes(address, length).ToArray();
        if (InPlaceWrites is not { } writes)
            return bytes;
        ulong end = address + (ulong)length;
        for (int k = writes.Count - 1; k >= 0; k--)
        {
            foreach (ref readonly var p in writes[k].AsSpan())
            {
                ulong from = Math.Max(p.Address, address), to = Math.Min(p.End, end);
                if (from < to)
                    p.Old.Span.Slice((int)(from - p.Address), (int)(to - from)).CopyTo(bytes.AsSpan((int)(from - address)));
            }
        }
        return bytes;
    }

    /// <summary>The tables the passes walk: the image's, or a module's.</summary>
    public KernelPatchTables Tables { get; } = tables ?? image.Tables;

    /// <summary>Reads and writes the working copy.</summary>
    public ImagePoker Poker { get; } = poker;

    /// <summary>The boot CPU.</summary>
    public KernelBootState State { get; } = state;

    /// <summary>The thunks found in the image.</summary>
    public KernelThunks Thunks { get; } = thunks;

    /// <summary>The kernel's NOP table (<c>x86_nops[]</c>) for this image.</summary>
    public NopTable Nops { get; } = nops;

    /// <summary><c>boot_cpu_has(n)</c> for a feature number of the image's own numbering.</summary>
    public Func<int, bool> HasFeature { get; } = state.ImageFeatures is { } bits ? bits.Has : numbering.HasFeature(state.Features);

    /// <summary>(NCAPINTS + NBUGINTS) × 32 of the image's numbering: <c>apply_alternatives()</c>'s BUG_ON bound.</summary>
    public int FeatureLimit { get; } = numbering.FeatureLimit;

    /// <summary>32 or 64.</summary>
    public int Bitness => Image.Bitness;

    /// <summary>The kernel's <c>add_nops()</c> with this image's table.</summary>
    public void AddNops(Span<byte> buffer) => Nops.AddNops(buffer);

    /// <summary>The initial value of paravirt site <paramref name="p"/>'s <c>pv_ops</c> slot (<c>*((void **)&amp;pv_ops + type)</c>
    /// in the unpatched image), or a <see cref="PatchException"/> naming the site when the image has no bytes for the slot.</summary>
    public ulong PvOpsSlot(PvOpsTable pv, KernelParavirtSite p, SiteRef site)
    {
        if (p.Type < pv.Slots.Length)
            return pv.Slots[p.Type];
        ulong slot = pv.SlotAddress(p.Type);
        return Image.Elf.TryReadPointer(slot, out ulong value)
            ? value
            : throw new PatchException(site, p.Address, $"pv_ops slot {p.Type} at 0x{slot:x} has no bytes in the image");
    }

    /// <summary>A <c>rel32</c> from the end of a <paramref name="size"/>-byte instruction at <paramref name="at"/> to
    /// <paramref name="target"/> (the kernel's <c>__text_gen_insn()</c>), or a <see cref="PatchException"/> when it does not reach.</summary>
    public int Rel32(ulong at, int size, ulong target, SiteRef site)
    {
        ulong next = at + (ulong)size;
        if (Bitness == 32)
            return X86.Rel32Wrapped(target, next);
        return X86.TryRel32(target, next, out int rel)
            ? rel
            : throw new PatchException(site, at, $"branch target 0x{target:x} is out of rel32 range");
    }
}

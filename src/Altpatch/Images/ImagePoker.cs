using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Images;

/// <summary>
/// The text poker for kernel images on disk: writes plans into the bytes of an ELF file (a <c>vmlinux</c>,
/// e.g. <see cref="KernelImage.ElfBytes"/> or a copy of them) at the file offsets of the link-time addresses
/// the pokes name. Like every poker it validates the whole plan before the first byte is written: every
/// poke must lie inside one executable (<c>SHF_EXECINSTR</c>) section with file bytes, and the file must
/// hold the poke's old bytes there. A valid plan is then copied site by site; nothing else in the file
/// changes, so the file keeps its size and layout.
/// </summary>
/// <remarks>Also an <see cref="ICodeReader"/> over the same bytes, so a planner can read what the previous
/// plan left behind. Not thread-safe.</remarks>
public sealed class ImagePoker : ITextPoker, ICodeReader
{
    private readonly ElfFile elf;

    /// <summary>Creates a poker writing into <paramref name="elf"/>'s bytes (<see cref="ElfFile.Bytes"/>).</summary>
    /// <param name="elf">The ELF file whose section headers map addresses to offsets, and whose buffer is written.</param>
    public ImagePoker(ElfFile elf)
    {
        ArgumentNullException.ThrowIfNull(elf);
        this.elf = elf;
    }

    /// <summary>The ELF file written to.</summary>
    public ElfFile Elf => elf;

    /// <summary>Number of pokes written by <see cref="Apply"/> so far.</summary>
    public long PokesWritten { get; private set; }

    /// <summary>Number of bytes written by <see cref="Apply"/> so far.</summary>
    public long BytesWritten { get; private set; }

    /// <inheritdoc />
    public bool TryRead(ulong address, Span<byte> destination, out string problem)
    {
        if (!TryLocate(address, destination.Length, out long offset, out problem))
            return false;
        elf.Bytes.Span.Slice((int)offset, destination.Length).CopyTo(destination);
        return true;
    }

    /// <summary>
    /// The current bytes at [address, address + length) as a read-only view of the buffer, or a
    /// <see cref="PatchException"/> for <paramref name="site"/> when the range is not inside one executable section.
    /// </summary>
    /// <param name="address">Link-time address.</param>
    /// <param name="length">Number of bytes.</param>
    /// <param name="site">The site named in the error.</param>
    public ReadOnlySpan<byte> Read(ulong address, int length, SiteRef site)
    {
        if (!TryLocate(address, length, out long offset, out var problem))
            throw new PatchException(site, address, problem);
        return elf.Bytes.Span.Slice((int)offset, length);
    }

    /// <summary>Whether [address, address + length) lies inside one executable section with file bytes.</summary>
    /// <param name="address">Link-time address.</param>
    /// <param name="length">Number of bytes (at least 1 is checked).</param>
    public bool IsCode(ulong address, int length) => TryLocate(address, length, out _, out _);

    /// <inheritdoc />
    /// <exception cref="PatchException">A poke lies outside the executable sections, or the file does not hold its
    /// old bytes; nothing has been written.</exception>
    public void Apply(PatchPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        if (plan.IsEmpty)
            return;
        var pokes = plan.AsSpan();
        var offsets = new long[pokes.Length];
        var buffer = elf.Bytes.Span;
        for (int i = 0; i < pokes.Length; i++)
        {
            ref readonly var p = ref pokes[i];
            if (!TryLocate(p.Address, p.Length, out offsets[i], out var problem))
                throw new PatchException(p.Site, p.Address, problem);
            var current = buffer.Slice((int)offsets[i], p.Length);
            if (!current.SequenceEqual(p.Old.Span))
                throw new PatchException(p.Site, p.Address,
                    $"the image holds {Convert.ToHexStringLower(current)}, not the plan's old bytes {Convert.ToHexStringLower(p.Old.Span)}");
        }
        long bytes = 0;
        for (int i = 0; i < pokes.Length; i++)
        {
            pokes[i].New.Span.CopyTo(buffer.Slice((int)offsets[i], pokes[i].Length));
            bytes += pokes[i].Length;
        }
        PokesWritten += pokes.Length;
        BytesWritten += bytes;
    }

    private ElfSection lastSection;

    private bool TryLocate(ulong address, int length, out long offset, out string problem)
    {
        offset = -1;
        // Sites come in address order, mostly within one section: try the last one first.
        var last = lastSection;
        if (last.IsExecutable && last.Contains(address, (ulong)Math.Max(length, 1)))
        {
            offset = (long)(last.FileOffset + (address - last.Address));
            problem = "";
            return true;
        }
        if (elf.SectionContaining(address) is not { } section)
        {
            problem = $"0x{address:x} is not inside any section of {elf.Name} with file bytes";
            return false;
        }
        if (!section.IsExecutable)
        {
            problem = $"0x{address:x} lies in {section.Name}, which is not executable (SHF_EXECINSTR)";
            return false;
        }
        if (!section.Contains(address, (ulong)Math.Max(length, 1)))
        {
            problem = $"0x{address:x} (+{length}) runs past the end of {section.Name} (0x{section.EndAddress:x})";
            return false;
        }
        offset = (long)(section.FileOffset + (address - section.Address));
        problem = "";
        lastSection = section;
        return true;
    }
}

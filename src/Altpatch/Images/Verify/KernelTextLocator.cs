using System.Buffers.Binary;
using System.Globalization;

namespace Altpatch.Images.Verify;

/// <summary>How well a dump of <c>.text</c> fits an image at a base (<see cref="KernelTextLocator.CheckFit"/>).</summary>
/// <param name="Delta">The KASLR offset the base gives: runtime <c>.text</c> − link <c>.text</c>.</param>
/// <param name="MatchingBytes">Fraction of the <c>.text</c> bytes equal to the image's own (unpatched, unrelocated).</param>
/// <param name="RelocatedFields">Relocated fields (<c>vmlinux.relocs</c>) inside <c>.text</c>.</param>
/// <param name="FieldsAgreeing">How many of them hold the image's value moved by <paramref name="Delta"/>.</param>
public readonly record struct KernelTextFit(long Delta, double MatchingBytes, int RelocatedFields, int FieldsAgreeing);

/// <summary>
/// Checks that bytes claimed to be an image's running <c>.text</c> are that (the same build, at the base given), and
/// finds <c>.text</c> in a memory core. Both use what boot patching does not change: most bytes of the text, and the
/// relocated fields, whose values tell the KASLR offset the dump was moved by.
/// </summary>
public static class KernelTextLocator
{
    /// <summary>The fraction of <c>.text</c> bytes a dump must share with the image: boot patching changes about 1–2%,
    /// another build or a wrong base most.</summary>
    public const double MinimumMatchingBytes = 0.5;

    /// <summary>
    /// Checks that <paramref name="found"/> (at least <c>.text</c>'s size) is <paramref name="image"/>'s <c>.text</c> loaded
    /// at <paramref name="textAddress"/>.
    /// </summary>
    /// <param name="image">The image as opened (link addresses).</param>
    /// <param name="found">The dump's bytes from the start of <c>.text</c>.</param>
    /// <param name="textAddress">Where <c>.text</c> was loaded.</param>
    /// <param name="source">The dump, for messages ("dump.bin", "/proc/kcore").</param>
    /// <exception cref="KernelVerifyException">The dump is shorter than <c>.text</c>; the base is below the link address or
    /// not 4 KiB-aligned; the relocated fields say the text was moved by another offset (the message gives the base
    /// that fits); or the bytes are not this image's text.</exception>
    /// <exception cref="ImageFormatException">The image has no <c>.text</c>, or a malformed relocation table.</exception>
    public static KernelTextFit CheckFit(KernelImage image, ReadOnlySpan<byte> found, ulong textAddress, string source)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(source);
        var text = TextSection(image);
        if ((ulong)found.Length < text.Size)
            throw new KernelVerifyException(
                $"{source}: {found.Length:N0} bytes, shorter than the .text of {image.Name} ({text.Size:N0} bytes): not the whole text (or the text of another build)");
        found = found[..(int)text.Size];
        if (textAddress < text.Address)
            throw new KernelVerifyException(
                $"{source}: base 0x{textAddress:x} is below {image.Name}'s link address of .text 0x{text.Address:x}: the kernel only moves up (KASLR adds an offset)");
        long delta = (long)(textAddress - text.Address);
        if (delta % 4096 != 0)
            throw new KernelVerifyException(
                $"{source}: base 0x{textAddress:x} is 0x{delta:x} above the link address 0x{text.Address:x}, not a multiple of 4 KiB: not where this kernel can be loaded");
        var linkText = image.Elf.SectionBytes(text).Span;

        double matching = (double)CountEqual(linkText, found) / linkText.Length;
        var relocs = image.Relocations;
        int fields = 0, agreeing = 0;
        if (relocs is not null)
        {
            var votes = new Dictionary<ulong, int>();
            foreach (var (addr, kind) in relocs.FieldsIn(text.Address, text.Size))
            {
                int o = (int)(addr - text.Address);
                ulong moved = Moved(linkText, found, o, kind);
                fields++;
                if (moved == Truncate(delta, kind))
                    agreeing++;
                else
                    votes[moved] = votes.GetValueOrDefault(moved) + 1;
            }
            if (fields >= 16 && agreeing * 2 < fields)
            {
                var best = votes.MaxBy(kv => kv.Value);
                if (best.Value * 2 >= fields && matching >= MinimumMatchingBytes)
                {
                    ulong fits = text.Address + best.Key;
                    throw new KernelVerifyException(
                        $"{source}: does not fit base 0x{textAddress:x} (KASLR offset 0x{delta:x}): {best.Value:N0} of the {fields:N0} relocated addresses in its .text say it was moved by 0x{best.Key:x}, so .text was at 0x{fits:x} (use that base)");
                }
                if (matching >= MinimumMatchingBytes)
                    throw new KernelVerifyException(
                        $"{source}: does not fit base 0x{textAddress:x} (KASLR offset 0x{delta:x}): only {agreeing:N0} of the {fields:N0} relocated addresses in its .text hold the image's value moved by that offset");
            }
        }
        else if (delta != 0)
        {
            throw new ImageFormatException(
                $"{image.Name}: no relocation table (vmlinux.relocs) after the ELF file, so the text cannot be predicted at base 0x{textAddress:x} (KASLR offset 0x{delta:x}): give the bzImage, or the whole decompressed payload");
        }
        if (matching < MinimumMatchingBytes)
            throw new KernelVerifyException(
                $"{source}: not the .text of {image.Name} at 0x{textAddress:x}: only {Percent(matching)} of its bytes equal the image's (boot patching changes a few %): a dump of another build, a wrong --base, or not kernel text");
        return new KernelTextFit(delta, matching, fields, agreeing);
    }

    /// <summary>
    /// Finds where <paramref name="image"/>'s <c>.text</c> is in <paramref name="core"/>: among the 4 KiB-aligned addresses
    /// at or above its link address in the kernel's text mapping (x86-64: <c>__START_KERNEL_map</c> + 1 GiB; i386:
    /// from <c>PAGE_OFFSET</c>) that the core's segments cover for the whole of <c>.text</c>, the one whose bytes share the
    /// most of the image's bytes that neither boot patching nor relocation changes.
    /// </summary>
    /// <param name="image">The image as opened (link addresses).</param>
    /// <param name="core">The memory core.</param>
    /// <returns>The runtime address of <c>.text</c>.</returns>
    /// <exception cref="KernelVerifyException">No candidate holds this image's text.</exception>
    /// <exception cref="ImageFormatException">The image is malformed.</exception>
    public static ulong Find(KernelImage image, ElfCore core)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(core);
        var text = TextSection(image);
        ulong kernelMap = KernelMap(image, text);
        ulong windowStart = Math.Max(text.Address, kernelMap);
        ulong windowEnd = image.Elf.Is64 ? kernelMap + (1UL << 30) : 1UL << 32;
        ulong size = text.Size;
        // The runs of the core inside the window that can hold the whole of .text; none: nothing to sample.
        var runs = core.Ranges()
            .Select(r => (Lo: Math.Max(r.Start, windowStart), Hi: Math.Min(r.Start + r.Length, windowEnd)))
            .Where(r => r.Hi > r.Lo && r.Hi - r.Lo >= size)
            .ToList();
        var linkText = image.Elf.SectionBytes(text).Span;
        var mask = runs.Count > 0 ? InvariantMask(image, text) : [];
        var anchors = runs.Count > 0 ? Anchors(linkText, mask, 4, 16) : [];
        var samples = runs.Count > 0 ? Samples(mask, 4096) : [];
        var buf = new byte[16];
        var sampleBuf = new byte[1];
        ulong bestBase = 0;
        double bestScore = -1;
        int candidates = 0;
        foreach (var (lo, hi) in runs)
        {
            for (ulong b = (lo + 4095) & ~4095UL; b + size <= hi; b += 4096)
            {
                if (((b - text.Address) & 4095) != 0)
                    continue;
                candidates++;
                int hits = 0;
                foreach (int a in anchors)
                {
                    if (core.TryRead(b + (ulong)a, buf) && buf.AsSpan().SequenceEqual(linkText.Slice(a, 16)))
                        hits++;
                    else if (hits == 0)
                        break;   // the first anchor decides for almost every candidate
                }
                if (hits * 2 < anchors.Count)
                    continue;
                int same = 0;
                foreach (int s in samples)
                {
                    if (core.TryRead(b + (ulong)s, sampleBuf) && sampleBuf[0] == linkText[s])
                        same++;
                }
                double score = samples.Count == 0 ? 0 : (double)same / samples.Count;
                if (score > bestScore)
                {
                    bestScore = score;
                    bestBase = b;
                }
            }
        }
        if (bestScore < 0.9)
        {
            string window = string.Create(CultureInfo.InvariantCulture, $"0x{windowStart:x}-0x{windowEnd - 1:x}");
            throw new KernelVerifyException(bestScore < 0
                ? $"{core.Name}: no text of {image.Name} in the core: none of its {candidates:N0} candidate bases in the kernel text mapping {window} holds it ({core.Loads.Count} PT_LOADs; a core without the kernel's text, or of another kernel)"
                : $"{core.Name}: no text of {image.Name} in the core: the best of {candidates:N0} candidate bases, 0x{bestBase:x}, shares only {Percent(bestScore)} of the sampled bytes (a core of another build?)");
        }
        return bestBase;
    }

    /// <summary>The image's <c>.text</c> section; an <see cref="ImageFormatException"/> when it has none with bytes.</summary>
    public static ElfSection TextSection(KernelImage image) =>
        image.Elf.FindSection(".text") is { Size: > 0 } t && ElfFile.HasBytesInFile(t)
            ? t
            : throw new ImageFormatException($"{image.Name}: no .text section with bytes");

    /// <summary><c>__START_KERNEL_map</c> / <c>PAGE_OFFSET</c>: the PT_LOAD holding .text, virtual minus physical.</summary>
    private static ulong KernelMap(KernelImage image, ElfSection text)
    {
        if (image.Relocations is { } r)
            return r.StartKernelMap;
        foreach (var p in image.Elf.Segments)
        {
            if (p.IsLoad && p.VirtualAddress <= text.Address && text.Address - p.VirtualAddress < p.MemorySize)
                return p.VirtualAddress - p.PhysicalAddress;
        }
        return text.Address & (image.Elf.Is64 ? 0xffff_ffff_8000_0000UL : 0xc000_0000UL);
    }

    /// <summary>True for each byte of .text that neither boot patching (the patch tables' sites) nor relocation changes.</summary>
    private static bool[] InvariantMask(KernelImage image, ElfSection text)
    {
        var mask = new bool[text.Size];
        Array.Fill(mask, true);
        void Clear(ulong address, int length)
        {
            for (int i = 0; i < length; i++)
            {
                ulong a = address + (ulong)i;
                if (a >= text.Address && a - text.Address < text.Size)
                    mask[a - text.Address] = false;
            }
        }
        if (image.Relocations is { } r)
        {
            foreach (var (a, kind) in r.FieldsIn(text.Address, text.Size))
                Clear(a, KernelRelocations.Width(kind));
        }
        var t = image.Tables;
        foreach (var s in t.Alternatives)
            Clear(s.Address, s.InstrLen);
        foreach (var s in t.Paravirt)
            Clear(s.Address, s.Len);
        foreach (var s in t.Retpolines)
            Clear(s.Address, 6);
        foreach (var s in t.Returns)
            Clear(s.Address, 6);
        foreach (var s in t.SmpLocks)
            Clear(s.Address, 1);
        return mask;
    }

    /// <summary><paramref name="count"/> offsets of runs of <paramref name="length"/> invariant bytes spread over the text,
    /// each run not a single repeated byte (padding).</summary>
    private static List<int> Anchors(ReadOnlySpan<byte> text, bool[] mask, int count, int length)
    {
        var list = new List<int>();
        for (int k = 0; k < count; k++)
        {
            int o = (int)((long)text.Length * (2 * k + 1) / (2 * count));
            for (; o + length <= text.Length; o++)
            {
                if (Array.IndexOf(mask, false, o, length) < 0 && text.Slice(o, length).IndexOfAnyExcept(text[o]) >= 0)
                {
                    list.Add(o);
                    break;
                }
            }
        }
        return list;
    }

    /// <summary>Up to <paramref name="count"/> invariant offsets spread evenly over the text.</summary>
    private static List<int> Samples(bool[] mask, int count)
    {
        var list = new List<int>(count);
        long step = Math.Max(1, mask.Length / count);
        for (long o = step / 2; o < mask.Length && list.Count < count; o += step)
        {
            int i = Array.IndexOf(mask, true, (int)o);
            if (i >= 0)
                list.Add(i);
        }
        return list;
    }

    /// <summary>The offset a relocated field says its text was moved by.</summary>
    private static ulong Moved(ReadOnlySpan<byte> link, ReadOnlySpan<byte> found, int o, KernelRelocationKind kind) => kind switch
    {
        KernelRelocationKind.Absolute32 => unchecked(BinaryPrimitives.ReadUInt32LittleEndian(found[o..]) - BinaryPrimitives.ReadUInt32LittleEndian(link[o..])),
        KernelRelocationKind.Inverse32 => unchecked(BinaryPrimitives.ReadUInt32LittleEndian(link[o..]) - BinaryPrimitives.ReadUInt32LittleEndian(found[o..])),
        _ => unchecked(BinaryPrimitives.ReadUInt64LittleEndian(found[o..]) - BinaryPrimitives.ReadUInt64LittleEndian(link[o..])),
    };

    private static ulong Truncate(long delta, KernelRelocationKind kind) =>
        kind == KernelRelocationKind.Absolute64 ? (ulong)delta : unchecked((uint)delta);

    /// <summary>How many positions hold the same byte in both spans (of equal length).</summary>
    internal static long CountEqual(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        // Runs of equal bytes by CommonPrefixLength (vectorized in any build, NativeAOT's baseline ISA included), the
        // differing bytes between them one by one: a dump of the image differs in few places.
        long n = 0;
        int i = 0;
        while (i < a.Length)
        {
            int same = a[i..].CommonPrefixLength(b[i..]);
            n += same;
            i += same;
            for (; i < a.Length && a[i] != b[i]; i++)
            {
            }
        }
        return n;
    }

    private static string Percent(double f) => string.Create(CultureInfo.InvariantCulture, $"{f * 100:F1}%");
}

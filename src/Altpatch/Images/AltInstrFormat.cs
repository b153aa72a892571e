namespace Altpatch.Images;

/// <summary>
/// The layouts <c>struct alt_instr</c> (one <c>.altinstructions</c> entry) has had on x86. Which one an
/// image uses is detected from the table itself (see <see cref="KernelPatchTables"/>); the version
/// ranges below are a guide. Exact layouts: <c>docs/formats.md</c>.
/// </summary>
public enum AltInstrFormat
{
    /// <summary>2.6.x up to about 2.6.34 (the seed era, 2.6.22): absolute pointers and a byte-wide feature:
    /// <c>{ u8 *instr; u8 *replacement; u8 cpuid; u8 instrlen; u8 replacementlen; u8 pad1; [u32 pad2 on x86-64] }</c>:
    /// 12 bytes on i386, 24 on x86-64.</summary>
    AbsoluteByteCpuid,

    /// <summary>About 2.6.35 to 3.0: absolute pointers, 16-bit feature:
    /// <c>{ u8 *instr; u8 *replacement; u16 cpuid; u8 instrlen; u8 replacementlen; [u32 pad2 on x86-64] }</c>: 12 / 24 bytes.</summary>
    AbsoluteWordCpuid,

    /// <summary>3.1 to 4.0 and about 5.14 to 6.2 (Linux 6.1 included): self-relative, packed, 12 bytes:
    /// <c>{ s32 instr_offset; s32 repl_offset; u16 cpuid; u8 instrlen; u8 replacementlen; }</c>.
    /// From 5.13 bit 15 of cpuid is <c>ALTINSTR_FLAG_INV</c> (patch when the feature is absent).</summary>
    Relative12,

    /// <summary>4.1 to about 5.13: <see cref="Relative12"/> plus <c>u8 padlen</c> (build-time NOP padding of the
    /// original, counted in instrlen): 13 bytes, packed.</summary>
    Relative13,

    /// <summary>6.3 and later: <c>{ s32 instr_offset; s32 repl_offset; u32 ft_flags; u8 instrlen; u8 replacementlen; }</c>,
    /// 14 bytes, packed; ft_flags = cpuid (low 16 bits) | flags &lt;&lt; 16, flag bit 0 <c>ALT_FLAG_NOT</c>,
    /// bit 1 <c>ALT_FLAG_DIRECT_CALL</c> (6.10+).</summary>
    Relative14,
}

/// <summary>Sizes and names of <see cref="AltInstrFormat"/> layouts.</summary>
public static class AltInstrFormats
{
    /// <summary>The formats in the order they are tried, and preferred when a table fits several and the kernel
    /// version does not decide: relative-12 (Linux 6.1's), relative-14, relative-13, then the 2.6-era absolute layouts.</summary>
    public static IReadOnlyList<AltInstrFormat> Preference { get; } =
        [AltInstrFormat.Relative12, AltInstrFormat.Relative14, AltInstrFormat.Relative13, AltInstrFormat.AbsoluteWordCpuid, AltInstrFormat.AbsoluteByteCpuid];

    /// <summary>Size of one entry in bytes for the given pointer size (4 or 8).</summary>
    public static int EntrySize(this AltInstrFormat format, int pointerSize) => format switch
    {
        AltInstrFormat.Relative12 => 12,
        AltInstrFormat.Relative13 => 13,
        AltInstrFormat.Relative14 => 14,
        _ => pointerSize == 8 ? 24 : 12,
    };

    /// <summary>Trailing padding bytes of an entry: the 2.6-era macros emit <c>.align</c> <i>before</i> each entry,
    /// so the last entry of a table may lack them (1 or 5 bytes for the u8-cpuid layout on i386 / x86-64,
    /// 0 or 4 for the u16 one); the relative layouts are packed and have none.</summary>
    public static int TrailingPadding(this AltInstrFormat format, int pointerSize) => format switch
    {
        AltInstrFormat.AbsoluteByteCpuid => pointerSize == 8 ? 5 : 1,
        AltInstrFormat.AbsoluteWordCpuid => pointerSize == 8 ? 4 : 0,
        _ => 0,
    };

    /// <summary>The number of entries a table of <paramref name="sectionSize"/> bytes holds in this layout, or
    /// null when the size does not fit it (allowing the last entry's <see cref="TrailingPadding"/> to be missing).</summary>
    public static int? EntryCount(this AltInstrFormat format, ulong sectionSize, int pointerSize)
    {
        ulong es = (ulong)format.EntrySize(pointerSize);
        ulong n = (sectionSize + es - 1) / es;
        return n * es - sectionSize <= (ulong)format.TrailingPadding(pointerSize) && n <= int.MaxValue ? (int)n : null;
    }

    /// <summary>Whether the instruction and replacement are absolute pointers (not self-relative offsets).</summary>
    public static bool IsAbsolute(this AltInstrFormat format) =>
        format is AltInstrFormat.AbsoluteByteCpuid or AltInstrFormat.AbsoluteWordCpuid;

    /// <summary>A short name, e.g. "relative-12".</summary>
    public static string ShortName(this AltInstrFormat format) => format switch
    {
        AltInstrFormat.AbsoluteByteCpuid => "absolute-u8-cpuid",
        AltInstrFormat.AbsoluteWordCpuid => "absolute-u16-cpuid",
        AltInstrFormat.Relative12 => "relative-12",
        AltInstrFormat.Relative13 => "relative-13-padlen",
        AltInstrFormat.Relative14 => "relative-14-ft_flags",
        _ => format.ToString(),
    };

    /// <summary>The format a kernel of this version was built with, or null when the version is unknown.</summary>
    public static AltInstrFormat? ExpectedFor(KernelVersion? version)
    {
        if (version is null)
            return null;
        if (version.IsAtLeast(6, 3)) return AltInstrFormat.Relative14;
        if (version.IsAtLeast(5, 14)) return AltInstrFormat.Relative12;
        if (version.IsAtLeast(4, 1)) return AltInstrFormat.Relative13;
        if (version.IsAtLeast(3, 1)) return AltInstrFormat.Relative12;
        if (version.IsAtLeast(3, 0) || (version.Major == 2 && version.Minor == 6 && version.Patch >= 35))
            return AltInstrFormat.AbsoluteWordCpuid;
        return AltInstrFormat.AbsoluteByteCpuid;
    }
}

namespace Altpatch.Images;

/// <summary>A summary of one patch site table found in an image.</summary>
/// <param name="Kind">Which table.</param>
/// <param name="Section">Its ELF section name.</param>
/// <param name="Address">Section address.</param>
/// <param name="Size">Section size in bytes.</param>
/// <param name="Format">The detected entry format, e.g. "relative-12" or "s32-relative".</param>
/// <param name="EntrySize">Bytes per entry.</param>
/// <param name="Entries">Number of entries (section size ÷ entry size).</param>
/// <param name="Sites">Number of sites (entries that are not zero padding).</param>
public readonly record struct KernelTableInfo(
    KernelSiteKind Kind, string Section, ulong Address, ulong Size, string Format, int EntrySize, int Entries, int Sites);

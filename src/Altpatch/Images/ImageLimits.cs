namespace Altpatch.Images;

/// <summary>
/// The limits that keep reading any input, however malformed or hostile, under 1 GiB of memory and in bounded
/// time: every size an input announces is checked against one of these before anything is allocated for it.
/// Each is far above what a real kernel needs (the numbers beside them are the largest seen in the Debian 6.1 and
/// 6.12 images and debug vmlinux files) and low enough that the worst case, <c>kernel patch</c> on an input at the
/// limits (the file, the decompressed vmlinux and its patched copy), stays under 1 GiB. See docs/bad-input.md.
/// </summary>
public static class ImageLimits
{
    /// <summary>Largest file read as a kernel image: 256 MiB (bzImages are 6–15 MB; a stripped vmlinux ~70 MB;
    /// a vmlinux with DWARF, ~560 MB, must be stripped of its debug sections first).</summary>
    public const long MaxFileSize = 256L << 20;

    /// <summary>Largest text input read whole: a <c>/proc/cpuinfo</c>, a System.map or <c>/proc/kallsyms</c>: 64 MiB
    /// (real: a 1,024-CPU cpuinfo ~1.5 MB, a System.map 3.6 MB).</summary>
    public const long MaxTextFileSize = 64L << 20;

    /// <summary>Largest decompressed payload: 256 MiB (real: 16–66 MB). The setup header's <c>init_size</c>, when
    /// the boot protocol has it, bounds it further.</summary>
    public const int MaxDecompressedSize = 256 << 20;

    /// <summary>Largest patch table section: 8 MiB (real: .return_sites, 192 KB).</summary>
    public const int MaxTableSize = 8 << 20;

    /// <summary>Most symbols read from an ELF symbol table: 4 Mi (real: 118 K in the 6.1 debug vmlinux).</summary>
    public const int MaxSymbols = 4 << 20;

    /// <summary>Longest section or symbol name: 4096 bytes (the kernel's KSYM_NAME_LEN is 512).</summary>
    public const int MaxNameLength = 4096;

    /// <summary>Most characters of section or symbol names decoded from one string table: 32 Mi (real: 2.4 M).
    /// Many entries may name the same long string; each distinct name is decoded once and counted once.</summary>
    public const int MaxNameCharacters = 32 << 20;
}

namespace Altpatch.Images;

/// <summary>
/// How a bzImage's payload (the kernel's <c>vmlinux.bin</c>) is compressed: one value per
/// <c>CONFIG_KERNEL_*</c> choice. Detected by magic number, as the kernel's <c>lib/decompress.c</c> does.
/// </summary>
public enum PayloadCompression
{
    /// <summary>Not compressed: the image is a raw <c>vmlinux</c> ELF file.</summary>
    None,
    /// <summary>gzip (magic 1f 8b or 1f 9e), <c>CONFIG_KERNEL_GZIP</c>.</summary>
    Gzip,
    /// <summary>bzip2 (magic "BZh"), <c>CONFIG_KERNEL_BZIP2</c>.</summary>
    Bzip2,
    /// <summary>LZMA "alone" format (props byte 0x5d, then 00), <c>CONFIG_KERNEL_LZMA</c>.</summary>
    Lzma,
    /// <summary>xz (magic fd 37 7a 58 5a 00), <c>CONFIG_KERNEL_XZ</c>; the kernel's uses the x86 BCJ filter.</summary>
    Xz,
    /// <summary>lzop container of LZO1X blocks (magic 89 4c 5a 4f 00 0d 0a 1a 0a), <c>CONFIG_KERNEL_LZO</c>.</summary>
    Lzo,
    /// <summary>LZ4 legacy frame (magic 02 21 4c 18, 8 MiB blocks), <c>CONFIG_KERNEL_LZ4</c>.</summary>
    Lz4,
    /// <summary>Zstandard (magic 28 b5 2f fd), <c>CONFIG_KERNEL_ZSTD</c>.</summary>
    Zstd,
}

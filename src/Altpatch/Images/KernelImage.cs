namespace Altpatch.Images;

/// <summary>
/// A Linux x86 kernel image opened for reading its code and patch tables: a bzImage (setup header +
/// compressed <c>vmlinux</c>) or a raw <c>vmlinux</c> ELF file. The ELF file's bytes are held as one
/// writable buffer (<see cref="ElfBytes"/>) so a writer can patch code in place at
/// <see cref="FileOffsetOf"/>.
/// </summary>
/// <remarks>Opening reads the file, decompresses the payload and parses the ELF headers; the patch tables
/// are read and checked on first use of <see cref="Tables"/> (an <see cref="ImageFormatException"/> from a bad
/// table is thrown there, and again on every later use).</remarks>
public sealed partial class KernelImage
{
    private readonly Lazy<KernelPatchTables> tables;

    private KernelImage(string name, long fileSize, BzImage? bzImage, BzImageIntegrity? integrity, ElfFile elf, KernelArchitecture arch, KernelVersion? version)
    {
        Name = name;
        FileSize = fileSize;
        BzImage = bzImage;
        Integrity = integrity;
        Elf = elf;
        Architecture = arch;
        Version = version;
        tables = new Lazy<KernelPatchTables>(() => KernelPatchTables.Read(Elf, Version));
    }

    /// <summary>The name used in messages (the file name).</summary>
    public string Name { get; }

    /// <summary>Size of the file opened (the bzImage, or the ELF file).</summary>
    public long FileSize { get; }

    /// <summary>The bzImage container, or null when a raw ELF file was opened.</summary>
    public BzImage? BzImage { get; }

    /// <summary>The bzImage's build CRC-32 and Secure Boot signature, checked on opening; null for a raw ELF file.
    /// Without <see cref="KernelImageOptions.IgnoreCrc"/> an image is only opened when it matches.</summary>
    public BzImageIntegrity? Integrity { get; }

    /// <summary>The payload compression (<see cref="PayloadCompression.None"/> for a raw ELF file).</summary>
    public PayloadCompression Compression => BzImage?.Compression ?? PayloadCompression.None;

    /// <summary>The kernel ELF file (<c>vmlinux</c>).</summary>
    public ElfFile Elf { get; }

    /// <summary>The ELF file's bytes (for a bzImage: the decompressed payload, which may continue past the ELF
    /// proper with <c>vmlinux.relocs</c>). Writable; file offsets index into it.</summary>
    public Memory<byte> ElfBytes => Elf.Bytes;

    /// <summary>i386 or x86-64.</summary>
    public KernelArchitecture Architecture { get; }

    /// <summary>32 or 64: the code's bitness (the value Iced's decoder wants).</summary>
    public int Bitness => Architecture == KernelArchitecture.X86_64 ? 64 : 32;

    /// <summary>Size of a pointer in bytes (4 or 8).</summary>
    public int PointerSize => Elf.PointerSize;

    /// <summary>The kernel version: <c>linux_banner</c> from the ELF's <c>.rodata</c>, else the setup header's
    /// kernel_version string; null when neither is present.</summary>
    public KernelVersion? Version { get; }

    /// <summary>The ELF sections.</summary>
    public IReadOnlyList<ElfSection> Sections => Elf.Sections;

    /// <summary>The patch site tables, read and checked on first use.</summary>
    /// <exception cref="ImageFormatException">A table is malformed or an entry points outside the code.</exception>
    public KernelPatchTables Tables => tables.Value;

    /// <summary>Opens a bzImage or vmlinux ELF file.</summary>
    /// <param name="path">The file.</param>
    /// <exception cref="ImageFormatException">The file is empty, truncated, corrupt, of an unknown format or compression, or not an x86 kernel.</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    public static KernelImage Open(string path) => Open(path, KernelImageOptions.Default);

    /// <summary>Opens a bzImage or vmlinux ELF file with options (e.g. reading an image whose CRC does not match).</summary>
    /// <param name="path">The file.</param>
    /// <param name="options">The options.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Open(string)"/>.</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    public static KernelImage Open(string path, KernelImageOptions options)
    {
        ArgumentNullException.ThrowIfNull(path);
        long size = new FileInfo(path).Length;
        if (size > ImageLimits.MaxFileSize)
            throw new ImageFormatException(TooLarge(Path.GetFileName(path), size));
        return Load(LargeBuffer.ReadFile(path), Path.GetFileName(path), options);
    }

    /// <summary>Opens a bzImage or vmlinux ELF file already in memory. A raw ELF buffer is used in place (not copied).</summary>
    /// <param name="file">The file's bytes.</param>
    /// <param name="name">Name for messages.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Open(string)"/>.</exception>
    public static KernelImage Load(byte[] file, string name) => Load(file, name, KernelImageOptions.Default);

    /// <summary>Opens a bzImage or vmlinux ELF file already in memory, with options.</summary>
    /// <param name="file">The file's bytes.</param>
    /// <param name="name">Name for messages.</param>
    /// <param name="options">The options.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Open(string)"/>.</exception>
    public static KernelImage Load(byte[] file, string name, KernelImageOptions options)
    {
        ArgumentNullException.ThrowIfNull(file);
        return Load(file, file, name, options);
    }

    /// <summary>Opens a bzImage or vmlinux ELF file in memory the caller owns, e.g. a file mapped read-only: a bzImage is
    /// read in place (<see cref="BzImage.File"/> views <paramref name="file"/>, which must stay valid as long as the image
    /// is used) and its payload decompressed into a new buffer; a raw ELF file is copied (its buffer must be writable).</summary>
    /// <param name="file">The file's bytes.</param>
    /// <param name="name">Name for messages.</param>
    /// <param name="options">The options.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Open(string)"/>.</exception>
    public static KernelImage Load(ReadOnlyMemory<byte> file, string name, KernelImageOptions options)
    {
        var span = file.Span;
        return Load(file, span.Length > 0 && ElfFile.HasElfMagic(span) && span.Length <= ImageLimits.MaxFileSize ? LargeBuffer.Copy(span) : null, name, options);
    }

    /// <summary>Opens <paramref name="file"/>; <paramref name="writable"/> is its bytes as a writable array (a raw ELF
    /// file is used in place), or null.</summary>
    private static KernelImage Load(ReadOnlyMemory<byte> file, byte[]? writable, string name, KernelImageOptions options)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(options);
        if (file.Length == 0)
            throw new ImageFormatException($"{name}: empty file");
        if (file.Length > ImageLimits.MaxFileSize)
            throw new ImageFormatException(TooLarge(name, file.Length));
        BzImage? bz = null;
        BzImageIntegrity? integrity = null;
        byte[] elfBytes;
        if (ElfFile.HasElfMagic(file.Span))
            elfBytes = writable ?? LargeBuffer.Copy(file.Span);
        else if (BzImage.IsBzImage(file.Span))
        {
            bz = BzImage.Parse(file, name);
            integrity = BzImageIntegrity.Check(bz);
            if (!integrity.CrcMatches && !options.IgnoreCrc)
                throw new ImageFormatException(integrity.FailureMessage(name));
            elfBytes = bz.Decompress();
            if (!ElfFile.HasElfMagic(elfBytes))
                throw new ImageFormatException(
                    $"{name}: the {PayloadDecompressor.Name(bz.Compression)} payload decompressed to {elfBytes.Length} bytes but is not an ELF file (starts {Convert.ToHexString(elfBytes.AsSpan(0, Math.Min(4, elfBytes.Length))).ToLowerInvariant()})");
        }
        else
            throw new ImageFormatException(file.Length < 0x208
                ? $"{name}: not a kernel image: {file.Length} bytes, no ELF magic and too short for a bzImage setup header"
                : $"{name}: not a kernel image: no ELF magic at 0 and no bzImage setup header ('HdrS' at 0x202, 0xAA55 at 0x1fe)");

        var elf = ElfFile.Parse(elfBytes, bz is null ? name : $"{name} (vmlinux)");
        var arch = (elf.Is64, elf.Machine) switch
        {
            (false, ElfFile.MachineI386) => KernelArchitecture.I386,
            (true, ElfFile.MachineX86_64) => KernelArchitecture.X86_64,
            _ => throw new ImageFormatException(
                $"{elf.Name}: not an x86 kernel: ELF{(elf.Is64 ? 64 : 32)} with machine {elf.Machine} (want ELF32 EM_386 = 3 or ELF64 EM_X86_64 = 62)"),
        };
        var version = KernelVersion.FindBanner(elf)
            ?? (bz?.Header.KernelVersion is { } kv ? KernelVersion.TryParse(kv) : null);
        return new KernelImage(name, file.Length, bz, integrity, elf, arch, version);
    }

    private static string TooLarge(string name, long size) =>
        $"{name}: {size} bytes is more than the {ImageLimits.MaxFileSize} bytes (256 MiB) Altpatch reads as a kernel image; a vmlinux with debug information can be stripped of it first (objcopy --strip-debug)";

    /// <summary>The bytes at a link-time virtual address (a writable view of <see cref="ElfBytes"/>).</summary>
    /// <exception cref="ImageFormatException">The range is not inside one section with file bytes.</exception>
    public Span<byte> ReadBytes(ulong address, int length) => Elf.ReadBytes(address, length);

    /// <summary>The offset in <see cref="ElfBytes"/> of the byte at a link-time virtual address.</summary>
    /// <exception cref="ImageFormatException">No section with file bytes contains the address.</exception>
    public long FileOffsetOf(ulong address) => Elf.FileOffsetOf(address);

    /// <summary>Reads a pointer (4 or 8 bytes, little-endian) at a link-time virtual address, e.g. a
    /// <c>pv_ops</c> slot.</summary>
    /// <exception cref="ImageFormatException">The address has no file bytes.</exception>
    public ulong ReadPointer(ulong address) => Elf.ReadPointer(address);
}

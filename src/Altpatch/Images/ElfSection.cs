namespace Altpatch.Images;

/// <summary>
/// One ELF section header, decoded (ELF32 and ELF64 alike; 32-bit fields are widened).
/// </summary>
/// <param name="Index">Index in the section header table.</param>
/// <param name="Name">Name from the section name string table (<c>.text</c>, <c>.altinstructions</c>, …).</param>
/// <param name="Type">sh_type (<c>SHT_PROGBITS</c> = 1, <c>SHT_SYMTAB</c> = 2, <c>SHT_NOBITS</c> = 8, …).</param>
/// <param name="Flags">sh_flags (<see cref="FlagWrite"/>, <see cref="FlagAlloc"/>, <see cref="FlagExecInstr"/>, …).</param>
/// <param name="Address">sh_addr: the link-time virtual address.</param>
/// <param name="FileOffset">sh_offset: where the section's bytes start in the ELF file.</param>
/// <param name="Size">sh_size in bytes (in memory; a <c>SHT_NOBITS</c> section has no bytes in the file).</param>
/// <param name="Alignment">sh_addralign.</param>
/// <param name="EntrySize">sh_entsize (0 when the section is not a table of fixed-size entries).</param>
/// <param name="Link">sh_link (for a symbol table: the index of its string table).</param>
/// <param name="Info">sh_info.</param>
public readonly record struct ElfSection(
    int Index, string Name, uint Type, ulong Flags, ulong Address, ulong FileOffset, ulong Size,
    ulong Alignment, ulong EntrySize, uint Link, uint Info)
{
    /// <summary>SHF_WRITE: writable at run time.</summary>
    public const ulong FlagWrite = 0x1;
    /// <summary>SHF_ALLOC: occupies memory when loaded.</summary>
    public const ulong FlagAlloc = 0x2;
    /// <summary>SHF_EXECINSTR: holds executable code.</summary>
    public const ulong FlagExecInstr = 0x4;
    /// <summary>SHT_NOBITS: occupies memory but no file bytes (<c>.bss</c>).</summary>
    public const uint TypeNoBits = 8;
    /// <summary>SHT_SYMTAB: a full symbol table.</summary>
    public const uint TypeSymTab = 2;

    /// <summary>The section occupies memory at run time (SHF_ALLOC).</summary>
    public bool IsAllocated => (Flags & FlagAlloc) != 0;

    /// <summary>The section holds code (SHF_EXECINSTR).</summary>
    public bool IsExecutable => (Flags & FlagExecInstr) != 0;

    /// <summary>The section is writable at run time (SHF_WRITE).</summary>
    public bool IsWritable => (Flags & FlagWrite) != 0;

    /// <summary>The section has bytes in the file (every type but SHT_NOBITS).</summary>
    public bool HasFileBytes => Type != TypeNoBits;

    /// <summary>First virtual address past the section.</summary>
    public ulong EndAddress => Address + Size;

    /// <summary>Whether <paramref name="address"/> lies in [Address, Address + Size).</summary>
    public bool Contains(ulong address) => address >= Address && address - Address < Size;

    /// <summary>Whether the whole range [address, address + length) lies in the section.</summary>
    public bool Contains(ulong address, ulong length) =>
        address >= Address && address - Address <= Size && length <= Size - (address - Address);

    /// <inheritdoc/>
    public override string ToString() =>
        $"[{Index}] {Name} addr 0x{Address:x} off 0x{FileOffset:x} size 0x{Size:x}";
}

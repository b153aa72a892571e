namespace Altpatch.Images;

/// <summary>One ELF program header (segment), decoded; 32-bit fields are widened.</summary>
/// <param name="Index">Index in the program header table.</param>
/// <param name="Type">p_type (<see cref="TypeLoad"/> = 1, <c>PT_NOTE</c> = 4, …).</param>
/// <param name="Flags">p_flags (<c>PF_X</c> = 1, <c>PF_W</c> = 2, <c>PF_R</c> = 4).</param>
/// <param name="FileOffset">p_offset.</param>
/// <param name="VirtualAddress">p_vaddr: the link-time virtual address.</param>
/// <param name="PhysicalAddress">p_paddr: the load (physical) address; for the kernel, where the boot code puts it.</param>
/// <param name="FileSize">p_filesz.</param>
/// <param name="MemorySize">p_memsz.</param>
/// <param name="Alignment">p_align.</param>
public readonly record struct ElfSegment(
    int Index, uint Type, uint Flags, ulong FileOffset, ulong VirtualAddress, ulong PhysicalAddress,
    ulong FileSize, ulong MemorySize, ulong Alignment)
{
    /// <summary>PT_LOAD.</summary>
    public const uint TypeLoad = 1;

    /// <summary>The segment is loaded (PT_LOAD).</summary>
    public bool IsLoad => Type == TypeLoad;

    /// <summary>The segment is executable (PF_X).</summary>
    public bool IsExecutable => (Flags & 1) != 0;

    /// <summary>The segment is writable (PF_W).</summary>
    public bool IsWritable => (Flags & 2) != 0;
}

namespace Altpatch.Images;

/// <summary>One entry of an ELF symbol table (<c>.symtab</c>), decoded.</summary>
/// <param name="Name">Symbol name (empty for unnamed symbols).</param>
/// <param name="Value">st_value: for a kernel, the symbol's link-time virtual address.</param>
/// <param name="Size">st_size.</param>
/// <param name="Info">st_info: binding in the high nibble, type in the low nibble.</param>
/// <param name="Other">st_other (visibility).</param>
/// <param name="SectionIndex">st_shndx (0 = undefined, 0xfff1 = absolute).</param>
public readonly record struct ElfSymbol(string Name, ulong Value, ulong Size, byte Info, byte Other, ushort SectionIndex)
{
    /// <summary>STT_*: 0 none, 1 object, 2 function, 3 section, 4 file.</summary>
    public int Type => Info & 0xf;

    /// <summary>STB_*: 0 local, 1 global, 2 weak.</summary>
    public int Binding => Info >> 4;

    /// <summary>The symbol names a function (STT_FUNC).</summary>
    public bool IsFunction => Type == 2;

    /// <summary>The symbol names a data object (STT_OBJECT).</summary>
    public bool IsObject => Type == 1;
}

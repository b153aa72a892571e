namespace Altpatch.Images;

/// <summary>
/// One kernel symbol, as <c>System.map</c> and <c>/proc/kallsyms</c> list it: name, address and the
/// one-letter type of <c>nm</c>.
/// </summary>
/// <param name="Name">The symbol name (<c>_stext</c>, <c>__start_mcount_loc</c>, <c>do_one_initcall</c>, …).</param>
/// <param name="Address">The link-time virtual address (for a per-CPU symbol of an x86-64 kernel: its offset in
/// the per-CPU area, a small number).</param>
/// <param name="Type">The <c>nm</c> type letter: <c>T</c>/<c>t</c> text (code), <c>D</c>/<c>d</c> data,
/// <c>R</c>/<c>r</c> read-only data, <c>B</c>/<c>b</c> BSS, <c>W</c>/<c>w</c> weak, <c>V</c>/<c>v</c> weak object,
/// <c>A</c>/<c>a</c> absolute. Upper case is global, lower case local. The kallsyms of an x86-64 kernel
/// (<c>CONFIG_KALLSYMS_ABSOLUTE_PERCPU</c>) types every per-CPU symbol <c>A</c> whatever its type in the ELF file.</param>
public readonly record struct KernelSymbol(string Name, ulong Address, char Type)
{
    /// <summary>Code: type <c>T</c>, <c>t</c>, <c>W</c> or <c>w</c> (weak symbols of the kernel are functions).</summary>
    public bool IsText => Type is 'T' or 't' or 'W' or 'w';

    /// <summary>Global (upper-case type letter) rather than local to its object file.</summary>
    public bool IsGlobal => Type is >= 'A' and <= 'Z';

    /// <summary>Absolute: type <c>A</c> or <c>a</c> (not relocated with the kernel; per-CPU offsets on x86-64).</summary>
    public bool IsAbsolute => Type is 'A' or 'a';

    /// <summary>The System.map line: "ffffffff81000000 T _stext" (the address as wide as a pointer of
    /// <paramref name="pointerSize"/> bytes: 16 or 8 hex digits).</summary>
    public string ToSystemMapLine(int pointerSize) =>
        pointerSize == 8
            ? $"{Address:x16} {Type} {Name}"
            : $"{Address:x8} {Type} {Name}";

    /// <inheritdoc/>
    public override string ToString() => $"0x{Address:x} {Type} {Name}";
}

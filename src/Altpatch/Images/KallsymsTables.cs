namespace Altpatch.Images;

/// <summary>
/// Where a kernel's kallsyms tables were found and how they are encoded (what <see cref="KernelSymbols.FromKallsyms"/>
/// decoded). Addresses are link-time virtual addresses of the table starts, i.e. of the kernel's own
/// <c>kallsyms_*</c> symbols.
/// </summary>
/// <param name="Layout">The order of the tables (it changed in Linux 6.2 and 6.4).</param>
/// <param name="Section">The ELF section holding the tables (<c>.rodata</c>), or "PT_LOAD" when the file has no section headers.</param>
/// <param name="Count">kallsyms_num_syms: the number of symbols.</param>
/// <param name="AbsolutePercpu">Whether the offsets use the <c>--absolute-percpu</c> encoding (x86-64 SMP,
/// <c>CONFIG_KALLSYMS_ABSOLUTE_PERCPU</c>): non-negative offsets are absolute values (the per-CPU symbols, typed
/// <c>A</c>) and negative ones are <c>relative_base - 1 - offset</c>. Otherwise every offset is an unsigned
/// distance above <c>kallsyms_relative_base</c>.</param>
/// <param name="RelativeBase">The value of kallsyms_relative_base: the address of the first symbol that is not absolute.</param>
/// <param name="NumSyms">Address of kallsyms_num_syms (a u32).</param>
/// <param name="Names">Address of kallsyms_names: per symbol a ULEB128 length (1 or 2 bytes) and that many token indexes.</param>
/// <param name="NamesSize">Size of kallsyms_names in bytes.</param>
/// <param name="Markers">Address of kallsyms_markers: one u32 per 256 symbols, the offset of symbol 256·k in kallsyms_names.</param>
/// <param name="MarkerCount">Number of markers (⌈Count / 256⌉).</param>
/// <param name="TokenTable">Address of kallsyms_token_table: 256 NUL-terminated tokens.</param>
/// <param name="TokenIndex">Address of kallsyms_token_index: 256 u16 offsets of the tokens in the token table.</param>
/// <param name="Offsets">Address of kallsyms_offsets: one s32 per symbol.</param>
/// <param name="RelativeBaseAddress">Address of kallsyms_relative_base (a pointer).</param>
/// <param name="SeqsOfNames">Address of kallsyms_seqs_of_names (3 bytes, big-endian, per symbol: the symbol indexes in name
/// order), or null in the <see cref="KallsymsLayout.OffsetsFirst"/> layout, which has none.</param>
public sealed record KallsymsTables(
    KallsymsLayout Layout, string Section, int Count, bool AbsolutePercpu, ulong RelativeBase,
    ulong NumSyms, ulong Names, int NamesSize, ulong Markers, int MarkerCount,
    ulong TokenTable, ulong TokenIndex, ulong Offsets, ulong RelativeBaseAddress, ulong? SeqsOfNames);

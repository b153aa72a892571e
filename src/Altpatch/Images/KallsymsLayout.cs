namespace Altpatch.Images;

/// <summary>
/// The order in which <c>scripts/kallsyms</c> laid the kallsyms tables out in <c>.rodata</c>; it changed twice.
/// Every table starts at a pointer-aligned address (<c>ALGN</c>: 8 bytes on x86-64, 4 on i386).
/// </summary>
public enum KallsymsLayout
{
    /// <summary>Up to Linux 6.1 (mainline): <c>kallsyms_offsets</c>, <c>kallsyms_relative_base</c>,
    /// <c>kallsyms_num_syms</c>, <c>kallsyms_names</c>, <c>kallsyms_markers</c>, <c>kallsyms_token_table</c>,
    /// <c>kallsyms_token_index</c>.</summary>
    OffsetsFirst,

    /// <summary>Linux 6.2 and 6.3, and 6.1 stable kernels with the <c>kallsyms_lookup_name()</c> speed-up backported
    /// (Debian's 6.1.176): as <see cref="OffsetsFirst"/> with <c>kallsyms_seqs_of_names</c> between
    /// <c>kallsyms_markers</c> and <c>kallsyms_token_table</c>.</summary>
    OffsetsFirstWithSeqs,

    /// <summary>Linux 6.4 and later (commit 404bad70fcf7 "scripts/kallsyms: change the output order"):
    /// <c>kallsyms_num_syms</c>, <c>kallsyms_names</c>, <c>kallsyms_markers</c>, <c>kallsyms_token_table</c>,
    /// <c>kallsyms_token_index</c>, <c>kallsyms_offsets</c>, <c>kallsyms_relative_base</c>,
    /// <c>kallsyms_seqs_of_names</c>.</summary>
    NamesFirst,
}

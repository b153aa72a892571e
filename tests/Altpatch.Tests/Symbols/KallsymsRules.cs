using Altpatch.Images;

namespace Altpatch.Tests.Symbols;

/// <summary>
/// What a kernel's kallsyms holds, computed from its System.map by the rules of the <c>scripts/kallsyms.c</c> that built
/// it (Linux 6.1.176 or 6.12.118, read from the sources, not from our decoder): which symbols it leaves out, the
/// per-CPU symbols it retypes <c>A</c>, and the order it sorts them in. The decoder's output must equal this list.
/// </summary>
internal static class KallsymsRules
{
    /// <summary>The kallsyms list of a build, from its System.map (in file order, i.e. nm -n order).</summary>
    /// <param name="systemMap">The System.map symbols in file order.</param>
    /// <param name="linux612">6.12's rules (else 6.1's).</param>
    /// <param name="allSymbols">CONFIG_KALLSYMS_ALL (--all-symbols).</param>
    /// <param name="absolutePercpu">CONFIG_KALLSYMS_ABSOLUTE_PERCPU (--absolute-percpu).</param>
    public static List<KernelSymbol> Expected(IReadOnlyList<KernelSymbol> systemMap, bool linux612, bool allSymbols, bool absolutePercpu)
    {
        // read_map(): ignored symbols never enter the table; the range symbols are recorded as they are read.
        ulong stext = 0, etext = 0, sinit = 0, einit = 0, pcpuStart = ulong.MaxValue, pcpuEnd = 0;
        var table = new List<(KernelSymbol Sym, int Pos)>();
        foreach (var s in systemMap)
        {
            if (IsIgnored(s.Name, s.Type, linux612))
                continue;
            switch (s.Name)
            {
                case "_stext": stext = s.Address; break;
                case "_etext": etext = s.Address; break;
                case "_sinittext": sinit = s.Address; break;
                case "_einittext": einit = s.Address; break;
                case "__per_cpu_start": pcpuStart = s.Address; break;
                case "__per_cpu_end": pcpuEnd = s.Address; break;
            }
            table.Add((s, table.Count));
        }

        // shrink_table(): without --all-symbols, only the text and init text (ends included), but symbols at _etext or
        // _einittext other than those two; 6.12 keeps __start_* and __stop_* wherever they are.
        if (!allSymbols)
        {
            table = table.Where(e =>
            {
                var s = e.Sym;
                if (linux612 && (s.Name.StartsWith("__start_", StringComparison.Ordinal) || s.Name.StartsWith("__stop_", StringComparison.Ordinal)))
                    return true;
                bool inRange = (s.Address >= stext && s.Address <= etext) || (s.Address >= sinit && s.Address <= einit);
                if (!inRange)
                    return false;
                return !((s.Address == etext && s.Name != "_etext") || (s.Address == einit && s.Name != "_einittext"));
            }).ToList();
        }

        // make_percpus_absolute(): type 'A' for the per-CPU range (ends included).
        if (absolutePercpu)
        {
            for (int i = 0; i < table.Count; i++)
            {
                var s = table[i].Sym;
                if (s.Address >= pcpuStart && s.Address <= pcpuEnd)
                    table[i] = (s with { Type = 'A' }, table[i].Pos);
            }
        }

        // sort_symbols(): compare_symbols().
        table.Sort((a, b) => CompareSymbols(a.Sym, a.Pos, b.Sym, b.Pos));
        return table.Select(e => e.Sym).ToList();
    }

    private static int CompareSymbols(KernelSymbol a, int posA, KernelSymbol b, int posB)
    {
        if (a.Address != b.Address)
            return a.Address < b.Address ? -1 : 1;
        int wa = a.Type is 'w' or 'W' ? 1 : 0, wb = b.Type is 'w' or 'W' ? 1 : 0;
        if (wa != wb)
            return wa - wb;
        wa = LinkerProvided(a.Name) ? 1 : 0;
        wb = LinkerProvided(b.Name) ? 1 : 0;
        if (wa != wb)
            return wa - wb;
        wa = a.Name.Length - a.Name.TrimStart('_').Length;
        wb = b.Name.Length - b.Name.TrimStart('_').Length;
        if (wa != wb)
            return wa - wb;
        return posA - posB;
    }

    /// <summary>may_be_linker_script_provide_symbol().</summary>
    private static bool LinkerProvided(string symbol)
    {
        int len = symbol.Length;
        if (len < 8 || symbol[0] != '_' || symbol[1] != '_')
            return false;
        var rest = symbol.AsSpan(2);
        return rest.StartsWith("start_") || rest.StartsWith("stop_") || rest.StartsWith("end_")
            || symbol.EndsWith("_start", StringComparison.Ordinal) || symbol.EndsWith("_end", StringComparison.Ordinal);
    }

    private static readonly string[] IgnoredNames61 =
    [
        "kallsyms_addresses", "kallsyms_offsets", "kallsyms_relative_base", "kallsyms_num_syms", "kallsyms_names",
        "kallsyms_markers", "kallsyms_token_table", "kallsyms_token_index", "kallsyms_seqs_of_names", "_SDA_BASE_", "_SDA2_BASE_",
    ];

    private static readonly string[] IgnoredPrefixes61 =
    [
        "__efistub_", "__kvm_nvhe_$", "__kvm_nvhe_.L", "__AArch64ADRPThunk_", "__ARMV5PILongThunk_", "__ARMV7PILongThunk_",
        "__ThumbV7PILongThunk_", "__LA25Thunk_", "__microLA25Thunk_", "__kcfi_typeid_",
    ];

    private static readonly string[] KeptAbsolute = ["__kernel_syscall_via_break", "__kernel_syscall_via_epc", "__kernel_sigtramp", "__gp"];

    /// <summary>is_ignored_symbol() of 6.1 or 6.12 (6.12 moved the name rules into scripts/mksysmap, which made System.map too).</summary>
    private static bool IsIgnored(string name, char type, bool linux612)
    {
        if (!linux612)
        {
            if (IgnoredNames61.Contains(name) || IgnoredPrefixes61.Any(p => name.StartsWith(p, StringComparison.Ordinal))
                || name.EndsWith("_from_arm", StringComparison.Ordinal) || name.EndsWith("_from_thumb", StringComparison.Ordinal)
                || name.EndsWith("_veneer", StringComparison.Ordinal)
                || name.Contains(".long_branch.", StringComparison.Ordinal) || name.Contains(".plt_branch.", StringComparison.Ordinal))
                return true;
            if (type is 'U' or 'u' or 'N' or 'n')
                return true;
        }
        else if (type is 'u' or 'n')
            return true;
        return char.ToUpperInvariant(type) == 'A' && !KeptAbsolute.Contains(name);
    }
}

using System.Globalization;

namespace Altpatch.Images;

/// <summary>
/// A kernel's symbols: name, address and <c>nm</c> type of each, sorted by address, with lookups by name and by
/// address as the kernel itself does them (<c>kallsyms_lookup_name()</c>, <c>%pS</c>). Decoded from the image's own
/// kallsyms tables (<see cref="FromKallsyms"/>, no symbol table needed) or read from a <c>System.map</c> or
/// <c>/proc/kallsyms</c> (<see cref="FromSystemMap"/>).
/// </summary>
/// <remarks>
/// <para>kallsyms holds fewer symbols than <c>System.map</c>: see docs/formats.md ("kallsyms"). In short, it drops
/// absolute symbols (but per-CPU ones), and without <c>CONFIG_KALLSYMS_ALL</c> everything outside
/// <c>_stext</c>…<c>_etext</c> and <c>_sinittext</c>…<c>_einittext</c>; up to 6.3 also its own <c>kallsyms_*</c>
/// tables; and on x86-64 it types every per-CPU symbol <c>A</c>.</para>
/// <para>Immutable and safe to share between threads.</para>
/// </remarks>
public sealed class KernelSymbols
{
    private readonly KernelSymbol[] bySortedAddress;
    // The names' hashes, each with its symbol's index (hash << 32 | index), sorted: a lookup is a binary search. Built on
    // first use, in a third of the time and memory of a Dictionary<string, int> of the 87,000 names of a cloud kernel.
    private readonly Lazy<ulong[]> byName;
    private readonly (ulong Start, ulong End)[] textRanges;
    private readonly ulong initStart, initSectionEnd, imageEnd;

    private KernelSymbols(string origin, KernelSymbol[] sortedSymbols, KallsymsTables? kallsyms)
    {
        Origin = origin;
        Kallsyms = kallsyms;
        bySortedAddress = sortedSymbols;
        All = Array.AsReadOnly(bySortedAddress);
        byName = new Lazy<ulong[]>(() => NameIndex(bySortedAddress));
        (textRanges, initStart, initSectionEnd, imageEnd) = KernelRanges();
    }

    /// <summary>Where the symbols came from, for messages: "kallsyms of vmlinuz-6.1.0-50-cloud-amd64" or a file name.</summary>
    public string Origin { get; }

    /// <summary>Where the kallsyms tables were found and how they are encoded; null for symbols read from text.</summary>
    public KallsymsTables? Kallsyms { get; }

    /// <summary>Every symbol, sorted by address; symbols at the same address keep the order of their source (kallsyms'
    /// own order, or the file's).</summary>
    public IReadOnlyList<KernelSymbol> All { get; }

    /// <summary>Number of symbols.</summary>
    public int Count => bySortedAddress.Length;

    /// <summary>
    /// Whether the symbols cover data as well as code (<c>CONFIG_KALLSYMS_ALL</c>, and always for a System.map). The
    /// kernel looks addresses up in <c>_stext</c>…<c>_end</c> and <c>__init_begin</c>…<c>__init_end</c> then, else only
    /// in <c>_stext</c>…<c>_etext</c> and <c>_sinittext</c>…<c>_einittext</c> (<c>is_ksym_addr()</c>).
    /// </summary>
    public bool CoversData { get; private set; }

    /// <summary>Decodes an image's own kallsyms tables.</summary>
    /// <param name="image">A bzImage or vmlinux; it needs no symbol table.</param>
    /// <exception cref="ImageFormatException">The image has no kallsyms tables (built without <c>CONFIG_KALLSYMS</c>),
    /// or they are corrupt or truncated; the message names the table and the problem.</exception>
    public static KernelSymbols FromKallsyms(KernelImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        return DecodeKallsyms(image.Elf) ?? throw new ImageFormatException(NoKallsymsMessage(image.Elf));
    }

    /// <summary>Decodes the kallsyms tables of an ELF file; null when it has none.</summary>
    /// <exception cref="ImageFormatException">Tables were found but are corrupt or truncated.</exception>
    internal static KernelSymbols? DecodeKallsyms(ElfFile elf)
    {
        if (KallsymsDecoder.Decode(elf) is not { } decoded)
            return null;
        return new KernelSymbols($"kallsyms of {elf.Name}", decoded.Symbols, decoded.Tables);
    }

    /// <summary>The message for an image without kallsyms tables.</summary>
    internal static string NoKallsymsMessage(ElfFile elf) =>
        $"{elf.Name}: no kallsyms tables: no kallsyms_token_table (256 tokens with \"0\"…\"9\" at 0x30…0x39, then kallsyms_token_index) in .rodata; was the kernel built without CONFIG_KALLSYMS?";

    /// <summary>Reads a <c>System.map</c> or a <c>/proc/kallsyms</c>: lines "address type name", hexadecimal addresses.
    /// Lines of modules ("… [module]", in /proc/kallsyms) are left out: they are not the image's. Blank lines are skipped.</summary>
    /// <param name="text">The file's text.</param>
    /// <param name="name">The file's name, for messages.</param>
    /// <exception cref="ImageFormatException">A line is not "address type name", or every address is zero (a
    /// /proc/kallsyms read without the right to see addresses: read it as root).</exception>
    public static KernelSymbols FromSystemMap(string text, string name)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(name);
        var list = new List<KernelSymbol>();
        int lineNo = 0;
        bool anyNonZero = false;
        foreach (var raw in text.AsSpan().EnumerateLines())
        {
            lineNo++;
            var line = raw.Trim();
            if (line.IsEmpty)
                continue;
            int sp1 = line.IndexOfAny(' ', '\t');
            var rest = sp1 < 0 ? ReadOnlySpan<char>.Empty : line[(sp1 + 1)..].TrimStart();
            int sp2 = rest.IndexOfAny(' ', '\t');
            if (sp1 <= 0 || sp2 != 1 || !char.IsAsciiLetter(rest[0])
                || !ulong.TryParse(line[..sp1], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out ulong address))
                throw new ImageFormatException($"{name}: line {lineNo}: not \"address type name\": \"{Shorten(line)}\"");
            var nameAndMore = rest[2..].TrimStart();
            int sp3 = nameAndMore.IndexOfAny(' ', '\t');
            var symbolName = sp3 < 0 ? nameAndMore : nameAndMore[..sp3];
            if (symbolName.IsEmpty)
                throw new ImageFormatException($"{name}: line {lineNo}: no symbol name: \"{Shorten(line)}\"");
            if (sp3 >= 0 && nameAndMore[sp3..].TrimStart().StartsWith('['))
                continue; // a module's symbol
            anyNonZero |= address != 0;
            list.Add(new KernelSymbol(symbolName.ToString(), address, rest[0]));
        }
        if (list.Count > 0 && !anyNonZero)
            throw new ImageFormatException($"{name}: every address is 0: a /proc/kallsyms read without CAP_SYSLOG (kptr_restrict); read it as root");
        // Stable: symbols at one address keep the file's order.
        var sorted = list.Index().OrderBy(x => x.Item.Address).ThenBy(x => x.Index).Select(x => x.Item).ToArray();
        return new KernelSymbols(name, sorted, null);
    }

    private static string Shorten(ReadOnlySpan<char> line) => line.Length <= 80 ? line.ToString() : $"{line[..77]}...";

    /// <summary>The address of the first symbol called <paramref name="name"/> (the lowest address, as
    /// <c>kallsyms_lookup_name()</c> returns); false when there is none.</summary>
    public bool TryGetAddress(string name, out ulong address)
    {
        if (TryGetSymbol(name, out var s))
        {
            address = s.Address;
            return true;
        }
        address = 0;
        return false;
    }

    /// <summary>The first symbol called <paramref name="name"/> (the lowest address); false when there is none.</summary>
    public bool TryGetSymbol(string name, out KernelSymbol symbol)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (TryFirstIndex(name, out int i))
        {
            symbol = bySortedAddress[i];
            return true;
        }
        symbol = default;
        return false;
    }

    private static ulong[] NameIndex(KernelSymbol[] symbols)
    {
        var keys = GC.AllocateUninitializedArray<ulong>(symbols.Length);
        for (int i = 0; i < symbols.Length; i++)
            keys[i] = ((ulong)(uint)symbols[i].Name.GetHashCode() << 32) | (uint)i;
        Array.Sort(keys);
        return keys;
    }

    /// <summary>The index of the first symbol called <paramref name="name"/>: among equal hashes the indices ascend.</summary>
    private bool TryFirstIndex(string name, out int index)
    {
        var keys = byName.Value;
        ulong h = (ulong)(uint)name.GetHashCode() << 32;
        int lo = 0, hi = keys.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (keys[mid] < h)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (int k = lo; k < keys.Length && (keys[k] & 0xffff_ffff_0000_0000UL) == h; k++)
        {
            int i = (int)(uint)keys[k];
            if (string.Equals(bySortedAddress[i].Name, name, StringComparison.Ordinal))
            {
                index = i;
                return true;
            }
        }
        index = -1;
        return false;
    }

    /// <summary>The address of the first symbol called <paramref name="name"/>.</summary>
    /// <exception cref="KernelSymbolNotFoundException">No symbol has that name.</exception>
    public ulong AddressOf(string name) =>
        TryGetAddress(name, out ulong a) ? a : throw new KernelSymbolNotFoundException(name, $"{Origin}: no symbol {name}");

    /// <summary>Every symbol called <paramref name="name"/> (static functions of different files share names), by address.</summary>
    public IReadOnlyList<KernelSymbol> Named(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (!TryFirstIndex(name, out int first))
            return [];
        var list = new List<KernelSymbol>();
        for (int i = first; i < bySortedAddress.Length; i++)
        {
            if (string.Equals(bySortedAddress[i].Name, name, StringComparison.Ordinal))
                list.Add(bySortedAddress[i]);
        }
        return list;
    }

    /// <summary>
    /// The symbol containing <paramref name="address"/>, as the kernel finds it for <c>%pS</c>
    /// (<c>get_symbol_pos()</c>): the last symbol at or below the address (the first of several at one address),
    /// when the address is inside the kernel as kallsyms covers it (see <see cref="CoversData"/>).
    /// </summary>
    /// <param name="address">A link-time virtual address.</param>
    /// <param name="symbol">The symbol.</param>
    /// <param name="offset">address − symbol address.</param>
    public bool TryFind(ulong address, out KernelSymbol symbol, out ulong offset) =>
        TryFind(address, out symbol, out offset, out _);

    /// <summary>As <see cref="TryFind(ulong, out KernelSymbol, out ulong)"/>, with the symbol's size as the kernel
    /// computes it: up to the next symbol at a higher address, else to the end of the init text, of the kernel
    /// (<c>_end</c>) or of the text.</summary>
    public bool TryFind(ulong address, out KernelSymbol symbol, out ulong offset, out ulong size)
    {
        symbol = default;
        offset = size = 0;
        if (!InKernel(address))
            return false;
        int i = LastAtOrBelow(address);
        if (i < 0)
            return false;
        while (i > 0 && bySortedAddress[i - 1].Address == bySortedAddress[i].Address)
            i--;
        ulong start = bySortedAddress[i].Address;
        ulong end = 0;
        int j = i + 1;
        while (j < bySortedAddress.Length && bySortedAddress[j].Address == start)
            j++;
        if (j < bySortedAddress.Length)
            end = bySortedAddress[j].Address;
        else if (address >= initStart && address < initSectionEnd)
            end = initSectionEnd;
        else
            end = imageEnd;
        symbol = bySortedAddress[i];
        offset = address - start;
        size = end > start ? end - start : 0;
        return true;
    }

    /// <summary>"do_one_initcall+0x1a/0x1f0", as the kernel prints an address with <c>%pS</c>; "0xffffffff81000000"
    /// when no symbol contains it.</summary>
    public string Describe(ulong address) =>
        TryFind(address, out var s, out ulong offset, out ulong size)
            ? $"{s.Name}+0x{offset:x}/0x{size:x}"
            : $"0x{address:x}";

    /// <summary>The index in <see cref="All"/> of the last symbol whose address is at or below <paramref name="address"/>; -1 when none.</summary>
    public int LastAtOrBelow(ulong address)
    {
        int lo = 0, hi = bySortedAddress.Length - 1, found = -1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (bySortedAddress[mid].Address <= address)
            {
                found = mid;
                lo = mid + 1;
            }
            else
                hi = mid - 1;
        }
        return found;
    }

    /// <summary>is_ksym_addr(): whether the kernel would look <paramref name="address"/> up at all.</summary>
    private bool InKernel(ulong address)
    {
        foreach (var (start, end) in textRanges)
        {
            if (address >= start && address < end)
                return true;
        }
        return false;
    }

    /// <summary>The ranges <c>is_ksym_addr()</c> accepts, from the symbols that bound them; the init text; and the end used
    /// for the last symbol. Without the bounding symbols, from the first to the last symbol that is not absolute.</summary>
    private ((ulong, ulong)[] Ranges, ulong InitStart, ulong InitEnd, ulong End) KernelRanges()
    {
        // One pass for the first of each bounding symbol (a switch on the name, not seven scans).
        ulong stext = 0, etext = 0, sinit = 0, einit = 0, end = 0, initBegin = 0, initEnd = 0;
        foreach (var s in bySortedAddress)
        {
            if (s.Name.Length < 4 || s.Name[0] != '_')
                continue;
            switch (s.Name)
            {
                case "_stext": if (stext == 0) stext = s.Address; break;
                case "_etext": if (etext == 0) etext = s.Address; break;
                case "_sinittext": if (sinit == 0) sinit = s.Address; break;
                case "_einittext": if (einit == 0) einit = s.Address; break;
                case "_end": if (end == 0) end = s.Address; break;
                case "__init_begin": if (initBegin == 0) initBegin = s.Address; break;
                case "__init_end": if (initEnd == 0) initEnd = s.Address; break;
            }
        }
        if (stext == 0 || etext <= stext)
        {
            CoversData = true;
            ulong lo = ulong.MaxValue, hi = 0;
            foreach (var s in bySortedAddress)
            {
                if (!s.IsAbsolute)
                {
                    lo = Math.Min(lo, s.Address);
                    hi = Math.Max(hi, s.Address);
                }
            }
            return lo > hi ? ([], 0, 0, 0) : ([(lo, hi + 1)], 0, 0, hi);
        }
        bool InText(ulong a) => (a >= stext && a <= etext) || (einit > sinit && a >= sinit && a <= einit);
        CoversData = bySortedAddress.Any(s => !s.IsAbsolute && !InText(s.Address)
            && !s.Name.StartsWith("__start_", StringComparison.Ordinal) && !s.Name.StartsWith("__stop_", StringComparison.Ordinal));
        var ranges = new List<(ulong, ulong)>();
        if (CoversData && end > stext)
        {
            ranges.Add((stext, end));
            if (initEnd > initBegin)
                ranges.Add((initBegin, initEnd));
        }
        else
        {
            ranges.Add((stext, etext));
            if (einit > sinit)
                ranges.Add((sinit, einit));
        }
        return ([.. ranges], sinit, einit, CoversData && end > stext ? end : etext);
    }
}

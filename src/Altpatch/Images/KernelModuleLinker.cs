using System.Buffers.Binary;
using System.Collections.Immutable;

namespace Altpatch.Images;

/// <summary>A module cannot be loaded as asked: another build's <c>vermagic</c>, a section the loader placed but the
/// sections file does not name, a symbol nothing resolves, a relocation of an unknown type or one that overflows. The
/// message is one line naming the module and the section, symbol or relocation.</summary>
public sealed class KernelModuleException : AltpatchException
{
    /// <summary>Creates the exception with a one-line message.</summary>
    public KernelModuleException(string message) : base(message) { }
}

/// <summary>A module linked where the loader put it: its ELF file with every allocated section at its load address
/// (<c>sh_addr</c>) and the relocations applied to its bytes, and the values of its symbols.</summary>
public sealed class KernelModuleLink
{
    internal KernelModuleLink(KernelModule module, ElfFile linked, ulong? perCpuBase, ImmutableArray<ulong> symbolValues,
        ImmutableDictionary<string, ulong> exports, ImmutableDictionary<string, int> relocationsByType, ImmutableDictionary<string, string> resolvedFrom)
    {
        Module = module;
        Elf = linked;
        PerCpuBase = perCpuBase;
        SymbolValues = symbolValues;
        Exports = exports;
        RelocationsByType = relocationsByType;
        ResolvedFrom = resolvedFrom;
    }

    /// <summary>The module.</summary>
    public KernelModule Module { get; }

    /// <summary>The linked ELF file: a copy of the module's bytes, relocated, with load addresses in its section headers.</summary>
    public ElfFile Elf { get; }

    /// <summary>The module's per-CPU base (<c>mod-&gt;percpu</c>), when the sections gave one.</summary>
    public ulong? PerCpuBase { get; }

    /// <summary>The value of each symbol of the module's symbol table (index = symbol index), as <c>simplify_symbols()</c>
    /// leaves it.</summary>
    public ImmutableArray<ulong> SymbolValues { get; }

    /// <summary>The module's defined global symbols at their load addresses: what another module may link against.</summary>
    public ImmutableDictionary<string, ulong> Exports { get; }

    /// <summary>How many relocations of each type were applied (<c>R_X86_64_PC32</c> → 44,295, …).</summary>
    public ImmutableDictionary<string, int> RelocationsByType { get; }

    /// <summary>Where each undefined symbol was found: "kernel" or a module's name.</summary>
    public ImmutableDictionary<string, string> ResolvedFrom { get; }

    /// <summary>The allocated sections with their load addresses.</summary>
    public IEnumerable<ElfSection> LoadedSections => Elf.Sections.Where(s => s.IsAllocated && s.Size > 0 && s.Address != 0);
}

/// <summary>
/// What the kernel's module loader does before <c>module_finalize()</c>, for x86-64 (6.1.176
/// <c>kernel/module/main.c</c> and <c>arch/x86/kernel/module.c</c>): every allocated section at its load address,
/// <c>simplify_symbols()</c> (a defined symbol: its section's address plus its value; an undefined one: the kernel's or
/// another module's symbol; weak and unresolved: 0) and <c>apply_relocate_add()</c> for each <c>SHT_RELA</c> section
/// whose target is allocated. Writes only into a copy of the module's bytes.
/// </summary>
public static class KernelModuleLinker
{
    /// <summary>The per-CPU section: the loader allocates it from the per-CPU area, not with the module.</summary>
    public const string PerCpuSection = ".data..percpu";

    /// <summary>Allocated sections the loader tracks but does not keep (<c>rewrite_section_headers()</c> clears their
    /// SHF_ALLOC): <c>__versions</c> and <c>.modinfo</c>.</summary>
    private static readonly HashSet<string> NotPlaced = new(StringComparer.Ordinal) { "__versions", KernelModule.ModinfoSection };

    private const uint ShtRela = 4, ShtRel = 9;
    private const ushort ShnUndef = 0, ShnAbs = 0xfff1, ShnCommon = 0xfff2, ShnLoReserve = 0xff00;

    /// <summary>The x86-64 relocation types <c>apply_relocate_add()</c> knows.</summary>
    public static IReadOnlyDictionary<uint, string> KnownTypes { get; } = new Dictionary<uint, string>
    {
        [0] = "R_X86_64_NONE", [1] = "R_X86_64_64", [2] = "R_X86_64_PC32", [4] = "R_X86_64_PLT32",
        [10] = "R_X86_64_32", [11] = "R_X86_64_32S", [24] = "R_X86_64_PC64",
    };

    private static readonly Dictionary<uint, string> OtherTypes = new()
    {
        [3] = "R_X86_64_GOT32", [5] = "R_X86_64_COPY", [6] = "R_X86_64_GLOB_DAT", [7] = "R_X86_64_JUMP_SLOT",
        [8] = "R_X86_64_RELATIVE", [9] = "R_X86_64_GOTPCREL", [12] = "R_X86_64_16", [13] = "R_X86_64_PC16",
        [14] = "R_X86_64_8", [15] = "R_X86_64_PC8", [16] = "R_X86_64_DTPMOD64", [17] = "R_X86_64_DTPOFF64",
        [18] = "R_X86_64_TPOFF64", [19] = "R_X86_64_TLSGD", [20] = "R_X86_64_TLSLD", [21] = "R_X86_64_DTPOFF32",
        [22] = "R_X86_64_GOTTPOFF", [23] = "R_X86_64_TPOFF32", [25] = "R_X86_64_GOTOFF64", [26] = "R_X86_64_GOTPC32",
        [41] = "R_X86_64_GOTPCRELX", [42] = "R_X86_64_REX_GOTPCRELX",
    };

    /// <summary>The name of a relocation type ("R_X86_64_PC32"), or "type N".</summary>
    public static string TypeName(uint type) =>
        KnownTypes.TryGetValue(type, out var n) || OtherTypes.TryGetValue(type, out n) ? n : $"type {type}";

    /// <summary>Links a module where <paramref name="sections"/> says the loader put it.</summary>
    /// <param name="module">The module.</param>
    /// <param name="sections">Each allocated section's load address (and <c>.data..percpu</c>'s per-CPU base when the module
    /// has per-CPU data that relocations use).</param>
    /// <param name="resolve">Resolves an undefined symbol: its address and where it was found ("kernel", a module's name),
    /// or null.</param>
    /// <returns>The linked module.</returns>
    /// <exception cref="ImageFormatException">A malformed symbol or relocation table (an index or offset out of range).</exception>
    /// <exception cref="KernelModuleException">A section without an address, an unresolved symbol, a relocation of an
    /// unknown type, one whose field is not zero, or one that overflows.</exception>
    public static KernelModuleLink Link(KernelModule module, KernelModuleSections sections, Func<string, (ulong Address, string From)?> resolve)
    {
        ArgumentNullException.ThrowIfNull(module);
        ArgumentNullException.ThrowIfNull(sections);
        ArgumentNullException.ThrowIfNull(resolve);
        var src = module.Elf;
        string name = module.FileName;

        // 1. Every allocated section at its load address (the loader's layout; the per-CPU section is not one of them).
        var copy = src.Bytes.ToArray();
        int shoff = (int)BinaryPrimitives.ReadUInt64LittleEndian(copy.AsSpan(40));
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(copy.AsSpan(58));
        var missing = new List<string>();
        int perCpuIndex = -1;
        foreach (var s in src.Sections)
        {
            if (s.Name == PerCpuSection)
            {
                perCpuIndex = s.Index;
                continue;
            }
            if (!s.IsAllocated || s.Size == 0 || NotPlaced.Contains(s.Name))
                continue;
            if (sections[s.Name] is not { } addr)
            {
                missing.Add(s.Name);
                continue;
            }
            BinaryPrimitives.WriteUInt64LittleEndian(copy.AsSpan(shoff + s.Index * shentsize + 16), addr);
        }
        // An empty allocated section is placed too (sysfs does not list it, sect_empty()): at the layout's offset when
        // its turn comes, the end of the section placed before it in its class (layout_sections()).
        foreach (var s in src.Sections)
        {
            if (!s.IsAllocated || s.Size != 0 || s.Name == PerCpuSection || NotPlaced.Contains(s.Name) || sections[s.Name] is not null)
                continue;
            var before = src.Sections.Where(p => p.Index < s.Index && p.IsAllocated && p.Size > 0 && LayoutClass(p) == LayoutClass(s) && sections[p.Name] is not null)
                .Select(p => (ElfSection?)p).LastOrDefault();
            if (before is { } b)
            {
                ulong end = sections[b.Name]!.Value + b.Size, align = Math.Max(1, s.Alignment);
                BinaryPrimitives.WriteUInt64LittleEndian(copy.AsSpan(shoff + s.Index * shentsize + 16), (end + align - 1) / align * align);
            }
        }
        if (missing.Count > 0)
            throw new KernelModuleException($"{name}: {sections.Origin} gives no address for {missing.Count} section(s) the loader places: {string.Join(", ", missing.Take(8))}{(missing.Count > 8 ? ", …" : "")}");
        ulong? perCpu = sections[PerCpuSection];
        var linked = ElfFile.Parse(copy, name);

        // 2. simplify_symbols()
        var symtab = linked.Sections.FirstOrDefault(s => s.Type == ElfSection.TypeSymTab);
        if (symtab.Type != ElfSection.TypeSymTab)
            throw new ImageFormatException($"{name}: no symbol table (a module always has one; stripped with --strip-all?)");
        var syms = linked.Symbols;
        var values = new ulong[syms.Count];
        var unresolved = new List<string>();
        var from = new Dictionary<string, string>(StringComparer.Ordinal);
        var exports = new Dictionary<string, ulong>(StringComparer.Ordinal);
        for (int i = 1; i < syms.Count; i++)
        {
            var sym = syms[i];
            switch (sym.SectionIndex)
            {
                case ShnUndef:
                    if (sym.Name.Length == 0)
                        break;
                    if (resolve(sym.Name) is { } r)
                    {
                        values[i] = r.Address;
                        from[sym.Name] = r.From;
                    }
                    else if (sym.Binding != 2)                 // STB_WEAK: "Ok if weak", stays 0
                        unresolved.Add(sym.Name);
                    break;
                case ShnAbs:
                    values[i] = sym.Value;
                    break;
                case ShnCommon:
                    throw new KernelModuleException($"{name}: symbol {sym.Name} is common (SHN_COMMON): the kernel refuses it (\"please compile with -fno-common\")");
                default:
                    if (sym.SectionIndex >= ShnLoReserve)
                    {
                        values[i] = sym.Value;                 // SHN_LIVEPATCH and other reserved indexes: left alone
                        break;
                    }
                    if (sym.SectionIndex >= linked.Sections.Count)
                        throw new ImageFormatException($"{name}: symbol #{i} {sym.Name}: section index {sym.SectionIndex} is out of range ({linked.Sections.Count} sections)");
                    if (sym.SectionIndex == perCpuIndex)
                    {
                        if (perCpu is not { } pb)
                            throw new KernelModuleException($"{name}: symbol {sym.Name} is in the module's per-CPU data ({PerCpuSection}), whose address sysfs does not show: give it as a line '{PerCpuSection} ADDRESS' (the module's per-CPU base)");
                        values[i] = pb + sym.Value;
                    }
                    else
                        values[i] = linked.Sections[sym.SectionIndex].Address + sym.Value;
                    if (sym.Binding is 1 or 2 && sym.Name.Length > 0 && sym.Type is not (3 or 4))
                        exports.TryAdd(sym.Name, values[i]);
                    break;
            }
        }
        if (unresolved.Count > 0)
            throw new KernelModuleException($"{name}: {unresolved.Count} unresolved symbol(s): {string.Join(", ", unresolved.Take(8))}{(unresolved.Count > 8 ? ", …" : "")} (neither the kernel's kallsyms nor the modules given with --dep define them)");

        // 3. apply_relocate_add() for each SHT_RELA section whose target is allocated
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        var bytes = linked.Bytes.Span;
        foreach (var rs in linked.Sections)
        {
            if (rs.Type == ShtRel)
                throw new ImageFormatException($"{name}: section {rs.Name} holds SHT_REL relocations (i386): Altpatch links x86-64 modules only");
            if (rs.Type != ShtRela)
                continue;
            if (rs.Info >= linked.Sections.Count || rs.Link != symtab.Index)
                throw new ImageFormatException($"{name}: relocation section [{rs.Index}] {rs.Name}: sh_info {rs.Info} / sh_link {rs.Link} do not name a section and the symbol table");
            var target = linked.Sections[(int)rs.Info];
            if (!target.IsAllocated || target.Index == perCpuIndex || NotPlaced.Contains(target.Name))
                continue;                                      // "Don't bother with non-allocated sections"
            if (!target.HasFileBytes)
                throw new ImageFormatException($"{name}: {rs.Name} relocates {target.Name}, which has no bytes in the file");
            var table = linked.SectionBytes(rs).Span;
            if (table.Length % 24 != 0)
                throw new ImageFormatException($"{name}: {rs.Name}: size {table.Length} is not a multiple of the 24-byte Elf64_Rela");
            int n = table.Length / 24;
            for (int k = 0; k < n; k++)
            {
                var e = table.Slice(k * 24, 24);
                ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(e);
                ulong info = BinaryPrimitives.ReadUInt64LittleEndian(e[8..]);
                long addend = BinaryPrimitives.ReadInt64LittleEndian(e[16..]);
                uint type = (uint)info;
                ulong symIndex = info >> 32;
                string Site() => $"{name}: {rs.Name}[{k}] ({TypeName(type)} at {target.Name}+0x{offset:x})";
                if (symIndex >= (ulong)values.Length)
                    throw new ImageFormatException($"{Site()}: symbol index {symIndex} is out of range ({values.Length} symbols)");
                if (!KnownTypes.ContainsKey(type))
                    throw new KernelModuleException($"{Site()}: unknown relocation type {type} ({TypeName(type)}): apply_relocate_add() refuses it (\"Unknown rela relocation\")");
                int size = type switch { 0 => 0, 1 or 24 => 8, _ => 4 };
                if (size == 0)
                    continue;
                if (offset > target.Size || (ulong)size > target.Size - offset)
                    throw new ImageFormatException($"{Site()}: the {size}-byte field runs past the end of {target.Name} (0x{target.Size:x} bytes)");
                ulong loc = target.Address + offset;
                var field = bytes.Slice((int)(target.FileOffset + offset), size);
                if (field.ContainsAnyExcept((byte)0))
                    throw new KernelModuleException($"{Site()}: the field already holds {Convert.ToHexStringLower(field)} (the kernel: \"Skipping invalid relocation target, existing value is nonzero\")");
                ulong val = unchecked(values[symIndex] + (ulong)addend);
                string symName = symIndex < (ulong)syms.Count ? syms[(int)symIndex].Name : "";
                switch (type)
                {
                    case 1:                                   // R_X86_64_64
                        BinaryPrimitives.WriteUInt64LittleEndian(field, val);
                        break;
                    case 10:                                  // R_X86_64_32
                        if (val > uint.MaxValue)
                            throw Overflow(Site(), symName, val, "an unsigned 32-bit field");
                        BinaryPrimitives.WriteUInt32LittleEndian(field, (uint)val);
                        break;
                    case 11:                                  // R_X86_64_32S
                        if ((long)val is < int.MinValue or > int.MaxValue)
                            throw Overflow(Site(), symName, val, "a signed 32-bit field");
                        BinaryPrimitives.WriteInt32LittleEndian(field, (int)(long)val);
                        break;
                    case 2:                                   // R_X86_64_PC32
                    case 4:                                   // R_X86_64_PLT32
                    {
                        long rel = unchecked((long)(val - loc));
                        if (rel is < int.MinValue or > int.MaxValue)
                            throw Overflow(Site(), symName, val, $"a 32-bit displacement from 0x{loc:x}");
                        BinaryPrimitives.WriteInt32LittleEndian(field, (int)rel);
                        break;
                    }
                    case 24:                                  // R_X86_64_PC64
                        BinaryPrimitives.WriteUInt64LittleEndian(field, unchecked(val - loc));
                        break;
                }
                string tn = TypeName(type);
                counts[tn] = counts.GetValueOrDefault(tn) + 1;
            }
        }
        return new KernelModuleLink(module, linked, perCpu, [.. values], exports.ToImmutableDictionary(StringComparer.Ordinal),
            counts.ToImmutableDictionary(StringComparer.Ordinal), from.ToImmutableDictionary(StringComparer.Ordinal));
    }

    /// <summary>The loader's layout class of a section (<c>layout_sections()</c>' masks: text, read-only, read-only after
    /// init, writable), and whether it goes to the init layout (a name starting with <c>.init</c>).</summary>
    private static (int Class, bool Init) LayoutClass(ElfSection s) =>
        (s.IsExecutable ? 0 : s.Name is ".data..ro_after_init" or "__jump_table" ? 2 : s.IsWritable ? 3 : 1,
         s.Name.StartsWith(".init", StringComparison.Ordinal));

    private static KernelModuleException Overflow(string site, string symbol, ulong value, string what) =>
        new($"{site}: {(symbol.Length > 0 ? symbol : "the target")} = 0x{value:x} does not fit {what}: the relocation overflows (wrong --sections or --kernel-base?)");
}

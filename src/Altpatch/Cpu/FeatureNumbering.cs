using System.Collections.Frozen;

namespace Altpatch.Cpu;

/// <summary>
/// One kernel version's feature numbering: which number (<c>word*32+bit</c>) each <c>X86_FEATURE_*</c> macro
/// has, and its <c>/proc/cpuinfo</c> name. A kernel image stores these numbers in the <c>cpuid</c> field of its
/// <c>.altinstructions</c> entries, and they changed between versions (2.6.22's i386 word 3 is not x86_64's,
/// nor 6.1's), so reading an old image needs that image's table: a raw number becomes a name with
/// <see cref="NameOf"/>, and a CPU description becomes the image's numbers with <see cref="Has"/>.
/// </summary>
public sealed partial class FeatureNumbering
{
    private readonly Entry[] entries;
    private readonly FrozenDictionary<int, Entry> byNumber;
    private readonly FrozenDictionary<string, int> byCpuInfo;
    private readonly FrozenDictionary<string, int> byMacro;
    private readonly FrozenDictionary<string, int> byStem;

    /// <summary>One macro of a numbering.</summary>
    private readonly record struct Entry(int Number, string Macro, string? CpuInfoName)
    {
        public string Stem => Macro.StartsWith("X86_BUG_", StringComparison.Ordinal) ? Macro[8..] : Macro[12..];
    }

    private FeatureNumbering(string name, int capabilityWords, int bugWords, Entry[] entries)
    {
        Name = name;
        CapabilityWords = capabilityWords;
        BugWords = bugWords;
        this.entries = entries;
        byNumber = entries.GroupBy(e => e.Number).ToFrozenDictionary(g => g.Key, g => g.First());
        var cpuInfo = new Dictionary<string, int>(StringComparer.OrdinalIgnoreCase);
        var macro = new Dictionary<string, int>(StringComparer.OrdinalIgnoreCase);
        var stem = new Dictionary<string, int>(StringComparer.OrdinalIgnoreCase);
        int bugStart = capabilityWords * 32;
        foreach (var e in entries.OrderBy(e => e.Number >= bugStart))
        {
            if (e.CpuInfoName is { } n)
                cpuInfo.TryAdd(n, e.Number);
            macro.TryAdd(e.Macro, e.Number);
            stem.TryAdd(e.Stem, e.Number);
        }
        byCpuInfo = cpuInfo.ToFrozenDictionary(StringComparer.OrdinalIgnoreCase);
        byMacro = macro.ToFrozenDictionary(StringComparer.OrdinalIgnoreCase);
        byStem = stem.ToFrozenDictionary(StringComparer.OrdinalIgnoreCase);
    }

    /// <summary>A numbering from (number, macro, cpuinfo name or null) triples; for generated tables and tests.</summary>
    internal static FeatureNumbering Create(string name, int capabilityWords, int bugWords, IEnumerable<(int Number, string Macro, string? CpuInfoName)> entries) =>
        new(name, capabilityWords, bugWords, [.. entries.Select(e => new Entry(e.Number, e.Macro, e.CpuInfoName))]);

    /// <summary>Linux 6.1 (the <see cref="CpuFeature"/> numbering), NCAPINTS 22, NBUGINTS 2.</summary>
    public static FeatureNumbering Linux61 { get; } = new(
        $"Linux {CpuFeatureTable.LinuxVersion}", CpuFeatureTable.CapabilityWords, CpuFeatureTable.BugWords,
        [.. CpuFeatureTable.Entries.Select(e => new Entry(e.Number, e.Macro, e.CpuInfoName))]);

    /// <summary>Linux 6.12 (6.12.118), NCAPINTS 22, NBUGINTS 2, generated from its <c>cpufeatures.h</c>.</summary>
    public static FeatureNumbering Linux612 { get; } = Create612();

    /// <summary>What this numbering is, e.g. <c>Linux 6.1.176</c> or <c>Linux 2.6.22 (i386)</c>.</summary>
    public string Name { get; }

    /// <summary>NCAPINTS: 32-bit capability words.</summary>
    public int CapabilityWords { get; }

    /// <summary>NBUGINTS: 32-bit bug words after the capability words (0 before they existed).</summary>
    public int BugWords { get; }

    /// <summary>Every defined number, ascending.</summary>
    public IReadOnlyList<int> Numbers => [.. entries.Select(e => e.Number).Distinct().Order()];

    /// <summary>
    /// The number of a feature given by cpuinfo name (<c>sse2</c>), macro name (<c>X86_FEATURE_XMM2</c>),
    /// macro without prefix (<c>xmm2</c>) or <c>word*32+bit</c>, case-insensitively, in that order.
    /// </summary>
    /// <param name="cpuInfoOrMacroName">The name.</param>
    /// <param name="number">The number, or -1.</param>
    /// <returns>True when this numbering defines it.</returns>
    public bool TryGetNumber(string cpuInfoOrMacroName, out int number)
    {
        number = -1;
        if (string.IsNullOrWhiteSpace(cpuInfoOrMacroName))
            return false;
        var s = cpuInfoOrMacroName.Trim();
        if (CpuFeatureInfo.TryParseNumber(s, out int n))
        {
            if (!byNumber.ContainsKey(n))
                return false;
            number = n;
            return true;
        }
        if (byCpuInfo.TryGetValue(s, out n) || byMacro.TryGetValue(s, out n) || byStem.TryGetValue(s, out n))
        {
            number = n;
            return true;
        }
        return false;
    }

    /// <summary>Like <see cref="TryGetNumber"/>, but an unknown name is an error.</summary>
    /// <param name="cpuInfoOrMacroName">The name.</param>
    /// <exception cref="CpuFeatureException">This numbering has no such feature; the message names it.</exception>
    public int GetNumber(string cpuInfoOrMacroName) =>
        TryGetNumber(cpuInfoOrMacroName, out int n)
            ? n
            : throw new CpuFeatureException($"{Name} has no CPU feature '{cpuInfoOrMacroName}'");

    /// <summary>The macro name of a number (<c>X86_FEATURE_XMM2</c>), or null when undefined.</summary>
    /// <param name="number">word*32+bit, e.g. an alternative entry's raw <c>cpuid</c> field.</param>
    public string? NameOf(int number) => byNumber.TryGetValue(number, out var e) ? e.Macro : null;

    /// <summary>The <c>/proc/cpuinfo</c> name of a number, or null when undefined or not shown.</summary>
    /// <param name="number">word*32+bit.</param>
    public string? CpuInfoNameOf(int number) => byNumber.TryGetValue(number, out var e) ? e.CpuInfoName : null;

    /// <summary>
    /// The same feature in another numbering: matched by cpuinfo name when both have one, else by macro name
    /// (e.g. 2.6.22 i386's <c>X86_FEATURE_REP_GOOD</c> 3*32+16 is 6.1's 3*32+16 and x86_64 2.6.22's 3*32+4).
    /// </summary>
    /// <param name="number">A number of this numbering.</param>
    /// <param name="other">The numbering to map into.</param>
    /// <param name="otherNumber">The number there, or -1.</param>
    /// <returns>True when the other numbering has the feature.</returns>
    public bool TryMapTo(FeatureNumbering other, int number, out int otherNumber)
    {
        ArgumentNullException.ThrowIfNull(other);
        otherNumber = -1;
        if (!byNumber.TryGetValue(number, out var e))
            return false;
        if (ReferenceEquals(other, this))
        {
            otherNumber = number;
            return true;
        }
        if (e.CpuInfoName is { } n && other.byCpuInfo.TryGetValue(n, out otherNumber))
            return true;
        if (other.byMacro.TryGetValue(e.Macro, out otherNumber))
            return true;
        if (other.byCpuInfo.TryGetValue(e.Stem, out otherNumber))
            return true;
        otherNumber = -1;
        return false;
    }

    /// <summary>
    /// Whether <paramref name="cpu"/> has the feature this numbering calls <paramref name="number"/>, by mapping
    /// it to Linux 6.1's numbering (<see cref="TryMapTo"/>). False when the number is undefined here or has no
    /// 6.1 counterpart.
    /// </summary>
    /// <param name="cpu">The CPU description (6.1 numbering).</param>
    /// <param name="number">A number of this numbering.</param>
    public bool Has(CpuFeatures cpu, int number)
    {
        ArgumentNullException.ThrowIfNull(cpu);
        return TryMapTo(Linux61, number, out int n61) && cpu.Has((CpuFeature)n61);
    }

    /// <inheritdoc/>
    public override string ToString() => Name;
}

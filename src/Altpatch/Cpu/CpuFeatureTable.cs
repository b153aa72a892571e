using System.Collections.Frozen;

namespace Altpatch.Cpu;

/// <summary>One <c>X86_FEATURE_*</c> / <c>X86_BUG_*</c> macro of the generated table.</summary>
/// <param name="Number">word*32 + bit.</param>
/// <param name="Macro">The macro name, e.g. <c>X86_FEATURE_POPCNT</c>.</param>
/// <param name="CpuInfoName">The <c>/proc/cpuinfo</c> name, null when hidden.</param>
/// <param name="Description">The header comment without its quoted name.</param>
/// <param name="Sources">The CPUID bits Linux reads it from (two for MBA: Intel and AMD), empty for Linux-defined bits.</param>
internal sealed record FeatureEntry(int Number, string Macro, string? CpuInfoName, string Description, CpuidBit[] Sources)
{
    /// <summary>The macro without <c>X86_FEATURE_</c> / <c>X86_BUG_</c>, e.g. <c>POPCNT</c>.</summary>
    public string Stem { get; } = Macro.StartsWith("X86_BUG_", StringComparison.Ordinal) ? Macro[8..] : Macro[12..];

    /// <summary>True for <c>X86_BUG_*</c>.</summary>
    public bool IsBug => Number >= CpuFeatureTable.CapabilityWords * 32;
}

/// <summary>What fills one capability word in Linux 6.1 (<c>enum cpuid_leafs</c>).</summary>
/// <param name="Word">The word index.</param>
/// <param name="Name">The enum name, e.g. <c>CPUID_7_0_EBX</c> or <c>CPUID_LNX_1</c>.</param>
/// <param name="Cpuid">The register copied whole into the word, null for a Linux-defined word.</param>
internal readonly record struct WordSource(int Word, string Name, CpuidWord? Cpuid);

/// <summary>Sizes derived from the generated table.</summary>
internal static partial class CpuFeatureTable
{
    /// <summary>Bits in a feature bitmap: (NCAPINTS + NBUGINTS) * 32.</summary>
    internal const int TotalBits = (CapabilityWords + BugWords) * 32;

    /// <summary>ulongs in a feature bitmap.</summary>
    internal const int BitmapLongs = (TotalBits + 63) / 64;

    /// <summary>The entry for a number, or null when no macro has it.</summary>
    internal static FeatureEntry? Find(int number) => CpuFeatureIndex.Find(number);

    /// <summary>Whether bit <paramref name="n"/> (word*32 + bit) of a feature bitmap of <see cref="BitmapLongs"/> ulongs is set.</summary>
    internal static bool HasBit(ulong[] bits, int n) => (bits[n >> 6] & (1UL << (n & 63))) != 0;

    /// <summary>Sets bit <paramref name="n"/> of a feature bitmap.</summary>
    internal static void SetBit(ulong[] bits, int n) => bits[n >> 6] |= 1UL << (n & 63);

    /// <summary>Clears bit <paramref name="n"/> of a feature bitmap.</summary>
    internal static void ClearBit(ulong[] bits, int n) => bits[n >> 6] &= ~(1UL << (n & 63));
}

/// <summary>
/// Lookups over the generated table, built once on first use. A separate class so that its initialisers run
/// after <see cref="CpuFeatureTable"/>'s (field initialisers of one class spread over partial files run in no
/// defined order).
/// </summary>
internal static class CpuFeatureIndex
{
    private const int TotalBits = CpuFeatureTable.TotalBits;
    private const int BitmapLongs = CpuFeatureTable.BitmapLongs;
    private static readonly FeatureEntry[] Entries = CpuFeatureTable.Entries;
    private static readonly (string Macro, int Number)[] Aliases = CpuFeatureTable.Aliases;

    private static readonly FeatureEntry?[] ByNumberTable = BuildByNumber();

    /// <summary>A bitmap with the bit of every defined macro set.</summary>
    internal static readonly ulong[] DefinedMask = BuildDefinedMask();

    /// <summary>cpuinfo names of features (not bugs), case-insensitive.</summary>
    internal static readonly FrozenDictionary<string, int> FeatureByCpuInfo = BuildCpuInfo(bugs: false);

    /// <summary>cpuinfo names of bugs, case-insensitive.</summary>
    internal static readonly FrozenDictionary<string, int> BugByCpuInfo = BuildCpuInfo(bugs: true);

    /// <summary>Full macro names and aliases, case-insensitive.</summary>
    internal static readonly FrozenDictionary<string, int> ByMacro = BuildMacro();

    /// <summary>Macro stems, features before bugs, case-insensitive.</summary>
    internal static readonly FrozenDictionary<string, int> ByStem = BuildStem();

    /// <summary>.NET enum names, exact case.</summary>
    internal static readonly FrozenDictionary<string, int> ByEnumName = BuildEnumNames(StringComparer.Ordinal);

    /// <summary>.NET enum names, case-insensitive.</summary>
    internal static readonly FrozenDictionary<string, int> ByEnumNameIgnoreCase = BuildEnumNames(StringComparer.OrdinalIgnoreCase);

    /// <summary>The entry for a number, or null when no macro has it.</summary>
    internal static FeatureEntry? Find(int number) =>
        (uint)number < (uint)ByNumberTable.Length ? ByNumberTable[number] : null;

    private static FeatureEntry?[] BuildByNumber()
    {
        var table = new FeatureEntry?[TotalBits];
        foreach (var e in Entries)
            table[e.Number] = e;
        return table;
    }

    private static ulong[] BuildDefinedMask()
    {
        var mask = new ulong[BitmapLongs];
        foreach (var e in Entries)
            CpuFeatureTable.SetBit(mask, e.Number);
        return mask;
    }

    private static FrozenDictionary<string, int> BuildCpuInfo(bool bugs)
    {
        var d = new Dictionary<string, int>(StringComparer.OrdinalIgnoreCase);
        foreach (var e in Entries)
        {
            if (e.IsBug == bugs && e.CpuInfoName is { } name)
                d.TryAdd(name, e.Number);
        }
        return d.ToFrozenDictionary(StringComparer.OrdinalIgnoreCase);
    }

    private static FrozenDictionary<string, int> BuildMacro()
    {
        var d = new Dictionary<string, int>(StringComparer.OrdinalIgnoreCase);
        foreach (var e in Entries)
            d.TryAdd(e.Macro, e.Number);
        foreach (var (macro, number) in Aliases)
            d.TryAdd(macro, number);
        return d.ToFrozenDictionary(StringComparer.OrdinalIgnoreCase);
    }

    private static FrozenDictionary<string, int> BuildStem()
    {
        var d = new Dictionary<string, int>(StringComparer.OrdinalIgnoreCase);
        foreach (var e in Entries.Where(e => !e.IsBug).Concat(Entries.Where(e => e.IsBug)))
            d.TryAdd(e.Stem, e.Number);
        foreach (var (macro, number) in Aliases)
            d.TryAdd(macro.StartsWith("X86_BUG_", StringComparison.Ordinal) ? macro[8..] : macro[12..], number);
        return d.ToFrozenDictionary(StringComparer.OrdinalIgnoreCase);
    }

    private static FrozenDictionary<string, int> BuildEnumNames(StringComparer comparer)
    {
        var d = new Dictionary<string, int>(comparer);
        foreach (var name in Enum.GetNames<CpuFeature>())
            d.TryAdd(name, (int)Enum.Parse<CpuFeature>(name));
        return d.ToFrozenDictionary(comparer);
    }
}

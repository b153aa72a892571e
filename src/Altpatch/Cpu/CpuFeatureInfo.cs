using System.Globalization;

namespace Altpatch.Cpu;

/// <summary>
/// Names, numbers and CPUID sources of <see cref="CpuFeature"/> values, from the table generated out of
/// Linux 6.1's <c>cpufeatures.h</c> (see <c>docs/cpu.md</c>).
/// </summary>
public static class CpuFeatureInfo
{
    /// <summary>NCAPINTS of Linux 6.1: the number of 32-bit capability words.</summary>
    public const int CapabilityWords = CpuFeatureTable.CapabilityWords;

    /// <summary>NBUGINTS of Linux 6.1: the number of 32-bit bug words, numbered after the capability words.</summary>
    public const int BugWords = CpuFeatureTable.BugWords;

    /// <summary>The exact kernel version the table was generated from, e.g. <c>6.1.176</c>.</summary>
    public static string LinuxVersion => CpuFeatureTable.LinuxVersion;

    /// <summary>Every defined feature and bug, ascending by number.</summary>
    public static IReadOnlyList<CpuFeature> All { get; } =
        Array.AsReadOnly(CpuFeatureTable.Entries.Select(e => (CpuFeature)e.Number).ToArray());

    /// <summary>True when a <c>X86_FEATURE_*</c> or <c>X86_BUG_*</c> macro has this number.</summary>
    /// <param name="f">The value, possibly cast from a raw number.</param>
    public static bool IsDefined(CpuFeature f) => CpuFeatureTable.Find((int)f) is not null;

    /// <summary>The macro name: <c>X86_FEATURE_POPCNT</c>, <c>X86_BUG_SPECTRE_V2</c>.</summary>
    /// <param name="f">A defined feature.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="f"/> is not a defined number.</exception>
    public static string MacroName(CpuFeature f) => Entry(f).Macro;

    /// <summary>
    /// The name <c>/proc/cpuinfo</c> shows (<c>popcnt</c>, <c>sse4_2</c>, <c>spectre_v2</c>), or null when the
    /// header marks the bit hidden with <c>""</c>. Derived exactly as <c>mkcapflags.sh</c> does.
    /// </summary>
    /// <param name="f">A defined feature.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="f"/> is not a defined number.</exception>
    public static string? CpuInfoName(CpuFeature f) => Entry(f).CpuInfoName;

    /// <summary>The header's comment for the bit, without its quoted cpuinfo name (may be empty).</summary>
    /// <param name="f">A defined feature.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="f"/> is not a defined number.</exception>
    public static string Description(CpuFeature f) => Entry(f).Description;

    /// <summary>
    /// A name that is never null: the cpuinfo name when there is one, otherwise the macro name
    /// (e.g. <c>X86_FEATURE_ALWAYS</c>). Round-trips through <see cref="Parse"/>.
    /// </summary>
    /// <param name="f">A defined feature.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="f"/> is not a defined number.</exception>
    public static string DisplayName(CpuFeature f)
    {
        var e = Entry(f);
        // "monitor" names both X86_FEATURE_MWAIT and X86_BUG_MONITOR; the bug is shown by macro name.
        if (e.CpuInfoName is { } n && TryParse(n, out var back) && back == f)
            return n;
        return e.Macro;
    }

    /// <summary>True for <c>X86_BUG_*</c> values (numbers from NCAPINTS*32 on).</summary>
    /// <param name="f">The value.</param>
    public static bool IsBug(CpuFeature f) => (int)f >= CapabilityWords * 32;

    /// <summary>The word (<c>f / 32</c>); bug words follow the capability words.</summary>
    /// <param name="f">The value.</param>
    public static int Word(CpuFeature f) => (int)f >> 5;

    /// <summary>The bit within the word (<c>f % 32</c>).</summary>
    /// <param name="f">The value.</param>
    public static int Bit(CpuFeature f) => (int)f & 31;

    /// <summary>The number as the header writes it: <c>4*32+23</c>.</summary>
    /// <param name="f">The value.</param>
    public static string FormatNumber(CpuFeature f) =>
        string.Create(CultureInfo.InvariantCulture, $"{Word(f)}*32+{Bit(f)}");

    /// <summary>
    /// The CPUID bit that defines the feature: the word's leaf and register for words Linux copies from
    /// CPUID, or the <c>scattered.c</c> entry for scattered bits; null for Linux-synthetic bits and bugs.
    /// When Linux knows two sources (<c>X86_FEATURE_MBA</c>: Intel and AMD) this is the first; see <see cref="Sources"/>.
    /// </summary>
    /// <param name="f">A defined feature.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="f"/> is not a defined number.</exception>
    public static CpuidBit? Source(CpuFeature f)
    {
        var s = Entry(f).Sources;
        return s.Length == 0 ? null : s[0];
    }

    /// <summary>Every CPUID bit Linux sets the feature from (usually one; none for synthetic bits).</summary>
    /// <param name="f">A defined feature.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="f"/> is not a defined number.</exception>
    public static IReadOnlyList<CpuidBit> Sources(CpuFeature f) => Array.AsReadOnly(Entry(f).Sources);

    /// <summary>
    /// The CPUID register Linux 6.1 copies whole into a capability word (<c>enum cpuid_leafs</c>), or null for
    /// the Linux-defined words 3, 7, 8, 11 and 21 (and for bug words).
    /// </summary>
    /// <param name="word">The word index, 0 to <see cref="CapabilityWords"/> + <see cref="BugWords"/> - 1.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="word"/> is out of range.</exception>
    public static CpuidWord? WordSource(int word)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(word);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(word, CapabilityWords + BugWords);
        return word < CapabilityWords ? CpuFeatureTable.Words[word].Cpuid : null;
    }

    /// <summary>The kernel's name for a word's source, e.g. <c>CPUID_7_0_EBX</c>, <c>CPUID_LNX_1</c>, <c>BUG_1</c>.</summary>
    /// <param name="word">The word index.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="word"/> is out of range.</exception>
    public static string WordName(int word)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(word);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(word, CapabilityWords + BugWords);
        return word < CapabilityWords
            ? CpuFeatureTable.Words[word].Name
            : string.Create(CultureInfo.InvariantCulture, $"BUG_{word - CapabilityWords}");
    }

    /// <summary>
    /// Looks a feature up by any of its names, case-insensitively. Tried in this order, first match wins:
    /// a number (<c>4*32+23</c>, <c>(4*32+23)</c>, <c>151</c>, <c>0x97</c>); the exact .NET enum name
    /// (<c>Xmm4_2</c>, <c>BugSpectreV2</c>); a <c>/proc/cpuinfo</c> name (<c>sse4_2</c>; features before bugs,
    /// so <c>monitor</c> is <c>X86_FEATURE_MWAIT</c>); a full macro name (<c>X86_FEATURE_XMM4_2</c>,
    /// <c>X86_BUG_SPECTRE_V2</c>) or alias; the macro without its prefix (<c>xmm4_2</c>, <c>k8</c>); the .NET
    /// name in any case. Only Linux 6.1's defined numbers parse.
    /// </summary>
    /// <param name="name">The name; surrounding whitespace is ignored.</param>
    /// <param name="f">The feature found, or default.</param>
    /// <returns>True when found.</returns>
    public static bool TryParse(string? name, out CpuFeature f)
    {
        f = default;
        if (name is null)
            return false;
        var s = name.Trim();
        if (s.Length == 0)
            return false;
        if (TryParseNumber(s, out int number))
        {
            if (CpuFeatureTable.Find(number) is null)
                return false;
            f = (CpuFeature)number;
            return true;
        }
        if (CpuFeatureIndex.ByEnumName.TryGetValue(s, out number)
            || CpuFeatureIndex.FeatureByCpuInfo.TryGetValue(s, out number)
            || CpuFeatureIndex.BugByCpuInfo.TryGetValue(s, out number)
            || CpuFeatureIndex.ByMacro.TryGetValue(s, out number)
            || CpuFeatureIndex.ByStem.TryGetValue(s, out number)
            || CpuFeatureIndex.ByEnumNameIgnoreCase.TryGetValue(s, out number))
        {
            f = (CpuFeature)number;
            return true;
        }
        return false;
    }

    /// <summary>Like <see cref="TryParse"/>, but an unknown name is an error.</summary>
    /// <param name="name">The name.</param>
    /// <returns>The feature.</returns>
    /// <exception cref="CpuFeatureException">The name is unknown; the message names it.</exception>
    public static CpuFeature Parse(string name)
    {
        if (TryParse(name, out var f))
            return f;
        throw new CpuFeatureException(
            $"unknown CPU feature '{name}': not a /proc/cpuinfo name, X86_FEATURE_/X86_BUG_ macro or word*32+bit number of Linux {LinuxVersion}");
    }

    /// <summary>Parses <c>w*32+b</c> (optionally in parentheses), decimal or 0x-hex numbers.</summary>
    internal static bool TryParseNumber(ReadOnlySpan<char> s, out int number)
    {
        number = 0;
        s = s.Trim();
        if (s.Length >= 2 && s[0] == '(' && s[^1] == ')')
            s = s[1..^1].Trim();
        int star = s.IndexOf('*');
        if (star >= 0)
        {
            int plus = s.IndexOf('+');
            if (plus < star)
                return false;
            if (!int.TryParse(s[..star].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int word)
                || !s[(star + 1)..plus].Trim().SequenceEqual("32")
                || !int.TryParse(s[(plus + 1)..].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int bit)
                || bit > 31 || word > 0xffff)
                return false;
            number = word * 32 + bit;
            return true;
        }
        if (s.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            return int.TryParse(s[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out number) && number >= 0;
        return int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out number);
    }

    internal static FeatureEntry Entry(CpuFeature f) =>
        CpuFeatureTable.Find((int)f)
        ?? throw new ArgumentOutOfRangeException(nameof(f), (int)f,
            $"{FormatNumber(f)} is not an X86_FEATURE_/X86_BUG_ number of Linux {LinuxVersion}");
}

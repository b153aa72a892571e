using System.Globalization;
using System.Text;

namespace Altpatch.Cpu;

/// <summary>
/// An immutable set of Linux CPU features and bugs (numbered as <see cref="CpuFeature"/>) plus the CPU's
/// identity: vendor, family, model, stepping and model name. Equal when every bit and every identity field is.
/// This is what the patchers test an alternative's <c>cpuid</c> against, like the kernel's <c>boot_cpu_has()</c>.
/// </summary>
/// <remarks>
/// The set is a fixed bitmap of (NCAPINTS + NBUGINTS) * 32 bits, like the kernel's <c>x86_capability[]</c>;
/// <see cref="Has"/> does not allocate. Only numbers Linux 6.1 defines can be in the set.
/// </remarks>
public sealed class CpuFeatures : IEquatable<CpuFeatures>
{
    private readonly ulong[] bits;

    private CpuFeatures(ulong[] bits, CpuVendor vendor, int family, int model, int stepping, string? modelName)
    {
        this.bits = bits;
        Vendor = vendor;
        Family = family;
        Model = model;
        Stepping = stepping;
        ModelName = modelName;
    }

    /// <summary>Takes ownership of <paramref name="bits"/>, which must hold defined bits only.</summary>
    internal static CpuFeatures Create(ulong[] bits, CpuVendor vendor, int family, int model, int stepping, string? modelName) =>
        new(bits, vendor, family, model, stepping, modelName);

    /// <summary>No features, unknown vendor, family/model/stepping 0, no model name.</summary>
    public static CpuFeatures Empty { get; } = new(new ulong[CpuFeatureTable.BitmapLongs], CpuVendor.Unknown, 0, 0, 0, null);

    /// <summary>The CPU vendor.</summary>
    public CpuVendor Vendor { get; }

    /// <summary>The family, decoded as Linux does (base family, plus the extended family when the base is 0xf).</summary>
    public int Family { get; }

    /// <summary>The model, decoded as Linux does (the extended model is added from family 6 on).</summary>
    public int Model { get; }

    /// <summary>The stepping.</summary>
    public int Stepping { get; }

    /// <summary>The model name (CPUID brand string, trimmed), or null when unknown.</summary>
    public string? ModelName { get; }

    /// <summary>
    /// Reads this processor's CPUID as Linux 6.1 does at boot: every bit of the words Linux copies from CPUID
    /// (0, 1, 4, 6, 9, 10, 12–20; word 2 on Transmeta, word 5 on Centaur/Zhaoxin), the CPUID-sourced bits of
    /// <c>scattered.c</c>, the bits <c>init_speculation_control()</c> derives from CPUID (<c>ibrs</c>, <c>ibpb</c>,
    /// <c>stibp</c>, <c>ssbd</c>, <c>MSR_SPEC_CTRL</c>), and what every kernel sets once CPUID works
    /// (<c>X86_FEATURE_ALWAYS</c>, <c>X86_FEATURE_CPUID</c>). Bits of those words that 6.1 does not name are dropped.
    /// Bits the kernel synthesises or clears later (bugs, mitigations, <c>constant_tsc</c>, command-line
    /// overrides, …) are not included: see <c>docs/cpu.md</c> for how this differs from <c>/proc/cpuinfo</c>.
    /// </summary>
    /// <returns>The detected features and identity.</returns>
    /// <exception cref="CpuFeatureException">The processor has no CPUID (not x86).</exception>
    public static CpuFeatures Detect() => CpuidReader.Detect(CpuidReader.Hardware);

    /// <summary>
    /// Like <see cref="Detect"/>, but with CPUID answered by <paramref name="cpuid"/> (leaf, subleaf) — a
    /// recorded dump of another processor, or a made-up one.
    /// </summary>
    /// <param name="cpuid">Answers CPUID for a leaf and subleaf.</param>
    /// <returns>The features and identity Linux 6.1 would read from that CPUID.</returns>
    public static CpuFeatures FromCpuid(Func<uint, uint, CpuidResult> cpuid)
    {
        ArgumentNullException.ThrowIfNull(cpuid);
        return CpuidReader.Detect(cpuid);
    }

    /// <summary>
    /// A set from feature names (any form <see cref="CpuFeatureInfo.TryParse"/> accepts: cpuinfo names, macro
    /// names, <c>4*32+23</c>) and an identity.
    /// </summary>
    /// <param name="names">The names.</param>
    /// <param name="vendor">The vendor.</param>
    /// <param name="family">The family.</param>
    /// <param name="model">The model.</param>
    /// <param name="stepping">The stepping.</param>
    /// <returns>The set.</returns>
    /// <exception cref="CpuFeatureException">A name is unknown; the message names every unknown name.</exception>
    public static CpuFeatures FromNames(IEnumerable<string> names, CpuVendor vendor = CpuVendor.Unknown, int family = 0, int model = 0, int stepping = 0)
    {
        ArgumentNullException.ThrowIfNull(names);
        var bits = new ulong[CpuFeatureTable.BitmapLongs];
        List<string>? unknown = null;
        foreach (var name in names)
        {
            if (CpuFeatureInfo.TryParse(name, out var f))
                CpuFeatureTable.SetBit(bits, (int)f);
            else
                (unknown ??= []).Add(name);
        }
        if (unknown is not null)
        {
            throw new CpuFeatureException(unknown.Count == 1
                ? $"unknown CPU feature '{unknown[0]}' (not a Linux {CpuFeatureInfo.LinuxVersion} feature or bug name)"
                : $"unknown CPU features {string.Join(", ", unknown.Select(n => $"'{n}'"))} (not Linux {CpuFeatureInfo.LinuxVersion} feature or bug names)");
        }
        return new CpuFeatures(bits, vendor, family, model, stepping, null);
    }

    /// <summary>
    /// A set from the text of <c>/proc/cpuinfo</c>: the first processor block's <c>vendor_id</c>,
    /// <c>cpu family</c>, <c>model</c>, <c>stepping</c>, <c>model name</c>, <c>flags</c> and <c>bugs</c>.
    /// Flag and bug names that Linux 6.1 does not know (a newer kernel's) are ignored.
    /// </summary>
    /// <param name="procCpuInfoText">The file's text.</param>
    /// <returns>The set.</returns>
    /// <exception cref="CpuFeatureException">The text has no <c>flags</c> line, or a number field is not a number.</exception>
    public static CpuFeatures FromCpuInfo(string procCpuInfoText) => FromCpuInfo(procCpuInfoText, out _);

    /// <summary>Like <see cref="FromCpuInfo(string)"/>, and also says which names were ignored.</summary>
    /// <param name="procCpuInfoText">The file's text.</param>
    /// <param name="ignoredNames">Flag and bug names Linux 6.1 does not know, in the order met.</param>
    /// <returns>The set.</returns>
    /// <exception cref="CpuFeatureException">The text has no <c>flags</c> line, or a number field is not a number.</exception>
    public static CpuFeatures FromCpuInfo(string procCpuInfoText, out IReadOnlyList<string> ignoredNames)
    {
        ArgumentNullException.ThrowIfNull(procCpuInfoText);
        var bits = new ulong[CpuFeatureTable.BitmapLongs];
        var ignored = new List<string>();
        CpuVendor vendor = CpuVendor.Unknown;
        int family = 0, model = 0, stepping = 0;
        string? modelName = null;
        bool sawFlags = false, inBlock = false;
        int lineNo = 0;
        foreach (var rawLine in procCpuInfoText.Split('\n'))
        {
            lineNo++;
            var line = rawLine.TrimEnd('\r');
            if (line.Trim().Length == 0)
            {
                if (inBlock)
                    break;   // end of the first processor block
                continue;
            }
            inBlock = true;
            int colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon < 0)
                continue;
            var key = line[..colon].Trim();
            var value = line[(colon + 1)..];
            switch (key)
            {
                case "vendor_id":
                    vendor = CpuVendors.FromVendorId(value.Trim());
                    break;
                case "cpu family":
                    family = ParseInt(key, value, lineNo);
                    break;
                case "model":
                    model = ParseInt(key, value, lineNo);
                    break;
                case "stepping":
                    // "stepping : unknown" when the kernel has none.
                    stepping = value.Trim() == "unknown" ? 0 : ParseInt(key, value, lineNo);
                    break;
                case "model name":
                    modelName = value.Trim();
                    break;
                case "flags":
                    sawFlags = true;
                    AddNames(bits, value, CpuFeatureIndex.FeatureByCpuInfo, ignored);
                    break;
                case "bugs":
                    AddNames(bits, value, CpuFeatureIndex.BugByCpuInfo, ignored);
                    break;
                default:
                    break;
            }
        }
        if (!sawFlags)
            throw new CpuFeatureException("not a /proc/cpuinfo text: the first processor block has no 'flags' line");
        ignoredNames = ignored.AsReadOnly();
        return new CpuFeatures(bits, vendor, family, model, stepping, modelName);
    }

    /// <summary>True when the set contains <paramref name="f"/>; false for numbers outside the table. Does not allocate.</summary>
    /// <param name="f">The feature or bug.</param>
    public bool Has(CpuFeature f)
    {
        uint n = (uint)f;
        return n < CpuFeatureTable.TotalBits && CpuFeatureTable.HasBit(bits, (int)n);
    }

    /// <summary>A copy with <paramref name="f"/> added.</summary>
    /// <param name="f">Defined features or bugs.</param>
    /// <exception cref="ArgumentOutOfRangeException">A value is not a defined number.</exception>
    public CpuFeatures With(params ReadOnlySpan<CpuFeature> f)
    {
        var bits = (ulong[])this.bits.Clone();
        foreach (var x in f)
        {
            CpuFeatureInfo.Entry(x);
            CpuFeatureTable.SetBit(bits, (int)x);
        }
        return new CpuFeatures(bits, Vendor, Family, Model, Stepping, ModelName);
    }

    /// <summary>A copy with <paramref name="f"/> removed.</summary>
    /// <param name="f">Features or bugs; values outside the table are ignored.</param>
    public CpuFeatures Without(params ReadOnlySpan<CpuFeature> f)
    {
        var bits = (ulong[])this.bits.Clone();
        foreach (var x in f)
        {
            uint n = (uint)x;
            if (n < CpuFeatureTable.TotalBits)
                CpuFeatureTable.ClearBit(bits, (int)n);
        }
        return new CpuFeatures(bits, Vendor, Family, Model, Stepping, ModelName);
    }

    /// <summary>A copy with another identity and the same features.</summary>
    /// <param name="vendor">The vendor.</param>
    /// <param name="family">The family.</param>
    /// <param name="model">The model.</param>
    /// <param name="stepping">The stepping.</param>
    /// <param name="modelName">The model name, or null.</param>
    public CpuFeatures WithIdentity(CpuVendor vendor, int family, int model, int stepping, string? modelName = null) =>
        new((ulong[])bits.Clone(), vendor, family, model, stepping, modelName);

    /// <summary>A copy with another vendor.</summary>
    /// <param name="vendor">The vendor.</param>
    public CpuFeatures WithVendor(CpuVendor vendor) => WithIdentity(vendor, Family, Model, Stepping, ModelName);

    /// <summary>A copy with another model name.</summary>
    /// <param name="modelName">The model name, or null.</param>
    public CpuFeatures WithModelName(string? modelName) => WithIdentity(Vendor, Family, Model, Stepping, modelName);

    /// <summary>The features and bugs in the set, ascending by number.</summary>
    public IEnumerable<CpuFeature> Features
    {
        get
        {
            for (int i = 0; i < bits.Length; i++)
            {
                ulong w = bits[i];
                while (w != 0)
                {
                    int b = System.Numerics.BitOperations.TrailingZeroCount(w);
                    yield return (CpuFeature)(i * 64 + b);
                    w &= w - 1;
                }
            }
        }
    }

    /// <summary>How many features and bugs are in the set.</summary>
    public int Count
    {
        get
        {
            int n = 0;
            foreach (var w in bits)
                n += System.Numerics.BitOperations.PopCount(w);
            return n;
        }
    }

    /// <summary>One 32-bit word of the set as the kernel's <c>x86_capability[]</c> holds it: capability words 0 to NCAPINTS-1, then the bug words.</summary>
    /// <param name="word">The word index.</param>
    public uint Word(int word)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(word);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(word, CpuFeatureTable.CapabilityWords + CpuFeatureTable.BugWords);
        return (uint)(bits[word >> 1] >> (32 * (word & 1)));
    }

    /// <summary>The <c>flags</c> line /proc/cpuinfo would show: visible feature names, ascending, space-separated.</summary>
    public string CpuInfoFlags => NamesLine(bugs: false);

    /// <summary>The <c>bugs</c> line /proc/cpuinfo would show.</summary>
    public string CpuInfoBugs => NamesLine(bugs: true);

    /// <summary>The cpuinfo-like flags line (<see cref="CpuInfoFlags"/>); hidden features are not shown.</summary>
    public override string ToString() => CpuInfoFlags;

    /// <inheritdoc/>
    public bool Equals(CpuFeatures? other) =>
        other is not null
        && (ReferenceEquals(this, other)
            || (Vendor == other.Vendor && Family == other.Family && Model == other.Model && Stepping == other.Stepping
                && string.Equals(ModelName, other.ModelName, StringComparison.Ordinal)
                && bits.AsSpan().SequenceEqual(other.bits)));

    /// <inheritdoc/>
    public override bool Equals(object? obj) => Equals(obj as CpuFeatures);

    /// <inheritdoc/>
    public override int GetHashCode()
    {
        var h = new HashCode();
        foreach (var w in bits)
            h.Add(w);
        h.Add(Vendor);
        h.Add(Family);
        h.Add(Model);
        h.Add(Stepping);
        h.Add(ModelName, StringComparer.Ordinal);
        return h.ToHashCode();
    }

    /// <summary>Value equality.</summary>
    public static bool operator ==(CpuFeatures? left, CpuFeatures? right) => left is null ? right is null : left.Equals(right);

    /// <summary>Value inequality.</summary>
    public static bool operator !=(CpuFeatures? left, CpuFeatures? right) => !(left == right);

    private string NamesLine(bool bugs)
    {
        var sb = new StringBuilder();
        foreach (var f in Features)
        {
            if (CpuFeatureInfo.IsBug(f) != bugs || CpuFeatureTable.Find((int)f)?.CpuInfoName is not { } name)
                continue;
            if (sb.Length > 0)
                sb.Append(' ');
            sb.Append(name);
        }
        return sb.ToString();
    }

    private static void AddNames(ulong[] bits, string value, IReadOnlyDictionary<string, int> names, List<string> ignored)
    {
        foreach (var name in value.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries))
        {
            if (names.TryGetValue(name, out int n))
                CpuFeatureTable.SetBit(bits, n);
            else
                ignored.Add(name);
        }
    }

    private static int ParseInt(string key, string value, int lineNo)
    {
        if (int.TryParse(value.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int n))
            return n;
        throw new CpuFeatureException($"/proc/cpuinfo line {lineNo}: '{key}' is not a number: '{value.Trim()}'");
    }
}

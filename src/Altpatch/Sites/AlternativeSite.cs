using Altpatch.Cpu;

namespace Altpatch.Sites;

/// <summary>Flags of an alternative site.</summary>
[Flags]
public enum AltFlags : byte
{
    /// <summary>Apply the replacement when the feature is present.</summary>
    None = 0,
    /// <summary>Apply the replacement when the feature is absent (the kernel's ALT_NOT / ALTINSTR_FLAG_INV).</summary>
    Not = 1,
}

/// <summary>
/// One alternative: the instructions at <see cref="Address"/> (<see cref="Length"/> bytes, originally
/// <see cref="Original"/>) may be replaced by <see cref="Replacement"/>, padded with NOPs, when the
/// CPU has <see cref="Feature"/> (or lacks it, with <see cref="AltFlags.Not"/>). The replacement was
/// assembled to run at <see cref="ReplacementAddress"/> (where it is kept, like the kernel's
/// .altinstr_replacement); relative operands in it are re-encoded for <see cref="Address"/>.
/// Several sites with the same address form one ALTERNATIVE_2/3: the last whose condition holds wins.
/// This is data only: nothing here reads or writes code.
/// </summary>
/// <param name="Address">Final address of the site: where the code runs.</param>
/// <param name="Length">Length of the site in bytes (the kernel's instrlen), 1..254.</param>
/// <param name="Original">The site's original bytes (exactly <paramref name="Length"/> of them).</param>
/// <param name="Replacement">The replacement instructions (the kernel's replacementlen bytes), at most <paramref name="Length"/>.</param>
/// <param name="ReplacementAddress">The address the replacement was assembled for.</param>
/// <param name="Feature">The CPU feature that selects the replacement.</param>
/// <param name="Flags">Condition flags.</param>
public readonly record struct AlternativeSite(
    ulong Address,
    int Length,
    ReadOnlyMemory<byte> Original,
    ReadOnlyMemory<byte> Replacement,
    ulong ReplacementAddress,
    CpuFeature Feature,
    AltFlags Flags = AltFlags.None) : IPatchSite
{
    /// <summary>True when the replacement applies on a CPU with <paramref name="cpu"/>'s features.</summary>
    public bool Applies(CpuFeatures cpu)
    {
        ArgumentNullException.ThrowIfNull(cpu);
        return cpu.Has(Feature) != ((Flags & AltFlags.Not) != 0);
    }

    /// <summary>"popcnt" or "!popcnt": the condition as text.</summary>
    public string Condition => ((Flags & AltFlags.Not) != 0 ? "!" : "") + (CpuFeatureInfo.CpuInfoName(Feature) ?? CpuFeatureInfo.MacroName(Feature));
}

namespace Altpatch.Images;

/// <summary>
/// One <c>.altinstructions</c> entry: when the CPU has feature <see cref="Cpuid"/> (or lacks it, when
/// <see cref="Not"/>), the kernel replaces the <see cref="InstrLen"/> bytes at <see cref="Address"/> with the
/// <see cref="ReplacementLen"/> bytes at <see cref="ReplacementAddress"/>, padded with NOPs.
/// </summary>
/// <param name="Index">Entry index in the table (entry address = section address + Index × entry size).</param>
/// <param name="Address">Link-time address of the original instruction(s).</param>
/// <param name="ReplacementAddress">Link-time address of the replacement (in <c>.altinstr_replacement</c>).</param>
/// <param name="Cpuid">The feature number, word × 32 + bit (X86_FEATURE_* / X86_BUG_*), without the inversion flag.</param>
/// <param name="Not">Patch when the feature is absent (6.x <c>ALT_NOT</c>: cpuid bit 15, or ft_flags' ALT_FLAG_NOT).</param>
/// <param name="InstrLen">Length of the original, including its build-time NOP padding.</param>
/// <param name="ReplacementLen">Length of the replacement (≤ <see cref="InstrLen"/>).</param>
/// <param name="PadLen">Build-time padding length (the 4.x 13-byte format only; otherwise 0).</param>
/// <param name="Flags">The flags half of 6.3+'s ft_flags (bit 0 ALT_FLAG_NOT, bit 1 ALT_FLAG_DIRECT_CALL); 0 in older formats.</param>
public readonly record struct KernelAltSite(
    int Index, ulong Address, ulong ReplacementAddress, ushort Cpuid, bool Not,
    byte InstrLen, byte ReplacementLen, byte PadLen, ushort Flags)
{
    /// <summary>The feature word (<see cref="Cpuid"/> / 32).</summary>
    public int FeatureWord => Cpuid >> 5;

    /// <summary>The bit in the feature word (<see cref="Cpuid"/> % 32).</summary>
    public int FeatureBit => Cpuid & 31;

    /// <summary>The feature as the kernel's headers write it: "word*32+bit", prefixed with "!" when inverted.</summary>
    public string FeatureText => $"{(Not ? "!" : "")}{FeatureWord}*32+{FeatureBit}";
}

namespace Altpatch.Cpu;

/// <summary>A register of the <c>CPUID</c> instruction's output.</summary>
public enum CpuidRegister
{
    /// <summary>EAX.</summary>
    Eax,
    /// <summary>EBX.</summary>
    Ebx,
    /// <summary>ECX.</summary>
    Ecx,
    /// <summary>EDX.</summary>
    Edx,
}

/// <summary>One bit of <c>CPUID</c> output: the bit that defines a CPU feature.</summary>
/// <param name="Leaf">The leaf (EAX input), e.g. <c>0x00000007</c>.</param>
/// <param name="Subleaf">The subleaf (ECX input); 0 for leaves without subleaves.</param>
/// <param name="Register">The output register holding the bit.</param>
/// <param name="Bit">The bit number, 0 to 31.</param>
public readonly record struct CpuidBit(uint Leaf, uint Subleaf, CpuidRegister Register, int Bit)
{
    /// <summary>Kernel-style text, e.g. <c>CPUID 0x00000007.0 EBX[5]</c>.</summary>
    public override string ToString() => $"CPUID 0x{Leaf:X8}.{Subleaf} {Register.ToString().ToUpperInvariant()}[{Bit}]";
}

/// <summary>A whole <c>CPUID</c> output register: what Linux copies into one capability word.</summary>
/// <param name="Leaf">The leaf (EAX input).</param>
/// <param name="Subleaf">The subleaf (ECX input); 0 for leaves without subleaves.</param>
/// <param name="Register">The output register.</param>
public readonly record struct CpuidWord(uint Leaf, uint Subleaf, CpuidRegister Register)
{
    /// <summary>Kernel-style text, e.g. <c>CPUID 0x00000007.0 EBX</c>.</summary>
    public override string ToString() => $"CPUID 0x{Leaf:X8}.{Subleaf} {Register.ToString().ToUpperInvariant()}";
}

using Altpatch.Cpu;

namespace Altpatch.Code;

/// <summary>
/// A table of the best NOP of each length 1..<see cref="MaxLength"/> for a CPU, as the kernel keeps
/// them (arch/x86/include/asm/nops.h, and before 2.6.24 the *_nops arrays of alternative.c).
/// <see cref="AddNops"/> fills any length with the fewest, longest NOPs, the way the kernel's
/// <c>add_nops()</c> does: repeatedly the longest NOP that fits.
/// </summary>
public sealed class NopTable
{
    private readonly byte[][] nops; // nops[n] = the n-byte NOP, nops[0] empty

    /// <summary>The table's name: "x86-64", "p6", "k8", "k7", "generic", "x86-32".</summary>
    public string Name { get; }

    /// <summary>Longest single NOP in the table (the kernel's ASM_NOP_MAX).</summary>
    public int MaxLength => nops.Length - 1;

    /// <summary>
    /// The code size the table is valid for: 64 when every entry is a no-op in 64-bit mode (and
    /// 32-bit), 32 when some entries (<c>mov %esi,%esi</c>, <c>lea 0(%esi),%esi</c>) are no-ops only in 32-bit code.
    /// </summary>
    public int Bitness { get; }

    private NopTable(string name, int bitness, params byte[][] table)
    {
        Name = name;
        Bitness = bitness;
        nops = [[], .. table];
        for (int i = 1; i < nops.Length; i++)
            if (nops[i].Length != i) throw new InvalidOperationException($"NOP table {name}: entry {i} has {nops[i].Length} bytes");
    }

    /// <summary>The <paramref name="length"/>-byte NOP (1..<see cref="MaxLength"/>).</summary>
    public ReadOnlySpan<byte> this[int length]
    {
        get
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(length, 1);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(length, MaxLength);
            return nops[length];
        }
    }

    /// <summary>
    /// Fills <paramref name="destination"/> with NOPs: the longest NOP of the table while more than
    /// that remains, then one NOP of the rest (the fewest instructions possible with this table).
    /// </summary>
    public void AddNops(Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            int n = Math.Min(destination.Length, MaxLength);
            nops[n].CopyTo(destination);
            destination = destination[n..];
        }
    }

    /// <summary>Number of NOP instructions <see cref="AddNops"/> emits for <paramref name="length"/> bytes.</summary>
    public int CountFor(int length) => (length + MaxLength - 1) / MaxLength;

    private static byte[] Cat(params byte[][] parts) => [.. parts.SelectMany(p => p)];

    // ---- The P6 NOPs (Intel-recommended nopl forms): the 64-bit table from 2.6.24 to 6.1 ----
    private static readonly byte[] Nop8 = [0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00];

    private static readonly byte[][] P6Nops =
    [
        [0x90],
        [0x66, 0x90],
        [0x0f, 0x1f, 0x00],
        [0x0f, 0x1f, 0x40, 0x00],
        [0x0f, 0x1f, 0x44, 0x00, 0x00],
        [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
        [0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
        Nop8,
    ];

    /// <summary>
    /// Today's x86-64 NOPs (arch/x86/include/asm/nops.h, CONFIG_64BIT; 9-11 added in 6.2), longest 11 bytes:
    /// the P6 NOPs up to 8 bytes, then <c>cs nopl</c> (9) with one and two operand-size prefixes (10, 11).
    /// </summary>
    public static NopTable X86_64 { get; } = new("x86-64", 64,
        [.. P6Nops, Cat([0x2e], Nop8), Cat([0x66, 0x2e], Nop8), Cat([0x66, 0x66, 0x2e], Nop8)]);

    /// <summary>
    /// Linux 5.x/6.0/6.1's 64-bit table (the P6 NOPs, longest 8 bytes): what the shared 6.1 x86-64
    /// kernel pads with.
    /// </summary>
    public static NopTable X86_64Linux61 { get; } = new("x86-64 (6.1, max 8)", 64, P6Nops);

    /// <summary>
    /// Linux 5.x/6.x's 32-bit table (GAS's generic 32-bit NOPs with DS-prefixed 5 and 8):
    /// what the shared 6.1 i386 kernel pads with.
    /// </summary>
    public static NopTable X86_32 { get; } = new("x86-32", 32,
        [0x90],
        [0x89, 0xf6],
        [0x8d, 0x76, 0x00],
        [0x8d, 0x74, 0x26, 0x00],
        [0x3e, 0x8d, 0x74, 0x26, 0x00],
        [0x8d, 0xb6, 0x00, 0x00, 0x00, 0x00],
        [0x8d, 0xb4, 0x26, 0x00, 0x00, 0x00, 0x00],
        [0x3e, 0x8d, 0xb4, 0x26, 0x00, 0x00, 0x00, 0x00]);

    // ---- The seed's era (2.6.22: include/asm-i386/processor.h, include/asm-x86_64/processor.h) ----

    /// <summary>2.6.22's GENERIC_NOP table (intel_nops): <c>mov %esi,%esi</c> and <c>lea 0(%esi),%esi</c> forms; 32-bit only.</summary>
    public static NopTable Generic { get; } = new("generic", 32,
        [0x90],
        [0x89, 0xf6],
        [0x8d, 0x76, 0x00],
        [0x8d, 0x74, 0x26, 0x00],
        [0x90, 0x8d, 0x74, 0x26, 0x00],
        [0x8d, 0xb6, 0x00, 0x00, 0x00, 0x00],
        [0x8d, 0xb4, 0x26, 0x00, 0x00, 0x00, 0x00],
        [0x90, 0x8d, 0xb4, 0x26, 0x00, 0x00, 0x00, 0x00]);

    /// <summary>2.6.22's K8 (Opteron) table: operand-size-prefixed <c>nop</c>s; valid in 32- and 64-bit code.</summary>
    public static NopTable K8 { get; } = new("k8", 64,
        [0x90],
        [0x66, 0x90],
        [0x66, 0x66, 0x90],
        [0x66, 0x66, 0x66, 0x90],
        [0x66, 0x66, 0x90, 0x66, 0x90],
        [0x66, 0x66, 0x90, 0x66, 0x66, 0x90],
        [0x66, 0x66, 0x66, 0x90, 0x66, 0x66, 0x90],
        [0x66, 0x66, 0x66, 0x90, 0x66, 0x66, 0x66, 0x90]);

    /// <summary>2.6.22's K7 (Athlon) table: <c>mov %eax,%eax</c> and <c>lea</c> forms on eax; 32-bit only.</summary>
    public static NopTable K7 { get; } = new("k7", 32,
        [0x90],
        [0x8b, 0xc0],
        [0x8d, 0x04, 0x20],
        [0x8d, 0x44, 0x20, 0x00],
        [0x8d, 0x44, 0x20, 0x00, 0x90],
        [0x8d, 0x80, 0x00, 0x00, 0x00, 0x00],
        [0x8d, 0x04, 0x05, 0x00, 0x00, 0x00, 0x00],
        [0x8d, 0x04, 0x05, 0x00, 0x00, 0x00, 0x00, 0x90]);

    /// <summary>The P6 table (Intel-recommended <c>nopl</c> forms, longest 8); valid in 32- and 64-bit code.</summary>
    public static NopTable P6 { get; } = new("p6", 64, P6Nops);

    /// <summary>Every table Altpatch knows.</summary>
    public static IReadOnlyList<NopTable> All { get; } = [X86_64, X86_64Linux61, X86_32, Generic, K8, K7, P6];

    /// <summary>
    /// The seed era's <c>find_nop_table()</c> (2.6.2x, with the P6 entries 2.6.24 added): on x86-64,
    /// K8 NOPs unless the CPU is Intel family 6 or later (then P6); on i386, K8 NOPs for AMD K8
    /// (family 15–17), K7 NOPs for AMD family 6, P6 NOPs for Intel family 6 and 15, else the generic table.
    /// </summary>
    public static NopTable FindSeedEra(CpuVendor vendor, int family, bool is64Bit)
    {
        if (is64Bit)
            return vendor != CpuVendor.Intel || family < 6 ? K8 : P6;
        return (vendor, family) switch
        {
            (CpuVendor.Amd, >= 15 and <= 17) => K8,
            (CpuVendor.Amd, 6) => K7,
            (CpuVendor.Intel, 6 or 15) => P6,
            _ => Generic,
        };
    }

    /// <summary>The table a kernel of today uses for code of <paramref name="bitness"/> (32 or 64): <see cref="X86_64"/> or <see cref="X86_32"/>.</summary>
    public static NopTable ForBitness(int bitness) => bitness == 64 ? X86_64 : X86_32;

    /// <inheritdoc />
    public override string ToString() => $"{Name} (max {MaxLength})";
}

using System.Collections.Immutable;
using Altpatch.Cpu;

namespace Altpatch.Images.Boot;

/// <summary>
/// Linux 6.1.176's <c>cpuid_deps[]</c> (arch/x86/kernel/cpu/cpuid-deps.c): which feature needs which. Clearing a feature
/// with <c>setup_clear_cpu_cap()</c> (<c>clearcpuid=</c>, <c>noxsave</c>, <c>nopcid</c>, GDS's forced AVX off, …) clears every
/// feature that depends on it, transitively (<c>do_clear_cpu_cap()</c>).
/// </summary>
public static class KernelCpuidDeps
{
    /// <summary>The table, in the kernel's order: (feature, the feature it depends on), as <c>X86_FEATURE_</c> names
    /// without the prefix.</summary>
    private static readonly (string Feature, string Depends)[] Table =
    [
        ("FXSR", "FPU"),
        ("XSAVEOPT", "XSAVE"),
        ("XSAVEC", "XSAVE"),
        ("XSAVES", "XSAVE"),
        ("AVX", "XSAVE"),
        ("PKU", "XSAVE"),
        ("MPX", "XSAVE"),
        ("XGETBV1", "XSAVE"),
        ("CMOV", "FXSR"),
        ("MMX", "FXSR"),
        ("MMXEXT", "MMX"),
        ("FXSR_OPT", "FXSR"),
        ("XSAVE", "FXSR"),
        ("XMM", "FXSR"),
        ("XMM2", "XMM"),
        ("XMM3", "XMM2"),
        ("XMM4_1", "XMM2"),
        ("XMM4_2", "XMM2"),
        ("XMM3", "XMM2"),
        ("PCLMULQDQ", "XMM2"),
        ("SSSE3", "XMM2"),
        ("F16C", "XMM2"),
        ("AES", "XMM2"),
        ("SHA_NI", "XMM2"),
        ("GFNI", "XMM2"),
        ("FMA", "AVX"),
        ("VAES", "AVX"),
        ("VPCLMULQDQ", "AVX"),
        ("AVX2", "AVX"),
        ("AVX512F", "AVX"),
        ("AVX512IFMA", "AVX512F"),
        ("AVX512PF", "AVX512F"),
        ("AVX512ER", "AVX512F"),
        ("AVX512CD", "AVX512F"),
        ("AVX512DQ", "AVX512F"),
        ("AVX512BW", "AVX512F"),
        ("AVX512VL", "AVX512F"),
        ("AVX512VBMI", "AVX512F"),
        ("AVX512_VBMI2", "AVX512VL"),
        ("AVX512_VNNI", "AVX512VL"),
        ("AVX512_BITALG", "AVX512VL"),
        ("AVX512_4VNNIW", "AVX512F"),
        ("AVX512_4FMAPS", "AVX512F"),
        ("AVX512_VPOPCNTDQ", "AVX512F"),
        ("AVX512_VP2INTERSECT", "AVX512VL"),
        ("CQM_OCCUP_LLC", "CQM_LLC"),
        ("CQM_MBM_TOTAL", "CQM_LLC"),
        ("CQM_MBM_LOCAL", "CQM_LLC"),
        ("AVX512_BF16", "AVX512VL"),
        ("AVX512_FP16", "AVX512BW"),
        ("ENQCMD", "XSAVES"),
        ("PER_THREAD_MBA", "MBA"),
        ("SGX_LC", "SGX"),
        ("SGX1", "SGX"),
        ("SGX2", "SGX1"),
        ("XFD", "XSAVES"),
        ("XFD", "XGETBV1"),
        ("AMX_TILE", "XFD"),
    ];

    /// <summary>(feature, depends) pairs of the table.</summary>
    public static ImmutableArray<(CpuFeature Feature, CpuFeature Depends)> Pairs { get; } =
        [.. Table.Select(t => (CpuFeatureInfo.Parse("X86_FEATURE_" + t.Feature), CpuFeatureInfo.Parse("X86_FEATURE_" + t.Depends)))];

    /// <summary><c>do_clear_cpu_cap()</c>: <paramref name="feature"/> and every feature that depends on it, directly or
    /// not, in the order the kernel's loop reaches them.</summary>
    /// <param name="feature">The feature cleared.</param>
    public static IReadOnlyList<CpuFeature> ClearedWith(CpuFeature feature)
    {
        var disable = new List<CpuFeature> { feature };
        bool changed;
        do
        {
            changed = false;
            foreach (var (f, depends) in Pairs)
            {
                if (!disable.Contains(depends) || disable.Contains(f))
                    continue;
                disable.Add(f);
                changed = true;
            }
        }
        while (changed);
        return disable;
    }
}

using Altpatch.Cpu;

namespace Altpatch.Images.Boot;

/// <summary>
/// The boot CPU as Linux 6.12.118 leaves it (<c>identify_boot_cpu()</c>, <c>cpu_select_mitigations()</c> of
/// <c>arch/x86/kernel/cpu/bugs.c</c> 6.12.118): <see cref="KernelBootCpu"/>'s derivation with the 6.12 rules (the command
/// line read as 6.12 reads it, <see cref="KernelCommandLine.For"/>; <c>retbleed=stuff</c>, <c>spectre_bhi=vmexit</c>, ITS
/// with call depth tracking, <c>early_init_amd()</c>'s IBPB_BRTYPE, … where 6.12's <c>bugs.c</c> differs from 6.1.176's),
/// its result carried into 6.12's numbering (<see cref="FeatureNumbering.Linux612"/>) by name, with the features 6.1's
/// numbering has no bit for (<c>X86_FEATURE_CALL_DEPTH</c>); what is 6.12's alone beyond that is done here on top.
/// </summary>
internal static class KernelBootCpu612
{
    private static int N(string macro) => FeatureNumbering.Linux612.GetNumber(macro);

    /// <summary>The build options of a 6.12 image, read with 6.12's numbering.</summary>
    public static KernelBuildInfo InferBuild(KernelImage image, KernelThunks thunks)
    {
        var t = image.Tables;
        bool Uses(string macro)
        {
            int n = N(macro);
            return t.Alternatives.Any(a => a.Cpuid == n);
        }
        bool is64 = image.Bitness == 64;
        return KernelBuildInfo.Infer(image, thunks) with
        {
            Retpoline = !t.Retpolines.IsEmpty || Uses("X86_FEATURE_RETPOLINE"),
            CpuIbpbEntry = is64 && Uses("X86_FEATURE_ENTRY_IBPB"),
            CpuIbrsEntry = is64 && Uses("X86_FEATURE_KERNEL_IBRS"),
        };
    }

    public static KernelBootState Derive(KernelImage image, KernelCpuDescription description, KernelThunks thunks, KvmPvOps? pvOps)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(description);
        var build = InferBuild(image, thunks);
        var lineFeatures = new HashSet<string>(StringComparer.Ordinal);
        var s61 = KernelBootCpu.DeriveFor(description, build, pvOps, KernelBootRules.Linux612, lineFeatures);
        var log = new List<string>(s61.Decisions);
        var set = new HashSet<int>();
        foreach (var f in s61.Features.Features)
        {
            if (FeatureNumbering.Linux61.TryMapTo(FeatureNumbering.Linux612, (int)f, out int n))
                set.Add(n);
        }
        foreach (var macro in lineFeatures)
            set.Add(N(macro));
        Apply612(description, set, log);
        var bits = new ImageFeatureBits(FeatureNumbering.Linux612, set);
        return new KernelBootState(s61.Features, s61.ReturnThunk, s61.Cpus, s61.Hypervisor, log, s61.PvOpsOverrides, s61.CommandLine) { ImageFeatures = bits };
    }

    /// <summary>The <c>x86_return_thunk</c> 6.12 chose for a final feature set (<paramref name="bits"/> in 6.12's numbering,
    /// <paramref name="view"/> the same in 6.1's): <c>call_depth_return_thunk</c> with call depth tracking, else as 6.1
    /// (SRSO alias, SRSO, UNRET, ITS).</summary>
    public static ReturnThunkKind ReturnThunk(ImageFeatureBits bits, CpuFeatures view)
    {
        if (bits.Has("X86_FEATURE_RETHUNK") && bits.Has("X86_FEATURE_CALL_DEPTH"))
            return ReturnThunkKind.CallDepth;
        return KernelBootCpu.ReturnThunkFromFeatures(view);
    }

    /// <summary>What 6.12.118 sets or clears differently from 6.1.176 for the same machine.</summary>
    private static void Apply612(KernelCpuDescription d, HashSet<int> set, List<string> log)
    {
        // Word 1 is CPUID 0x80000001 EDX as the CPU returns it. AMD mirrors leaf 1 EDX's bits 0-9, 12-17, 23 and 24
        // there; 6.12's cpufeatures.h no longer defines (names) them, so a cpuinfo does not show them: they are read
        // back from word 0.
        if (d.Cpu.Vendor is CpuVendor.Amd or CpuVendor.Hygon)
        {
            int mirrored = 0;
            foreach (int b in (ReadOnlySpan<int>)[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 23, 24])
            {
                if (set.Contains(b) && set.Add(32 + b))
                    mirrored++;
            }
            if (mirrored > 0)
                log.Add($"6.12: {mirrored} bits of CPUID 0x80000001 EDX mirrored from leaf 1 EDX (AMD), unnamed in 6.12");
        }
    }
}

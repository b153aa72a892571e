using System.Runtime.Intrinsics.X86;
using Altpatch.Cpu;
using Xunit.Abstractions;

namespace Altpatch.Tests.Cpu;

/// <summary>
/// On the machine running the tests: /proc/cpuinfo (what the running kernel says) against
/// <see cref="CpuFeatures.Detect"/> (what CPUID says, read as Linux 6.1 reads it), for every flag Altpatch knows
/// as CPUID-sourced: a CPUID bit of a word Linux copies from CPUID, a scattered.c bit, or a bit
/// init_speculation_control() derives from CPUID. The running kernel may be newer than 6.1 (6.18 here); names
/// Altpatch does not know are ignored.
/// </summary>
public sealed class HostCpuInfoTests(ITestOutputHelper output)
{
    /// <summary>
    /// Bits the kernel is documented to clear (or set) after reading CPUID, seen to differ on the machines this
    /// suite runs on. Every entry says why; docs/cpu.md lists the same ones, and the other bits the 6.1 kernel
    /// may clear on other machines.
    /// </summary>
    private static readonly Dictionary<string, string> Exceptions = new(StringComparer.Ordinal)
    {
        ["la57"] =
            "CPUID.7.0:ECX[16] says the CPU can do 5-level paging; early_identify_cpu() clears X86_FEATURE_LA57 " +
            "when the kernel is not running with 5-level page tables (!pgtable_l5_enabled(): CONFIG_X86_5LEVEL off, " +
            "no5lvl, or a 32-bit kernel). Seen here: the 6.18 guest kernel runs 4-level paging.",
    };

    [SkippableFact]
    public void Detect_agrees_with_proc_cpuinfo_on_every_cpuid_sourced_flag()
    {
        Skip.IfNot(X86Base.IsSupported, "not an x86 processor");
        Skip.IfNot(File.Exists("/proc/cpuinfo"), "no /proc/cpuinfo");

        var kernel = CpuFeatures.FromCpuInfo(File.ReadAllText("/proc/cpuinfo"), out var unknownToAltpatch);
        var detected = CpuFeatures.Detect();
        SkipUnlessCpuidIsTheKernels(kernel, detected);

        var onlyKernel = new List<string>();
        var onlyCpuid = new List<string>();
        var excused = new List<string>();
        int compared = 0;
        foreach (var f in CpuFeatureInfo.All)
        {
            if (CpuFeatureInfo.IsBug(f) || CpuFeatureInfo.CpuInfoName(f) is not { } name)
                continue;
            var src = CpuFeatureInfo.Source(f)?.ToString()
                      ?? (CpuidReader.DerivedFromCpuid.Contains(f) ? "init_speculation_control()" : null);
            if (src is null)
                continue;
            compared++;
            bool k = kernel.Has(f), d = detected.Has(f);
            if (k == d)
                continue;
            var line = $"{name} ({CpuFeatureInfo.MacroName(f)}, {CpuFeatureInfo.FormatNumber(f)}, {src})";
            if (Exceptions.ContainsKey(name))
                excused.Add(line + (k ? ": in /proc/cpuinfo only" : ": in CPUID only"));
            else
                (k ? onlyKernel : onlyCpuid).Add(line);
        }

        output.WriteLine($"compared {compared} CPUID-sourced flags");
        output.WriteLine($"/proc/cpuinfo names unknown to Linux 6.1 (ignored): {string.Join(' ', unknownToAltpatch)}");
        output.WriteLine($"documented exceptions that differ here: {string.Join("; ", excused)}");
        Assert.True(compared > 100, $"only {compared} flags compared");
        Assert.True(onlyKernel.Count == 0 && onlyCpuid.Count == 0,
            "CPUID (CpuFeatures.Detect) and /proc/cpuinfo disagree:\n" +
            $"  in /proc/cpuinfo but not detected from CPUID: {(onlyKernel.Count == 0 ? "none" : string.Join("\n    ", onlyKernel.Prepend("")))}\n" +
            $"  detected from CPUID but not in /proc/cpuinfo: {(onlyCpuid.Count == 0 ? "none" : string.Join("\n    ", onlyCpuid.Prepend("")))}\n" +
            "If the kernel is documented to clear or set such a bit, add it to Exceptions with the reason (and to docs/cpu.md).");
    }

    [SkippableFact]
    public void Detect_identity_matches_proc_cpuinfo()
    {
        Skip.IfNot(X86Base.IsSupported, "not an x86 processor");
        Skip.IfNot(File.Exists("/proc/cpuinfo"), "no /proc/cpuinfo");
        var kernel = CpuFeatures.FromCpuInfo(File.ReadAllText("/proc/cpuinfo"));
        var detected = CpuFeatures.Detect();
        SkipUnlessCpuidIsTheKernels(kernel, detected);
        Assert.Equal(kernel.Vendor, detected.Vendor);
        Assert.Equal(kernel.Family, detected.Family);
        Assert.Equal(kernel.Model, detected.Model);
        Assert.Equal(kernel.Stepping, detected.Stepping);
        Assert.Equal(kernel.ModelName, detected.ModelName);
    }

    /// <summary>
    /// Skips when this process's CPUID is not the CPUID the running kernel read, which is the only case in which
    /// comparing them says nothing about Altpatch: the brand string CPUID gives here differs from the
    /// <c>model name</c> the kernel took from its own CPUID (Linux copies the brand string, leading spaces
    /// trimmed). Seen in a PVM guest nested in bhyve: the kernel's CPUID is answered by PVM ("AMD EPYC", x2apic
    /// and tsc_deadline_timer set), user space's by bhyve ("Oxide Virtual Turin-like Processor", those clear).
    /// Where the two agree, nothing is skipped and every comparison stays as strict as before.
    /// </summary>
    private static void SkipUnlessCpuidIsTheKernels(CpuFeatures kernel, CpuFeatures detected)
    {
        string? cpuinfoName = kernel.ModelName?.Trim(), cpuidName = detected.ModelName?.Trim();
        Skip.If(cpuinfoName is not null && cpuidName is not null && cpuinfoName != cpuidName,
            $"user-space CPUID is not the CPUID the running kernel saw: its brand string is '{cpuidName}', /proc/cpuinfo's " +
            $"model name is '{cpuinfoName}' (another hypervisor answers this process's CPUID than the kernel's, e.g. a PVM " +
            "guest nested in a VM), so their flags need not agree");
    }

    [SkippableFact]
    public void Detect_sets_what_every_kernel_sets_and_no_bugs()
    {
        Skip.IfNot(X86Base.IsSupported, "not an x86 processor");
        var cpu = CpuFeatures.Detect();
        Assert.True(cpu.Has(CpuFeature.Always));
        Assert.True(cpu.Has(CpuFeature.Cpuid));
        Assert.True(cpu.Has(CpuFeature.Lm) || !Environment.Is64BitProcess);
        Assert.DoesNotContain(cpu.Features, CpuFeatureInfo.IsBug);
        Assert.All(cpu.Features, f => Assert.True(CpuFeatureInfo.IsDefined(f)));
        Assert.Equal(cpu, CpuFeatures.Detect());
    }
}

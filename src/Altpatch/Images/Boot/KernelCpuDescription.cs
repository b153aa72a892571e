using System.Collections.Immutable;
using System.Text.RegularExpressions;
using Altpatch.Cpu;

namespace Altpatch.Images.Boot;

/// <summary>
/// A description of the machine an image is patched for and how it boots: the CPU as <c>/proc/cpuinfo</c> shows it (vendor,
/// family, model, stepping, <c>flags</c>, <c>bugs</c>; Linux 6.1 numbering), the number of CPUs, the hypervisor,
/// the kernel command line, and overrides. <see cref="KernelBootCpu.Derive"/> turns it into what the kernel knows when it patches itself.
/// </summary>
public sealed partial record KernelCpuDescription
{
    /// <summary>The CPU: named flags and bugs (and any hidden bits given by macro name), vendor, family, model, stepping.</summary>
    public required CpuFeatures Cpu { get; init; }

    /// <summary>Present and possible CPUs. 1 makes the kernel switch the SMP lock prefixes to UP.</summary>
    public int Cpus { get; init; } = 2;

    /// <summary>The hypervisor the kernel detects (default: none, which is also what a QEMU TCG guest is).</summary>
    public KernelHypervisor Hypervisor { get; init; } = KernelHypervisor.None;

    /// <summary>With <see cref="KernelHypervisor.Kvm"/>: the KVM paravirtual features the host offers (default: QEMU's).</summary>
    public KvmFeatures KvmFeatures { get; init; } = KvmGuest.QemuDefaults;

    /// <summary>Symbols of the image's build (System.map or /proc/kallsyms), for what a stripped image does not name
    /// (the KVM functions <c>kvm_guest_init()</c> puts into pv_ops); null when none were given.</summary>
    public IReadOnlyDictionary<string, ulong>? Symbols { get; init; }

    /// <summary>Features to set after the derivation (<c>--set</c>).</summary>
    public ImmutableArray<CpuFeature> Set { get; init; } = [];

    /// <summary>Features to clear after the derivation (<c>--clear</c>), applied after <see cref="Set"/>.</summary>
    public ImmutableArray<CpuFeature> Clear { get; init; } = [];

    /// <summary>The kernel command line the machine boots with (default: the empty one, every default). The derivation
    /// reads its mitigation choices (<c>mitigations=</c>, <c>spectre_v2=</c>, <c>pti=</c>/<c>nopti</c>, <c>retbleed=</c>, …) and
    /// the SMP switch (<c>noreplace-smp</c>, <c>nosmp</c>, <c>maxcpus=</c>, …); the text passes its <c>preempt=</c> and
    /// <c>ftrace=</c> (<see cref="KernelBootState.CommandLine"/>).</summary>
    public KernelCommandLine CommandLine { get; init; } = KernelCommandLine.Empty;

    /// <summary>Take <see cref="Cpu"/> as the kernel's final capability words (no derivation), e.g. a dump's
    /// <c>boot_cpu_data</c>. The return thunk is then inferred from the bits (see <see cref="KernelBootCpu"/>).</summary>
    public bool Exact { get; init; }

    /// <summary>Whether the CPU has SMT (more than one thread per core: <c>topology_smt_supported()</c>, which
    /// <c>cpu_smt_check_topology()</c> turns into <c>cpu_smt_possible()</c> before the mitigations are chosen); null
    /// when unknown, taken as possible. From cpuinfo: <c>siblings</c> &gt; <c>cpu cores</c>.</summary>
    public bool? Smt { get; init; }

    /// <summary>The value of <c>MSR_IA32_ARCH_CAPABILITIES</c> the kernel reads (not visible in <c>/proc/cpuinfo</c>;
    /// default 0, as under QEMU TCG). Only a few hidden choices depend on it (RRSBA, RFDS_CLEAR, TSX_CTRL).</summary>
    public ulong ArchCapabilities { get; init; }

    /// <summary>A description from the text of <c>/proc/cpuinfo</c>: the first processor's identity, flags and bugs;
    /// <see cref="Cpus"/> = the number of <c>processor</c> entries.</summary>
    /// <param name="text">The file's text.</param>
    /// <exception cref="CpuFeatureException">Not a /proc/cpuinfo text.</exception>
    public static KernelCpuDescription FromCpuInfo(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var cpu = CpuFeatures.FromCpuInfo(text);
        int processors = ProcessorLine().Matches(text).Count;
        bool? smt = null;
        if (FirstNumber(text, "siblings") is int siblings && FirstNumber(text, "cpu cores") is int cores && cores > 0)
            smt = siblings > cores;
        return new KernelCpuDescription { Cpu = cpu, Cpus = Math.Max(1, processors), Smt = smt };
    }

    private static int? FirstNumber(string text, string key)
    {
        foreach (var line in text.Split('\n'))
        {
            int colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon > 0 && line[..colon].Trim() == key
                && int.TryParse(line[(colon + 1)..].Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n))
                return n;
        }
        return null;
    }

    [GeneratedRegex(@"^processor\s*:", RegexOptions.Multiline)]
    private static partial Regex ProcessorLine();
}

using System.Collections.Immutable;
using Altpatch.Cpu;

namespace Altpatch.Images.Boot;

/// <summary>The return thunk a 6.1 kernel chose (<c>x86_return_thunk</c>, set by <c>set_return_thunk()</c> in <c>cpu/bugs.c</c>).</summary>
public enum ReturnThunkKind
{
    /// <summary><c>__x86_return_thunk</c>: the default (a plain <c>ret; int3</c>).</summary>
    Default,
    /// <summary><c>retbleed_return_thunk</c>: RETBleed "untrained return thunk" (AMD/Hygon Zen 1/2 without SRSO safe RET).</summary>
    Retbleed,
    /// <summary><c>srso_return_thunk</c>: SRSO "safe RET" on families other than 0x19.</summary>
    Srso,
    /// <summary><c>srso_alias_return_thunk</c>: SRSO "safe RET" on family 0x19 (Zen 3/4).</summary>
    SrsoAlias,
    /// <summary><c>its_return_thunk</c>: Indirect Target Selection "aligned thunks" (Intel).</summary>
    Its,
    /// <summary><c>call_depth_return_thunk</c> (6.2+: <c>retbleed=stuff</c>, call depth tracking).</summary>
    CallDepth,
}

/// <summary>The return thunks' kernel symbols.</summary>
public static class ReturnThunkKinds
{
    /// <summary>The kernel symbol of the thunk, e.g. <c>srso_alias_return_thunk</c> (<see cref="KernelThunks.Address"/> finds it in an image).</summary>
    public static string Symbol(this ReturnThunkKind kind) => kind switch
    {
        ReturnThunkKind.Its => "its_return_thunk",
        ReturnThunkKind.Retbleed => "retbleed_return_thunk",
        ReturnThunkKind.Srso => "srso_return_thunk",
        ReturnThunkKind.SrsoAlias => "srso_alias_return_thunk",
        ReturnThunkKind.CallDepth => "call_depth_return_thunk",
        _ => "__x86_return_thunk",
    };
}

/// <summary>Whether the kernel finds a hypervisor it knows (<c>init_hypervisor_platform()</c>).</summary>
public enum KernelHypervisor
{
    /// <summary>Bare metal, or a hypervisor the kernel does not recognise (QEMU TCG): native <c>pv_ops</c>.</summary>
    None,
    /// <summary>KVM (<c>kvm_guest_init()</c>, <c>kvm_spinlock_init()</c>): see <c>docs/kernel-patching.md</c> for what changes and what is assumed.</summary>
    Kvm,
}

/// <summary>
/// What the kernel knows about the boot CPU when <c>alternative_instructions()</c> runs: every capability and bug
/// bit of <c>boot_cpu_data</c> (visible and hidden), the mitigation choices of <c>cpu_select_mitigations()</c>,
/// the chosen return thunk, and the number of CPUs. Made by <see cref="KernelBootCpu.Derive"/> from a
/// <see cref="KernelCpuDescription"/>.
/// </summary>
public sealed class KernelBootState
{
    /// <summary>Creates a state.</summary>
    /// <param name="features">The capability and bug bits (Linux 6.1 numbering) and the CPU's identity.</param>
    /// <param name="returnThunk">The chosen <c>x86_return_thunk</c>.</param>
    /// <param name="cpus">Present (and possible) CPUs; 1 switches the SMP lock prefixes to UP.</param>
    /// <param name="hypervisor">The hypervisor the kernel detects.</param>
    /// <param name="decisions">One line per decision, in the order taken (for people and reports).</param>
    /// <param name="pvOpsOverrides">pv_ops slots whose value the kernel changed before patching (slot → function address).</param>
    /// <param name="commandLine">The kernel command line (null: the empty one).</param>
    public KernelBootState(CpuFeatures features, ReturnThunkKind returnThunk, int cpus, KernelHypervisor hypervisor,
        IEnumerable<string>? decisions = null, IReadOnlyDictionary<int, ulong>? pvOpsOverrides = null, KernelCommandLine? commandLine = null)
    {
        ArgumentNullException.ThrowIfNull(features);
        ArgumentOutOfRangeException.ThrowIfLessThan(cpus, 1);
        Features = features;
        ReturnThunk = returnThunk;
        Cpus = cpus;
        Hypervisor = hypervisor;
        Decisions = [.. decisions ?? []];
        PvOpsOverrides = pvOpsOverrides?.ToImmutableDictionary() ?? ImmutableDictionary<int, ulong>.Empty;
        CommandLine = commandLine ?? KernelCommandLine.Empty;
        Smp = KernelSmpSwitch.Decide(cpus, CommandLine);
    }

    /// <summary><c>boot_cpu_data.x86_capability[]</c> as <c>alternative_instructions()</c> sees it, and the CPU's identity.</summary>
    public CpuFeatures Features { get; }

    /// <summary>The chosen <c>x86_return_thunk</c>.</summary>
    public ReturnThunkKind ReturnThunk { get; }

    /// <summary>Present and possible CPUs (<c>num_present_cpus()</c>, <c>num_possible_cpus()</c>).</summary>
    public int Cpus { get; }

    /// <summary>The hypervisor the kernel detects.</summary>
    public KernelHypervisor Hypervisor { get; }

    /// <summary>The derivation's decisions, one line each, like the kernel's boot messages.</summary>
    public ImmutableArray<string> Decisions { get; }

    /// <summary>pv_ops slots the kernel set before <c>apply_paravirt()</c> (slot index → function address).</summary>
    public ImmutableDictionary<int, ulong> PvOpsOverrides { get; }

    /// <summary>The kernel command line the state was derived for; the text passes read its <c>preempt=</c> and <c>ftrace=</c>.</summary>
    public KernelCommandLine CommandLine { get; }

    /// <summary>Whether <c>alternative_instructions()</c> switches the SMP lock prefixes to UP, from <see cref="Cpus"/> and the
    /// command line's <c>noreplace-smp</c>, <c>nosmp</c>, <c>maxcpus=</c>, <c>nr_cpus=</c>, <c>possible_cpus=</c>.</summary>
    public KernelSmpSwitch Smp { get; }

    /// <summary>Shorthand for <c>boot_cpu_has(f)</c>.</summary>
    public bool Has(CpuFeature f) => Features.Has(f);

    /// <summary>The final <c>boot_cpu_data.x86_capability[]</c> in the image's own numbering, when the line's numbering is
    /// not Linux 6.1.176's (6.12: <see cref="Features"/> is then the 6.1-numbered view of the features both have); null
    /// for 6.1 and 2.6.22.</summary>
    public ImageFeatureBits? ImageFeatures { get; init; }

    /// <summary>Whether the boot CPU has the feature <paramref name="macro"/> (<c>X86_FEATURE_CALL_DEPTH</c>) of the image's
    /// numbering; without <see cref="ImageFeatures"/>, of Linux 6.1.176's.</summary>
    public bool HasMacro(string macro) =>
        ImageFeatures is { } bits ? bits.Has(macro)
        : FeatureNumbering.Linux61.TryGetNumber(macro, out int n) && Features.Has((CpuFeature)n);
}

/// <summary>A capability bitmap (<c>x86_capability[]</c>, NCAPINTS + NBUGINTS words) in the numbering of one kernel line.</summary>
public sealed class ImageFeatureBits
{
    private readonly bool[] bits;

    /// <summary>A bitmap of <paramref name="numbering"/> with the numbers <paramref name="set"/>.</summary>
    public ImageFeatureBits(FeatureNumbering numbering, IEnumerable<int> set)
    {
        ArgumentNullException.ThrowIfNull(numbering);
        ArgumentNullException.ThrowIfNull(set);
        Numbering = numbering;
        bits = new bool[(numbering.CapabilityWords + numbering.BugWords) * 32];
        foreach (int n in set)
        {
            if (n >= 0 && n < bits.Length)
                bits[n] = true;
        }
    }

    /// <summary>The numbering.</summary>
    public FeatureNumbering Numbering { get; }

    /// <summary><c>boot_cpu_has(n)</c>.</summary>
    public bool Has(int n) => n >= 0 && n < bits.Length && bits[n];

    /// <summary>Whether the feature named <paramref name="macro"/> (or cpuinfo name) is set; false when the numbering has no such feature.</summary>
    public bool Has(string macro) => Numbering.TryGetNumber(macro, out int n) && Has(n);

    /// <summary>The set numbers, ascending.</summary>
    public IEnumerable<int> Numbers => Enumerable.Range(0, bits.Length).Where(i => bits[i]);

    /// <summary>The 32-bit word <paramref name="w"/> of the bitmap.</summary>
    public uint Word(int w)
    {
        uint v = 0;
        for (int b = 0; b < 32; b++)
        {
            if (bits[w * 32 + b])
                v |= 1u << b;
        }
        return v;
    }
}

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
}

using System.Collections.Immutable;
using System.Globalization;
using Altpatch.Cpu;

namespace Altpatch.Images.Boot;

/// <summary>The KVM paravirtual features (CPUID 0x40000001) that change <c>pv_ops</c> before <c>apply_paravirt()</c>.</summary>
[Flags]
public enum KvmFeatures
{
    /// <summary>None.</summary>
    None = 0,
    /// <summary>KVM_FEATURE_NOP_IO_DELAY: <c>pv_ops.cpu.io_delay = kvm_io_delay</c> (<c>paravirt_ops_setup()</c>).</summary>
    NopIoDelay = 1,
    /// <summary>KVM_FEATURE_STEAL_TIME: <c>pv_ops.lock.vcpu_is_preempted = __kvm_vcpu_is_preempted</c> (<c>kvm_guest_init()</c>).</summary>
    StealTime = 2,
    /// <summary>KVM_FEATURE_PV_UNHALT: PV spinlocks (<c>kvm_spinlock_init()</c>) on more than one CPU.</summary>
    PvUnhalt = 4,
    /// <summary>KVM_FEATURE_PV_TLB_FLUSH (with STEAL_TIME, more than one CPU): <c>flush_tlb_multi</c>, <c>tlb_remove_table</c>.</summary>
    PvTlbFlush = 8,
    /// <summary>KVM_HINTS_REALTIME: dedicated pCPUs, no PV spinlocks and no PV TLB flush.</summary>
    HintsRealtime = 16,
}

/// <summary>The <c>pv_ops</c> slots a KVM guest changes, and the features <c>paravirt_set_cap()</c> derives from them.</summary>
/// <param name="Overrides">Slot index → new target.</param>
/// <param name="QueuedSpinUnlockChanged">pv_ops.lock.queued_spin_unlock is no longer native: X86_FEATURE_PVUNLOCK.</param>
/// <param name="VcpuIsPreemptedChanged">pv_ops.lock.vcpu_is_preempted is no longer native: X86_FEATURE_VCPUPREEMPT.</param>
/// <param name="Notes">What was changed, one line each.</param>
public sealed record KvmPvOps(ImmutableDictionary<int, ulong> Overrides, bool QueuedSpinUnlockChanged, bool VcpuIsPreemptedChanged, ImmutableArray<string> Notes)
{
    /// <summary>No change (bare metal).</summary>
    public static KvmPvOps None { get; } = new(ImmutableDictionary<int, ulong>.Empty, false, false, []);
}

/// <summary>
/// What Linux 6.1 does to <c>pv_ops</c> as a KVM guest before it patches itself (<c>arch/x86/kernel/kvm.c</c>:
/// <c>paravirt_ops_setup()</c>, <c>kvm_guest_init()</c>, <c>kvm_spinlock_init()</c>). The new targets are KVM
/// functions a stripped image does not name, so they come from a symbol file of the same build (System.map or
/// <c>/proc/kallsyms</c>); each slot is found by its initial, native target's name. Not checked against a real
/// KVM boot: no KVM ground truth could be made here (see docs/groundtruth.md).
/// </summary>
public static class KvmGuest
{
    /// <summary>The KVM features a QEMU named CPU model gets by default (<c>kvm_default_props</c>: kvm-nopiodelay,
    /// kvm-steal-time; kvm-pv-unhalt and kvm-pv-tlb-flush are off unless asked for).</summary>
    public const KvmFeatures QemuDefaults = KvmFeatures.NopIoDelay | KvmFeatures.StealTime;

    /// <summary>
    /// The names of the KVM features, as <c>--kvm-features</c> takes them: QEMU's property names without the
    /// <c>kvm-</c> prefix (<c>nopiodelay</c>, <c>steal-time</c> or <c>steal_time</c>, ...), <c>realtime</c> for
    /// the hint, <c>none</c> for no feature. Each feature's first name is its own.
    /// </summary>
    public static IReadOnlyList<(string Name, KvmFeatures Feature)> FeatureNames { get; } =
    [
        ("nopiodelay", KvmFeatures.NopIoDelay),
        ("nop_io_delay", KvmFeatures.NopIoDelay),
        ("steal_time", KvmFeatures.StealTime),
        ("steal-time", KvmFeatures.StealTime),
        ("pv_unhalt", KvmFeatures.PvUnhalt),
        ("pv-unhalt", KvmFeatures.PvUnhalt),
        ("pv_tlb_flush", KvmFeatures.PvTlbFlush),
        ("pv-tlb-flush", KvmFeatures.PvTlbFlush),
        ("realtime", KvmFeatures.HintsRealtime),
        ("none", KvmFeatures.None),
    ];

    /// <summary>The features named by <paramref name="names"/> (case-insensitive, see <see cref="FeatureNames"/>).</summary>
    /// <exception cref="CpuFeatureException">A name is not a KVM feature's; the message lists the names.</exception>
    public static KvmFeatures ParseFeatures(IEnumerable<string> names)
    {
        ArgumentNullException.ThrowIfNull(names);
        var f = KvmFeatures.None;
        foreach (var n in names)
        {
            int i = -1;
            for (int k = 0; k < FeatureNames.Count && i < 0; k++)
            {
                if (string.Equals(FeatureNames[k].Name, n, StringComparison.OrdinalIgnoreCase))
                    i = k;
            }
            if (i < 0)
            {
                var own = FeatureNames.DistinctBy(e => e.Feature).Select(e => e.Name);
                throw new CpuFeatureException($"unknown KVM feature '{n}' ({string.Join(", ", own)})");
            }
            f |= FeatureNames[i].Feature;
        }
        return f;
    }

    /// <summary>Reads a symbol file: lines "address type name" (System.map, /proc/kallsyms); later duplicates are ignored.</summary>
    /// <param name="text">The file's text.</param>
    public static ImmutableDictionary<string, ulong> ReadSymbols(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var d = new Dictionary<string, ulong>(StringComparer.Ordinal);
        foreach (var line in text.Split('\n'))
        {
            var parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length < 3 || parts[1].Length != 1)
                continue;
            if (ulong.TryParse(parts[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong a))
                d.TryAdd(parts[2], a);
        }
        return d.ToImmutableDictionary(StringComparer.Ordinal);
    }

    /// <summary>The pv_ops changes for a KVM guest with <paramref name="features"/> and <paramref name="cpus"/> CPUs.</summary>
    /// <param name="image">The image (its initial pv_ops).</param>
    /// <param name="features">The KVM features the host offers.</param>
    /// <param name="cpus">Possible CPUs (PV spinlocks and PV TLB flush need more than one).</param>
    /// <param name="symbols">Symbols of the same build.</param>
    /// <exception cref="KernelPatchException">A symbol needed is missing, or pv_ops cannot be located.</exception>
    public static KvmPvOps Plan(KernelImage image, KvmFeatures features, int cpus, IReadOnlyDictionary<string, ulong>? symbols)
    {
        ArgumentNullException.ThrowIfNull(image);
        var pv = image.Tables.PvOps;
        var overrides = ImmutableDictionary.CreateBuilder<int, ulong>();
        var notes = ImmutableArray.CreateBuilder<string>();
        bool unlock = false, preempt = false;
        bool realtime = features.HasFlag(KvmFeatures.HintsRealtime);

        ulong Sym(string name) => symbols is not null && symbols.TryGetValue(name, out var a) ? a
            : throw new KernelPatchException($"{image.Name}: --hypervisor kvm needs the address of {name}: give a System.map or kallsyms of this build (--symbols)");
        int Slot(string nativeName)
        {
            if (pv is null)
                throw new KernelPatchException($"{image.Name}: pv_ops could not be located in the image");
            ulong native = Sym(nativeName);
            return pv.Slots.IndexOf(native);   // -1: no site uses the slot, so its value does not matter
        }
        void Change(int slot, string target, string why)
        {
            if (slot < 0)
                return;
            overrides[slot] = Sym(target);
            notes.Add($"pv_ops[{slot}] = {target}: {why}");
        }

        if (features.HasFlag(KvmFeatures.NopIoDelay))
            Change(Slot("native_io_delay"), "kvm_io_delay", "paravirt_ops_setup(), KVM_FEATURE_NOP_IO_DELAY");
        if (features.HasFlag(KvmFeatures.StealTime))
        {
            Change(Slot("__raw_callee_save___native_vcpu_is_preempted"), "__raw_callee_save___kvm_vcpu_is_preempted", "kvm_guest_init(), KVM_FEATURE_STEAL_TIME");
            preempt = true;
        }
        if (features.HasFlag(KvmFeatures.PvTlbFlush) && features.HasFlag(KvmFeatures.StealTime) && !realtime && cpus != 1)
        {
            Change(Slot("native_flush_tlb_multi"), "kvm_flush_tlb_multi", "kvm_guest_init(), pv_tlb_flush_supported()");
            Change(Slot("tlb_remove_page"), "tlb_remove_table", "kvm_guest_init(), pv_tlb_flush_supported()");
        }
        if (features.HasFlag(KvmFeatures.PvUnhalt) && !realtime && cpus != 1)
        {
            int unlockSlot = Slot("__raw_callee_save___native_queued_spin_unlock");
            Change(Slot("native_queued_spin_lock_slowpath"), "__pv_queued_spin_lock_slowpath", "kvm_spinlock_init(), KVM_FEATURE_PV_UNHALT");
            Change(unlockSlot, "__raw_callee_save___pv_queued_spin_unlock", "kvm_spinlock_init()");
            if (unlockSlot >= 0)
            {
                Change(unlockSlot + 1, "kvm_wait", "kvm_spinlock_init(): pv_lock_ops.wait follows queued_spin_unlock");
                Change(unlockSlot + 2, "kvm_kick_cpu", "kvm_spinlock_init(): pv_lock_ops.kick follows wait");
            }
            unlock = true;
        }
        return new KvmPvOps(overrides.ToImmutable(), unlock, preempt, notes.ToImmutable());
    }
}

using Altpatch.Cpu;
using Altpatch.Images.Boot;
using Altpatch.Tests.Cli;
using static Altpatch.Tests.KernelPatch.BootImageBuilder;

namespace Altpatch.Tests.KernelPatch;

/// <summary>--hypervisor kvm: the pv_ops slots kvm_guest_init()/kvm_spinlock_init() change, and paravirt_set_cap().
/// No KVM ground truth exists; these check the rules on a synthetic image.</summary>
public class KvmGuestTests
{
    private static (BootImageBuilder B, Dictionary<string, ulong> Symbols) Image()
    {
        var b = new BootImageBuilder();
        var syms = new Dictionary<string, ulong>
        {
            ["native_io_delay"] = b.NativeFunction(0),
            ["kvm_io_delay"] = b.Text + 0x3e00,
            ["native_queued_spin_lock_slowpath"] = b.NativeFunction(5),
            ["__raw_callee_save___native_queued_spin_unlock"] = b.NativeFunction(6),
            ["__raw_callee_save___native_vcpu_is_preempted"] = b.NativeFunction(9),
            ["__raw_callee_save___kvm_vcpu_is_preempted"] = b.Text + 0x3e10,
            ["__pv_queued_spin_lock_slowpath"] = b.Text + 0x3e20,
            ["__raw_callee_save___pv_queued_spin_unlock"] = b.Text + 0x3e30,
            ["kvm_wait"] = b.Text + 0x3e40,
            ["kvm_kick_cpu"] = b.Text + 0x3e50,
        };
        for (int t = 0; t <= 9; t++)
            b.AddPara(b.Text + 0x100 + (ulong)t * 0x10, (byte)t);
        return (b, syms);
    }

    private static KernelCpuDescription Kvm(Dictionary<string, ulong>? syms, KvmFeatures f, int cpus = 2) => new()
    {
        Cpu = CpuFeatures.FromNames(["fpu", "sse2"], CpuVendor.Intel, 6, 85, 7),
        Cpus = cpus,
        Hypervisor = KernelHypervisor.Kvm,
        KvmFeatures = f,
        Symbols = syms,
    };

    [Fact]
    public void Qemu_defaults_redirect_io_delay_and_vcpu_is_preempted()
    {
        var (b, syms) = Image();
        var r = KernelBootPatcher.Patch(b.Open(), Kvm(syms, KvmGuest.QemuDefaults));
        Assert.Equal(syms["kvm_io_delay"], BranchTarget(r, b.Text + 0x100));
        Assert.Equal(syms["__raw_callee_save___kvm_vcpu_is_preempted"], BranchTarget(r, b.Text + 0x190));
        Assert.Equal(b.NativeFunction(6), BranchTarget(r, b.Text + 0x160));
        Assert.True(r.State.Has(CpuFeature.Vcpupreempt));
        Assert.False(r.State.Has(CpuFeature.Pvunlock));
        Assert.True(r.State.Has(CpuFeature.Hypervisor));
    }

    [Fact]
    public void Pv_unhalt_switches_the_lock_ops_but_not_on_one_cpu()
    {
        var (b, syms) = Image();
        var f = KvmFeatures.NopIoDelay | KvmFeatures.StealTime | KvmFeatures.PvUnhalt;
        var r = KernelBootPatcher.Patch(b.Open(), Kvm(syms, f));
        Assert.Equal(syms["__pv_queued_spin_lock_slowpath"], BranchTarget(r, b.Text + 0x150));
        Assert.Equal(syms["__raw_callee_save___pv_queued_spin_unlock"], BranchTarget(r, b.Text + 0x160));
        Assert.Equal(syms["kvm_wait"], BranchTarget(r, b.Text + 0x170));
        Assert.Equal(syms["kvm_kick_cpu"], BranchTarget(r, b.Text + 0x180));
        Assert.True(r.State.Has(CpuFeature.Pvunlock));
        var up = KernelBootPatcher.Patch(b.Open(), Kvm(syms, f, cpus: 1));
        Assert.Equal(b.NativeFunction(6), BranchTarget(up, b.Text + 0x160));
        Assert.False(up.State.Has(CpuFeature.Pvunlock));
    }

    [Fact]
    public void Without_symbols_kvm_is_refused_clearly()
    {
        var (b, _) = Image();
        var e = Assert.Throws<KernelPatchException>(() => KernelBootPatcher.Patch(b.Open(), Kvm(null, KvmGuest.QemuDefaults)));
        Assert.Contains("native_io_delay", e.Message, StringComparison.Ordinal);
        Assert.Contains("--symbols", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Symbol_files_are_read_in_system_map_and_kallsyms_form()
    {
        var s = KvmGuest.ReadSymbols("ffffffff81000000 T _text\nffffffff8103ba60 t native_io_delay\nbogus line\nffffffff81072190 t kvm_io_delay [kvm]\n");
        Assert.Equal(0xffffffff8103ba60UL, s["native_io_delay"]);
        Assert.Equal(0xffffffff81072190UL, s["kvm_io_delay"]);
        Assert.Equal(3, s.Count);
    }

    [Fact]
    public void Cli_takes_symbols_and_kvm_features()
    {
        var (b, syms) = Image();
        string dir = Directory.CreateTempSubdirectory("altpatch-kvm-").FullName;
        try
        {
            string img = Path.Combine(dir, "vmlinux"), map = Path.Combine(dir, "System.map"), output = Path.Combine(dir, "out");
            File.WriteAllBytes(img, b.Build());
            File.WriteAllLines(map, syms.Select(kv => $"{kv.Value:x16} t {kv.Key}"));
            var ok = CliRunner.Run("kernel", "patch", img, "--flags", "fpu", "--hypervisor", "kvm", "--symbols", map, "--kvm-features", "nopiodelay,pv_unhalt", "-o", output);
            Assert.True(ok.Exit == 0, ok.Err);
            Assert.Contains("PVUNLOCK", ok.Out, StringComparison.Ordinal);
            var bad = CliRunner.Run("kernel", "patch", img, "--flags", "fpu", "--hypervisor", "kvm", "--kvm-features", "turbo", "-o", output + "2");
            Assert.Equal(1, bad.Exit);
            Assert.Contains("'turbo'", bad.Err, StringComparison.Ordinal);
            Assert.False(File.Exists(output + "2"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Kvm_feature_names_are_data_with_aliases_and_an_error_that_lists_them()
    {
        Assert.Equal(KvmFeatures.NopIoDelay | KvmFeatures.StealTime, KvmGuest.ParseFeatures(["nopiodelay", "Steal-Time"]));
        Assert.Equal(KvmFeatures.PvUnhalt | KvmFeatures.PvTlbFlush | KvmFeatures.HintsRealtime,
            KvmGuest.ParseFeatures(["pv_unhalt", "pv-tlb-flush", "realtime", "none"]));
        Assert.Equal(KvmFeatures.None, KvmGuest.ParseFeatures(["none"]));
        var e = Assert.Throws<CpuFeatureException>(() => KvmGuest.ParseFeatures(["nopiodelay", "turbo"]));
        Assert.Equal("unknown KVM feature 'turbo' (nopiodelay, steal_time, pv_unhalt, pv_tlb_flush, realtime, none)", e.Message);
        // every flag has a name
        foreach (var f in Enum.GetValues<KvmFeatures>())
            Assert.Contains(KvmGuest.FeatureNames, n => n.Feature == f);
    }
}

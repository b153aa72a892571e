using System.Buffers.Binary;
using System.Text.RegularExpressions;
using Altpatch.Images;
using Altpatch.Images.Boot;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// Linux 6.12's boot-time static-call updates (<see cref="BootPass.BootCalls"/>) on the shared 6.12 image: the LSM order
/// <c>security_init()</c> reports in the boot's own dmesg, each LSM hook in its static call slot and its key's jump labels
/// enabled, the command line's <c>lsm=</c> and <c>security=</c>, the APIC driver's <c>apic_call_*</c>, <c>x86_idle</c>,
/// what is left dynamic (x2APIC, MWAIT), and the build's default preempt mode read through 6.12's inlined
/// <c>sched_dynamic_update()</c>. The whole-text ground truth checks the bytes of every boot (<see cref="WholeTextTests"/>).
/// </summary>
public sealed class BootCallsTests
{
    private const string Image = "6.12.118+deb12-cloud-amd64";

    private static readonly Lazy<KernelImage?> Img = new(() =>
    {
        string p = Path.Combine(TestPaths.SharedLinux, "vmlinuz-" + Image);
        return File.Exists(p) ? KernelImage.Open(p) : null;
    });

    private static KernelPatchResult Patch(string config, string cmdline = "", Func<KernelCpuDescription, KernelCpuDescription>? change = null)
    {
        Skip.If(Img.Value is null, $"the shared image vmlinuz-{Image} is not present");
        var img = Img.Value!;
        var description = KernelCpuDescription.FromCpuInfo(File.ReadAllText(Path.Combine(GroundTruth.Dir, Image, config, "cpuinfo")))
            with { Cpus = 2, CommandLine = KernelCommandLine.Parse(cmdline) };
        if (change is not null)
            description = change(description);
        var thunks = KernelThunks.Find(img);
        return KernelBootPatcher.Patch(img, KernelBootPatcher.DeriveState(img, description, thunks), thunks, KernelTextOptions.Default);
    }

    private static string Decision(KernelPatchResult r, string start) =>
        r.TextDecisions.FirstOrDefault(d => d.StartsWith(start, StringComparison.Ordinal)) ?? throw new Xunit.Sdk.XunitException($"no decision starting '{start}':\n" + string.Join("\n", r.TextDecisions));

    /// <summary>Where the trampoline <c>__SCT__name</c> jumps in the patched image (null: not a jmp).</summary>
    private static string? TrampolineTarget(KernelPatchResult r, string name)
    {
        var sym = r.Image.Symbols;
        ulong at = sym.AddressOf("__SCT__" + name);
        var b = r.Patched.ReadBytes(at, 5);
        if (b[0] != 0xe9)
            return null;
        ulong target = at + 5 + (ulong)(long)BinaryPrimitives.ReadInt32LittleEndian(b[1..]);
        return sym.TryFind(target, out var s, out ulong off) && off == 0 ? s.Name : $"0x{target:x}";
    }

    /// <summary>A NULL trampoline: the RET form, or (after <c>apply_returns()</c>) a jump to a return thunk.</summary>
    private static bool IsNull(string? target) => target is null || target.Contains("return_thunk", StringComparison.Ordinal);

    [SkippableFact]
    public void The_LSM_order_is_the_one_the_booted_kernel_reports_and_each_hook_is_in_its_slot()
    {
        var r = Patch("Haswell-smp2");
        var dmesg = File.ReadAllText(Path.Combine(GroundTruth.Dir, Image, "Haswell-smp2", "dmesg"));
        string booted = Regex.Match(dmesg, @"LSM: initializing lsm=(\S+)").Groups[1].Value;
        Assert.Equal("lockdown,capability,landlock,yama,apparmor,tomoyo,bpf,ipe,ima,evm", booted);
        Assert.Contains($"initializing lsm={booted};", Decision(r, "security_init(): LSM order from CONFIG_LSM"), StringComparison.Ordinal);
        // ptrace_access_check: capability, landlock, yama, apparmor, bpf, in that order; the sixth slot stays NULL
        Assert.Equal(["cap_ptrace_access_check", "hook_ptrace_access_check", "yama_ptrace_access_check", "apparmor_ptrace_access_check", "bpf_lsm_ptrace_access_check"],
            Enumerable.Range(0, 5).Select(i => TrampolineTarget(r, $"lsm_static_call_ptrace_access_check_{i}")));
        Assert.True(IsNull(TrampolineTarget(r, "lsm_static_call_ptrace_access_check_5")));
        // lockdown is the early LSM: slot 0 of locked_down
        Assert.Equal("lockdown_is_locked_down", TrampolineTarget(r, "lsm_static_call_locked_down_0"));
        // the slot's key is enabled: its jump labels jump
        var sym = r.Image.Symbols;
        ulong key = sym.AddressOf("security_hook_active_ptrace_access_check_0");
        var labels = r.TextTables!.JumpEntries.Where(e => e.Key == key).ToList();
        Assert.NotEmpty(labels);
        Assert.All(labels, e => Assert.Contains(r.Patched.ReadBytes(e.Code, 1)[0], new byte[] { 0xeb, 0xe9 }));
        ulong unused = sym.AddressOf("security_hook_active_ptrace_access_check_5");
        Assert.All(r.TextTables.JumpEntries.Where(e => e.Key == unused), e => Assert.Equal(r.Image.Elf.ReadBytes(e.Code, e.Length).ToArray(), r.Patched.ReadBytes(e.Code, e.Length).ToArray()));
    }

    [SkippableFact]
    public void Lsm_and_security_on_the_command_line_change_the_order()
    {
        var r = Patch("Haswell-smp2", "lsm=yama,capability,selinux");
        // capability is LSM_ORDER_FIRST, ima and evm LAST; the early lockdown is first of all
        Assert.Contains("initializing lsm=lockdown,capability,yama,selinux,ima,evm;", Decision(r, "security_init(): LSM order from lsm="), StringComparison.Ordinal);
        Assert.Equal(["cap_ptrace_access_check", "yama_ptrace_access_check", "selinux_ptrace_access_check"],
            Enumerable.Range(0, 3).Select(i => TrampolineTarget(r, $"lsm_static_call_ptrace_access_check_{i}")));
        Assert.True(IsNull(TrampolineTarget(r, "lsm_static_call_ptrace_access_check_3")));
        // security=selinux: the other legacy majors (apparmor, tomoyo) are disabled and selinux takes apparmor's place
        var s = Patch("Haswell-smp2", "security=selinux");
        Assert.Contains("initializing lsm=lockdown,capability,landlock,yama,selinux,bpf,ipe,ima,evm;", Decision(s, "security_init()"), StringComparison.Ordinal);
        // apparmor=0: apparmor's own flag; the next exclusive LSM in CONFIG_LSM (selinux) is initialised instead
        var a = Patch("Haswell-smp2", "apparmor=0");
        Assert.Contains("initializing lsm=lockdown,capability,landlock,yama,selinux,tomoyo,bpf,ipe,ima,evm;", Decision(a, "security_init()"), StringComparison.Ordinal);
    }

    [SkippableFact]
    public void The_APIC_calls_come_from_the_default_driver_and_x2APIC_leaves_them_dynamic()
    {
        var r = Patch("Haswell-smp2");
        Assert.Contains("APIC driver apic_physflat", Decision(r, "apic_setup_apic_calls()"), StringComparison.Ordinal);
        Assert.Equal("native_apic_mem_eoi", TrampolineTarget(r, "apic_call_eoi"));
        Assert.Equal("native_apic_mem_eoi", TrampolineTarget(r, "apic_call_native_eoi"));   // apic->native_eoi = apic->eoi first
        Assert.Equal("default_send_IPI_mask_sequence_phys", TrampolineTarget(r, "apic_call_send_IPI_mask"));
        Assert.True(IsNull(TrampolineTarget(r, "apic_call_wakeup_secondary_cpu")));          // NULL in physflat
        Assert.Equal("default_idle", TrampolineTarget(r, "x86_idle"));
        Assert.Contains("x86_idle = default_idle (no MWAIT)", Decision(r, "select_idle_routine()"), StringComparison.Ordinal);

        var x2 = Patch("Haswell-smp2", "", d => d with { Set = [Altpatch.Cpu.CpuFeature.X2apic] });
        Assert.Contains("not predicted", Decision(x2, "apic_setup_apic_calls()"), StringComparison.Ordinal);
        Assert.True(IsNull(TrampolineTarget(x2, "apic_call_eoi")));
        // MWAIT: leaf 5 decides, not in cpuinfo
        var epyc = Patch("EPYC-Rome-smp1");
        Assert.Contains("CPUID leaf 5", Decision(epyc, "select_idle_routine()"), StringComparison.Ordinal);
        Assert.Equal("default_idle", TrampolineTarget(Patch("EPYC-Rome-smp1", "idle=halt"), "x86_idle"));
    }

    [SkippableFact]
    public void The_default_preempt_mode_is_read_through_the_inlined_sched_dynamic_update()
    {
        var r = Patch("Haswell-smp2");
        Assert.Equal(PreemptMode.Voluntary, r.Preempt);
        Assert.Contains("sched_init+0x", Decision(r, "Dynamic Preempt: voluntary"), StringComparison.Ordinal);
        Assert.Equal("__cond_resched", TrampolineTarget(r, "cond_resched"));
        Assert.True(IsNull(TrampolineTarget(r, "preempt_schedule")));
    }
}

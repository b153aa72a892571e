using Altpatch.Images.Boot;

namespace Altpatch.Tests.KernelPatch;

/// <summary>KernelCommandLine reads options the way 6.1.176 does: early_param() (parameq, each occurrence, last
/// accepted wins), __setup() (prefix match), and x86's cmdline_find_option() (exact bytes, last one, buffer size).</summary>
public class CommandLineTests
{
    private static KernelCommandLine P(string s) => KernelCommandLine.Parse(s);

    [Fact]
    public void The_default_command_line_changes_nothing()
    {
        var c = P("console=ttyS0 nokaslr panic=0\n");
        Assert.Equal(MitigationsMode.Auto, c.Mitigations);
        Assert.Equal(SpectreV2Command.Auto, c.SpectreV2);
        Assert.Equal(PtiCommand.Auto, c.Pti);
        Assert.Equal(SrsoCommand.SafeRet, c.Srso);
        Assert.Null(c.Preempt);
        Assert.Null(c.MaxCpus);
        Assert.False(c.NoReplaceSmp);
        Assert.Equal(["console=ttyS0", "nokaslr", "panic=0"], c.Unknown.AsEnumerable());
        Assert.Equal("console=ttyS0 nokaslr panic=0", c.Text);
    }

    [Fact]
    public void Mitigations_off_turns_off_what_reads_cpu_mitigations_off()
    {
        var c = P("mitigations=off");
        Assert.Equal(MitigationsMode.Off, c.Mitigations);
        Assert.Equal(SpectreV2Command.Off, c.SpectreV2);
        Assert.Equal(SsbCommand.None, c.Ssb);
        Assert.Equal(PtiCommand.Off, c.Pti);
        // an unsupported value is ignored, the last accepted one wins, and - = _ in early_param names
        Assert.Equal(MitigationsMode.AutoNosmt, P("mitigations=auto,nosmt mitigations=bogus").Mitigations);
    }

    [Fact]
    public void Pti_on_wins_over_nopti_and_mitigations_off_as_in_pti_check_boottime_disable()
    {
        Assert.Equal(PtiCommand.On, P("nopti pti=on mitigations=off").Pti);
        Assert.Equal(PtiCommand.Off, P("nopti").Pti);
        Assert.Equal(PtiCommand.Off, P("pti=bogus nopti").Pti);     // not off/on/auto: falls through to nopti
        Assert.Equal(PtiCommand.Auto, P("pti=on pti=auto").Pti);    // cmdline_find_option(): the last one
        Assert.Equal(PtiCommand.Auto, P("xnopti").Pti);             // a boolean option is a whole word
    }

    [Theory]
    [InlineData("spectre_v2=retpoline", SpectreV2Command.Retpoline)]
    [InlineData("spectre_v2=retpoline,amd", SpectreV2Command.RetpolineLfence)]
    [InlineData("spectre_v2=eibrs,retpoline", SpectreV2Command.EibrsRetpoline)]
    [InlineData("spectre_v2=ibrs", SpectreV2Command.Ibrs)]
    [InlineData("spectre_v2=off", SpectreV2Command.Off)]
    [InlineData("spectre_v2=on", SpectreV2Command.On)]
    [InlineData("spectre_v2=retpolinex", SpectreV2Command.Auto)]          // match_option(): whole value
    [InlineData("spectre_v2=eibrs,retpoline,lfence", SpectreV2Command.Auto)]   // truncated to arg[20], length too long
    [InlineData("nospectre_v2 spectre_v2=on", SpectreV2Command.Off)]
    [InlineData("spectre-v2=retpoline", SpectreV2Command.Auto)]            // cmdline_find_option(): no - = _
    public void Spectre_v2_reads_the_kernels_option_table(string line, SpectreV2Command expected) =>
        Assert.Equal(expected, P(line).SpectreV2);

    [Fact]
    public void Early_params_fold_each_occurrence_and_compare_dashes_as_underscores()
    {
        var c = P("retbleed=unret,nosmt retbleed=bogus spec-rstack-overflow=ibpb mds=full,nosmt tsx_async_abort=off l1tf=full,force "
            + "indirect_target_selection=force tsa=vm vmscape=ibpb spectre_bhi=off gather_data_sampling=force reg_file_data_sampling=off "
            + "srbds=off nospectre_v1 nosmt=force l1d_flush=on");
        Assert.Equal(RetbleedCommand.Unret, c.Retbleed);
        Assert.True(c.RetbleedNosmt);
        Assert.Equal(SrsoCommand.Ibpb, c.Srso);
        Assert.Equal(VerwCommand.FullNosmt, c.Mds);
        Assert.Equal(VerwCommand.Off, c.Taa);
        Assert.Equal(VerwCommand.Full, c.Mmio);
        Assert.Equal(L1tfCommand.FullForce, c.L1tf);
        Assert.Equal(ItsCommand.Force, c.Its);
        Assert.Equal(TsaCommand.Vm, c.Tsa);
        Assert.Equal(VmscapeCommand.IbpbExitToUser, c.Vmscape);
        Assert.Equal(BhiCommand.Off, c.SpectreBhi);
        Assert.True(c.Gds);
        Assert.False(c.Rfds);
        Assert.True(c.SrbdsOff);
        Assert.True(c.NoSpectreV1);
        Assert.True(c.NoSmtForce);
        Assert.True(c.L1dFlush);
        Assert.Empty(c.Unknown);
    }

    [Fact]
    public void Ssb_and_spectre_v2_user()
    {
        Assert.Equal(SsbCommand.Seccomp, P("spec_store_bypass_disable=seccomp").Ssb);
        Assert.Equal(SsbCommand.None, P("spec_store_bypass_disable=on nospec_store_bypass_disable").Ssb);
        Assert.Equal(SpectreV2UserCommand.PrctlIbpb, P("spectre_v2_user=prctl,ibpb").SpectreV2User);
        Assert.Equal(SpectreV2UserCommand.Auto, P("spectre_v2_user=nonsense").SpectreV2User);
    }

    [Fact]
    public void Cpu_features_cleared_by_the_command_line()
    {
        var c = P("noxsaves clearcpuid=514,avx512f,,pku nopcid noinvpcid=1 nofsgsbase nopku");
        Assert.Equal(["xsaves", "avx512f", "pku", "pcid", "fsgsbase"], c.ClearedFeatures.AsEnumerable());   // noinvpcid=1: "doesn't accept parameters"
        Assert.Equal([514], c.ClearCpuIdNumbers.AsEnumerable());
        Assert.True(c.NoPku);
        Assert.DoesNotContain("fsgsbase", P("nofsgsbasex").ClearedFeatures);   // __setup prefix matches, the handler wants nothing after it
    }

    [Fact]
    public void Smp_options()
    {
        Assert.Equal(0, P("nosmp").MaxCpus);
        Assert.Equal(1, P("maxcpus=1").MaxCpus);
        Assert.Equal(4, P("maxcpus=0x4").MaxCpus);
        Assert.Null(P("maxcpus=x").MaxCpus);
        Assert.Equal(2, P("nr_cpus=2").NrCpus);
        Assert.Null(P("nr_cpus=0").NrCpus);
        Assert.Equal(3, P("possible_cpus=3").PossibleCpus);
        Assert.True(P("noreplace-smp").NoReplaceSmp);
        Assert.True(P("noreplace_smp").NoReplaceSmp);                  // parameqn()
    }

    [Fact]
    public void Preempt_and_ftrace_are_setup_handlers_that_stop_at_dashes()
    {
        Assert.Equal(PreemptMode.Full, P("preempt=full").Preempt);
        Assert.Equal(PreemptMode.None, P("preempt=none preempt=lazy").Preempt);   // "unsupported mode": ignored
        Assert.Null(P("-- preempt=full").Preempt);                                  // after "--": init's arguments
        // 6.12: the lazy preemption modes are names too (whether the build knows them is the pass's to say)
        var l612 = KernelCommandLine.Parse("preempt=none preempt=bogus preempt=lazy preempt=laziest", KernelBootRules.Linux612);
        Assert.Equal(PreemptMode.Laziest, l612.Preempt);
        Assert.Equal([PreemptMode.None, PreemptMode.Lazy, PreemptMode.Laziest], l612.PreemptRequests.AsEnumerable());
        var c = P("ftrace=function ftrace_filter=vfs_* ftrace_notrace=\"a b\"");
        Assert.Equal("function", c.Ftrace);
        Assert.Equal(["ftrace_filter=vfs_*", "ftrace_notrace=a b"], c.FtraceFilters.AsEnumerable());
        // cmdline_find_option() reads the whole boot_command_line, "--" included
        Assert.Equal(PtiCommand.Off, P("-- nopti").Pti);
    }

    [Fact]
    public void Quotes_are_removed_as_next_arg_removes_them()
    {
        var c = P("dyndbg=\"file foo +p\" \"quoted\"  a=\"b\"");
        Assert.Equal([("dyndbg", (string?)"file foo +p"), ("quoted", null), ("a", "b")], c.Arguments.AsEnumerable());
    }

    [Fact]
    public void The_command_line_is_cut_at_2047_characters()
    {
        var c = P(new string('x', 3000) + " nopti");
        Assert.Equal(2047, c.Text.Length);
        Assert.Equal(PtiCommand.Auto, c.Pti);
    }

    [Theory]
    [InlineData(1, "", true, false)]
    [InlineData(2, "", false, false)]
    [InlineData(2, "noreplace-smp", false, false)]
    [InlineData(1, "noreplace-smp", false, false)]
    [InlineData(2, "nosmp", true, false)]              // setup_max_cpus 0: possible capped to 1
    [InlineData(2, "maxcpus=0", true, false)]
    [InlineData(2, "maxcpus=1", true, true)]           // HOTPLUG_CPU: 2 possible, the switch is undone when cpu1 comes up
    [InlineData(2, "nr_cpus=1", true, false)]
    [InlineData(4, "maxcpus=2", false, false)]
    [InlineData(1, "possible_cpus=4", true, true)]
    public void The_smp_lock_switch_follows_alternative_instructions(int processors, string line, bool up, bool dynamic)
    {
        var d = KernelSmpSwitch.Decide(processors, P(line));
        Assert.Equal(up, d.Up);
        Assert.Equal(dynamic, d.Dynamic);
    }
}

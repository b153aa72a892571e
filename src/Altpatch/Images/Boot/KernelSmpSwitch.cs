namespace Altpatch.Images.Boot;

/// <summary>
/// Whether <c>alternative_instructions()</c> switches the SMP lock prefixes to UP, from the number of processors the
/// firmware lists and the command line, as 6.1.176 decides it:
/// <c>if (!noreplace_smp &amp;&amp; (num_present_cpus() == 1 || setup_max_cpus &lt;= 1))</c>, then
/// <c>alternatives_smp_module_add()</c>, which keeps the list (so the switch can be undone when a second CPU comes
/// online: the lock sites stay <i>dynamic</i>) unless <c>num_possible_cpus() == 1</c>.
/// </summary>
/// <param name="Up">The lock prefixes in <c>[_text, _etext)</c> become DS prefixes.</param>
/// <param name="Dynamic">Up, but more than one CPU is possible: <c>alternatives_enable_smp()</c> puts the lock prefixes
/// back when one comes online (e.g. <c>maxcpus=1</c> on a 2-CPU machine, then <c>echo 1 &gt; …/cpu1/online</c>).</param>
/// <param name="Present"><c>num_present_cpus()</c>: the processors <c>generic_processor_info()</c> accepted (at most <c>nr_cpus=</c>).</param>
/// <param name="Possible"><c>num_possible_cpus()</c> (<c>prefill_possible_map()</c>, CONFIG_HOTPLUG_CPU).</param>
/// <param name="SetupMaxCpus"><c>setup_max_cpus</c>: <c>nosmp</c> 0, <c>maxcpus=</c>, else NR_CPUS (int.MaxValue here).</param>
/// <param name="Decision">The decision, one line.</param>
public readonly record struct KernelSmpSwitch(bool Up, bool Dynamic, int Present, int Possible, int SetupMaxCpus, string Decision)
{
    /// <summary>Decides for <paramref name="processors"/> processors (the MADT's; <c>--smp</c>) and a command line.</summary>
    /// <param name="processors">Processors the firmware lists (at least 1).</param>
    /// <param name="commandLine">The kernel command line.</param>
    public static KernelSmpSwitch Decide(int processors, KernelCommandLine commandLine)
    {
        ArgumentNullException.ThrowIfNull(commandLine);
        ArgumentOutOfRangeException.ThrowIfLessThan(processors, 1);
        int nrCpuIds = commandLine.NrCpus is { } n && n > 0 ? n : int.MaxValue;   // nr_cpus= (NR_CPUS assumed large enough)
        int present = Math.Min(processors, nrCpuIds);
        int setupMaxCpus = commandLine.MaxCpus ?? int.MaxValue;
        // prefill_possible_map(): possible_cpus= or the processors; capped by nr_cpu_ids; with HOTPLUG_CPU only
        // nosmp/maxcpus=0 limit it (to 1).
        int possible = commandLine.PossibleCpus is { } pc && pc > 0 ? pc : processors;
        possible = Math.Min(possible, nrCpuIds);
        if (setupMaxCpus == 0)
            possible = Math.Min(possible, 1);
        possible = Math.Max(possible, 1);
        if (commandLine.NoReplaceSmp)
            return new(false, false, present, possible, setupMaxCpus, "noreplace-smp: lock prefixes stay");
        bool up = present == 1 || setupMaxCpus <= 1;
        if (!up)
            return new(false, false, present, possible, setupMaxCpus, $"{present} CPUs present: lock prefixes stay");
        string why = present == 1 ? "1 CPU present" : setupMaxCpus == 0 ? "nosmp" : $"maxcpus={setupMaxCpus}";
        return possible == 1
            ? new(true, false, present, possible, setupMaxCpus, $"{why}: lock prefixes to UP (1 possible CPU: for good)")
            : new(true, true, present, possible, setupMaxCpus,
                $"{why}: lock prefixes to UP, dynamic: {possible} possible CPUs, alternatives_enable_smp() restores them when a second one comes online");
    }
}

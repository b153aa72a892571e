using System.Text.Json;
using Altpatch.Cpu;

namespace Altpatch.Images.Boot;

/// <summary>Pieces of the JSON reports of <c>kernel patch --report</c> and <c>kernel verify --json</c> that both write.</summary>
public static class KernelReportJson
{
    /// <summary>Writes <c>"cpu": {vendor, family, model, stepping, modelName, cpus, hypervisor, smp, flags, bugs, hidden, words}</c>:
    /// the boot CPU as derived (<c>smp</c>: <c>{up, dynamic, decision}</c>, the SMP-lock switch for the CPUs and the command
    /// line; <c>hidden</c>: the set bits /proc/cpuinfo does not show, as <c>X86_FEATURE_</c> macros; <c>words</c>: the
    /// capability and bug words in hex).</summary>
    public static void WriteCpu(Utf8JsonWriter w, KernelBootState state)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(state);
        var cpu = state.Features;
        w.WriteStartObject("cpu");
        w.WriteString("vendor", cpu.Vendor.ToString());
        w.WriteNumber("family", cpu.Family);
        w.WriteNumber("model", cpu.Model);
        w.WriteNumber("stepping", cpu.Stepping);
        w.WriteString("modelName", cpu.ModelName);
        w.WriteNumber("cpus", state.Cpus);
        w.WriteString("hypervisor", state.Hypervisor.ToString().ToLowerInvariant());
        w.WriteStartObject("smp");
        w.WriteBoolean("up", state.Smp.Up);
        w.WriteBoolean("dynamic", state.Smp.Dynamic);
        w.WriteString("decision", state.Smp.Decision);
        w.WriteEndObject();
        w.WriteString("flags", cpu.CpuInfoFlags);
        w.WriteString("bugs", cpu.CpuInfoBugs);
        w.WriteStartArray("hidden");
        foreach (var f in cpu.Features.Where(f => CpuFeatureInfo.CpuInfoName(f) is null))
            w.WriteStringValue(CpuFeatureInfo.MacroName(f));
        w.WriteEndArray();
        w.WriteStartArray("words");
        for (int i = 0; i < CpuFeatureInfo.CapabilityWords + CpuFeatureInfo.BugWords; i++)
            w.WriteStringValue($"{cpu.Word(i):x8}");
        w.WriteEndArray();
        w.WriteEndObject();
    }
}

using System.CommandLine;
using System.Globalization;
using Altpatch.Cpu;
using Spectre.Console;

namespace Altpatch.Cli.Commands;

/// <summary>
/// <c>altpatch cpu</c>: the CPU as the patchers see it — vendor, family, model, stepping, model name and every
/// Linux 6.1 feature bit, read from CPUID the way the kernel reads it at boot, or from a <c>/proc/cpuinfo</c> file.
/// </summary>
public static class CpuCommand
{
    /// <summary>Builds the <c>cpu</c> command.</summary>
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Write JSON instead of a table." };
        var cpuInfo = new Option<string?>("--cpuinfo")
        {
            Description = "Describe the CPU from this /proc/cpuinfo text (its first processor block) instead of executing CPUID.",
        };
        var feature = new Option<string[]>("--feature")
        {
            Description = "Only this feature (cpuinfo name, X86_FEATURE_/X86_BUG_ macro or word*32+bit); repeatable. Shows whether the CPU has it.",
            AllowMultipleArgumentsPerToken = true,
        };
        var cmd = new Command("cpu", "Show the CPU's vendor, family, model, stepping and Linux 6.1 feature bits (CPUID as the kernel reads it).");
        cmd.Options.Add(json);
        cmd.Options.Add(cpuInfo);
        cmd.Options.Add(feature);
        cmd.SetAction(parseResult =>
        {
            var output = Terminal.Out(parseResult);
            var path = parseResult.GetValue(cpuInfo);
            CpuFeatures cpu;
            string source;
            if (path is null)
            {
                cpu = CpuFeatures.Detect();
                source = "cpuid";
            }
            else
            {
                string text = ReadText(path);
                try
                {
                    cpu = CpuFeatures.FromCpuInfo(text);
                }
                catch (CpuFeatureException e)
                {
                    throw new CpuFeatureException($"{path}: {e.Message}", e);
                }
                source = path;
            }
            var only = parseResult.GetValue(feature) ?? [];
            var selected = only.Length == 0
                ? cpu.Features.ToList()
                : only.Select(CpuFeatureInfo.Parse).Distinct().Order().ToList();
            if (parseResult.GetValue(json))
                WriteJson(output, cpu, source, selected, only.Length > 0);
            else
                WriteTable(Terminal.Console(parseResult), cpu, source, selected, only.Length > 0);
            return 0;
        });
        return cmd;
    }

    private static string ReadText(string path)
    {
        try
        {
            return Terminal.ReadInputText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CpuFeatureException($"cannot read '{path}': {e.Message}", e);
        }
    }

    private static void WriteTable(IAnsiConsole console, CpuFeatures cpu, string source, List<CpuFeature> features, bool explicitList)
    {
        console.Profile.Width = Math.Max(console.Profile.Width, 120);
        var id = new Grid().AddColumn().AddColumn();
        id.AddRow("[bold]vendor[/]", Markup.Escape($"{cpu.Vendor}{(CpuVendors.VendorId(cpu.Vendor) is { } v ? $" ({v})" : "")}"));
        id.AddRow("[bold]family[/]", Inv($"{cpu.Family} (0x{cpu.Family:x})"));
        id.AddRow("[bold]model[/]", Inv($"{cpu.Model} (0x{cpu.Model:x})"));
        id.AddRow("[bold]stepping[/]", Inv($"{cpu.Stepping}"));
        id.AddRow("[bold]model name[/]", Markup.Escape(cpu.ModelName ?? "unknown"));
        id.AddRow("[bold]source[/]", Markup.Escape(source == "cpuid" ? "CPUID, read as Linux " + CpuFeatureInfo.LinuxVersion + " reads it" : source));
        id.AddRow("[bold]features[/]", Inv($"{cpu.Features.Count(f => !CpuFeatureInfo.IsBug(f))} features, {cpu.Features.Count(CpuFeatureInfo.IsBug)} bugs (Linux {CpuFeatureInfo.LinuxVersion} numbering)"));
        console.Write(id);
        console.WriteLine();

        var table = new Table().Border(TableBorder.Simple);
        table.AddColumn("number");
        table.AddColumn("macro");
        table.AddColumn("cpuinfo");
        table.AddColumn("source");
        if (explicitList)
            table.AddColumn("has");
        foreach (var f in features)
        {
            var src = CpuFeatureInfo.Source(f);
            var cells = new List<string>
            {
                Inv($"{CpuFeatureInfo.FormatNumber(f)} ({(int)f})"),
                CpuFeatureInfo.MacroName(f),
                CpuFeatureInfo.CpuInfoName(f) ?? "(hidden)",
                src is { } b
                    ? Inv($"CPUID 0x{b.Leaf:x}{(b.Subleaf != 0 ? $".{b.Subleaf}" : "")} {b.Register.ToString().ToUpperInvariant()}[{b.Bit}]")
                    : CpuFeatureInfo.IsBug(f) ? "bug" : "Linux-defined",
            };
            if (explicitList)
                cells.Add(cpu.Has(f) ? "yes" : "no");
            table.AddRow(cells.Select(Markup.Escape).ToArray());
        }
        console.Write(table);
    }

    private static void WriteJson(TextWriter output, CpuFeatures cpu, string source, List<CpuFeature> features, bool explicitList)
    {
        Terminal.WriteJson(output, w =>
        {
            w.WriteStartObject();
            w.WriteString("source", source);
            w.WriteString("linux", CpuFeatureInfo.LinuxVersion);
            w.WriteString("vendor", cpu.Vendor.ToString());
            if (CpuVendors.VendorId(cpu.Vendor) is { } vid)
                w.WriteString("vendorId", vid);
            else
                w.WriteNull("vendorId");
            w.WriteNumber("family", cpu.Family);
            w.WriteNumber("model", cpu.Model);
            w.WriteNumber("stepping", cpu.Stepping);
            if (cpu.ModelName is { } mn)
                w.WriteString("modelName", mn);
            else
                w.WriteNull("modelName");
            w.WriteString("flags", cpu.CpuInfoFlags);
            w.WriteString("bugs", cpu.CpuInfoBugs);
            w.WriteStartArray("features");
            foreach (var f in features)
            {
                w.WriteStartObject();
                w.WriteNumber("number", (int)f);
                w.WriteString("wordBit", CpuFeatureInfo.FormatNumber(f));
                w.WriteString("macro", CpuFeatureInfo.MacroName(f));
                if (CpuFeatureInfo.CpuInfoName(f) is { } ci)
                    w.WriteString("cpuinfo", ci);
                else
                    w.WriteNull("cpuinfo");
                w.WriteBoolean("bug", CpuFeatureInfo.IsBug(f));
                if (CpuFeatureInfo.Source(f) is { } s)
                {
                    w.WriteStartObject("cpuid");
                    w.WriteString("leaf", Inv($"0x{s.Leaf:x8}"));
                    w.WriteNumber("subleaf", s.Subleaf);
                    w.WriteString("register", s.Register.ToString().ToLowerInvariant());
                    w.WriteNumber("bit", s.Bit);
                    w.WriteEndObject();
                }
                else
                {
                    w.WriteNull("cpuid");
                }
                if (explicitList)
                    w.WriteBoolean("has", cpu.Has(f));
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        });
    }

    private static string Inv(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}

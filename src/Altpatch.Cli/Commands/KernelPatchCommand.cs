using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Altpatch.Cpu;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Spectre.Console;

namespace Altpatch.Cli.Commands;

/// <summary>
/// <c>altpatch kernel patch IMAGE (--cpuinfo FILE | --flags LIST [--bugs LIST]) [--set NAME]… [--clear NAME]…
/// [--smp N] [--hypervisor none|kvm] [--cmdline "…" | --cmdline-file FILE] -o OUT [--report REPORT.json]</c>: the kernel's
/// own boot-time patching (jump labels, static calls, ftrace, paravirt, retpolines, returns, alternatives, SMP locks) done on
/// the image for a described CPU and kernel command line; OUT is the vmlinux ELF file (the decompressed payload) with its
/// text patched in place.
/// </summary>
public static class KernelPatchCommand
{
    /// <summary>Builds the command.</summary>
    public static Command Create()
    {
        var image = KernelCommand.ImageArgument();
        var cpu = new KernelCpuOptions();
        var cmdline = new KernelCmdlineOptions();
        var output = new Option<FileInfo>("--output", "-o") { Description = "Where to write the patched vmlinux ELF file (written to a temporary file next to it and renamed on success).", Required = true };
        var noSymtab = new Option<bool>("--no-symtab") { Description = "Write OUT without the .symtab/.strtab built from the image's kallsyms (then OUT is exactly the decompressed payload, patched)." };
        var ignoreCrc = KernelCommand.IgnoreCrcOption();
        var rules = KernelCommand.RulesOption();
        var report = new Option<FileInfo?>("--report") { Description = "Write a JSON report: the CPU as derived, the decisions, the thunks, each pass, and every site's bytes before and after with the passes that wrote them." };

        var cmd = new Command("patch",
            "Do the kernel's own boot-time patching (jump labels, static calls, ftrace, apply_paravirt, apply_retpolines, apply_returns, apply_alternatives, SMP locks to UP) on a kernel image for a described CPU and kernel command line, and write the patched vmlinux.");
        cmd.Arguments.Add(image);
        cpu.AddTo(cmd, _ => true);
        cmdline.AddTo(cmd);
        cmd.Options.Add(output);
        cmd.Options.Add(report);
        cmd.Options.Add(noSymtab);
        cmd.Options.Add(ignoreCrc);
        cmd.Options.Add(rules);
        cmd.SetAction(parse =>
        {
            // Parse the description first: a bad name fails before the image is even read.
            var description = cpu.Describe(parse) with { CommandLine = cmdline.Read(parse) };
            return Run(parse, new Options(parse.GetValue(image)!, description, parse.GetValue(output)!, parse.GetValue(report), parse.GetValue(noSymtab)), ignoreCrc, rules);
        });
        return cmd;
    }

    private sealed record Options(FileInfo Image, KernelCpuDescription Description, FileInfo Output, FileInfo? Report, bool NoSymtab = false);

    private static int Run(ParseResult parse, Options o, Option<bool> ignoreCrc, Option<string?> rulesOption)
    {
        var writer = Terminal.Out(parse);
        var console = Terminal.Console(writer);
        bool interactive = console.Profile.Capabilities.Interactive;
        var total = Stopwatch.StartNew();
        // Check where the files go first: a missing directory fails before the image is even read.
        var description = o.Description;
        WritableDirectory(o.Output);
        if (o.Report is { } r)
            WritableDirectory(r);

        KernelImage? img = null;
        KernelPatchResult? result = null;
        ElfSymtabResult wrote = default;
        // OUT and the report are written to temporary files and renamed over their targets only when every step has
        // worked: a failure (a bad image, a report that cannot be written) leaves both as they were.
        var written = new List<(string Temporary, FileInfo Target)>();
        var profile = StepProfile.Start();
        var steps = new List<(string Name, Action Body)>
        {
            ("open + decompress", () =>
            {
                img = KernelCommand.Open(o.Image, parse, ignoreCrc);
                if (!StepProfile.Enabled)
                    img.DecodeSymbolsInBackground();   // beside reading the tables; the text passes and the .symtab wait for it
            }),
            ("read tables", () => _ = img!.Tables),
            // Without a report nothing needs the unpatched bytes again: the image's own buffer is patched (no copy of it).
            ("patch", () => result = o.Report is null
                ? KernelBootPatcher.PatchInPlace(img!, description, KernelCommand.Rules(parse, rulesOption, img!), profile?.Passes())
                : KernelBootPatcher.Patch(img!, description, KernelCommand.Rules(parse, rulesOption, img!), profile?.Passes())),
            ("write output", () => written.Add((WriteTemporary(o.Output, s => wrote = ElfSymtabWriter.WriteVmlinux(s, img!, result!.Patched, !o.NoSymtab)), o.Output))),
        };
        if (profile is not null)
            steps.Insert(2, ("kallsyms", () => img!.TryGetSymbols(out _)));   // decoded here, not inside the first pass that needs them
        if (o.Report is { } rep)
            steps.Add(("write report", () => written.Add((WriteTemporary(rep, s => WriteReport(s, result!, o, wrote)), rep))));
        try
        {
            var times = RunSteps(console, interactive, steps, profile);
            // the report first, OUT last: should a rename fail, OUT is still the old one
            for (int i = written.Count - 1; i >= 0; i--)
                File.Move(written[i].Temporary, written[i].Target.FullName, overwrite: true);
            written.Clear();
            WriteSummary(console, result!, o, wrote, times, total.Elapsed);
            return 0;
        }
        finally
        {
            foreach (var (temporary, _) in written)
                TryDelete(temporary);
        }
    }

    /// <summary>Runs the steps in order and returns how long each took; on a terminal under a progress display.</summary>
    private static List<(string Name, TimeSpan Time)> RunSteps(IAnsiConsole console, bool interactive, List<(string Name, Action Body)> steps, StepProfile? profile)
    {
        var times = new List<(string Name, TimeSpan Time)>();
        void Step(int i)
        {
            var sw = Stopwatch.StartNew();
            steps[i].Body();
            times.Add((steps[i].Name, sw.Elapsed));
            profile?.Step(steps[i].Name);
        }
        if (interactive)
        {
            console.Progress().AutoClear(true).Start(ctx =>
            {
                var tasks = steps.Select(s => ctx.AddTask(Markup.Escape(s.Name), autoStart: false, maxValue: 1)).ToList();
                for (int i = 0; i < steps.Count; i++)
                {
                    tasks[i].StartTask();
                    Step(i);
                    tasks[i].Increment(1);
                    tasks[i].StopTask();
                }
            });
        }
        else
        {
            for (int i = 0; i < steps.Count; i++)
                Step(i);
        }
        return times;
    }

    /// <summary>The directory <paramref name="target"/> goes in; an error when it is missing or the target is a directory.</summary>
    internal static string WritableDirectory(FileInfo target)
    {
        string dir = target.DirectoryName ?? ".";
        if (!Directory.Exists(dir))
            throw new DirectoryNotFoundException($"{dir}: no such directory");
        if (Directory.Exists(target.FullName))
            throw new IOException($"{target.FullName}: is a directory");
        return dir;
    }

    /// <summary>Writes a new temporary file next to <paramref name="target"/> and returns its path; on failure it is removed.</summary>
    internal static string WriteTemporary(FileInfo target, Action<Stream> write)
    {
        string tmp = Path.Combine(WritableDirectory(target), $".{target.Name}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var s = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(s);
                s.Flush(flushToDisk: false);
            }
            return tmp;
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    internal static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private static void WriteSummary(IAnsiConsole console, KernelPatchResult r, Options o, ElfSymtabResult wrote, List<(string Name, TimeSpan Time)> times, TimeSpan total)
    {
        var inv = CultureInfo.InvariantCulture;
        var s = r.State;
        var cpu = s.Features;
        Terminal.Field(console, "Image", string.Create(inv, $"{r.Image.Name} ({r.Image.Version?.Release ?? "unknown version"}, {KernelCommand.ArchitectureName(r.Image)}), rules: {r.Rules}"));
        Terminal.Field(console, "CPU", string.Create(inv, $"{cpu.Vendor} family {cpu.Family} model {cpu.Model} stepping {cpu.Stepping}{(cpu.ModelName is { } mn ? $" ({mn})" : "")}, {s.Cpus} CPU(s), hypervisor {s.Hypervisor.ToString().ToLowerInvariant()}"));
        var hidden = cpu.Features.Where(f => CpuFeatureInfo.CpuInfoName(f) is null)
            .Select(f => CpuFeatureInfo.MacroName(f).Replace("X86_FEATURE_", "", StringComparison.Ordinal));
        // The line's own features that 6.1's numbering has no bit for (6.12's X86_FEATURE_CALL_DEPTH).
        if (s.ImageFeatures is { } bits && bits.Numbering != FeatureNumbering.Linux61)
        {
            hidden = hidden.Concat(bits.Numbers.Where(n => !bits.Numbering.TryMapTo(FeatureNumbering.Linux61, n, out _))
                .Select(n => bits.Numbering.NameOf(n)).OfType<string>().Where(m => m.StartsWith("X86_FEATURE_", StringComparison.Ordinal))
                .Select(m => m["X86_FEATURE_".Length..]));
        }
        Terminal.Field(console, "Hidden bits", string.Join(' ', hidden));
        if (s.CommandLine.Text.Length > 0 || r.Preempt is not null)
            Terminal.Field(console, "Command line", (s.CommandLine.Text.Length == 0 ? "(none)" : s.CommandLine.Text) + (r.Preempt is { } pm ? $"; preempt mode {pm.ToString().ToLowerInvariant()}" : ""));
        Terminal.Field(console, "SMP", s.Smp.Decision);
        Terminal.Field(console, "Return thunk", $"{s.ReturnThunk.Symbol()}{(r.Thunks.Address(s.ReturnThunk) is { } ta ? $" at {Terminal.Addr(ta)}" : "")}");
        var t = new Table().Border(TableBorder.Simple)
            .AddColumn("pass").AddColumn("kernel function").AddColumn(new TableColumn("sites").RightAligned())
            .AddColumn(new TableColumn("pokes").RightAligned()).AddColumn(new TableColumn("bytes").RightAligned());
        foreach (var p in r.Passes)
            t.AddRow(p.Pass.ShortName(), r.Line.KernelFunction(p.Pass), p.Sites.ToString("N0", inv), p.Pokes.ToString("N0", inv), p.Bytes.ToString("N0", inv));
        console.Write(t);
        Terminal.Field(console, "Wrote", string.Create(inv, $"{o.Output.FullName} ({wrote.Length:N0} bytes{(wrote.Symbols > 0 ? $", .symtab of {wrote.Symbols:N0} symbols" : "")}){(o.Report is { } rep ? $", report {rep.FullName}" : "")}"));
        Terminal.Field(console, "Time", string.Join(", ", times.Select(x => string.Create(inv, $"{x.Name} {x.Time.TotalMilliseconds:F0} ms"))) + string.Create(inv, $"; total {total.TotalMilliseconds:F0} ms"));
    }

    private static void WriteReport(Stream stream, KernelPatchResult r, Options o, ElfSymtabResult wrote)
    {
        using var w = new Utf8JsonWriter(stream, Terminal.JsonOptions);
        KernelPatchReport.Write(w, r, o.Output.FullName, wrote.Length, wrote.Symbols);
    }
}

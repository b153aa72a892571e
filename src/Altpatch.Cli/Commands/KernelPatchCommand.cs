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
/// [--smp N] [--hypervisor none|kvm] -o OUT [--report REPORT.json]</c>: the kernel's own boot-time patching
/// (paravirt, retpolines, returns, alternatives, SMP locks) done on the image for a described CPU; OUT is the
/// vmlinux ELF file (the decompressed payload) with its text patched in place.
/// </summary>
public static class KernelPatchCommand
{
    /// <summary>Builds the command.</summary>
    public static Command Create()
    {
        var image = KernelCommand.ImageArgument();
        var cpuinfo = new Option<FileInfo?>("--cpuinfo") { Description = "A /proc/cpuinfo of the target machine: vendor_id, cpu family, model, stepping, flags and bugs of the first processor; the processor count is the default --smp." };
        var flags = new Option<string[]>("--flags") { Description = "CPU feature names instead of --cpuinfo (cpuinfo names, X86_FEATURE_ macros or word*32+bit; comma- or space-separated; repeatable).", AllowMultipleArgumentsPerToken = true };
        var bugs = new Option<string[]>("--bugs") { Description = "CPU bug names with --flags (cpu_meltdown, spectre_v2, … or X86_BUG_ macros).", AllowMultipleArgumentsPerToken = true };
        var vendor = new Option<string?>("--vendor") { Description = "With --flags: the vendor (GenuineIntel, AuthenticAMD, HygonGenuine, … or intel, amd, hygon, centaur, zhaoxin)." };
        var family = new Option<int?>("--family") { Description = "With --flags: the CPU family (decimal, as /proc/cpuinfo shows it)." };
        var model = new Option<int?>("--model") { Description = "With --flags: the model (decimal)." };
        var stepping = new Option<int?>("--stepping") { Description = "With --flags: the stepping." };
        var set = new Option<string[]>("--set") { Description = "Set a feature after the derivation (repeatable; any name form; hidden features by X86_FEATURE_ macro)." };
        var clear = new Option<string[]>("--clear") { Description = "Clear a feature after the derivation (repeatable; applied after --set)." };
        var smp = new Option<int?>("--smp") { Description = "Number of CPUs (present = possible). 1 switches the SMP lock prefixes to UP as the kernel does. Default: the --cpuinfo processor count, else 2." };
        var hypervisor = new Option<string>("--hypervisor") { Description = "The hypervisor the kernel detects: none (bare metal, and QEMU TCG) or kvm. Default: none.", DefaultValueFactory = _ => "none" };
        hypervisor.AcceptOnlyFromAmong("none", "kvm");
        var symbols = new Option<FileInfo?>("--symbols") { Description = "A System.map or /proc/kallsyms of the same build: with --hypervisor kvm, the addresses of the KVM functions kvm_guest_init() puts into pv_ops." };
        var kvmFeatures = new Option<string[]>("--kvm-features") { Description = "With --hypervisor kvm: the KVM paravirtual features of the host: nopiodelay, steal_time, pv_unhalt, pv_tlb_flush, realtime (hint), or none. Default: nopiodelay,steal_time (QEMU's defaults).", AllowMultipleArgumentsPerToken = true };
        var archCap = new Option<string?>("--arch-capabilities") { Description = "The target's MSR_IA32_ARCH_CAPABILITIES (0x10a) value in hex (rdmsr 0x10a); /proc/cpuinfo does not show it. Default: 0, as under QEMU TCG." };
        var exact = new Option<bool>("--exact") { Description = "Take the given features as the kernel's final capability words (no derivation of hidden bits or mitigations)." };
        var output = new Option<FileInfo>("--output", "-o") { Description = "Where to write the patched vmlinux ELF file (written to a temporary file next to it and renamed on success).", Required = true };
        var noSymtab = new Option<bool>("--no-symtab") { Description = "Write OUT without the .symtab/.strtab built from the image's kallsyms (then OUT is exactly the decompressed payload, patched)." };
        var ignoreCrc = KernelCommand.IgnoreCrcOption();
        var report = new Option<FileInfo?>("--report") { Description = "Write a JSON report: the CPU as derived, the decisions, the thunks, each pass, and every site's bytes before and after with the passes that wrote them." };

        var cmd = new Command("patch",
            "Do the kernel's own boot-time patching (apply_paravirt, apply_retpolines, apply_returns, apply_alternatives, SMP locks to UP) on a kernel image for a described CPU, and write the patched vmlinux.");
        cmd.Arguments.Add(image);
        foreach (var o in new Option[] { cpuinfo, flags, bugs, vendor, family, model, stepping, set, clear, smp, hypervisor, symbols, kvmFeatures, archCap, exact, output, report, noSymtab, ignoreCrc })
            cmd.Options.Add(o);
        // The validators read the int options' tokens or presence, never GetValue: on "--smp abc" GetValue throws
        // (a crash with a stack trace) instead of leaving the parser's "Cannot parse argument 'abc'" error.
        smp.Validators.Add(r =>
        {
            if (r.Tokens is [var t] && int.TryParse(t.Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n < 1)
                r.AddError("--smp must be at least 1");
        });
        cmd.Validators.Add(r =>
        {
            bool hasCpuinfo = r.GetValue(cpuinfo) is not null;
            bool hasFlags = (r.GetValue(flags)?.Length ?? 0) > 0;
            if (hasCpuinfo == hasFlags)
                r.AddError("give the CPU with either --cpuinfo FILE or --flags LIST");
            else if (hasFlags && !Split(r.GetValue(flags) ?? []).Any())
                r.AddError("--flags names no feature");
            if (hasCpuinfo && ((r.GetValue(bugs)?.Length ?? 0) > 0 || r.GetValue(vendor) is not null || r.GetResult(family) is not null
                               || r.GetResult(model) is not null || r.GetResult(stepping) is not null))
                r.AddError("--bugs, --vendor, --family, --model and --stepping go with --flags, not with --cpuinfo");
            if ((r.GetValue(kvmFeatures)?.Length ?? 0) > 0 && r.GetValue(hypervisor) != "kvm")
                r.AddError("--kvm-features goes with --hypervisor kvm");
        });
        cmd.SetAction(parse =>
        {
            var options = new Options(
                parse.GetValue(image)!, parse.GetValue(cpuinfo), parse.GetValue(flags) ?? [], parse.GetValue(bugs) ?? [],
                parse.GetValue(vendor), parse.GetValue(family), parse.GetValue(model), parse.GetValue(stepping),
                parse.GetValue(set) ?? [], parse.GetValue(clear) ?? [], parse.GetValue(smp),
                parse.GetValue(hypervisor) == "kvm" ? KernelHypervisor.Kvm : KernelHypervisor.None,
                parse.GetValue(symbols), parse.GetValue(kvmFeatures) ?? [], parse.GetValue(archCap),
                parse.GetValue(exact), parse.GetValue(output)!, parse.GetValue(report), parse.GetValue(noSymtab));
            return Run(parse, options, ignoreCrc);
        });
        return cmd;
    }

    private sealed record Options(
        FileInfo Image, FileInfo? CpuInfo, string[] Flags, string[] Bugs, string? Vendor, int? Family, int? Model, int? Stepping,
        string[] Set, string[] Clear, int? Smp, KernelHypervisor Hypervisor, FileInfo? Symbols, string[] KvmFeatures, string? ArchCapabilities,
        bool Exact, FileInfo Output, FileInfo? Report, bool NoSymtab = false);

    private static int Run(ParseResult parse, Options o, Option<bool> ignoreCrc)
    {
        var writer = Terminal.Out(parse);
        var console = Terminal.Console(writer);
        bool interactive = console.Profile.Capabilities.Interactive;
        var total = Stopwatch.StartNew();
        // Parse the description and check where the files go first: a bad name or a missing directory fails
        // before the image is even read.
        var description = Describe(o);
        WritableDirectory(o.Output);
        if (o.Report is { } r)
            WritableDirectory(r);

        KernelImage? img = null;
        KernelPatchResult? result = null;
        ElfSymtabResult wrote = default;
        // OUT and the report are written to temporary files and renamed over their targets only when every step has
        // worked: a failure (a bad image, a report that cannot be written) leaves both as they were.
        var written = new List<(string Temporary, FileInfo Target)>();
        var steps = new List<(string Name, Action Body)>
        {
            ("open + decompress", () => img = KernelCommand.Open(o.Image, parse, ignoreCrc)),
            ("read tables", () => _ = img!.Tables),
            ("patch", () => result = KernelBootPatcher.Patch(img!, description)),
            ("write output", () => written.Add((WriteTemporary(o.Output, s => wrote = ElfSymtabWriter.WriteVmlinux(s, img!, result!.Patched, !o.NoSymtab)), o.Output))),
        };
        if (o.Report is { } rep)
            steps.Add(("write report", () => written.Add((WriteTemporary(rep, s => WriteReport(s, result!, o, wrote)), rep))));
        try
        {
            var times = RunSteps(console, interactive, steps);
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
    private static List<(string Name, TimeSpan Time)> RunSteps(IAnsiConsole console, bool interactive, List<(string Name, Action Body)> steps)
    {
        var times = new List<(string Name, TimeSpan Time)>();
        void Step(int i)
        {
            var sw = Stopwatch.StartNew();
            steps[i].Body();
            times.Add((steps[i].Name, sw.Elapsed));
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

    /// <summary>The CPU description from the options.</summary>
    private static KernelCpuDescription Describe(Options o)
    {
        KernelCpuDescription d;
        if (o.CpuInfo is { } file)
        {
            if (!file.Exists)
                throw new FileNotFoundException($"{file.FullName}: no such file");
            try
            {
                d = KernelCpuDescription.FromCpuInfo(Terminal.ReadInputText(file.FullName));
            }
            catch (CpuFeatureException e)
            {
                throw new CpuFeatureException($"{file.FullName}: {e.Message}", e);
            }
        }
        else
        {
            var names = Split(o.Flags).Concat(Split(o.Bugs)).ToList();
            var v = o.Vendor is null ? CpuVendor.Unknown : ParseVendor(o.Vendor);
            var cpu = CpuFeatures.FromNames(names, v, o.Family ?? 0, o.Model ?? 0, o.Stepping ?? 0);
            d = new KernelCpuDescription { Cpu = cpu };
        }
        IReadOnlyDictionary<string, ulong>? symbols = null;
        if (o.Symbols is { } sf)
        {
            if (!sf.Exists)
                throw new FileNotFoundException($"{sf.FullName}: no such file");
            symbols = KvmGuest.ReadSymbols(Terminal.ReadInputText(sf.FullName));
        }
        return d with
        {
            Cpus = o.Smp ?? d.Cpus,
            Hypervisor = o.Hypervisor,
            Symbols = symbols,
            KvmFeatures = o.KvmFeatures.Length == 0 ? KvmGuest.QemuDefaults : KvmGuest.ParseFeatures(Split(o.KvmFeatures)),
            Exact = o.Exact,
            ArchCapabilities = o.ArchCapabilities is null ? 0 : ParseHex(o.ArchCapabilities),
            Set = [.. ParseNames(Split(o.Set))],
            Clear = [.. ParseNames(Split(o.Clear))],
        };
    }

    private static IEnumerable<string> Split(IEnumerable<string> values) =>
        values.SelectMany(v => v.Split([',', ' ', '\t'], StringSplitOptions.RemoveEmptyEntries));

    /// <summary>Feature names for --set/--clear, checked by the same parser (and message) as --flags.</summary>
    private static IEnumerable<CpuFeature> ParseNames(IEnumerable<string> names) => CpuFeatures.FromNames(names).Features;

    private static ulong ParseHex(string s)
    {
        var t = s.Trim();
        if (t.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            t = t[2..];
        return ulong.TryParse(t, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong v)
            ? v
            : throw new CpuFeatureException($"--arch-capabilities: '{s}' is not a hexadecimal number");
    }

    private static CpuVendor ParseVendor(string s)
    {
        var v = CpuVendors.FromVendorId(s);
        if (v != CpuVendor.Unknown)
            return v;
        if (Enum.TryParse<CpuVendor>(s, ignoreCase: true, out v) && v != CpuVendor.Unknown)
            return v;
        throw new CpuFeatureException($"unknown CPU vendor '{s}' (a vendor_id such as GenuineIntel or AuthenticAMD, or intel, amd, hygon, centaur, zhaoxin)");
    }

    /// <summary>The directory <paramref name="target"/> goes in; an error when it is missing or the target is a directory.</summary>
    private static string WritableDirectory(FileInfo target)
    {
        string dir = target.DirectoryName ?? ".";
        if (!Directory.Exists(dir))
            throw new DirectoryNotFoundException($"{dir}: no such directory");
        if (Directory.Exists(target.FullName))
            throw new IOException($"{target.FullName}: is a directory");
        return dir;
    }

    /// <summary>Writes a new temporary file next to <paramref name="target"/> and returns its path; on failure it is removed.</summary>
    private static string WriteTemporary(FileInfo target, Action<Stream> write)
    {
        string tmp = Path.Combine(WritableDirectory(target), $".{target.Name}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var s = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
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

    private static void TryDelete(string path)
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
        Terminal.Field(console, "Hidden bits", string.Join(' ', hidden));
        Terminal.Field(console, "Return thunk", $"{s.ReturnThunk.Symbol()}{(r.Thunks.Address(s.ReturnThunk) is { } ta ? $" at {Terminal.Addr(ta)}" : "")}");
        var t = new Table().Border(TableBorder.Simple)
            .AddColumn("pass").AddColumn("kernel function").AddColumn(new TableColumn("sites").RightAligned())
            .AddColumn(new TableColumn("pokes").RightAligned()).AddColumn(new TableColumn("bytes").RightAligned());
        foreach (var p in r.Passes)
            t.AddRow(p.Pass.ShortName(), p.Pass.KernelFunction(), p.Sites.ToString("N0", inv), p.Pokes.ToString("N0", inv), p.Bytes.ToString("N0", inv));
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

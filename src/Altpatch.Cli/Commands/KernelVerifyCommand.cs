using System.Collections.Immutable;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Images.Verify;
using Spectre.Console;

namespace Altpatch.Cli.Commands;

/// <summary>
/// <c>altpatch kernel verify IMAGE (--text DUMP --base ADDR | --memory CORE | --live) [CPU options] [--cmdline … |
/// --cmdline-file F] [--json]</c>: compares a running kernel's <c>.text</c> with what the kernel's own boot-time
/// patching predicts for the image, CPU and command line, and classifies every byte as predicted, dynamic (a site the
/// running kernel decides, in a legal state) or unexplained. Exit code 0 when nothing is unexplained, 3 when something
/// is, 1 on error.
/// </summary>
public static class KernelVerifyCommand
{
    /// <summary>The exit code when some bytes are unexplained.</summary>
    public const int ExitUnexplained = 3;

    /// <summary>How many ranges and dynamic sites the text output lists (without --all).</summary>
    private const int Shown = 20;

    /// <summary>Builds the command.</summary>
    public static Command Create()
    {
        var image = new Argument<FileInfo?>("IMAGE")
        {
            Description = "The running kernel's bzImage (e.g. /boot/vmlinuz-*) or its whole decompressed payload; with --live, default /boot/vmlinuz-$(uname -r).",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var text = new Option<FileInfo?>("--text") { Description = "A dump of the running kernel's .text: raw bytes from its first byte (a longer dump is fine: the rest is ignored)." };
        var textBase = new Option<string?>("--base") { Description = "With --text: where .text was loaded, in hex (the running _stext, e.g. from /proc/kallsyms as root). The KASLR offset is this minus the link address." };
        var memory = new Option<FileInfo?>("--memory") { Description = "An ELF core of the machine's memory with kernel virtual addresses (/proc/kcore, QEMU's dump-guest-memory -p): .text is found in it, KASLR or not." };
        var live = new Option<bool>("--live") { Description = "Verify the kernel this machine runs (root): .text from /proc/kcore at _stext of /proc/kallsyms, the CPU from /proc/cpuinfo and the command line from /proc/cmdline unless given." };
        var cpu = new KernelCpuOptions();
        var cmdline = new KernelCmdlineOptions();
        var json = KernelCommand.JsonOption("the classification, the dynamic sites seen in other states and every unexplained range");
        var ignoreCrc = KernelCommand.IgnoreCrcOption();
        var rules = KernelCommand.RulesOption();
        var all = new Option<bool>("--all") { Description = $"List every unexplained range and changed dynamic site (text output lists the first {Shown} of each)." };
        var module = new Option<FileInfo?>("--module") { Description = "Verify a loaded module instead of the kernel's .text: its .ko (of the image's build); --text is then a dump of one of its executable sections (e.g. .text) and --base where that section is loaded." };
        var placement = new KernelModuleOptions();
        var liveModules = new Option<bool>("--modules") { Description = "With --live: also verify the .text of every loaded module (/proc/modules, /sys/module/*/sections, the .ko files of /lib/modules/$(uname -r)); a module whose .ko is not found is reported, never skipped. Exit 3 when a module is unexplained or cannot be verified." };

        var cmd = new Command("verify",
            "Check a running kernel's text against the image: every byte of .text predicted by the kernel's own boot-time patching (for the CPU and command line, at the KASLR address), dynamic (a jump label, static call or ftrace site in a legal state), or unexplained. Exit code 0: nothing unexplained; 3: something is; 1: error.");
        cmd.Arguments.Add(image);
        cmd.Options.Add(text);
        cmd.Options.Add(textBase);
        cmd.Options.Add(memory);
        cmd.Options.Add(live);
        cpu.AddTo(cmd, r => !r.GetValue(live));
        cmdline.AddTo(cmd);
        cmd.Options.Add(json);
        cmd.Options.Add(all);
        cmd.Options.Add(ignoreCrc);
        cmd.Options.Add(module);
        cmd.Options.Add(liveModules);
        placement.AddTo(cmd, r => r.GetValue(module) is not null);
        cmd.Options.Add(rules);
        cmd.Validators.Add(r =>
        {
            if (r.GetValue(liveModules) && (!r.GetValue(live) || r.GetValue(json)))
                r.AddError("--modules goes with --live, and has text output only (no --json yet)");
            if (r.GetValue(module) is not null && (r.GetValue(memory) is not null || r.GetValue(live)))
                r.AddError("--module verifies a dump of the module's section: give it with --text DUMP --base ADDR (--memory and --live are for the kernel's text)");
            if (r.GetValue(module) is null && (r.GetValue(placement.Sections) is not null || (r.GetValue(placement.Deps)?.Length ?? 0) > 0 || r.GetValue(placement.KernelBase) is not null))
                r.AddError("--sections, --dep and --kernel-base go with --module");
            int sources = (r.GetValue(text) is not null ? 1 : 0) + (r.GetValue(memory) is not null ? 1 : 0) + (r.GetValue(live) ? 1 : 0);
            if (sources != 1)
                r.AddError("give the running kernel's text with exactly one of --text DUMP --base ADDR, --memory CORE or --live");
            else if (r.GetValue(text) is not null && r.GetValue(textBase) is null)
                r.AddError("--text needs --base ADDR: where .text was loaded");
            if (r.GetValue(textBase) is { } b && r.GetValue(text) is null)
                r.AddError("--base goes with --text");
            else if (r.GetValue(textBase) is { } b2 && ParseAddress(b2) is null)
                r.AddError($"--base: '{b2}' is not a hexadecimal address");
            if (r.GetValue(image) is null && !r.GetValue(live))
                r.AddError("give the kernel IMAGE (only --live finds it by itself)");
        });
        cmd.SetAction(parse => parse.GetValue(module) is { } m
            ? RunModule(parse, parse.GetValue(image)!, m, parse.GetValue(text)!, ParseAddress(parse.GetValue(textBase)!)!.Value, placement, cpu, cmdline, ignoreCrc, parse.GetValue(json), parse.GetValue(all))
            : Run(parse, new Options(parse.GetValue(image), parse.GetValue(text), parse.GetValue(textBase) is { } b ? ParseAddress(b) : null,
            parse.GetValue(memory), parse.GetValue(live), parse.GetValue(json), parse.GetValue(all), parse.GetValue(liveModules)), cpu, cmdline, ignoreCrc, rules));
        return cmd;
    }

    /// <summary>Reports each step on the caller's thread (<see cref="Progress{T}"/> would post it to the thread pool, late).</summary>
    private sealed class StepProgress(Action<string> report) : IProgress<string>
    {
        public void Report(string value) => report(value);
    }

    private sealed record Options(FileInfo? Image, FileInfo? Text, ulong? Base, FileInfo? Memory, bool Live, bool Json, bool All, bool Modules = false);

    private static ulong? ParseAddress(string s)
    {
        var t = s.Trim();
        if (t.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            t = t[2..];
        return t.Length > 0 && ulong.TryParse(t, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong v) ? v : null;
    }

    private static int Run(ParseResult parse, Options o, KernelCpuOptions cpuOptions, KernelCmdlineOptions cmdlineOptions, Option<bool> ignoreCrc, Option<string?> rulesOption)
    {
        var writer = Terminal.Out(parse);
        var console = Terminal.Console(writer);
        var total = Stopwatch.StartNew();
        var steps = new List<KernelVerifyStep>();
        T Step<T>(string name, Func<T> body)
        {
            var sw = Stopwatch.StartNew();
            var r = body();
            steps.Add(new KernelVerifyStep(name, sw.Elapsed));
            return r;
        }

        // What the machine is: the options, or with --live what it says of itself. All read before the image.
        KernelLiveSystem? sys = null;
        KernelCpuDescription description;
        KernelCommandLine cmdline;
        FileInfo imageFile;
        if (o.Live)
        {
            sys = KernelLiveSystem.Current;
            sys.CheckAccess();
            imageFile = o.Image ?? new FileInfo(sys.ImagePath());
            description = cpuOptions.Given(parse) ? cpuOptions.Describe(parse) : cpuOptions.Describe(parse, sys.CpuInfo(), Path.Combine(sys.ProcRoot, "cpuinfo"));
            cmdline = cmdlineOptions.Given(parse) ? cmdlineOptions.Read(parse) : cmdlineOptions.Read(parse, sys.CommandLine());
        }
        else
        {
            imageFile = o.Image!;
            description = cpuOptions.Describe(parse);
            cmdline = cmdlineOptions.Read(parse);
        }
        if (o.Text is { Exists: false } tf)
            throw new FileNotFoundException($"{tf.FullName}: no such file");
        if (o.Memory is { Exists: false } mf)
            throw new FileNotFoundException($"{mf.FullName}: no such file");

        var img = Step("open + decompress", () => KernelCommand.Open(imageFile, parse, ignoreCrc));
        sys?.CheckImage(img);
        var (found, at, source, kind) = Step("read text", () => ReadText(img, o, sys));

        description = description with { CommandLine = cmdline };
        var textOptions = KernelTextOptions.Default with { Rules = KernelCommand.Rules(parse, rulesOption, img) };
        // The image is moved and patched in its own buffer (no copies of it), except with --modules, whose loader reads
        // the kernel as opened.
        KernelVerifyResult Verify(IProgress<string>? progress) => o.Modules
            ? KernelTextVerifier.Verify(img, found, at, source, description, textOptions, progress)
            : KernelTextVerifier.VerifyInPlace(img, found, at, source, description, textOptions, progress);
        KernelVerifyResult result;
        if (console.Profile.Capabilities.Interactive && !o.Json)
        {
            KernelVerifyResult? r = null;
            console.Status().Start("checking the text", ctx =>
            {
                r = Verify(new StepProgress(s => ctx.Status(Markup.Escape(s))));
            });
            result = r!;
        }
        else
            result = Verify(null);

        if (o.Json)
            Terminal.WriteJson(writer, w => KernelVerifyReport.Write(w, result, kind, cmdline.Text, steps));
        else
            WriteSummary(console, result, cmdline, steps, total.Elapsed, o.All);
        if (o.Modules && sys is not null)
            return VerifyLiveModules(console, sys, img, result, cmdline) && result.Clean ? 0 : ExitUnexplained;
        return result.Clean ? 0 : ExitUnexplained;
    }

    /// <summary><c>--module</c>: a dump of one of a loaded module's sections against the module as the loader leaves it.</summary>
    private static int RunModule(ParseResult parse, FileInfo imageFile, FileInfo module, FileInfo dump, ulong at, KernelModuleOptions placement,
        KernelCpuOptions cpuOptions, KernelCmdlineOptions cmdlineOptions, Option<bool> ignoreCrc, bool json, bool all)
    {
        var writer = Terminal.Out(parse);
        var console = Terminal.Console(writer);
        var total = Stopwatch.StartNew();
        var description = cpuOptions.Describe(parse);
        var cmdline = cmdlineOptions.Read(parse);
        if (!dump.Exists)
            throw new FileNotFoundException($"{dump.FullName}: no such file");
        var img = KernelCommand.Open(imageFile, parse, ignoreCrc);
        var loaded = placement.Load(parse, img, module, description, cmdline);
        var found = File.ReadAllBytes(dump.FullName);
        var r = KernelModuleVerifier.Verify(loaded, found, at, dump.FullName);
        if (json)
            Terminal.WriteJson(writer, w => KernelVerifyReport.WriteModule(w, r));
        else
        {
            var inv = CultureInfo.InvariantCulture;
            var m = loaded.Link.Module;
            Terminal.Field(console, "Module", string.Create(inv, $"{m.Name} ({m.FileName}), vermagic {m.Vermagic?.TrimEnd()}"));
            Terminal.Field(console, "Kernel", string.Create(inv, $"{img.Name}, {(loaded.Kernel.Image.RelocationDelta == 0 ? "at its link address" : $"KASLR offset {Terminal.Addr((ulong)loaded.Kernel.Image.RelocationDelta)}")}, {loaded.Kernel.State.Cpus} CPU(s)"));
            Terminal.Field(console, "Text", string.Create(inv, $"{r.Source}: {r.Section} at {Terminal.Addr(r.Address)}, {r.Length:N0} bytes"));
            WriteClasses(console, r.Length, r.AsPredictedBytes, r.DynamicBytes, r.UnexplainedBytes, r.DynamicSites, r.DynamicChanged);
            WriteTables(console, r.DynamicChanged, r.Unexplained, all);
            Terminal.Field(console, "Time", string.Create(inv, $"{total.Elapsed.TotalMilliseconds:F0} ms"));
            Terminal.Field(console, "Result", r.Clean
                ? "clean: every byte is as predicted or a dynamic site in a legal state"
                : string.Create(inv, $"UNEXPLAINED: {r.UnexplainedBytes:N0} bytes in {r.Unexplained.Length:N0} ranges"));
        }
        return r.Clean ? 0 : ExitUnexplained;
    }

    /// <summary><c>--live --modules</c>: every loaded module's .text against the module as the loader leaves it; true when
    /// every one was verified and is clean.</summary>
    private static bool VerifyLiveModules(IAnsiConsole console, KernelLiveSystem sys, KernelImage img, KernelVerifyResult kernel, KernelCommandLine cmdline)
    {
        var inv = CultureInfo.InvariantCulture;
        var modules = KernelLiveModules.Current(img.Version?.Release ?? sys.Release);
        IReadOnlyList<KernelLiveModuleResult> results;
        using (var core = ElfCore.Open(sys.KcorePath))
            results = modules.Verify(kernel.Prediction, core, cmdline);
        var t = new Table().Border(TableBorder.Simple).Title("modules")
            .AddColumn("module").AddColumn(".text").AddColumn(new TableColumn("bytes").RightAligned()).AddColumn("result");
        foreach (var r in results)
        {
            string what = r.Result is { } v
                ? (v.Clean ? string.Create(inv, $"clean ({v.DynamicChanged.Length} dynamic sites changed)") : string.Create(inv, $"UNEXPLAINED: {v.UnexplainedBytes:N0} bytes in {v.Unexplained.Length:N0} ranges, first {v.Unexplained[0].Symbol}"))
                : "NOT VERIFIED: " + r.Problem;
            t.AddRow(Markup.Escape(r.Module.Name), r.Result is { } v2 ? Terminal.Addr(v2.Address) : "", r.Result is { } v3 ? v3.Length.ToString("N0", inv) : "", Markup.Escape(what));
        }
        console.Write(t);
        int clean = results.Count(r => r.Clean);
        Terminal.Field(console, "Modules", string.Create(inv, $"{results.Count} loaded: {clean} clean, {results.Count(r => r.Result is { Clean: false })} unexplained, {results.Count(r => r.Result is null)} not verified"));
        return clean == results.Count;
    }

    /// <summary>The running kernel's .text and where it is.</summary>
    private static (ReadOnlyMemory<byte> Text, ulong At, string Source, string Kind) ReadText(KernelImage img, Options o, KernelLiveSystem? sys)
    {
        var size = KernelTextLocator.TextSection(img).Size;
        if (o.Text is { } tf)
        {
            // .text's size (or the whole of a shorter file, which the check refuses with its length): mapped (for the rest
            // of the process, like the image), else read.
            if (MappedFile.TryOpen(tf.FullName) is { } mapped)
                return (mapped.Memory[..(int)Math.Min((ulong)mapped.Length, size)], o.Base!.Value, tf.FullName, "text");
            using var f = File.OpenRead(tf.FullName);
            var buf = new byte[(int)Math.Min((ulong)f.Length, size)];
            f.ReadExactly(buf);
            return (buf, o.Base!.Value, tf.FullName, "text");
        }
        if (o.Memory is { } mf)
        {
            using var core = ElfCore.Open(mf.FullName);
            ulong at = KernelTextLocator.Find(img, core);
            var buf = new byte[size];
            if (!core.TryRead(at, buf))
                throw new KernelVerifyException($"{mf.FullName}: cannot read .text at 0x{at:x}");
            return (buf, at, mf.FullName, "memory");
        }
        var (text, addr) = sys!.ReadText(img);
        return (text, addr, sys.KcorePath, "live");
    }

    private static void WriteSummary(IAnsiConsole console, KernelVerifyResult r, KernelCommandLine cmdline, List<KernelVerifyStep> steps, TimeSpan total, bool all)
    {
        var inv = CultureInfo.InvariantCulture;
        var img = r.Image;
        var s = r.Prediction.State;
        var cpu = s.Features;
        Terminal.Field(console, "Image", string.Create(inv, $"{img.Name} ({img.Version?.Release ?? "unknown version"}, {KernelCommand.ArchitectureName(img)}), rules: {r.Prediction.Rules}"));
        Terminal.Field(console, "Text", string.Create(inv, $"{r.Source}: .text at {Terminal.Addr(r.TextAddress)} ({(r.Fit.Delta == 0 ? "not moved" : $"KASLR offset {Terminal.Addr((ulong)r.Fit.Delta)}")}), {r.TextLength:N0} bytes"));
        Terminal.Field(console, "CPU", string.Create(inv, $"{cpu.Vendor} family {cpu.Family} model {cpu.Model} stepping {cpu.Stepping}{(cpu.ModelName is { } mn ? $" ({mn})" : "")}, {s.Cpus} CPU(s), hypervisor {s.Hypervisor.ToString().ToLowerInvariant()}"));
        Terminal.Field(console, "Command line", (cmdline.Text.Length == 0 ? "(none)" : cmdline.Text) + (r.Prediction.Preempt is { } pm ? $"; preempt mode {pm.ToString().ToLowerInvariant()}" : ""));
        WriteClasses(console, r.TextLength, r.AsPredictedBytes, r.DynamicBytes, r.UnexplainedBytes, r.DynamicSites, r.DynamicChanged);

        WriteTables(console, r.DynamicChanged, r.Unexplained, all);
        Terminal.Field(console, "Time", string.Join(", ", steps.Concat(r.Steps).Select(x => string.Create(inv, $"{x.Name} {x.Time.TotalMilliseconds:F0} ms")))
            + string.Create(inv, $"; total {total.TotalMilliseconds:F0} ms"));
        Terminal.Field(console, "Result", r.Clean
            ? "clean: every byte is as predicted or a dynamic site in a legal state"
            : string.Create(inv, $"UNEXPLAINED: {r.UnexplainedBytes:N0} bytes in {r.Unexplained.Length:N0} ranges"));
    }

    /// <summary>The "Bytes" and "Dynamic sites" lines of a kernel's or a module's verification.</summary>
    private static void WriteClasses(IAnsiConsole console, long length, long asPredicted, long dynamic, long unexplained,
        ImmutableArray<KernelDynamicSite> sites, ImmutableArray<KernelDynamicObservation> changed)
    {
        var inv = CultureInfo.InvariantCulture;
        double Pct(long n) => 100.0 * n / Math.Max(1, length);
        Terminal.Field(console, "Bytes", string.Create(inv,
            $"as predicted {asPredicted:N0} ({Pct(asPredicted):F4}%), dynamic {dynamic:N0} ({Pct(dynamic):F4}%), unexplained {unexplained:N0}"));
        var byKind = sites.GroupBy(x => x.Kind).OrderBy(g => g.Key)
            .Select(g => string.Create(inv, $"{g.Key.ShortName()} {g.Count():N0} ({changed.Count(c => c.Site.Kind == g.Key):N0} changed)"));
        Terminal.Field(console, "Dynamic sites", sites.IsEmpty ? "none" : string.Join(", ", byKind));
    }

    /// <summary>The dynamic sites in another legal state and the unexplained ranges (the first few unless --all).</summary>
    private static void WriteTables(IAnsiConsole console, ImmutableArray<KernelDynamicObservation> changed, ImmutableArray<KernelUnexplainedRange> unexplained, bool all)
    {
        var inv = CultureInfo.InvariantCulture;
        if (!changed.IsEmpty)
        {
            var t = new Table().Border(TableBorder.Simple).Title("dynamic sites in another legal state")
                .AddColumn("address").AddColumn("site").AddColumn("symbol").AddColumn("state").AddColumn("what");
            foreach (var c in all ? changed : changed.Take(Shown))
                t.AddRow(Terminal.Addr(c.Site.Address), $"{c.Site.Kind.ShortName()} #{c.Site.Index}", Markup.Escape(c.Symbol), Markup.Escape(c.State), Markup.Escape(c.Site.Detail));
            console.Write(t);
            if (!all && changed.Length > Shown)
                console.WriteLine(string.Create(inv, $"… and {changed.Length - Shown:N0} more (--all or --json lists them)"));
        }
        if (!unexplained.IsEmpty)
        {
            var t = new Table().Border(TableBorder.Simple).Title("unexplained")
                .AddColumn("address").AddColumn(new TableColumn("bytes").RightAligned()).AddColumn("symbol").AddColumn("sites")
                .AddColumn("expected").AddColumn("found");
            foreach (var u in all ? unexplained : unexplained.Take(Shown))
            {
                t.AddRow(Terminal.Addr(u.Address), u.Length.ToString(inv), Markup.Escape(u.Symbol), Markup.Escape(string.Join(", ", u.Sites)),
                    Markup.Escape($"{Terminal.Hex(u.Expected.Span)}: {u.ExpectedCode}"), Markup.Escape($"{Terminal.Hex(u.Found.Span)}: {u.FoundCode}"));
            }
            console.Write(t);
            if (!all && unexplained.Length > Shown)
                console.WriteLine(string.Create(inv, $"… and {unexplained.Length - Shown:N0} more (--all or --json lists them)"));
        }
    }
}

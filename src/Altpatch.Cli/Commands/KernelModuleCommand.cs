using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Spectre.Console;

namespace Altpatch.Cli.Commands;

/// <summary>
/// <c>altpatch kernel module IMAGE MODULE.ko --sections FILE [--dep DEP.ko=SECTIONS]… [--kernel-base ADDR] [CPU options]
/// [--cmdline …] -o OUT</c>: the module as the kernel's loader leaves it — linked where its sections were loaded, relocated
/// against the kernel and its dependencies, and patched by <c>module_finalize()</c>, ftrace and the jump-label and
/// static-call notifiers for the CPU and command line. OUT is an ELF file whose sections have their load addresses and
/// their bytes as in memory.
/// </summary>
public static class KernelModuleCommand
{
    /// <summary>Builds the command.</summary>
    public static Command Create()
    {
        var image = KernelCommand.ImageArgument();
        var module = new Argument<FileInfo>("MODULE") { Description = "The module: a .ko, .ko.xz or .ko.zst of the image's build (its vermagic must be the kernel's)." };
        var placement = new KernelModuleOptions();
        var cpu = new KernelCpuOptions();
        var cmdline = new KernelCmdlineOptions();
        var output = new Option<FileInfo>("--output", "-o") { Description = "Where to write the loaded module: an ELF file whose allocated sections carry their load addresses (sh_addr) and their bytes as in memory (written to a temporary file next to it and renamed on success).", Required = true };
        var ignoreCrc = KernelCommand.IgnoreCrcOption();

        var cmd = new Command("module",
            "Load a kernel module as the kernel does: link it where /sys/module/NAME/sections says (apply_relocate_add against the kernel's kallsyms and the modules given with --dep), then module_finalize (6.1: paravirt, retpolines, returns, alternatives, ENDBR, SMP locks to UP on one CPU; 6.12: retpolines, returns, alternatives, call depth thunks, ENDBR sealing, SMP locks), ftrace (mcount to NOPs), jump labels and static calls for the CPU and command line; write the module as it is in memory.");
        cmd.Arguments.Add(image);
        cmd.Arguments.Add(module);
        placement.AddTo(cmd, _ => true);
        cpu.AddTo(cmd, _ => true);
        cmdline.AddTo(cmd);
        cmd.Options.Add(output);
        cmd.Options.Add(ignoreCrc);
        cmd.SetAction(parse =>
        {
            var description = cpu.Describe(parse);
            var line = cmdline.Read(parse);
            return Run(parse, parse.GetValue(image)!, parse.GetValue(module)!, description, line, placement, parse.GetValue(output)!, ignoreCrc);
        });
        return cmd;
    }

    private static int Run(ParseResult parse, FileInfo imageFile, FileInfo module, KernelCpuDescription cpu, KernelCommandLine cmdline,
        KernelModuleOptions placement, FileInfo output, Option<bool> ignoreCrc)
    {
        var console = Terminal.Console(Terminal.Out(parse));
        var total = Stopwatch.StartNew();
        KernelPatchCommand.WritableDirectory(output);
        if (!module.Exists)
            throw new FileNotFoundException($"{module.FullName}: no such file");
        var img = KernelCommand.Open(imageFile, parse, ignoreCrc);
        var loaded = placement.Load(parse, img, module, cpu, cmdline);
        string tmp = KernelPatchCommand.WriteTemporary(output, s => s.Write(loaded.Patched.Bytes.Span));
        try
        {
            File.Move(tmp, output.FullName, overwrite: true);
        }
        catch
        {
            KernelPatchCommand.TryDelete(tmp);
            throw;
        }
        WriteSummary(console, loaded, cmdline, output, total.Elapsed);
        return 0;
    }

    private static void WriteSummary(IAnsiConsole console, KernelModuleResult r, KernelCommandLine cmdline, FileInfo output, TimeSpan total)
    {
        var inv = CultureInfo.InvariantCulture;
        var link = r.Link;
        var k = r.Kernel;
        var cpu = k.State.Features;
        Terminal.Field(console, "Module", string.Create(inv, $"{link.Module.Name} ({link.Module.FileName}{(link.Module.Compression == PayloadCompression.None ? "" : $", {PayloadDecompressor.Name(link.Module.Compression)}")}), vermagic {link.Module.Vermagic?.TrimEnd()}"));
        Terminal.Field(console, "Kernel", string.Create(inv, $"{k.Image.Name} ({k.Image.Version?.Release}), {(k.Image.RelocationDelta == 0 ? "at its link address" : $"KASLR offset {Terminal.Addr((ulong)k.Image.RelocationDelta)}")}, rules: {k.Rules}"));
        Terminal.Field(console, "CPU", string.Create(inv, $"{cpu.Vendor} family {cpu.Family} model {cpu.Model} stepping {cpu.Stepping}, {k.State.Cpus} CPU(s); command line: {(cmdline.Text.Length == 0 ? "(none)" : cmdline.Text)}"));
        var text = link.Elf.FindSection(".text");
        Terminal.Field(console, "Placed", string.Create(inv, $"{link.LoadedSections.Count():N0} sections, .text at {Terminal.Addr(text?.Address ?? 0)}{(link.PerCpuBase is { } pc ? $", per-CPU base {Terminal.Addr(pc)}" : "")}"));
        Terminal.Field(console, "Relocations", string.Join(", ", link.RelocationsByType.OrderByDescending(kv => kv.Value).Select(kv => string.Create(inv, $"{kv.Key} {kv.Value:N0}")))
            + string.Create(inv, $"; symbols from the kernel {link.ResolvedFrom.Count(x => x.Value == "kernel"):N0}, from modules {link.ResolvedFrom.Count(x => x.Value != "kernel"):N0}"));
        var t = new Table().Border(TableBorder.Simple)
            .AddColumn("pass").AddColumn("kernel function").AddColumn(new TableColumn("sites").RightAligned())
            .AddColumn(new TableColumn("pokes").RightAligned()).AddColumn(new TableColumn("bytes").RightAligned());
        foreach (var p in r.Passes)
            t.AddRow(p.Pass.ShortName(), r.KernelFunction(p.Pass), p.Sites.ToString("N0", inv), p.Pokes.ToString("N0", inv), p.Bytes.ToString("N0", inv));
        console.Write(t);
        foreach (var d in r.Decisions)
            Terminal.Field(console, "Decision", d);
        Terminal.Field(console, "Wrote", string.Create(inv, $"{output.FullName} ({r.Patched.Bytes.Length:N0} bytes)"));
        Terminal.Field(console, "Time", string.Create(inv, $"{total.TotalMilliseconds:F0} ms"));
    }
}

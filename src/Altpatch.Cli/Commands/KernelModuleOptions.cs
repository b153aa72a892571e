using System.CommandLine;
using System.CommandLine.Parsing;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Images.Verify;

namespace Altpatch.Cli.Commands;

/// <summary>
/// Where a module was loaded and into which kernel: <c>--sections FILE</c> (a copy of <c>/sys/module/NAME/sections/</c>
/// or lines <c>NAME ADDRESS</c>), <c>--dep MODULE.ko=SECTIONS</c> for each module it links against (repeatable, in load
/// order) and <c>--kernel-base ADDR</c> (the running <c>_stext</c>, for KASLR). Shared by <c>kernel module</c> and
/// <c>kernel verify --module</c>.
/// </summary>
internal sealed class KernelModuleOptions
{
    public Option<string?> Sections { get; } = new("--sections") { Description = "Where the module's sections were loaded: a copy of /sys/module/NAME/sections/ (a directory, read as root) or a file of 'SECTION ADDRESS' lines. A module with per-CPU data also needs '.data..percpu ADDRESS'." };
    public Option<string[]> Deps { get; } = new("--dep") { Description = "A module this one links against, as MODULE.ko=SECTIONS (its .ko and where its sections were loaded); repeatable, dependencies first.", AllowMultipleArgumentsPerToken = false };
    public Option<string?> KernelBase { get; } = new("--kernel-base") { Description = "Where the kernel runs: the running _stext in hex (from /proc/kallsyms as root); default its link address (nokaslr)." };

    /// <summary>Adds the options and their checks.</summary>
    public void AddTo(Command cmd, Func<CommandResult, bool> sectionsRequired)
    {
        cmd.Options.Add(Sections);
        cmd.Options.Add(Deps);
        cmd.Options.Add(KernelBase);
        cmd.Validators.Add(r =>
        {
            if (sectionsRequired(r) && r.GetValue(Sections) is null)
                r.AddError("--sections FILE is required: where the module's sections were loaded (a copy of /sys/module/NAME/sections/)");
            if (r.GetValue(KernelBase) is { } b && KernelModuleSections.ParseAddress(b) is null)
                r.AddError($"--kernel-base: '{b}' is not a hexadecimal address");
            foreach (var d in r.GetValue(Deps) ?? [])
            {
                if (!d.Contains('=', StringComparison.Ordinal))
                    r.AddError($"--dep: '{d}' is not MODULE.ko=SECTIONS");
            }
        });
    }

    /// <summary>The module's load (dependencies first, then <paramref name="module"/>) into the kernel predicted for the
    /// machine at <c>--kernel-base</c>.</summary>
    public KernelModuleResult Load(ParseResult parse, KernelImage image, FileInfo module, KernelCpuDescription cpu, KernelCommandLine cmdline)
    {
        var chain = new List<(KernelModule, KernelModuleSections)>();
        foreach (var d in parse.GetValue(Deps) ?? [])
        {
            int eq = d.LastIndexOf('=');
            chain.Add((OpenModule(new FileInfo(d[..eq])), ReadSections(d[(eq + 1)..])));
        }
        chain.Add((OpenModule(module), ReadSections(parse.GetValue(Sections)!)));
        ulong? kernelBase = parse.GetValue(KernelBase) is { } b ? KernelModuleSections.ParseAddress(b) : null;
        var kernel = KernelModuleVerifier.PredictKernel(image, kernelBase, cpu with { CommandLine = cmdline }, KernelTextOptions.Default);
        return KernelModuleVerifier.Load(kernel, chain, cmdline);
    }

    private static KernelModule OpenModule(FileInfo f)
    {
        if (!f.Exists)
            throw new FileNotFoundException($"{f.FullName}: no such file");
        return KernelModule.Open(f.FullName);
    }

    private static KernelModuleSections ReadSections(string path)
    {
        if (!File.Exists(path) && !Directory.Exists(path))
            throw new FileNotFoundException($"{Path.GetFullPath(path)}: no such file or directory");
        return KernelModuleSections.Read(path);
    }
}

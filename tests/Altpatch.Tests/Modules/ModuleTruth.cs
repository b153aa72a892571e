using System.Globalization;
using System.IO.Compression;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Images.Verify;

namespace Altpatch.Tests.Modules;

/// <summary>
/// The committed module ground truth (tests/data/groundtruth-modules/&lt;image&gt;/&lt;cfg&gt;/, tools/groundtruth/gtmodules.py):
/// real Debian modules loaded into a QEMU boot of their kernel, with where each section was loaded and the bytes of every
/// executable section still mapped. The modules and the kernel come from the Debian package unpacked in ../debs/x.
/// </summary>
internal sealed class ModuleTruth(string image)
{
    /// <summary>Debian's 6.1.0-50-amd64 (6.1.176).</summary>
    public static ModuleTruth Linux61 { get; } = new("6.1.0-50-amd64");

    /// <summary>Debian's 6.12.118+deb12-amd64 (6.12.118, modules as .ko.xz).</summary>
    public static ModuleTruth Linux612 { get; } = new("6.12.118+deb12-amd64");

    /// <summary>Both, by image name.</summary>
    public static ModuleTruth For(string image) => image == Linux61.Image ? Linux61 : image == Linux612.Image ? Linux612 : throw new ArgumentException(image);

    public string Image { get; } = image;

    public string NoPackage => $"the Debian package linux-image-{Image}-unsigned (../debs/x beside the repository, tools/debs/fetch.sh) is not unpacked here";

    public string Data => Path.Combine(TestPaths.RepoRoot ?? AppContext.BaseDirectory, "tests", "data", "groundtruth-modules", Image);

    public string Package => Path.GetFullPath(Path.Combine(TestPaths.RepoRoot ?? AppContext.BaseDirectory, "..", "debs", "x", $"linux-image-{Image}-unsigned"));

    public string KernelPath => Path.Combine(Package, "boot", $"vmlinuz-{Image}");

    public string ModulesDir => Path.Combine(Package, "lib", "modules", Image, "kernel");

    public bool HavePackage => File.Exists(KernelPath) && Directory.Exists(ModulesDir);

    public IEnumerable<string> Configurations() =>
        Directory.Exists(Data) ? Directory.GetDirectories(Data).Select(Path.GetFileName).Order(StringComparer.Ordinal)!.Cast<string>() : [];

    public Dictionary<string, string> Boot(string config) =>
        File.ReadAllLines(Path.Combine(Data, config, "boot.txt")).Where(l => l.Contains(": ", StringComparison.Ordinal))
            .Select(l => l.Split(": ", 2)).ToDictionary(p => p[0], p => p[1]);

    public static ulong Hex(string s) => ulong.Parse(s.AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    /// <summary>The modules of a configuration, in load order, with their .ko paths.</summary>
    public List<(string Name, string Path)> Modules(string config)
    {
        var b = Boot(config);
        var names = b["modules"].Split(' ');
        var files = b["module_files"].Split(' ');
        var all = Directory.GetFiles(ModulesDir, "*.ko*", SearchOption.AllDirectories);
        return [.. names.Zip(files, (n, f) => (n, all.Single(p => p.EndsWith("/" + f, StringComparison.Ordinal))))];
    }

    /// <summary>The kernel image of the package, opened once.</summary>
    public KernelImage? OpenKernel() => HavePackage ? kernel.Value : null;

    private readonly Lazy<KernelImage> kernel = new(() => KernelImage.Open(Path.Combine(TestPaths.RepoRoot ?? AppContext.BaseDirectory, "..", "debs", "x", $"linux-image-{image}-unsigned", "boot", $"vmlinuz-{image}")));

    /// <summary>The kernel as the configuration's boot left it (KASLR applied), and its command line.</summary>
    public (KernelPatchResult Kernel, KernelCommandLine CommandLine) Kernel(string config, KernelImage image)
    {
        var b = Boot(config);
        var cpu = KernelCpuDescription.FromCpuInfo(File.ReadAllText(Path.Combine(Data, config, "cpuinfo"))) with { Cpus = int.Parse(b["smp"], CultureInfo.InvariantCulture) };
        var cmdline = KernelCommandLine.Parse(b["kernel_cmdline"]);
        long delta = (long)(Hex(b["stext"]) - image.Elf.FindSection(".text")!.Value.Address);
        var runtime = image.Relocate(delta);
        return (KernelTextVerifier.Predict(runtime, cpu with { CommandLine = cmdline }, KernelTextOptions.Default), cmdline);
    }

    /// <summary>The truth's saved sections of one module: name → (address, bytes).</summary>
    public Dictionary<string, (ulong Address, byte[] Bytes)> Saved(string config, string module)
    {
        var d = new Dictionary<string, (ulong, byte[])>(StringComparer.Ordinal);
        foreach (var line in File.ReadAllLines(Path.Combine(Data, config, module + ".text.sha256")).Where(l => l.Length > 0))
        {
            var f = line.Split(' ');
            using var gz = new GZipStream(File.OpenRead(Path.Combine(Data, config, module + f[0] + ".gz")), CompressionMode.Decompress);
            using var ms = new MemoryStream();
            gz.CopyTo(ms);
            d[f[0]] = (Hex(f[1]), ms.ToArray());
        }
        return d;
    }
}

using Altpatch.Images;

namespace Altpatch.Tests.Symbols;

/// <summary>
/// The kernels the symbol tests read: the three shared images (../shared/linux, also in CI) and two Debian flavours
/// the decoder was not tuned on (../debs/x, this machine only); each with its build's config and, where the machine
/// has it, its System.map (from the -dbg packages: the -unsigned packages ship a one-line placeholder).
/// </summary>
internal sealed record SymbolImage(string Id, string Release, string ImagePath, string ConfigPath, string? SystemMapPath, bool Linux612)
{
    private static string Debs => Path.GetFullPath(Path.Combine(TestPaths.RepoRoot ?? AppContext.BaseDirectory, "..", "debs", "x"));

    private static string DbgMap(string flavourRelease) =>
        Path.Combine(Debs, $"linux-image-{flavourRelease}-dbg", "usr", "lib", "debug", "boot", $"System.map-{flavourRelease}");

    public static readonly SymbolImage Cloud61 = new("cloud61", "6.1.0-50-cloud-amd64",
        Path.Combine(TestPaths.SharedLinux, "vmlinuz-6.1.0-50-cloud-amd64"), Path.Combine(TestPaths.SharedLinux, "config-6.1.0-50-cloud-amd64"),
        DbgMap("6.1.0-50-cloud-amd64"), false);

    public static readonly SymbolImage I38661 = new("686", "6.1.0-50-686",
        Path.Combine(TestPaths.SharedLinux, "vmlinuz-6.1.0-50-686"), Path.Combine(TestPaths.SharedLinux, "config-6.1.0-50-686"),
        DbgMap("6.1.0-50-686"), false);

    public static readonly SymbolImage Cloud612 = new("cloud612", "6.12.118+deb12-cloud-amd64",
        Path.Combine(TestPaths.SharedLinux, "vmlinuz-6.12.118+deb12-cloud-amd64"), Path.Combine(TestPaths.SharedLinux, "config-6.12.118+deb12-cloud-amd64"),
        DbgMap("6.12.118+deb12-cloud-amd64"), true);

    /// <summary>Not tuned on: the generic -amd64 flavours (other config, other symbols, other addresses).</summary>
    public static readonly SymbolImage Amd6461 = new("amd64-61", "6.1.0-50-amd64",
        Path.Combine(Debs, "linux-image-6.1.0-50-amd64-unsigned", "boot", "vmlinuz-6.1.0-50-amd64"),
        Path.Combine(Debs, "linux-image-6.1.0-50-amd64-unsigned", "boot", "config-6.1.0-50-amd64"), DbgMap("6.1.0-50-amd64"), false);

    public static readonly SymbolImage Amd64612 = new("amd64-612", "6.12.118+deb12-amd64",
        Path.Combine(Debs, "linux-image-6.12.118+deb12-amd64-unsigned", "boot", "vmlinuz-6.12.118+deb12-amd64"),
        Path.Combine(Debs, "linux-image-6.12.118+deb12-amd64-unsigned", "boot", "config-6.12.118+deb12-amd64"), DbgMap("6.12.118+deb12-amd64"), true);

    public static readonly SymbolImage[] Shared = [Cloud61, I38661, Cloud612];
    public static readonly SymbolImage[] Every = [Cloud61, I38661, Cloud612, Amd6461, Amd64612];

    public static SymbolImage Get(string id) => Every.Single(i => i.Id == id);

    private static readonly Dictionary<string, Lazy<KernelImage>> Opened =
        Every.ToDictionary(i => i.Id, i => new Lazy<KernelImage>(() => KernelImage.Open(i.ImagePath)));

    /// <summary>The image, opened once per run; skips when the machine does not have it.</summary>
    public KernelImage Open()
    {
        Skip.IfNot(File.Exists(ImagePath), Shared.Contains(this) ? TestPaths.NoSharedImages : $"{ImagePath} is not on this machine (a Debian package unpacked under ../debs/x)");
        return Opened[Id].Value;
    }

    /// <summary>The System.map text; skips when the machine does not have it (CI: the fixture test covers the shared images).</summary>
    public string ReadSystemMap()
    {
        Skip.IfNot(SystemMapPath is not null && File.Exists(SystemMapPath),
            $"no System.map of {Release} on this machine (it comes from linux-image-{Release}-dbg, unpacked under ../debs/x)");
        return File.ReadAllText(SystemMapPath!);
    }

    /// <summary>Whether the build's config sets <paramref name="option"/> (=y).</summary>
    public bool Config(string option)
    {
        Skip.IfNot(File.Exists(ConfigPath), $"{ConfigPath} is not on this machine");
        return File.ReadLines(ConfigPath).Any(l => l == $"{option}=y");
    }

    public override string ToString() => Id;
}

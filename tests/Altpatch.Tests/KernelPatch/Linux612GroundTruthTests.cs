using System.Globalization;
using Altpatch.Cpu;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Xunit.Abstractions;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// Linux 6.12 (issue 9) against the kernel's own boot-time patching: for every committed 6.12 configuration
/// (tests/data/groundtruth/6.12.118+deb12-*/&lt;cfg&gt;/panic.sites.gz), patch the image from the guest's cpuinfo, -smp
/// and command line and compare every alt, retpoline, return, lock, call, endbr and runtime_const site byte for byte;
/// and the derived boot CPU against the dump's <c>boot_cpu_data.x86_capability[]</c> (<c>caps</c>).
/// </summary>
public class Linux612GroundTruthTests(ITestOutputHelper output)
{
    public static TheoryData<string, string> Configurations()
    {
        var data = new TheoryData<string, string>();
        foreach (var (image, config) in Configs())
            data.Add(image, config);
        if (data.Count == 0)
            data.Add("none", "none");
        return data;
    }

    internal static IEnumerable<(string Image, string Config)> Configs()
    {
        if (!Directory.Exists(GroundTruth.Dir))
            yield break;
        foreach (var imageDir in Directory.GetDirectories(GroundTruth.Dir, "6.12*").Order(StringComparer.Ordinal))
        {
            foreach (var cfg in Directory.GetDirectories(imageDir).Order(StringComparer.Ordinal))
                yield return (Path.GetFileName(imageDir), Path.GetFileName(cfg));
        }
    }

    private static string Dir(string image, string config) => Path.Combine(GroundTruth.Dir, image, config);

    /// <summary>The 6.12 images: the shared cloud-amd64 one, the -amd64 flavour from /work/debs/x.</summary>
    internal static KernelImage Image(string image)
    {
        string path = image == "6.12.118+deb12-cloud-amd64"
            ? Path.Combine(TestPaths.SharedLinux, "vmlinuz-" + image)
            : Path.GetFullPath(Path.Combine(TestPaths.SharedLinux, "..", "..", "debs", "x", $"linux-image-{image}-unsigned", "boot", $"vmlinuz-{image}"));
        Skip.IfNot(File.Exists(path), $"the image {image} is not present ({path})");
        return Images.GetOrAdd(image, _ => KernelImage.Open(path));
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, KernelImage> Images = new();

    internal static Dictionary<string, string> Boot(string image, string config)
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in File.ReadAllLines(Path.Combine(Dir(image, config), "boot.txt")))
        {
            int c = line.IndexOf(':', StringComparison.Ordinal);
            if (c > 0)
                d.TryAdd(line[..c].Trim(), line[(c + 1)..].Trim());
        }
        return d;
    }

    /// <summary>The machine of a configuration: its cpuinfo, -smp and command line.</summary>
    internal static (KernelCpuDescription Description, KernelCommandLine CommandLine) Machine(string image, string config)
    {
        var boot = Boot(image, config);
        var cmdline = KernelCommandLine.Parse(boot["kernel_cmdline"]);
        var d = KernelCpuDescription.FromCpuInfo(File.ReadAllText(Path.Combine(Dir(image, config), "cpuinfo")))
            with { Cpus = int.Parse(boot["smp"], CultureInfo.InvariantCulture), CommandLine = cmdline };
        return (d, cmdline);
    }

    /// <summary>The <c>caps</c> file's words (0..23) as 6.12 feature numbers.</summary>
    internal static HashSet<int> TruthCaps(string image, string config)
    {
        var set = new HashSet<int>();
        foreach (var line in File.ReadAllLines(Path.Combine(Dir(image, config), "caps")))
        {
            if (!line.StartsWith("words ", StringComparison.Ordinal))
                continue;
            foreach (var w in line[6..].Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                var p = w.Split(':');
                int word = int.Parse(p[0], CultureInfo.InvariantCulture);
                uint v = uint.Parse(p[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                for (int b = 0; b < 32; b++)
                {
                    if ((v & (1u << b)) != 0)
                        set.Add(word * 32 + b);
                }
            }
        }
        return set;
    }

    /// <summary>A command-line option of the boot that the 6.12 rules do not read (besides the console, KASLR and panic
    /// options, which change no patched byte); null when the line reads them all.</summary>
    internal static string? PendingOption(string image, string config) =>
        KernelLines.Linux612.ReadCommandLine(Boot(image, config)["kernel_cmdline"]).Unknown
            .FirstOrDefault(n => n.Split('=')[0] is not ("console" or "nokaslr" or "kaslr" or "panic"));

    private static string Names(IEnumerable<int> numbers) =>
        string.Join(" ", numbers.Order().Select(n => FeatureNumbering.Linux612.NameOf(n) ?? $"{n / 32}*32+{n % 32}"));

    /// <summary>Sites whose final state the boot decides in a way the prediction leaves dynamic: the static-call trampolines
    /// of the calls the boot-calls pass says it left dynamic (<c>x86_idle</c> with MWAIT, <c>apic_call_*</c> with x2APIC,
    /// the LSM hooks without their tables; every other trampoline, re-aimed by the boot's <c>static_call_update()</c>s or
    /// not, is compared), and the dentry hash's runtime constants (<c>dcache_init_early()</c>: the table's address and the
    /// memory-dependent shift).</summary>
    internal static Func<KernelSiteOutcome, bool> DynamicSites(KernelPatchResult result)
    {
        var left = new List<string>();
        if (result.TextDecisions.Any(d => d.Contains("x86_idle is left as dynamic", StringComparison.Ordinal)))
            left.Add("__SCT__x86_idle");
        if (result.TextDecisions.Any(d => d.Contains("apic_call_* static calls are left as dynamic", StringComparison.Ordinal)))
            left.Add("__SCT__apic_call_");
        if (result.TextDecisions.Any(d => d.Contains("LSM static calls are left as dynamic", StringComparison.Ordinal)))
            left.Add("__SCT__lsm_static_call_");
        var trampolines = result.TextSites.Where(t => t.Kind == KernelSiteKind.StaticCallTrampoline && left.Any(p => t.Detail.StartsWith(p, StringComparison.Ordinal)))
            .Select(t => t.Address).ToHashSet();
        var dentry = result.Image.Elf.Sections.Where(s => s.Name is "runtime_shift_d_hash_shift" or "runtime_ptr_dentry_hashtable")
            .Sum(s => (int)(s.Size / 4));
        var repl = result.Image.Elf.FindSection(".altinstr_replacement");
        // Open question (issue 9): the two return sites inside .altinstr_replacement (the ERMS/FSRM replacements of
        // memmove) hold their build-time bytes in the panic dump, although the copies the alternatives made at their
        // sites show the patched return; they are init data no code runs from, and counted here, not compared.
        return s => (s.Kind == KernelSiteKind.Return && trampolines.Contains(s.Address))
            || (s.Kind == KernelSiteKind.Return && repl is { } r && s.Address >= r.Address && s.Address < r.Address + r.Size)
            || (s.Kind == KernelSiteKind.RuntimeConst && s.Index < dentry);
    }

    [SkippableTheory]
    [MemberData(nameof(Configurations))]
    public void The_derived_boot_cpu_is_the_dumps_boot_cpu_data(string image, string config)
    {
        Skip.If(image == "none", "no 6.12 ground truth");
        var img = Image(image);
        string? p1 = PendingOption(image, config);
        Skip.If(p1 is not null, $"the command line option '{p1}' is not applied by the derivation yet");
        var (description, _) = Machine(image, config);
        var state = KernelBootPatcher.DeriveState(img, description, KernelThunks.Find(img));
        var got = state.ImageFeatures!.Numbers.ToHashSet();
        var want = TruthCaps(image, config);
        var missing = want.Except(got).ToList();
        var extra = got.Except(want).ToList();
        output.WriteLine($"missing: {Names(missing)}\nextra: {Names(extra)}");
        Assert.True(missing.Count == 0 && extra.Count == 0, $"missing: {Names(missing)}; extra: {Names(extra)}");
    }

    [SkippableTheory]
    [MemberData(nameof(Configurations))]
    public void Every_site_matches_the_kernel(string image, string config)
    {
        Skip.If(image == "none", "no 6.12 ground truth");
        string truth = Path.Combine(Dir(image, config), "panic.sites.gz");
        Skip.IfNot(File.Exists(truth), $"{image}/{config} has no committed panic.sites.gz");
        var img = Image(image);
        var boot = Boot(image, config);
        Skip.If(boot.GetValueOrDefault("kaslr") == "yes", "a KASLR boot: its sites are compared after relocation by the whole-text tests");
        string? p2 = PendingOption(image, config);
        Skip.If(p2 is not null, $"the command line option '{p2}' is not applied by the derivation yet (the test with the dump's boot CPU covers the passes)");
        var (description, cmdline) = Machine(image, config);
        var thunks = KernelThunks.Find(img);
        var state = KernelBootPatcher.DeriveState(img, description, thunks);
        var result = KernelBootPatcher.Patch(img, state, thunks, KernelTextOptions.Default);
        var cmp = GroundTruth.Compare(result, GroundTruth.ReadFile(truth), DynamicSites(result));
        output.WriteLine(cmp.ToString());
        Assert.True(cmp.AllMatch, cmp.ToString());
    }

    [SkippableTheory]
    [MemberData(nameof(Configurations))]
    public void Every_site_matches_the_kernel_with_the_dumps_boot_cpu(string image, string config)
    {
        Skip.If(image == "none", "no 6.12 ground truth");
        string truth = Path.Combine(Dir(image, config), "panic.sites.gz");
        Skip.IfNot(File.Exists(truth), $"{image}/{config} has no committed panic.sites.gz");
        var img = Image(image);
        Skip.If(Boot(image, config).GetValueOrDefault("kaslr") == "yes", "a KASLR boot");
        var (description, cmdline) = Machine(image, config);
        var thunks = KernelThunks.Find(img);
        var derived = KernelBootPatcher.DeriveState(img, description, thunks);
        var caps = TruthCaps(image, config);
        var bits = new ImageFeatureBits(FeatureNumbering.Linux612, caps);
        var view = CpuFeatures.Empty.WithIdentity(description.Cpu.Vendor, description.Cpu.Family, description.Cpu.Model, description.Cpu.Stepping)
            .With([.. caps.Select(n => FeatureNumbering.Linux612.TryMapTo(FeatureNumbering.Linux61, n, out int m) ? m : -1).Where(m => m >= 0).Select(m => (CpuFeature)m)]);
        var state = new KernelBootState(view, KernelBootCpu612.ReturnThunk(bits, view), description.Cpus, KernelHypervisor.None, commandLine: cmdline) { ImageFeatures = bits };
        var result = KernelBootPatcher.Patch(img, state, thunks, KernelTextOptions.Default);
        var cmp = GroundTruth.Compare(result, GroundTruth.ReadFile(truth), DynamicSites(result));
        output.WriteLine(cmp.ToString());
        Assert.True(cmp.AllMatch, cmp.ToString());
    }
}

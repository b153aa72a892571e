using System.Globalization;
using System.Text.RegularExpressions;
using Altpatch.Cpu;
using Altpatch.Images.Boot;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// The derivation of boot_cpu_data from /proc/cpuinfo against the capability words read from each ground-truth dump
/// (<c>.caps</c>: every bit the booted kernel had, hidden ones included).
/// </summary>
public partial class BootCpuTests
{
    /// <summary>Hidden bits that come straight from CPUID leaves /proc/cpuinfo does not show: not derivable, not used by
    /// any alternative of the two images.</summary>
    private static readonly CpuFeature[] NotDerivable = [CpuFeature.SvmeAddrChk];

    public static TheoryData<string, string> Configurations() => GroundTruthTests.Configurations();

    [SkippableTheory]
    [MemberData(nameof(Configurations))]
    public void Derived_capabilities_equal_the_dumps(string image, string config)
    {
        var img = GroundTruth.Image(image);
        var thunks = KernelThunks.Find(img);
        var state = KernelBootCpu.Derive(GroundTruth.Description(image, config), KernelBuildInfo.Infer(img, thunks));
        var caps = ReadCapsWords(Path.Combine(GroundTruth.Dir, image, config + ".caps"));
        var diffs = Differences(state, caps);
        Assert.True(diffs.Count == 0, string.Join(", ", diffs));
    }

    /// <summary>Every configuration of the current layout (<c>&lt;image&gt;/&lt;cfg&gt;/</c> with <c>caps</c>, <c>cpuinfo</c> and
    /// <c>boot.txt</c>): default and non-default command lines, 1 and 2 CPUs, KASLR.</summary>
    public static TheoryData<string, string> BootConfigurations()
    {
        var data = new TheoryData<string, string>();
        if (Directory.Exists(GroundTruth.Dir))
        {
            foreach (var imageDir in Directory.GetDirectories(GroundTruth.Dir).Order(StringComparer.Ordinal))
            {
                foreach (var cfgDir in Directory.GetDirectories(imageDir).Order(StringComparer.Ordinal))
                {
                    if (new[] { "caps", "cpuinfo", "boot.txt" }.All(f => File.Exists(Path.Combine(cfgDir, f))))
                        data.Add(Path.GetFileName(imageDir), Path.GetFileName(cfgDir));
                }
            }
        }
        if (data.Count == 0)
            data.Add("", "");
        return data;
    }

    /// <summary>The derivation for a boot's /proc/cpuinfo, -smp and kernel command line (<c>mitigations=off</c>,
    /// <c>spectre_v2=retpoline nopti</c>, <c>noreplace-smp</c>, …) against the capability words of its dump.</summary>
    [SkippableTheory]
    [MemberData(nameof(BootConfigurations))]
    public void Derived_capabilities_equal_the_dumps_with_the_boots_command_line(string image, string config)
    {
        Skip.If(image.Length == 0, "no ground-truth configurations (tests/data/groundtruth/<image>/<cfg>/caps) in this checkout");
        var img = Verify.GroundTruthDumps.Image(image);
        try
        {
            KernelBootPatcher.RulesFor(img);
        }
        catch (KernelPatchException e)
        {
            Skip.If(true, $"no boot-time rules for this kernel line yet (issue 9): {e.Message}");
        }
        Skip.If(KernelLines.For(img).Id != KernelBootRules.Linux61,
            "this compares 6.1's derivation in 6.1's numbering; a 6.12 image's capability words are compared in 6.12's numbering by Linux612GroundTruthTests");
        var dir = Path.Combine(GroundTruth.Dir, image, config);
        var boot = File.ReadLines(Path.Combine(dir, "boot.txt")).Where(l => l.Contains(": ", StringComparison.Ordinal))
            .Select(l => l.Split(": ", 2)).GroupBy(p => p[0]).ToDictionary(g => g.Key, g => g.First()[1]);
        var description = KernelCpuDescription.FromCpuInfo(File.ReadAllText(Path.Combine(dir, "cpuinfo"))) with
        {
            Cpus = int.Parse(boot["smp"], CultureInfo.InvariantCulture),
            CommandLine = KernelCommandLine.Parse(boot["kernel_cmdline"]),
        };
        var state = KernelBootCpu.Derive(description, KernelBuildInfo.Infer(img, KernelThunks.Find(img)));
        var diffs = Differences(state, ReadCapsWords(Path.Combine(dir, "caps")));
        Assert.True(diffs.Count == 0, $"{boot["kernel_cmdline"]}: " + string.Join(", ", diffs));
    }

    /// <summary>The defined bits where the derivation and the dump's words differ, as "MACRO missing|extra".</summary>
    private static List<string> Differences(KernelBootState state, uint[] caps)
    {
        var diffs = new List<string>();
        for (int w = 0; w < caps.Length; w++)
        {
            uint got = state.Features.Word(w), want = caps[w];
            for (int b = 0; b < 32; b++)
            {
                uint bit = 1u << b;
                if ((got & bit) == (want & bit))
                    continue;
                var f = (CpuFeature)(w * 32 + b);
                // Bits 6.1 does not define (AMD's copies of word 0 in word 1, reserved CPUID bits) are not in cpuinfo
                // and mean nothing to the kernel.
                if (NotDerivable.Contains(f) || !CpuFeatureInfo.IsDefined(f))
                    continue;
                diffs.Add($"{CpuFeatureInfo.MacroName(f)} {(((want & bit) != 0) ? "missing" : "extra")}");
            }
        }
        return diffs;
    }

    [SkippableTheory]
    [InlineData("amd64", 0xffffffff82003f80UL)]
    [InlineData("i386", 0xc191e920UL)]
    public void Both_images_use_the_6_1_176_numbering(string which, ulong capFlags)
    {
        var img = Images.RealImages.Get(which);
        var n = ImageFeatureNumbering.For(img, KernelBootRules.Linux61);
        Assert.True(n.IsLinux61);
        Assert.Equal(capFlags, n.CapFlagsAddress);
        Assert.Contains("x86_bug_flags at", n.Description, StringComparison.Ordinal);
        Assert.Equal((22 + 2) * 32, n.FeatureLimit);
        Assert.Equal("popcnt", n.NameOf((int)CpuFeature.Popcnt));
    }

    internal static uint[] ReadCapsWords(string path)
    {
        var words = new uint[CpuFeatureInfo.CapabilityWords + CpuFeatureInfo.BugWords];
        foreach (var line in File.ReadLines(path).Where(l => l.StartsWith("words ", StringComparison.Ordinal)))
        {
            foreach (Match m in WordRegex().Matches(line))
                words[int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)] = uint.Parse(m.Groups[2].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        }
        return words;
    }

    [GeneratedRegex(@"(\d+):([0-9a-f]{8})")]
    private static partial Regex WordRegex();
}

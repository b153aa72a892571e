using System.Text.Json;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Tests.Cli;

namespace Altpatch.Tests.KernelPatch;

/// <summary>Kernel lines (issue 9): one rules object per line, chosen from the image's version and table format; a line
/// without rules refused with its version and the supported lines; <c>--rules</c> forcing a line with a warning; the
/// kernel commands on the shared 6.12 image with <c>--json</c>.</summary>
public sealed class KernelLineTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("altpatch-lines-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private static string Image612 => Path.Combine(TestPaths.SharedLinux, "vmlinuz-6.12.118+deb12-cloud-amd64");

    private static string CpuInfo612 => Path.Combine(GroundTruth.Dir, "6.12.118+deb12-cloud-amd64", "Haswell-smp2", "cpuinfo");

    [Fact]
    public void Every_line_is_one_object_with_its_passes_numbering_nops_and_formats()
    {
        Assert.Equal(["6.12", "6.1", "2.6.22"], KernelLines.All.Select(l => l.Key));
        var l612 = KernelLines.Linux612;
        Assert.Equal(KernelBootRules.Linux612, l612.Id);
        Assert.Same(Altpatch.Cpu.FeatureNumbering.Linux612, l612.Numbering);
        Assert.Equal(new[] { AltInstrFormat.Relative14 }, l612.TableFormats.ToArray());
        Assert.DoesNotContain(BootPass.Paravirt, l612.Passes);
        Assert.Contains(BootPass.CallThunks, l612.Passes);
        Assert.Equal("apply_seal_endbr", l612.KernelFunction(BootPass.IbtEndbr));
        Assert.Equal("apply_ibt_endbr", KernelLines.Linux61.KernelFunction(BootPass.IbtEndbr));
        Assert.Equal(new[] { BootPass.Alternatives, BootPass.SmpLocks, BootPass.Paravirt }, KernelLines.Linux2622.Passes.ToArray());
        // 6.12's numbering is its own: features 6.1 does not have (call depth tracking, 11*32+19).
        Assert.False(Altpatch.Cpu.FeatureNumbering.Linux61.TryGetNumber("X86_FEATURE_CALL_DEPTH", out _));
        Assert.Equal(11 * 32 + 19, Altpatch.Cpu.FeatureNumbering.Linux612.GetNumber("X86_FEATURE_CALL_DEPTH"));
        Assert.True(l612.Matches(new KernelVersion("", "6.12.118", 6, 12, 118), AltInstrFormat.Relative14));
        Assert.False(l612.Matches(new KernelVersion("", "6.12.118", 6, 12, 118), AltInstrFormat.Relative12));
        Assert.True(KernelLines.Linux61.Matches(new KernelVersion("", "6.1.176", 6, 1, 176), AltInstrFormat.Relative12));
        Assert.False(KernelLines.Linux61.Matches(new KernelVersion("", "6.6.1", 6, 6, 1), AltInstrFormat.Relative14));
        Assert.Same(l612, KernelLines.Find("6.12"));
        Assert.Same(KernelLines.Linux61, KernelLines.Find("Linux 6.1"));
        var e = Assert.Throws<KernelPatchException>(() => KernelLines.Find("5.10"));
        Assert.Contains("6.12, 6.1, 2.6.22", e.Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void The_6_12_image_gets_the_6_12_rules_and_the_6_1_images_keep_theirs()
    {
        Skip.IfNot(File.Exists(Image612) && TestPaths.HaveSharedImages, "the shared images are not present");
        Assert.Same(KernelLines.Linux612, KernelLines.For(KernelImage.Open(Image612)));
        Assert.Same(KernelLines.Linux61, KernelLines.For(Images.RealImages.CloudAmd64));
        Assert.Same(KernelLines.Linux61, KernelLines.For(Images.RealImages.I386));
        Assert.Null(KernelLines.ForcedWarning(Images.RealImages.CloudAmd64, KernelLines.Linux61));
        Assert.Contains("unverified", KernelLines.ForcedWarning(Images.RealImages.CloudAmd64, KernelLines.Linux612), StringComparison.Ordinal);
    }

    [SkippableFact]
    public void Kernel_patch_on_6_12_writes_the_report_and_rules_forces_another_line_with_a_warning()
    {
        Skip.IfNot(File.Exists(Image612) && File.Exists(CpuInfo612), "the shared 6.12 image or its ground truth is not present");
        string output = Path.Combine(dir, "vmlinux"), report = Path.Combine(dir, "report.json");
        var (exit, _, err) = CliRunner.Run("kernel", "patch", Image612, "--cpuinfo", CpuInfo612, "-o", output, "--report", report);
        Assert.True(exit == 0, err);
        using (var doc = JsonDocument.Parse(File.ReadAllText(report)))
        {
            var root = doc.RootElement;
            Assert.Equal("Linux 6.12", root.GetProperty("rules").GetString());
            Assert.False(root.TryGetProperty("warning", out _));
            var passes = root.GetProperty("passes").EnumerateArray().Select(p => p.GetProperty("function").GetString()).ToList();
            Assert.Contains("apply_seal_endbr", passes);
            Assert.Contains("runtime_const_init", passes);
        }
        // --rules 6.1 on the 6.12 image: a warning, and the 6.1 rules refuse the 14-byte alt_instr's numbering or run unverified.
        var forced = CliRunner.Run("kernel", "patch", Image612, "--cpuinfo", CpuInfo612, "-o", output, "--rules", "6.1");
        Assert.Contains("altpatch: warning: --rules 6.1: the Linux 6.1 rules applied to Linux 6.12.118", forced.Err, StringComparison.Ordinal);
        Assert.Contains("unverified", forced.Err, StringComparison.Ordinal);
        var bad = CliRunner.Run("kernel", "patch", Image612, "--cpuinfo", CpuInfo612, "-o", Path.Combine(dir, "x"), "--rules", "4.19");
        Assert.Equal(1, bad.Exit);
        Assert.StartsWith("altpatch: error: no kernel line '4.19'", bad.Err, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(dir, "x")));
    }

    [SkippableFact]
    public void Kernel_info_and_sites_read_6_12_with_json()
    {
        Skip.IfNot(File.Exists(Image612), "the shared 6.12 image is not present");
        var info = CliRunner.Run("kernel", "info", Image612, "--json");
        Assert.True(info.Exit == 0, info.Err);
        using (var doc = JsonDocument.Parse(info.Out))
            Assert.Contains("6.12.118", doc.RootElement.ToString(), StringComparison.Ordinal);
        var sites = CliRunner.Run("kernel", "sites", Image612, "--json");
        Assert.True(sites.Exit == 0, sites.Err);
        using var s = JsonDocument.Parse(sites.Out);
        var first = s.RootElement.GetProperty("sites").EnumerateArray().First(x => x.GetProperty("kind").GetString() == "alt");
        // Named with 6.12's numbering: 3*32+21 is X86_FEATURE_ALWAYS in 6.12 as in 6.1, but the name comes from 6.12's table.
        Assert.StartsWith("X86_FEATURE_", first.GetProperty("feature").GetString(), StringComparison.Ordinal);
    }
}

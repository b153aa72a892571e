using System.Runtime.Intrinsics.X86;
using System.Text.Json;
using Altpatch.Cpu;
using Altpatch.Tests.Cli;

namespace Altpatch.Tests.Cpu;

public sealed class CpuCommandTests
{
    private static string FixtureFile()
    {
        var path = Path.Combine(Path.GetTempPath(), $"altpatch-cpuinfo-{Environment.ProcessId}.txt");
        File.WriteAllText(path, CpuFeaturesTests.EmeraldRapidsCpuInfo);
        return path;
    }

    [SkippableFact]
    public void Cpu_prints_identity_and_features_of_this_processor()
    {
        Skip.IfNot(X86Base.IsSupported, "not an x86 processor");
        var (exit, stdout, stderr) = CliRunner.Run("cpu");
        Assert.Equal(0, exit);
        Assert.Equal("", stderr);
        var cpu = CpuFeatures.Detect();
        Assert.Contains($"{cpu.Vendor}", stdout, StringComparison.Ordinal);
        Assert.Contains($"{cpu.Family} (0x{cpu.Family:x})", stdout, StringComparison.Ordinal);
        Assert.Contains($"{cpu.Model} (0x{cpu.Model:x})", stdout, StringComparison.Ordinal);
        if (cpu.ModelName is { } name)
            Assert.Contains(name, stdout, StringComparison.Ordinal);
        foreach (var f in cpu.Features)
            Assert.Contains(CpuFeatureInfo.MacroName(f), stdout, StringComparison.Ordinal);
        Assert.Contains("X86_FEATURE_ALWAYS", stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("\u001b[", stdout, StringComparison.Ordinal);   // no colour codes when redirected
    }

    [SkippableFact]
    public void Cpu_json_describes_this_processor()
    {
        Skip.IfNot(X86Base.IsSupported, "not an x86 processor");
        var (exit, stdout, stderr) = CliRunner.Run("cpu", "--json");
        Assert.Equal(0, exit);
        Assert.Equal("", stderr);
        var cpu = CpuFeatures.Detect();
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        Assert.Equal("cpuid", root.GetProperty("source").GetString());
        Assert.Equal(cpu.Vendor.ToString(), root.GetProperty("vendor").GetString());
        Assert.Equal(cpu.Family, root.GetProperty("family").GetInt32());
        Assert.Equal(cpu.Model, root.GetProperty("model").GetInt32());
        Assert.Equal(cpu.Stepping, root.GetProperty("stepping").GetInt32());
        Assert.Equal(cpu.ModelName, root.GetProperty("modelName").GetString());
        var numbers = root.GetProperty("features").EnumerateArray().Select(e => e.GetProperty("number").GetInt32()).ToList();
        Assert.Equal(cpu.Features.Select(f => (int)f), numbers);
        foreach (var e in root.GetProperty("features").EnumerateArray())
        {
            var f = (CpuFeature)e.GetProperty("number").GetInt32();
            Assert.Equal(CpuFeatureInfo.MacroName(f), e.GetProperty("macro").GetString());
            Assert.Equal(CpuFeatureInfo.CpuInfoName(f), e.GetProperty("cpuinfo").GetString());
            Assert.Equal(CpuFeatureInfo.FormatNumber(f), e.GetProperty("wordBit").GetString());
        }
    }

    [Fact]
    public void Cpu_json_from_a_cpuinfo_file_is_exact()
    {
        var path = FixtureFile();
        try
        {
            var (exit, stdout, _) = CliRunner.Run("cpu", "--json", "--cpuinfo", path);
            Assert.Equal(0, exit);
            using var doc = JsonDocument.Parse(stdout);
            var root = doc.RootElement;
            Assert.Equal(path, root.GetProperty("source").GetString());
            Assert.Equal("6.1.176", root.GetProperty("linux").GetString());
            Assert.Equal("Intel", root.GetProperty("vendor").GetString());
            Assert.Equal("GenuineIntel", root.GetProperty("vendorId").GetString());
            Assert.Equal(6, root.GetProperty("family").GetInt32());
            Assert.Equal(207, root.GetProperty("model").GetInt32());
            Assert.Equal(2, root.GetProperty("stepping").GetInt32());
            Assert.Equal("Intel(R) Xeon(R) Processor", root.GetProperty("modelName").GetString());
            var features = root.GetProperty("features").EnumerateArray().ToList();
            Assert.Equal(126, features.Count);
            var popcnt = features.Single(e => e.GetProperty("macro").GetString() == "X86_FEATURE_POPCNT");
            Assert.Equal(151, popcnt.GetProperty("number").GetInt32());
            Assert.Equal("4*32+23", popcnt.GetProperty("wordBit").GetString());
            Assert.Equal("popcnt", popcnt.GetProperty("cpuinfo").GetString());
            Assert.False(popcnt.GetProperty("bug").GetBoolean());
            var src = popcnt.GetProperty("cpuid");
            Assert.Equal("0x00000001", src.GetProperty("leaf").GetString());
            Assert.Equal("ecx", src.GetProperty("register").GetString());
            Assert.Equal(23, src.GetProperty("bit").GetInt32());
            var bug = features.Single(e => e.GetProperty("macro").GetString() == "X86_BUG_SPECTRE_V2");
            Assert.True(bug.GetProperty("bug").GetBoolean());
            Assert.Equal(JsonValueKind.Null, bug.GetProperty("cpuid").ValueKind);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Cpu_feature_option_says_whether_the_cpu_has_it()
    {
        var path = FixtureFile();
        try
        {
            var (exit, stdout, _) = CliRunner.Run("cpu", "--json", "--cpuinfo", path, "--feature", "popcnt", "--feature", "3dnow", "X86_FEATURE_ALWAYS");
            Assert.Equal(0, exit);
            using var doc = JsonDocument.Parse(stdout);
            var has = doc.RootElement.GetProperty("features").EnumerateArray()
                .ToDictionary(e => e.GetProperty("macro").GetString()!, e => e.GetProperty("has").GetBoolean());
            Assert.Equal(new Dictionary<string, bool>
            {
                ["X86_FEATURE_3DNOW"] = false,
                ["X86_FEATURE_ALWAYS"] = false,     // hidden bits never appear in /proc/cpuinfo
                ["X86_FEATURE_POPCNT"] = true,
            }, has);

            var (exit2, table, _) = CliRunner.Run("cpu", "--cpuinfo", path, "--feature", "avx512_fp16");
            Assert.Equal(0, exit2);
            Assert.Contains("X86_FEATURE_AVX512_FP16", table, StringComparison.Ordinal);
            Assert.Contains("yes", table, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Cpu_errors_are_one_line_naming_the_input()
    {
        var (exit, stdout, stderr) = CliRunner.Run("cpu", "--cpuinfo", "/nonexistent/cpuinfo");
        Assert.Equal(1, exit);
        Assert.Equal("", stdout);
        Assert.StartsWith("altpatch: error: cannot read '/nonexistent/cpuinfo'", stderr, StringComparison.Ordinal);
        Assert.Single(stderr.TrimEnd().Split('\n'));

        var path = FixtureFile();
        try
        {
            (exit, _, stderr) = CliRunner.Run("cpu", "--cpuinfo", path, "--feature", "avx9000");
            Assert.Equal(1, exit);
            Assert.Contains("'avx9000'", stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }
}

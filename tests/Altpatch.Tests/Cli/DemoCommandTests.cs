using System.Text.Json;
using Altpatch.Cpu;

namespace Altpatch.Tests.Cli;

public class DemoCommandTests
{
    [Fact]
    public void Demo_json_reports_every_site_and_results_that_agree()
    {
        var (exit, stdout, stderr) = CliRunner.Run("demo", "--json");
        Assert.Equal("", stderr);
        Assert.Equal(0, exit);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        Assert.True(root.GetProperty("resultsAgree").GetBoolean());
        Assert.True(root.GetProperty("revertExact").GetBoolean());

        var cpu = CpuFeatures.Detect();
        var sites = root.GetProperty("sites").EnumerateArray().ToList();
        Assert.Equal(7, sites.Count);
        foreach (var s in sites)
        {
            Assert.StartsWith("0x", s.GetProperty("address").GetString());
            int len = s.GetProperty("length").GetInt32();
            Assert.Equal(2 * len, s.GetProperty("before").GetString()!.Length);
            Assert.Equal(2 * len, s.GetProperty("after").GetString()!.Length);
            var feature = CpuFeatureInfo.Parse(s.GetProperty("feature").GetString()!);
            Assert.Equal(cpu.Has(feature), s.GetProperty("cpuHasFeature").GetBoolean());
        }
        var popcnt = sites.Single(s => s.GetProperty("function").GetString() == "popcount");
        Assert.Equal(cpu.Has(CpuFeature.Popcnt), popcnt.GetProperty("applied").GetBoolean());
        Assert.Equal(cpu.Has(CpuFeature.Popcnt), popcnt.GetProperty("afterAsm").GetString()!.StartsWith("popcnt", StringComparison.Ordinal));
        var abs = sites.Single(s => s.GetProperty("function").GetString() == "abs");
        Assert.Equal(!cpu.Has(CpuFeature.Xop), abs.GetProperty("applied").GetBoolean());
        var triple = sites.Single(s => s.GetProperty("function").GetString() == "triple");
        Assert.True(triple.GetProperty("applied").GetBoolean()); // X86_FEATURE_ALWAYS
        Assert.StartsWith("call", triple.GetProperty("afterAsm").GetString());

        foreach (var f in root.GetProperty("functions").EnumerateArray())
        {
            var before = f.GetProperty("before").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            Assert.Equal(before, f.GetProperty("after").EnumerateArray().Select(x => x.GetInt32()));
            Assert.Equal(before, f.GetProperty("reverted").EnumerateArray().Select(x => x.GetInt32()));
        }
        var popcount = root.GetProperty("functions").EnumerateArray().Single(f => f.GetProperty("name").GetString() == "popcount");
        Assert.Equal([0, 1, 8, 13, 32], popcount.GetProperty("after").EnumerateArray().Select(x => x.GetInt32()));
    }

    [Fact]
    public void Demo_prints_tables_with_before_and_after()
    {
        var (exit, stdout, _) = CliRunner.Run("demo");
        Assert.Equal(0, exit);
        Assert.Contains("popcount", stdout);
        Assert.Contains("are back exactly", stdout);
        Assert.DoesNotContain("MISMATCH", stdout);
    }

    [Fact]
    public void Unknown_commands_and_help()
    {
        var (exit, stdout, _) = CliRunner.Run("--help");
        Assert.Equal(0, exit);
        Assert.Contains("demo", stdout);
        Assert.NotEqual(0, CliRunner.Run("no-such-command").Exit);
    }
}

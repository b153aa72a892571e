using System.Text.Json;
using Altpatch.Cpu;
using Altpatch.Tests.Live;

namespace Altpatch.Tests.Cli;

/// <summary>
/// The demo runs in this process: it live-patches its own code and hooks libc's abs, so it runs in the live collection,
/// never beside the hook tests that hook abs too or the tests that swap the SIGTRAP handler.
/// </summary>
[Collection(LiveCollection.Name)]
public class DemoCommandTests
{
    /// <summary>Runs <c>demo --json</c>: it must succeed, print nothing on stderr and write JSON that parses.</summary>
    private static JsonDocument DemoJson()
    {
        var (exit, stdout, stderr) = CliRunner.Run("demo", "--json");
        Assert.Equal("", stderr);
        Assert.Equal(0, exit);
        return JsonDocument.Parse(stdout);
    }

    [Fact]
    public void Demo_json_reports_every_site_and_results_that_agree()
    {
        using var doc = DemoJson();
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
    public void Demo_json_reports_paravirt_sites_and_the_backend_switch()
    {
        using var doc = DemoJson();
        var pv = doc.RootElement.GetProperty("paravirt");
        Assert.True(pv.GetProperty("resultsAgree").GetBoolean());
        Assert.True(pv.GetProperty("backToNativeExact").GetBoolean());
        Assert.True(pv.GetProperty("restoreExact").GetBoolean());
        long calls = pv.GetProperty("hypervisorCalls").GetInt64();
        Assert.True(calls > 0);
        Assert.Equal(calls, pv.GetProperty("hypervisorCallsAfterSwitchBack").GetInt64());

        var sites = pv.GetProperty("sites").EnumerateArray().ToDictionary(s => s.GetProperty("function").GetString()!);
        foreach (var s in sites.Values)
        {
            int len = s.GetProperty("length").GetInt32();
            foreach (var k in new[] { "original", "native", "hypervisor" })
                Assert.Equal(2 * len, s.GetProperty(k).GetString()!.Length);
            Assert.StartsWith(s.GetProperty("op").GetString() == "tail_return" ? "jmp" : "call", s.GetProperty("originalAsm").GetString());
        }
        Assert.Equal("Inline", sites["ident_64"].GetProperty("nativeStrategy").GetString());
        Assert.StartsWith("mov rax, rdi", sites["ident_64"].GetProperty("nativeAsm").GetString());
        Assert.Equal("DirectCall", sites["ident_64"].GetProperty("hypervisorStrategy").GetString());
        Assert.Equal("DirectCall", sites["mix64"].GetProperty("nativeStrategy").GetString());
        Assert.Equal("Indirect", sites["mix64_keeps_rcx"].GetProperty("nativeStrategy").GetString());
        Assert.Contains("target clobbers", sites["mix64_keeps_rcx"].GetProperty("nativeWhy").GetString());
        Assert.Equal("Nop", sites["io_delay"].GetProperty("nativeStrategy").GetString());
        Assert.Equal("Jump", sites["tail_return"].GetProperty("nativeStrategy").GetString());
        Assert.Equal("Ud2", sites["safe_halt"].GetProperty("nativeStrategy").GetString());
        Assert.Equal(CpuFeatures.Detect().Has(CpuFeature.Popcnt) ? "Inline" : "DirectCall", sites["popcount"].GetProperty("nativeStrategy").GetString());

        var mix = pv.GetProperty("functions").EnumerateArray().Single(f => f.GetProperty("name").GetString() == "mix64");
        var want = mix.GetProperty("inputs").EnumerateArray().Select(x => Altpatch.Patching.ParavirtOps.Mix64Reference(x.GetUInt64())).ToArray();
        foreach (var k in new[] { "indirect", "native", "hypervisor", "nativeAgain" })
            Assert.Equal(want, mix.GetProperty(k).EnumerateArray().Select(x => x.GetUInt64()));
    }

    [Fact]
    public void Demo_json_reports_lock_sites_through_smp_up_smp()
    {
        using var doc = DemoJson();
        var locks = doc.RootElement.GetProperty("smpLocks");
        Assert.True(locks.GetProperty("resultsAgree").GetBoolean());
        Assert.True(locks.GetProperty("restoreExact").GetBoolean());
        var sites = locks.GetProperty("sites").EnumerateArray().ToList();
        Assert.Equal(4, sites.Count);
        foreach (var s in sites)
        {
            Assert.Equal("f0", s.GetProperty("smp").GetString());
            Assert.Equal("3e", s.GetProperty("up").GetString());
            Assert.Equal("f0", s.GetProperty("restored").GetString());
            Assert.StartsWith("lock ", s.GetProperty("instruction").GetString());
        }
        Assert.Equal(4, locks.GetProperty("pokes").GetProperty("up").GetInt32());
        Assert.Equal(locks.GetProperty("threadedExpected").EnumerateArray().Select(x => x.GetInt64()),
                     locks.GetProperty("threadedCounts").EnumerateArray().Select(x => x.GetInt64()));
    }

    [Fact]
    public void Demo_prints_tables_with_before_and_after()
    {
        var (exit, stdout, _) = CliRunner.Run("demo");
        Assert.Equal(0, exit);
        Assert.Contains("popcount", stdout);
        Assert.Contains("are back exactly", stdout);
        Assert.Contains("Back to native: every site byte-identical", stdout);
        Assert.Contains("no increment lost", stdout);
        Assert.DoesNotContain("MISMATCH", stdout);
        if (Altpatch.Native.CoreSync.IsAllCoresSyncAvailable)
        {
            Assert.Contains("Native hook: libc's abs hooked and unhooked live", stdout);
            Assert.Contains("abs's bytes are back exactly", stdout);
            Assert.DoesNotContain("WRONG RESULTS", stdout);
        }
    }

    [Fact]
    public void Unknown_commands_and_help()
    {
        var (exit, stdout, _) = CliRunner.Run("--help");
        Assert.Equal(0, exit);
        Assert.Contains("demo", stdout);
        Assert.NotEqual(0, CliRunner.Run("no-such-command").Exit);
    }

    [Fact]
    public void Altpatch_alone_runs_the_built_in_default_the_demo()
    {
        var (exit, stdout, stderr) = CliRunner.Run();
        Assert.Equal("", stderr);
        Assert.Equal(0, exit);
        Assert.StartsWith("altpatch: no command given: running 'altpatch demo'", stdout, StringComparison.Ordinal);
        Assert.Contains("are back exactly", stdout, StringComparison.Ordinal);
    }
}

using System.Text.Json;
using Altpatch.Images;
using Altpatch.Tests.Cli;
using Altpatch.Tests.Images;
using Altpatch.Tests.KernelPatch;

namespace Altpatch.Tests.Verify;

/// <summary><c>altpatch kernel verify</c>: the three sources, the exit codes (0 clean, 3 unexplained, 1 error), the JSON,
/// and bad input (one error line, exit 1, nothing written).</summary>
public sealed class VerifyCliTests : IDisposable
{
    private const long Kaslr = 0x35c00000;
    private readonly string dir = Directory.CreateTempSubdirectory("altpatch-kverify-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private string File(string name, byte[] bytes)
    {
        var p = Path.Combine(dir, name);
        System.IO.File.WriteAllBytes(p, bytes);
        return p;
    }

    /// <summary>The shared Debian 6.12 cloud kernel: another build.</summary>
    private static string CloudAmd64612 => Path.Combine(TestPaths.SharedLinux, "vmlinuz-6.12.118+deb12-cloud-amd64");

    private static ulong LinkText(KernelImage img) => img.Elf.FindSection(".text")!.Value.Address;

    private static string Hex(ulong a) => $"0x{a:x}";

    private void AssertRefused((int Exit, string Out, string Err) r, string expected)
    {
        Assert.Equal(1, r.Exit);
        Assert.StartsWith("altpatch: error: ", r.Err, StringComparison.Ordinal);
        Assert.Contains(expected, r.Err, StringComparison.Ordinal);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.Empty(r.Out);
        Assert.All(Directory.GetFiles(dir), f => Assert.DoesNotContain(".tmp", f, StringComparison.Ordinal));
    }

    [Fact]
    public void Help_lists_the_sources_the_cpu_and_the_command_line()
    {
        var (exit, output, _) = CliRunner.Run("kernel", "verify", "--help");
        Assert.Equal(0, exit);
        foreach (var o in new[] { "--text", "--base", "--memory", "--live", "--cpuinfo", "--flags", "--smp", "--hypervisor", "--cmdline", "--cmdline-file", "--json", "--all" })
            Assert.Contains(o, output, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(new[] { "--cpuinfo", "x" }, "exactly one of --text DUMP --base ADDR, --memory CORE or --live")]
    [InlineData(new[] { "--text", "t", "--cpuinfo", "x" }, "--text needs --base ADDR")]
    [InlineData(new[] { "--memory", "m", "--base", "0x1000", "--cpuinfo", "x" }, "--base goes with --text")]
    [InlineData(new[] { "--text", "t", "--base", "xyz", "--cpuinfo", "x" }, "--base: 'xyz' is not a hexadecimal address")]
    [InlineData(new[] { "--text", "t", "--base", "0x1000" }, "give the CPU with either --cpuinfo FILE or --flags LIST")]
    [InlineData(new[] { "--live", "--text", "t", "--base", "0x1000" }, "exactly one of")]
    [InlineData(new[] { "--live", "--cmdline", "a", "--cmdline-file", "f" }, "either --cmdline or --cmdline-file")]
    public void Usage_errors_are_one_line(string[] args, string expected)
    {
        var (exit, output, err) = CliRunner.Run(["kernel", "verify", "IMAGE", .. args]);
        Assert.Equal(1, exit);
        Assert.Contains(expected, err, StringComparison.Ordinal);
        Assert.Empty(output);
    }

    [Fact]
    public void The_image_is_required_except_live()
    {
        var (exit, _, err) = CliRunner.Run("kernel", "verify", "--text", "t", "--base", "0x1000", "--flags", "fpu");
        Assert.Equal(1, exit);
        Assert.Contains("give the kernel IMAGE", err, StringComparison.Ordinal);
    }

    /// <summary>The text a kernel moved by KASLR holds before it patches itself: nearly every boot-patched site differs
    /// from the prediction, so verify reports them (exit 3) and the JSON lists each range.</summary>
    [SkippableFact]
    public void Unpatched_text_is_unexplained_with_exit_3_and_listed_in_the_json()
    {
        var img = RealImages.CloudAmd64;
        var dump = File("text.bin", CoreTests.MovedText(img, Kaslr));
        var (exit, output, err) = CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--text", dump, "--base", Hex(LinkText(img) + Kaslr),
            "--flags", "fpu,cx8,cmov,sse2,popcnt", "--vendor", "intel", "--family", "6", "--model", "60", "--smp", "2", "--json");
        Assert.True(exit == 3, err);
        using var doc = JsonDocument.Parse(output);
        var root = doc.RootElement;
        Assert.False(root.GetProperty("clean").GetBoolean());
        Assert.Equal("text", root.GetProperty("source").GetProperty("kind").GetString());
        Assert.Equal(Hex((ulong)Kaslr), root.GetProperty("text").GetProperty("kaslrOffset").GetString());
        var bytes = root.GetProperty("bytes");
        long length = root.GetProperty("text").GetProperty("length").GetInt64();
        Assert.Equal(length, bytes.GetProperty("asPredicted").GetInt64() + bytes.GetProperty("dynamic").GetInt64() + bytes.GetProperty("unexplained").GetInt64());
        var unexplained = root.GetProperty("unexplained");
        Assert.True(unexplained.GetArrayLength() > 10000);
        long sum = 0;
        foreach (var u in unexplained.EnumerateArray())
        {
            foreach (var key in new[] { "address", "length", "symbol", "expected", "found" })
                Assert.True(u.TryGetProperty(key, out _), key);
            Assert.Equal(2 * u.GetProperty("length").GetInt32(), u.GetProperty("expected").GetString()!.Length);
            Assert.NotEqual(u.GetProperty("expected").GetString(), u.GetProperty("found").GetString());
            var expected = Convert.FromHexString(u.GetProperty("expected").GetString()!);
            var found = Convert.FromHexString(u.GetProperty("found").GetString()!);
            sum += expected.Zip(found).Count(p => p.First != p.Second);
        }
        Assert.Equal(bytes.GetProperty("unexplained").GetInt64(), sum);
        Assert.Equal("voluntary", root.GetProperty("preempt").GetString());
        Assert.Equal(2, root.GetProperty("cpu").GetProperty("cpus").GetInt32());
        Assert.True(root.GetProperty("dynamicSites").GetProperty("mcount").GetProperty("sites").GetInt32() > 30000);
    }

    [SkippableFact]
    public void A_clean_boot_exits_0_from_a_dump_and_from_a_core()
    {
        var cfg = WholeTextTruth.Configurations().FirstOrDefault(c => c.Image == "6.1.0-50-cloud-amd64" && c.Config == "Haswell-smp2+kaslr");
        Skip.If(cfg.Image is null, "no truth file of 6.1.0-50-cloud-amd64/Haswell-smp2+kaslr in this checkout");
        var img = RealImages.CloudAmd64;
        var (_, truth) = VerifyGroundTruthTests.Boot(cfg.Image, cfg.Config);
        var text = truth.RebuildText(img);
        ulong at = truth.Text.Address + (ulong)truth.KaslrDelta;
        var cpuinfo = Path.Combine(WholeTextTruth.Dir, cfg.Image, cfg.Config, "cpuinfo");
        var dump = File("text.bin", [.. text, .. new byte[4096]]);   // longer than .text: the rest is ignored
        var r = CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--text", dump, "--base", Hex(at), "--cpuinfo", cpuinfo, "--smp", "2");
        Assert.True(r.Exit == 0, r.Err + r.Out);
        Assert.Contains("clean: every byte is as predicted or a dynamic site in a legal state", r.Out, StringComparison.Ordinal);
        Assert.Contains("KASLR offset " + Hex((ulong)truth.KaslrDelta), r.Out, StringComparison.Ordinal);

        var core = File("core", SyntheticCore.Build(true, [(0xffff888006600000, text), (at, text)]));
        var m = CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--memory", core, "--cpuinfo", cpuinfo, "--smp", "2", "--json");
        Assert.True(m.Exit == 0, m.Err);
        using var doc = JsonDocument.Parse(m.Out);
        Assert.True(doc.RootElement.GetProperty("clean").GetBoolean());
        Assert.Equal(Hex(at), doc.RootElement.GetProperty("text").GetProperty("address").GetString());
        Assert.Equal(0, doc.RootElement.GetProperty("unexplained").GetArrayLength());
        Assert.True(doc.RootElement.GetProperty("dynamic").GetArrayLength() > 0);
    }

    /// <summary>The command line reaches the prediction: a preempt=full boot verified without it shows the PREEMPT_DYNAMIC
    /// static calls in another (legal) state than the default mode's; with it (--cmdline or --cmdline-file) they are as
    /// predicted.</summary>
    [SkippableFact]
    public void The_command_line_is_predicted_not_just_tolerated()
    {
        const string image = "6.1.0-50-cloud-amd64", config = "Skylake-Client-smp2+preempt-full";
        Skip.IfNot(System.IO.File.Exists(WholeTextTruth.FileOf(image, config)), $"no truth file of {image}/{config} in this checkout");
        var (_, truth) = VerifyGroundTruthTests.Boot(image, config);
        var text = truth.RebuildText(RealImages.CloudAmd64);
        var dump = File("text.bin", text);
        var cpuinfo = Path.Combine(WholeTextTruth.Dir, image, config, "cpuinfo");
        string[] common = ["kernel", "verify", TestPaths.CloudAmd64, "--text", dump, "--base", Hex(truth.Text.Address + (ulong)truth.KaslrDelta), "--cpuinfo", cpuinfo, "--smp", "2", "--json"];
        JsonElement Run(params string[] more)
        {
            var r = CliRunner.Run([.. common, .. more]);
            Assert.True(r.Exit == 0, r.Err);
            using var doc = JsonDocument.Parse(r.Out);
            return doc.RootElement.Clone();
        }
        var without = Run();
        var with = Run("--cmdline", truth.CommandLine);
        var fromFile = Run("--cmdline-file", File("cmdline", System.Text.Encoding.UTF8.GetBytes(truth.CommandLine + "\n")));
        Assert.Equal("voluntary", without.GetProperty("preempt").GetString());
        Assert.Equal("full", with.GetProperty("preempt").GetString());
        Assert.Equal(truth.CommandLine, with.GetProperty("cmdline").GetString());
        int StaticCalls(JsonElement e) => e.GetProperty("dynamic").EnumerateArray().Count(d => d.GetProperty("kind").GetString() is "static_call" or "sct");
        Assert.True(StaticCalls(without) > 100, $"{StaticCalls(without)} static calls in another state without the command line");
        Assert.Equal(0, StaticCalls(with));
        Assert.Equal(with.GetProperty("bytes").GetRawText(), fromFile.GetProperty("bytes").GetRawText());
        Assert.True(without.GetProperty("bytes").GetProperty("dynamic").GetInt64() > with.GetProperty("bytes").GetProperty("dynamic").GetInt64());
    }

    // ---------------------------------------------------------------- bad input: one error, nothing written

    [SkippableFact]
    public void A_dump_shorter_than_text_is_refused()
    {
        var img = RealImages.CloudAmd64;
        var dump = File("short.bin", CoreTests.MovedText(img, 0)[..0x100000]);
        AssertRefused(CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--text", dump, "--base", Hex(LinkText(img)), "--flags", "fpu"),
            "1,048,576 bytes, shorter than the .text of vmlinuz-6.1.0-50-cloud-amd64 (14,687,986 bytes)");
    }

    [SkippableFact]
    public void A_base_that_does_not_fit_names_the_one_that_does()
    {
        var img = RealImages.CloudAmd64;
        var dump = File("kaslr.bin", CoreTests.MovedText(img, Kaslr));
        ulong right = LinkText(img) + Kaslr;
        AssertRefused(CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--text", dump, "--base", Hex(right - 0x1000000), "--flags", "fpu"),
            $"say it was moved by 0x35c00000, so .text was at {Hex(right)} (use that base)");
        // a base the kernel cannot have at all
        AssertRefused(CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--text", dump, "--base", Hex(right + 0x10), "--flags", "fpu"),
            "not a multiple of 4 KiB");
        AssertRefused(CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--text", dump, "--base", "0xffffffff80000000", "--flags", "fpu"),
            "is below vmlinuz-6.1.0-50-cloud-amd64's link address of .text 0xffffffff81000000");
    }

    [SkippableFact]
    public void A_dump_of_another_build_is_refused()
    {
        var cloud = RealImages.CloudAmd64;
        Skip.IfNot(System.IO.File.Exists(CloudAmd64612), TestPaths.NoSharedImages);
        // the 6.12 kernel's text, as long as the 6.1 kernel's, at the 6.1 kernel's base
        var other = KernelImage.Open(CloudAmd64612);
        var bytes = other.Elf.SectionBytes(other.Elf.FindSection(".text")!.Value).ToArray();
        var dump = File("other.bin", bytes);
        Assert.True(bytes.Length >= (int)cloud.Elf.FindSection(".text")!.Value.Size);
        AssertRefused(CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--text", dump, "--base", Hex(LinkText(cloud)), "--flags", "fpu"),
            "not the .text of vmlinuz-6.1.0-50-cloud-amd64 at 0xffffffff81000000");
        // random bytes: not kernel text at all
        var noise = new byte[bytes.Length];
        new Random(3).NextBytes(noise);
        AssertRefused(CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--text", File("noise.bin", noise), "--base", Hex(LinkText(cloud)), "--flags", "fpu"),
            "a dump of another build, a wrong --base, or not kernel text");
    }

    [SkippableFact]
    public void A_core_without_the_kernels_text_is_refused()
    {
        var other = CoreTests.MovedText(RealImages.I386, 0);
        var core = File("core", SyntheticCore.Build(true, [(0xffffffff81000000, other)]));
        AssertRefused(CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--memory", core, "--flags", "fpu"),
            "no text of vmlinuz-6.1.0-50-cloud-amd64 in the core");
        AssertRefused(CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--memory", TestPaths.I386, "--flags", "fpu"),
            "not an ELF core file");
        AssertRefused(CliRunner.Run("kernel", "verify", TestPaths.CloudAmd64, "--memory", Path.Combine(dir, "missing"), "--flags", "fpu"),
            "no such file");
    }

    /// <summary>--live on a machine where it cannot work refuses in one line: not root, no /proc/kcore, no image of the
    /// running kernel (this machine: a kernel without kcore and without /boot/vmlinuz-*).</summary>
    [Fact]
    public void Live_refuses_clearly_where_it_cannot_read_the_kernel()
    {
        var sys = Altpatch.Images.Verify.KernelLiveSystem.Current;
        bool everything = sys.IsRoot && System.IO.File.Exists(sys.KcorePath) && System.IO.File.Exists(Path.Combine(sys.BootDirectory, "vmlinuz-" + sys.Release));
        Skip.If(everything, "this machine can be verified live (root, /proc/kcore and its image): the refusal cannot be seen here");
        var r = CliRunner.Run("kernel", "verify", "--live");
        Assert.Equal(1, r.Exit);
        Assert.StartsWith("altpatch: error: --live", r.Err, StringComparison.Ordinal);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.Empty(r.Out);
        string why = !sys.IsRoot ? "only root may read" : !System.IO.File.Exists(sys.KcorePath) ? "no /proc/kcore" : "no image of the running kernel";
        Assert.Contains(why, r.Err, StringComparison.Ordinal);
    }
}

using System.Text.Json;
using Altpatch.Tests.Cli;

namespace Altpatch.Tests.Images;

/// <summary><c>altpatch kernel info</c> and <c>kernel sites</c>, run in process with captured output.</summary>
public class KernelCommandTests
{
    [SkippableFact]
    public void Info_json_on_the_real_image()
    {
        Skip.IfNot(TestPaths.HaveSharedImages, TestPaths.NoSharedImages);
        var (rc, output, err) = CliRunner.Run("kernel", "info", TestPaths.CloudAmd64, "--json");
        Assert.True(rc == 0, err);
        using var doc = JsonDocument.Parse(output);
        var r = doc.RootElement;
        Assert.Equal("bzImage", r.GetProperty("container").GetString());
        Assert.Equal("lz4", r.GetProperty("payload").GetProperty("compression").GetString());
        Assert.Equal(14_023_999, r.GetProperty("payload").GetProperty("compressedSize").GetInt32());
        Assert.Equal(53_241_868, r.GetProperty("payload").GetProperty("decompressedSize").GetInt32());
        Assert.Equal("x86_64", r.GetProperty("architecture").GetString());
        Assert.Equal("6.1.0-50-cloud-amd64", r.GetProperty("version").GetProperty("release").GetString());
        var counts = r.GetProperty("counts");
        Assert.Equal(4455, counts.GetProperty("alt").GetInt32());
        Assert.Equal(3674, counts.GetProperty("para").GetInt32());
        Assert.Equal(8840, counts.GetProperty("lock").GetInt32());
        Assert.Equal(7844, counts.GetProperty("retpoline").GetInt32());
        Assert.Equal(48017, counts.GetProperty("return").GetInt32());
        var alt = r.GetProperty("tables").EnumerateArray().Single(t => t.GetProperty("kind").GetString() == "alt");
        Assert.Equal("relative-12", alt.GetProperty("format").GetString());
        Assert.Equal(12, alt.GetProperty("entrySize").GetInt32());
        Assert.Equal("0xffffffff82a39b40", r.GetProperty("pvOps").GetProperty("address").GetString());
    }

    [SkippableFact]
    public void Info_text_on_the_real_i386_image()
    {
        Skip.IfNot(TestPaths.HaveSharedImages, TestPaths.NoSharedImages);
        var (rc, output, err) = CliRunner.Run("kernel", "info", TestPaths.I386);
        Assert.True(rc == 0, err);
        Assert.Contains("xz at file offset 0x5094: 5,640,108 bytes -> 16,256,960 bytes", output, StringComparison.Ordinal);
        Assert.Contains("Linux version 6.1.0-50-686", output, StringComparison.Ordinal);
        Assert.Contains(".altinstructions", output, StringComparison.Ordinal);
        Assert.Contains("relative-12", output, StringComparison.Ordinal);
        Assert.Contains("pv_ops: 0xc1c51680 in .data", output, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void Sites_lock_json_on_the_real_image()
    {
        Skip.IfNot(TestPaths.HaveSharedImages, TestPaths.NoSharedImages);
        var (rc, output, err) = CliRunner.Run("kernel", "sites", TestPaths.CloudAmd64, "--kind", "lock", "--json");
        Assert.True(rc == 0, err);
        using var doc = JsonDocument.Parse(output);
        var r = doc.RootElement;
        Assert.Equal("lock", r.GetProperty("kind").GetString());
        Assert.Equal(8840, r.GetProperty("count").GetInt32());
        var sites = r.GetProperty("sites").EnumerateArray().ToList();
        Assert.Equal(8840, sites.Count);
        Assert.All(sites, s =>
        {
            Assert.Equal("lock", s.GetProperty("kind").GetString());
            Assert.StartsWith("f0", s.GetProperty("bytes").GetString(), StringComparison.Ordinal);
            Assert.StartsWith("lock ", s.GetProperty("asm")[0].GetString(), StringComparison.Ordinal);
        });
    }

    [SkippableFact]
    public void Sites_alt_json_on_the_real_i386_image_shows_replacements_at_their_own_address()
    {
        Skip.IfNot(TestPaths.HaveSharedImages, TestPaths.NoSharedImages);
        var (rc, output, err) = CliRunner.Run("kernel", "sites", TestPaths.I386, "--kind", "alt", "--json", "--syntax", "intel");
        Assert.True(rc == 0, err);
        using var doc = JsonDocument.Parse(output);
        var sites = doc.RootElement.GetProperty("sites").EnumerateArray().ToList();
        Assert.Equal(954, sites.Count);
        Assert.All(sites, s =>
        {
            Assert.Matches(@"^!?(X86_(FEATURE|BUG)_\w+ \(\d+\*32\+\d+\)|\d+\*32\+\d+)$", s.GetProperty("feature").GetString());
            Assert.Equal(s.GetProperty("replacementLength").GetInt32() * 2, s.GetProperty("replacementBytes").GetString()!.Length);
            Assert.DoesNotContain("(bad)", s.GetProperty("asm").EnumerateArray().Select(a => a.GetString()));
        });
        // A relative call in a replacement is shown with the target it has where it lies (not where it will be copied).
        var call = sites.First(s => s.GetProperty("replacementBytes").GetString()!.StartsWith("e8", StringComparison.Ordinal));
        ulong repl = Convert.ToUInt64(call.GetProperty("replacementAddress").GetString(), 16);
        int rel = BitConverter.ToInt32(Convert.FromHexString(call.GetProperty("replacementBytes").GetString()!), 1);
        Assert.Equal($"call 0x{(uint)(repl + 5 + (ulong)(long)rel):x}", call.GetProperty("replacementAsm")[0].GetString());
    }

    [SkippableFact]
    public void Sites_text_lists_every_kind()
    {
        Skip.IfNot(TestPaths.HaveSharedImages, TestPaths.NoSharedImages);
        var (rc, output, err) = CliRunner.Run("kernel", "sites", TestPaths.I386);
        Assert.True(rc == 0, err);
        Assert.EndsWith($"{954 + 264 + 8059} sites\n", output, StringComparison.Ordinal);
        Assert.Contains("pv_ops slot 0xc1c5", output, StringComparison.Ordinal);
    }

    [Fact]
    public void Bad_images_give_one_line_and_exit_code_1()
    {
        var dir = Directory.CreateTempSubdirectory("altpatch-cli-");
        try
        {
            var empty = Path.Combine(dir.FullName, "empty");
            File.WriteAllBytes(empty, []);
            var (rc, output, err) = CliRunner.Run("kernel", "info", empty);
            Assert.Equal(1, rc);
            Assert.Equal("", output);
            Assert.Equal("altpatch: error: empty: empty file" + Environment.NewLine, err);

            var k = new SyntheticKernel(true, Altpatch.Images.AltInstrFormat.Relative12);
            k.Alts[0] = k.Alts[0] with { Instr = k.Data };
            var bad = Path.Combine(dir.FullName, "vmlinux");
            File.WriteAllBytes(bad, k.Build());
            (rc, _, err) = CliRunner.Run("kernel", "sites", bad, "--kind", "alt");
            Assert.Equal(1, rc);
            Assert.Single(err.TrimEnd().Split('\n'));
            Assert.StartsWith("altpatch: error: vmlinux: .altinstructions[0] at 0x", err, StringComparison.Ordinal);

            (rc, _, err) = CliRunner.Run("kernel", "info", Path.Combine(dir.FullName, "missing"));
            Assert.Equal(1, rc);
            Assert.Single(err.TrimEnd().Split('\n'));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void Synthetic_image_through_the_cli()
    {
        var dir = Directory.CreateTempSubdirectory("altpatch-cli-");
        try
        {
            var path = Path.Combine(dir.FullName, "vmlinux");
            File.WriteAllBytes(path, new SyntheticKernel(false, Altpatch.Images.AltInstrFormat.Relative14).Build());
            var (rc, output, err) = CliRunner.Run("kernel", "sites", path, "--json");
            Assert.True(rc == 0, err);
            using var doc = JsonDocument.Parse(output);
            Assert.Equal(5 + 3 + 4 + 1 + 2, doc.RootElement.GetProperty("count").GetInt32());
            (rc, output, _) = CliRunner.Run("kernel", "info", path);
            Assert.Equal(0, rc);
            Assert.Contains("relative-14-ft_flags", output, StringComparison.Ordinal);
            Assert.Contains("ELF file (no bzImage wrapper, not compressed)", output, StringComparison.Ordinal);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void Help_and_usage_errors()
    {
        var (rc, output, _) = CliRunner.Run("kernel", "--help");
        Assert.Equal(0, rc);
        Assert.Contains("info", output, StringComparison.Ordinal);
        Assert.Contains("sites", output, StringComparison.Ordinal);
        (rc, output, _) = CliRunner.Run("kernel", "sites", "--help");
        Assert.Equal(0, rc);
        Assert.Contains("--kind", output, StringComparison.Ordinal);
        Assert.Contains("--syntax", output, StringComparison.Ordinal);
        (rc, _, _) = CliRunner.Run("kernel", "sites", "x", "--kind", "bogus");
        Assert.NotEqual(0, rc);
    }
}

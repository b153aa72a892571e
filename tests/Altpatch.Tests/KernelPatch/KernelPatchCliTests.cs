using System.Text.Json;
using Altpatch.Images.Boot;
using Altpatch.Tests.Cli;
using Altpatch.Tests.Images;

namespace Altpatch.Tests.KernelPatch;

/// <summary><c>altpatch kernel patch</c>: options, errors (one line, exit 1, no OUT), OUT and the report.</summary>
public sealed class KernelPatchCliTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("altpatch-kpatch-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private string Out => Path.Combine(dir, "vmlinux.out");

    private string WriteImage(BootImageBuilder b, string name = "vmlinux")
    {
        string p = Path.Combine(dir, name);
        File.WriteAllBytes(p, b.Build());
        return p;
    }

    private static BootImageBuilder Sample()
    {
        var b = new BootImageBuilder();
        b.AddPara(b.Text + 0x100, 3);
        b.AddReturn(b.Text + 0x120);
        b.AddAlt(b.Text + 0x140, Convert.FromHexString("0f1f440000"), Convert.FromHexString("0faee8"), (int)Altpatch.Cpu.CpuFeature.Xmm2);
        b.Put(b.Text + 0x160, 0xf0, 0x0f, 0xc1, 0x07);
        b.Locks.Add(b.Text + 0x160);
        return b;
    }

    private void AssertFailedWithoutOutput((int Exit, string Out, string Err) r, string expected)
    {
        Assert.Equal(1, r.Exit);
        Assert.Contains(expected, r.Err, StringComparison.Ordinal);
        Assert.StartsWith("altpatch: error: ", r.Err, StringComparison.Ordinal);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.False(File.Exists(Out));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
    }

    [Fact]
    public void Help_lists_the_options()
    {
        var (exit, output, _) = CliRunner.Run("kernel", "patch", "--help");
        Assert.Equal(0, exit);
        foreach (var o in new[] { "--cpuinfo", "--flags", "--bugs", "--set", "--clear", "--smp", "--hypervisor", "--cmdline", "--cmdline-file", "--output", "--report" })
            Assert.Contains(o, output, StringComparison.Ordinal);
    }

    [Fact]
    public void A_cpu_description_is_required()
    {
        var img = WriteImage(Sample());
        var (exit, _, err) = CliRunner.Run("kernel", "patch", img, "-o", Out);
        Assert.NotEqual(0, exit);
        Assert.Contains("--cpuinfo", err, StringComparison.Ordinal);
        Assert.False(File.Exists(Out));
    }

    [Fact]
    public void Numbers_that_do_not_parse_are_usage_errors_not_crashes()
    {
        var img = WriteImage(Sample());
        foreach (var args in new[]
        {
            new[] { "--flags", "fpu", "--smp", "abc" },
            new[] { "--cpuinfo", Path.Combine(dir, "cpuinfo"), "--family", "abc" },
            new[] { "--cpuinfo", Path.Combine(dir, "cpuinfo"), "--model", "abc" },
        })
        {
            var (exit, _, err) = CliRunner.Run(["kernel", "patch", img, "-o", Out, .. args]);
            Assert.Equal(1, exit);
            Assert.DoesNotContain("   at ", err, StringComparison.Ordinal);
            Assert.False(File.Exists(Out));
        }
        Assert.Contains("--smp must be at least 1", CliRunner.Run("kernel", "patch", img, "--flags", "fpu", "--smp", "0", "-o", Out).Err, StringComparison.Ordinal);
    }

    [Fact]
    public void Unknown_feature_names_are_an_error_naming_them()
    {
        var img = WriteImage(Sample());
        AssertFailedWithoutOutput(CliRunner.Run("kernel", "patch", img, "--flags", "fpu,sse2,warp_drive", "-o", Out), "'warp_drive'");
        AssertFailedWithoutOutput(CliRunner.Run("kernel", "patch", img, "--flags", "fpu", "--set", "X86_FEATURE_NOPE", "-o", Out), "'X86_FEATURE_NOPE'");
        AssertFailedWithoutOutput(CliRunner.Run("kernel", "patch", img, "--flags", "fpu", "--vendor", "Cyberdyne", "-o", Out), "'Cyberdyne'");
    }

    [Fact]
    public void A_failure_leaves_an_existing_output_untouched()
    {
        var b = Sample();
        var bytes = b.Build();
        string img = Path.Combine(dir, "truncated");
        File.WriteAllBytes(img, bytes[..(bytes.Length / 3)]);
        File.WriteAllText(Out, "keep me");
        var (exit, _, err) = CliRunner.Run("kernel", "patch", img, "--flags", "fpu", "-o", Out);
        Assert.Equal(1, exit);
        Assert.StartsWith("altpatch: error: ", err, StringComparison.Ordinal);
        Assert.Equal("keep me", File.ReadAllText(Out));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
    }

    [Fact]
    public void A_report_that_cannot_be_written_leaves_an_existing_output_untouched()
    {
        var img = WriteImage(Sample());
        File.WriteAllText(Out, "keep me");
        // A name longer than NAME_MAX: the report fails only when it is written, after OUT's bytes were.
        string report = Path.Combine(dir, new string('r', 250) + ".json");
        AssertFailedKeepingOutput(CliRunner.Run("kernel", "patch", img, "--flags", "fpu", "-o", Out, "--report", report));
        // A missing directory is refused before the image is read.
        AssertFailedKeepingOutput(CliRunner.Run("kernel", "patch", img, "--flags", "fpu", "-o", Out, "--report", Path.Combine(dir, "no", "r.json")), "no such directory");
        Assert.Equal([img, Out], Directory.GetFiles(dir).Order(StringComparer.Ordinal));   // nothing else left behind

        void AssertFailedKeepingOutput((int Exit, string Out, string Err) r, string? expected = null)
        {
            Assert.Equal(1, r.Exit);
            Assert.StartsWith("altpatch: error: ", r.Err, StringComparison.Ordinal);
            Assert.Contains(expected ?? "", r.Err, StringComparison.Ordinal);
            Assert.Single(r.Err.TrimEnd().Split('\n'));
            Assert.Equal("keep me", File.ReadAllText(Out));
        }
    }

    [Fact]
    public void Truncated_and_foreign_images_are_errors_without_output()
    {
        var bytes = Sample().Build();
        string cut = Path.Combine(dir, "cut");
        File.WriteAllBytes(cut, bytes[..200]);
        AssertFailedWithoutOutput(CliRunner.Run("kernel", "patch", cut, "--flags", "fpu", "-o", Out), "cut");
        string junk = Path.Combine(dir, "junk");
        File.WriteAllBytes(junk, new byte[4096]);
        AssertFailedWithoutOutput(CliRunner.Run("kernel", "patch", junk, "--flags", "fpu", "-o", Out), "not a kernel image");
    }

    [Fact]
    public void Unknown_and_corrupt_compression_are_errors_without_output()
    {
        var elf = Sample().Build();
        string unknown = Path.Combine(dir, "unknown.bz");
        File.WriteAllBytes(unknown, Images.SyntheticBzImage.Build(Images.SyntheticBzImage.WithSize([0x50, 0x4b, 0x03, 0x04, 1, 2, 3, 4], elf.Length)));
        AssertFailedWithoutOutput(CliRunner.Run("kernel", "patch", unknown, "--flags", "fpu", "-o", Out), "unknown payload compression");

        using var ms = new MemoryStream();
        using (var gz = new System.IO.Compression.GZipStream(ms, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true))
            gz.Write(elf);
        var payload = ms.ToArray();
        payload[payload.Length / 2] ^= 0xff;
        string corrupt = Path.Combine(dir, "corrupt.bz");
        File.WriteAllBytes(corrupt, Images.SyntheticBzImage.Build(payload));
        AssertFailedWithoutOutput(CliRunner.Run("kernel", "patch", corrupt, "--flags", "fpu", "-o", Out), "corrupt.bz");
    }

    [Fact]
    public void A_synthetic_bzimage_is_patched_like_its_vmlinux()
    {
        var elf = Sample().Build();
        using var ms = new MemoryStream();
        using (var gz = new System.IO.Compression.GZipStream(ms, System.IO.Compression.CompressionLevel.Optimal, leaveOpen: true))
            gz.Write(elf);
        string bz = Path.Combine(dir, "vmlinuz"), raw = WriteImage(Sample());
        File.WriteAllBytes(bz, Images.SyntheticBzImage.Build(ms.ToArray()));
        var a = CliRunner.Run("kernel", "patch", bz, "--flags", "fpu sse2", "-o", Out);
        Assert.True(a.Exit == 0, a.Err);
        var b = CliRunner.Run("kernel", "patch", raw, "--flags", "fpu sse2", "-o", Out + ".raw");
        Assert.True(b.Exit == 0, b.Err);
        Assert.Equal(File.ReadAllBytes(Out + ".raw"), File.ReadAllBytes(Out));
        Assert.NotEqual(elf, File.ReadAllBytes(Out));
    }

    [Fact]
    public void Table_entries_outside_the_text_are_errors_naming_the_entry()
    {
        var b = Sample();
        b.Alts.Add(new SyntheticTables.Alt(b.Data + 0x10, b.AddReplacement(0x90), 3 * 32 + 21, false, 5, 1));
        var img = WriteImage(b);
        AssertFailedWithoutOutput(CliRunner.Run("kernel", "patch", img, "--flags", "fpu", "-o", Out), ".altinstructions[3]");
    }

    [Fact]
    public void Replacements_longer_than_their_site_are_errors()
    {
        var b = Sample();
        b.AddAlt(b.Text + 0x200, Convert.FromHexString("9090"), Convert.FromHexString("0faee8"), 3 * 32 + 21);
        var img = WriteImage(b);
        AssertFailedWithoutOutput(CliRunner.Run("kernel", "patch", img, "--flags", "fpu", "-o", Out), ".altinstructions[3]");
    }

    [Fact]
    public void Success_writes_out_with_the_same_size_and_a_report()
    {
        var b = Sample();
        var img = WriteImage(b);
        string report = Path.Combine(dir, "report.json");
        var (exit, output, err) = CliRunner.Run("kernel", "patch", img, "--flags", "fpu sse sse2", "--vendor", "GenuineIntel",
            "--family", "6", "--model", "85", "--smp", "1", "-o", Out, "--report", report);
        Assert.True(exit == 0, err);
        Assert.DoesNotContain('\u001b', output);   // not a terminal: no progress, no colours
        Assert.Contains("apply_alternatives", output, StringComparison.Ordinal);
        Assert.Equal(new FileInfo(img).Length, new FileInfo(Out).Length);

        using var doc = JsonDocument.Parse(File.ReadAllText(report));
        var root = doc.RootElement;
        Assert.Equal("Linux 6.1", root.GetProperty("rules").GetString());
        Assert.Equal(1, root.GetProperty("cpu").GetProperty("cpus").GetInt32());
        Assert.Contains("X86_FEATURE_ALWAYS", root.GetProperty("cpu").GetProperty("hidden").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(10, root.GetProperty("passes").GetArrayLength());   // jump labels, static calls, ftrace, preempt + alternative_instructions()'s 6
        var sites = root.GetProperty("sites").EnumerateArray().ToList();
        Assert.Equal(3 + 1 + 1 + 1, sites.Count);   // 3 alts (2 from the thunk layout) + para + return + lock
        var para = sites.Single(s => s.GetProperty("kind").GetString() == "para");
        Assert.Equal("ff15", para.GetProperty("before").GetString()![..4]);
        Assert.StartsWith("e8", para.GetProperty("after").GetString(), StringComparison.Ordinal);
        Assert.Equal(["paravirt"], para.GetProperty("writers").EnumerateArray().Select(e => e.GetString()));
        var lockSite = sites.Single(s => s.GetProperty("kind").GetString() == "lock");
        Assert.Equal("3e", lockSite.GetProperty("after").GetString());
        Assert.Equal(["smp-locks"], lockSite.GetProperty("writers").EnumerateArray().Select(e => e.GetString()));
        var ret = sites.Single(s => s.GetProperty("kind").GetString() == "return");
        Assert.Equal("c3cccccccc", ret.GetProperty("after").GetString());
    }

    [SkippableFact]
    public void Real_image_out_differs_from_the_vmlinux_only_inside_sites()
    {
        var img = Images.RealImages.CloudAmd64;
        string cpuinfo = Path.Combine(GroundTruth.Dir, "6.1.0-50-cloud-amd64", "EPYC-Rome-smp1.cpuinfo");
        string report = Path.Combine(dir, "report.json");
        // --no-symtab: OUT is the payload itself, patched (the .symtab that is added by default: SymtabOutputTests).
        var (exit, _, err) = CliRunner.Run("kernel", "patch", TestPaths.CloudAmd64, "--cpuinfo", cpuinfo, "-o", Out, "--report", report, "--no-symtab");
        Assert.True(exit == 0, err);
        var patched = File.ReadAllBytes(Out);
        var original = img.ElfBytes.Span;
        Assert.Equal(original.Length, patched.Length);

        // Every byte that differs lies inside a site of some table.
        var t = img.Tables;
        var ranges = new List<(ulong Start, ulong End)>();
        ranges.AddRange(t.Alternatives.Select(a => (a.Address, a.Address + a.InstrLen)));
        ranges.AddRange(t.Paravirt.Select(p => (p.Address, p.Address + p.Len)));
        ranges.AddRange(t.SmpLocks.Select(l => (l.Address, l.Address + 1)));
        ranges.AddRange(t.Retpolines.Select(r => (r.Address, r.Address + 6)));
        ranges.AddRange(t.Returns.Select(r => (r.Address, r.Address + 6)));
        // and the text writers' sites (no symbols given: the tables are found by scanning)
        var text = Altpatch.Images.KernelTextTables.Read(img.Elf, Altpatch.Code.NopTable.X86_64Linux61, null);
        ranges.AddRange(text.Mcount.Select(m => (m.Address, m.Address + 5)));
        ranges.AddRange(text.JumpEntries.Select(j => (j.Code, j.Code + (ulong)j.Length)));
        ranges.AddRange(text.StaticCalls.Select(c => (c.Address, c.Address + (ulong)c.Length)));
        ranges.AddRange(text.Trampolines.Select(x => (x.Address, x.Address + 5)));
        var offsets = ranges.Select(r => (Start: img.FileOffsetOf(r.Start), End: img.FileOffsetOf(r.Start) + (long)(r.End - r.Start)))
            .OrderBy(r => r.Start).ToArray();
        var starts = offsets.Select(r => r.Start).ToArray();
        int differing = 0;
        for (int i = 0; i < patched.Length; i++)
        {
            if (patched[i] == original[i])
                continue;
            differing++;
            int k = Array.BinarySearch(starts, (long)i);
            if (k < 0)
                k = ~k - 1;
            bool inside = false;
            for (int j = k; j >= 0 && j > k - 8 && !inside; j--)
                inside = offsets[j].Start <= i && i < offsets[j].End;
            Assert.True(inside, $"byte at file offset 0x{i:x} changed outside every site");
        }
        Assert.True(differing > 100_000);

        using var doc = JsonDocument.Parse(File.ReadAllText(report));
        var root = doc.RootElement;
        Assert.Equal("srso_return_thunk", root.GetProperty("returnThunk").GetProperty("name").GetString());
        Assert.Equal(4455 + 3674 + 7844 + 48017 + 8840, root.GetProperty("sites").GetArrayLength());
        Assert.Equal(img.ElfBytes.Length, root.GetProperty("outputSize").GetInt32());
    }

    /// <summary><c>--cmdline "mitigations=off"</c> on the shared cloud image, against the ground truth of the same boot
    /// (Haswell, 2 CPUs, mitigations=off): the whole .text is the booted kernel's but for dynamic sites, and without the
    /// option it is not (retpolines, PTI, the swapgs fences and the CPU-buffer clearing would be there).</summary>
    [SkippableFact]
    public void Cmdline_mitigations_off_patches_the_text_the_booted_kernel_has()
    {
        const string image = "6.1.0-50-cloud-amd64", config = "Haswell-smp2+mitigations-off";
        Skip.IfNot(File.Exists(WholeTextTruth.FileOf(image, config)), $"no truth file of {image}/{config} in this checkout");
        var img = Images.RealImages.CloudAmd64;
        var truth = WholeTextTruth.Read(WholeTextTruth.FileOf(image, config));
        Assert.Equal("console=ttyS0 nokaslr panic=0 mitigations=off", truth.CommandLine);
        string cpuinfo = Path.Combine(GroundTruth.Dir, image, config, "cpuinfo");
        string report = Path.Combine(dir, "report.json"), plain = Path.Combine(dir, "vmlinux.default");
        var (exit, output, err) = CliRunner.Run("kernel", "patch", TestPaths.CloudAmd64, "--cpuinfo", cpuinfo, "--smp", "2",
            "--cmdline", truth.CommandLine, "-o", Out, "--report", report, "--no-symtab");
        Assert.True(exit == 0, err);
        Assert.Contains("mitigations=off", output, StringComparison.Ordinal);
        var (exit2, _, err2) = CliRunner.Run("kernel", "patch", TestPaths.CloudAmd64, "--cpuinfo", cpuinfo, "--smp", "2", "-o", plain, "--no-symtab");
        Assert.True(exit2 == 0, err2);

        // The library's prediction for the same boot names the dynamic sites; the comparison takes the CLI's bytes.
        var description = KernelCpuDescription.FromCpuInfo(File.ReadAllText(cpuinfo)) with { Cpus = 2, CommandLine = KernelCommandLine.Parse(truth.CommandLine) };
        var prediction = KernelBootPatcher.Patch(img, description);
        var starts = img.Symbols.All.Where(x => x.IsText).Select(x => x.Address).ToHashSet();
        var withCmdline = WholeTextComparison.Compare(prediction, Altpatch.Images.ElfFile.Parse(File.ReadAllBytes(Out), "out"), truth.Text, starts);
        Assert.True(withCmdline.UnexplainedBytes == 0, withCmdline + "\n" + string.Join("\n", withCmdline.Unexplained));
        Assert.True(withCmdline.Percent <= WholeTextTests.MaxPercent, withCmdline.ToString());
        var without = WholeTextComparison.Compare(prediction, Altpatch.Images.ElfFile.Parse(File.ReadAllBytes(plain), "plain"), truth.Text, starts);
        Assert.True(without.UnexplainedBytes > 100_000, without.ToString());

        using var doc = JsonDocument.Parse(File.ReadAllText(report));
        var root = doc.RootElement;
        Assert.Equal(truth.CommandLine, root.GetProperty("cmdline").GetString());
        Assert.Equal("__x86_return_thunk", root.GetProperty("returnThunk").GetProperty("name").GetString());
        var hidden = root.GetProperty("cpu").GetProperty("hidden").EnumerateArray().Select(e => e.GetString()).ToList();
        Assert.DoesNotContain("X86_FEATURE_RETPOLINE", hidden);
        Assert.DoesNotContain("X86_FEATURE_PTI", hidden);
        Assert.DoesNotContain("X86_FEATURE_CLEAR_CPU_BUF", hidden);
        Assert.Contains(root.GetProperty("decisions").EnumerateArray(), d => d.GetString() == "mitigations=off: cpu_mitigations_off()");
        Assert.False(root.GetProperty("cpu").GetProperty("smp").GetProperty("up").GetBoolean());
    }

    [Fact]
    public void Cmdline_noreplace_smp_keeps_the_lock_prefixes_on_one_cpu()
    {
        var img = WriteImage(Sample());
        string report = Path.Combine(dir, "report.json");
        var (exit, _, err) = CliRunner.Run("kernel", "patch", img, "--flags", "sse2", "--smp", "1", "--cmdline", "noreplace-smp", "-o", Out, "--report", report);
        Assert.True(exit == 0, err);
        var b = Sample();
        var elf = Altpatch.Images.ElfFile.Parse(File.ReadAllBytes(Out), "out");
        Assert.Equal(0xf0, elf.ReadBytes(b.Text + 0x160, 1)[0]);          // lock stays
        using var doc = JsonDocument.Parse(File.ReadAllText(report));
        Assert.Equal("noreplace-smp: lock prefixes stay", doc.RootElement.GetProperty("cpu").GetProperty("smp").GetProperty("decision").GetString());
        var (exit2, _, err2) = CliRunner.Run("kernel", "patch", img, "--flags", "sse2", "--smp", "1", "-o", Out);
        Assert.True(exit2 == 0, err2);
        Assert.Equal(0x3e, Altpatch.Images.ElfFile.Parse(File.ReadAllBytes(Out), "out").ReadBytes(b.Text + 0x160, 1)[0]);   // UP: ds
    }

    [Fact]
    public void Cmdline_and_cmdline_file_together_are_a_usage_error()
    {
        var img = WriteImage(Sample());
        string f = Path.Combine(dir, "cmdline");
        File.WriteAllText(f, "mitigations=off\n");
        var (exit, _, err) = CliRunner.Run("kernel", "patch", img, "--flags", "sse2", "--cmdline", "nopti", "--cmdline-file", f, "-o", Out);
        Assert.NotEqual(0, exit);
        Assert.Contains("either --cmdline or --cmdline-file", err, StringComparison.Ordinal);
        Assert.False(File.Exists(Out));
        var (exit2, _, err2) = CliRunner.Run("kernel", "patch", img, "--flags", "sse2", "--cmdline-file", Path.Combine(dir, "missing"), "-o", Out);
        Assert.Equal(1, exit2);
        Assert.Contains("no such file", err2, StringComparison.Ordinal);
        Assert.False(File.Exists(Out));
    }

    [Fact]
    public void Library_and_cli_agree_on_the_description_defaults()
    {
        var d = KernelCpuDescription.FromCpuInfo("processor\t: 0\nflags\t: fpu\n\nprocessor\t: 1\nflags\t: fpu\n\nprocessor\t: 2\nflags\t: fpu\n");
        Assert.Equal(3, d.Cpus);
        Assert.Equal(KernelHypervisor.None, d.Hypervisor);
        Assert.Equal(2, new KernelCpuDescription { Cpu = Altpatch.Cpu.CpuFeatures.Empty }.Cpus);
    }
}

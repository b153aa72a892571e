using System.Text.Json;
using Altpatch.Images;
using Altpatch.Tests.Cli;

namespace Altpatch.Tests.Symbols;

/// <summary><c>altpatch kernel symbols</c>, in process.</summary>
public class KernelSymbolsCommandTests
{
    [SkippableFact]
    public void Prints_a_System_map_sorted_like_one()
    {
        var image = SymbolImage.Cloud61;
        var symbols = image.Open().Symbols;
        var (rc, output, err) = CliRunner.Run("kernel", "symbols", image.ImagePath);
        Assert.True(rc == 0, err);
        Assert.Equal("", err);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(symbols.Count, lines.Length);
        Assert.Contains("ffffffff81000000 T _stext", lines);
        Assert.Contains("0000000000000000 A fixed_percpu_data", lines);
        // System.map's order (nm -n): address, then name; and every line parses back to one of the symbols.
        var parsed = KernelSymbols.FromSystemMap(output, "out").All;
        for (int i = 1; i < parsed.Count; i++)
        {
            var (a, b) = (parsed[i - 1], parsed[i]);
            Assert.True(a.Address < b.Address || (a.Address == b.Address && string.CompareOrdinal(a.Name, b.Name) <= 0), $"{a} before {b}");
        }
        Assert.Equal(symbols.All.OrderBy(s => (s.Address, s.Name, s.Type)), parsed.OrderBy(s => (s.Address, s.Name, s.Type)));
    }

    [SkippableFact]
    public void Its_output_is_the_System_map_minus_what_kallsyms_leaves_out()
    {
        var image = SymbolImage.Cloud612;
        image.Open();
        string map = image.ReadSystemMap();
        var (rc, output, err) = CliRunner.Run("kernel", "symbols", image.ImagePath);
        Assert.True(rc == 0, err);
        // Same lines in the same order once the absolute symbols kallsyms drops are gone and the per-CPU retyping undone.
        var ours = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l[..17] + l[19..]).ToList();
        var theirs = map.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l[17] is not ('A' or 'a')).Select(l => l[..17] + l[19..]).ToList();
        Assert.Equal(theirs.Count, ours.Count);
        Assert.Equal(theirs, ours);
    }

    [SkippableFact]
    public void Names_and_addresses_as_json()
    {
        var image = SymbolImage.Cloud612;
        var symbols = image.Open().Symbols;
        var (rc, output, err) = CliRunner.Run("kernel", "symbols", image.ImagePath, "--name", "__start_mcount_loc", "--name", "_stext", "--json");
        Assert.True(rc == 0, err);
        using var doc = JsonDocument.Parse(output);
        var r = doc.RootElement;
        Assert.Equal("x86_64", r.GetProperty("architecture").GetString());
        Assert.Equal("names-first", r.GetProperty("kallsyms").GetProperty("layout").GetString());
        Assert.Equal(154_718, r.GetProperty("kallsyms").GetProperty("count").GetInt32());
        Assert.Equal("0xffffffff821533d0", r.GetProperty("kallsyms").GetProperty("tables").GetProperty("kallsyms_num_syms").GetString());
        var list = r.GetProperty("symbols").EnumerateArray().ToList();
        Assert.Equal(2, list.Count);
        Assert.Equal("__start_mcount_loc", list[0].GetProperty("name").GetString());
        Assert.Equal($"0x{symbols.AddressOf("__start_mcount_loc"):x}", list[0].GetProperty("address").GetString());
        Assert.Equal("0xffffffff81000000", list[1].GetProperty("address").GetString());
        Assert.Equal("T", list[1].GetProperty("type").GetString());

        ulong f = symbols.AddressOf("do_one_initcall");
        (rc, output, err) = CliRunner.Run("kernel", "symbols", image.ImagePath, "--address", $"{f + 0x1a:x}", "--address", "0x10", "--json");
        Assert.True(rc == 0, err);
        using var doc2 = JsonDocument.Parse(output);
        var a = doc2.RootElement.GetProperty("addresses").EnumerateArray().ToList();
        Assert.Equal("do_one_initcall", a[0].GetProperty("symbol").GetString());
        Assert.Equal("0x1a", a[0].GetProperty("offset").GetString());
        Assert.Equal(symbols.Describe(f + 0x1a), a[0].GetProperty("text").GetString());
        Assert.Equal(JsonValueKind.Null, a[1].GetProperty("symbol").ValueKind);
        Assert.Equal("0x10", a[1].GetProperty("text").GetString());
    }

    [SkippableFact]
    public void Writes_a_file()
    {
        var image = SymbolImage.I38661;
        image.Open();
        string dir = Directory.CreateTempSubdirectory("altpatch-symbols-").FullName;
        try
        {
            string path = Path.Combine(dir, "System.map");
            var (rc, output, err) = CliRunner.Run("kernel", "symbols", image.ImagePath, "-o", path);
            Assert.True(rc == 0, err);
            Assert.StartsWith($"Wrote {path}: 45,166 symbols from kallsyms (offsets-first+seqs layout, in .rodata)", output, StringComparison.Ordinal);
            var lines = File.ReadAllLines(path);
            Assert.Equal(45_166, lines.Length);
            Assert.Equal("c1000000 T _stext", lines[0]);
            Assert.Single(Directory.GetFiles(dir));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [SkippableFact]
    public void A_missing_name_is_one_error_line()
    {
        var (rc, output, err) = CliRunner.Run("kernel", "symbols", SymbolImage.I38661.ImagePath, "--name", "no_such_symbol");
        Skip.IfNot(File.Exists(SymbolImage.I38661.ImagePath), TestPaths.NoSharedImages);
        Assert.Equal(1, rc);
        Assert.Equal("", output);
        Assert.Equal("altpatch: error: vmlinuz-6.1.0-50-686: no symbol no_such_symbol in its kallsyms (built without CONFIG_KALLSYMS_ALL: only text symbols)\n", err.ReplaceLineEndings("\n"));
    }

    [Fact]
    public void Bad_input_is_one_error_line_and_writes_nothing()
    {
        string dir = Directory.CreateTempSubdirectory("altpatch-symbols-").FullName;
        try
        {
            // An ELF kernel without kallsyms.
            string elf = Path.Combine(dir, "vmlinux");
            File.WriteAllBytes(elf, new Images.SyntheticElf(true, ElfFile.MachineX86_64, 0xffffffff81000000UL)
                .Section(".text", 0xffffffff81000000UL, new byte[0x1000], Images.SyntheticElf.Alloc | Images.SyntheticElf.Exec)
                .Section(".rodata", 0xffffffff81001000UL, new byte[0x2000]).Build());
            string outPath = Path.Combine(dir, "out.map");
            var (rc, output, err) = CliRunner.Run("kernel", "symbols", elf, "-o", outPath);
            Assert.Equal(1, rc);
            Assert.Equal("", output);
            Assert.StartsWith("altpatch: error: vmlinux: no kallsyms tables", err, StringComparison.Ordinal);
            Assert.Single(err.Trim().Split('\n'));
            Assert.False(File.Exists(outPath));
            Assert.Single(Directory.GetFiles(dir));

            // Corrupt tables: num_syms absurd in a synthetic kernel.
            var symbols = new List<KernelSymbol> { new("s0123456789", 0xffffffff81000000UL, 'T') };
            for (int i = 1; i < 600; i++)
                symbols.Add(new KernelSymbol($"f{i}", 0xffffffff81000000UL + (ulong)i * 16, 't'));
            var bytes = KallsymsBuilder.Elf(symbols, true, KallsymsLayout.NamesFirst, false, out _);
            var img = KernelImage.Load(bytes, "x");
            long numSyms = img.FileOffsetOf(img.Symbols.Kallsyms!.NumSyms);
            BitConverter.GetBytes(0x7fffffff).CopyTo(bytes, numSyms);
            File.WriteAllBytes(elf, bytes);
            (rc, output, err) = CliRunner.Run("kernel", "symbols", elf, "-o", outPath);
            Assert.Equal(1, rc);
            Assert.Matches(@"^altpatch: error: vmlinux: kallsyms_num_syms at 0x[0-9a-f]+: 2147483647 symbols, but kallsyms_markers at 0x[0-9a-f]+ has 3 entries", err);
            Assert.False(File.Exists(outPath));

            (rc, _, err) = CliRunner.Run("kernel", "symbols", elf, "--address", "xyz");
            Assert.Equal(1, rc);
            Assert.Contains("--address 'xyz' is not a hexadecimal address", err, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void Help_describes_the_command()
    {
        var (rc, output, _) = CliRunner.Run("kernel", "symbols", "--help");
        Assert.Equal(0, rc);
        Assert.Contains("System.map format", output, StringComparison.Ordinal);
        Assert.Contains("--name", output, StringComparison.Ordinal);
        Assert.Contains("--address", output, StringComparison.Ordinal);
        Assert.Contains("-o, --output", output, StringComparison.Ordinal);
    }
}

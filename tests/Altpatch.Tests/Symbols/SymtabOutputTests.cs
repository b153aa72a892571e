using System.Diagnostics;
using Altpatch.Images;
using Altpatch.Tests.Cli;
using ELFSharp.ELF;
using ELFSharp.ELF.Sections;

namespace Altpatch.Tests.Symbols;

/// <summary>The real images patched once per run (with and without --no-symtab), shared by the tests below.</summary>
#pragma warning disable CA1515
public sealed class PatchedOutputs : IDisposable
{
    private readonly string tempDir = Directory.CreateTempSubdirectory("altpatch-symtab-").FullName;
    private readonly Dictionary<string, (string With, string Without, string Summary)> outputsByImage = [];
    private readonly Lock gate = new();

    internal (string With, string Without, string Summary) Get(SymbolImage image)
    {
        image.Open();
        lock (gate)
        {
            if (outputsByImage.TryGetValue(image.Id, out var r))
                return r;
            string with = Path.Combine(tempDir, image.Id + ".vmlinux"), without = with + ".nosymtab";
            if (!image.Linux612)
            {
                var a = CliRunner.Run("kernel", "patch", image.ImagePath, "--flags", "fpu cx8 cmov", "-o", with);
                Assert.True(a.Exit == 0, a.Err);
                var b = CliRunner.Run("kernel", "patch", image.ImagePath, "--flags", "fpu cx8 cmov", "-o", without, "--no-symtab");
                Assert.True(b.Exit == 0, b.Err);
                return outputsByImage[image.Id] = (with, without, a.Out);
            }
            // kernel patch does not do 6.12's rules (yet): its vmlinux as the same writer writes it.
            var img = image.Open();
            ElfSymtabResult written;
            using (var s = File.Create(with))
                written = ElfSymtabWriter.WriteVmlinux(s, img, img.Elf, symtab: true);
            using (var s = File.Create(without))
                ElfSymtabWriter.WriteVmlinux(s, img, img.Elf, symtab: false);
            return outputsByImage[image.Id] = (with, without, $".symtab of {written.Symbols:N0} symbols");
        }
    }

    public void Dispose() => Directory.Delete(tempDir, recursive: true);
}

/// <summary>
/// The vmlinux <c>kernel patch</c> writes carries a .symtab built from the image's kallsyms: every symbol readable back
/// (our ElfFile, ELFSharp, nm, objdump, gdb), the ELF proper untouched but for e_shoff/e_shnum, and vmlinux.relocs still
/// at the end of the file.
/// </summary>
public class SymtabOutputTests(PatchedOutputs outputs) : IClassFixture<PatchedOutputs>
{
    public static TheoryData<string> Shared => new(SymbolImage.Shared.Select(i => i.Id));

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void The_output_has_every_kallsyms_symbol_and_the_payload_layout(string id)
    {
        var image = SymbolImage.Get(id);
        var img = image.Open();
        var kallsyms = img.Symbols;
        var (with, without, summary) = outputs.Get(image);
        Assert.Contains($".symtab of {kallsyms.Count:N0} symbols", summary, StringComparison.Ordinal);
        var a = File.ReadAllBytes(with);
        var b = File.ReadAllBytes(without);
        Assert.Equal(img.ElfBytes.Length, b.Length);

        // The ELF proper: the same bytes but for e_shoff and e_shnum.
        var elf = ElfFile.Parse(a, "out");
        long end = img.Elf.ElfEnd;
        bool is64 = img.Elf.Is64;
        int ehsize = is64 ? 64 : 52;
        var ha = a.AsSpan(0, ehsize).ToArray();
        var hb = b.AsSpan(0, ehsize).ToArray();
        foreach (var (at, len) in is64 ? new[] { (40, 8), (60, 2) } : [(32, 4), (48, 2)])
        {
            ha.AsSpan(at, len).Clear();
            hb.AsSpan(at, len).Clear();
        }
        Assert.Equal(hb, ha);
        Assert.True(a.AsSpan(ehsize, (int)end - ehsize).SequenceEqual(b.AsSpan(ehsize, (int)end - ehsize)));
        // What followed the ELF (vmlinux.relocs) is still the end of the file, 8-byte alignment kept.
        int tail = b.Length - (int)end;
        Assert.True(tail > 1000);
        Assert.True(a.AsSpan(a.Length - tail).SequenceEqual(b.AsSpan((int)end)));
        Assert.Equal(0, (a.Length - b.Length) % 8);
        Assert.Equal(a.Length - tail, elf.ElfEnd);

        // The sections: the old ones with their indexes, then .symtab and .strtab.
        Assert.Equal(img.Sections.Count + 2, elf.Sections.Count);
        for (int i = 0; i < img.Sections.Count; i++)
        {
            if (img.Sections[i].Name != ".shstrtab")
                Assert.Equal(img.Sections[i], elf.Sections[i]);
        }
        var symtab = elf.Sections[^2];
        Assert.Equal((".symtab", ElfSection.TypeSymTab, (uint)elf.Sections.Count - 1), (symtab.Name, symtab.Type, symtab.Link));
        Assert.Equal(".strtab", elf.Sections[^1].Name);

        // Every kallsyms symbol, locals first.
        var syms = elf.Symbols;
        Assert.Equal(kallsyms.Count + 1, syms.Count);
        Assert.Equal(0, syms[0].Info);
        int locals = (int)symtab.Info;
        Assert.All(syms.Skip(1).Take(locals - 1), s => Assert.Equal(0, s.Binding));
        Assert.All(syms.Skip(locals), s => Assert.NotEqual(0, s.Binding));
        Assert.Equal(kallsyms.All.Count(s => s.Type is >= 'a' and <= 'z' && s.Type is not ('w' or 'v')), locals - 1);
        Assert.Equal(kallsyms.All.Select(s => (s.Address, s.Name)).Order(), syms.Skip(1).Select(s => (s.Value, s.Name)).Order());

        // Functions: in a code section, sized to the next symbol.
        ulong f = kallsyms.AddressOf("do_one_initcall");
        var fs = syms.Single(s => s.Name == "do_one_initcall");
        Assert.True(fs.IsFunction);
        Assert.Equal(1, fs.Binding);
        Assert.Equal(".text", elf.Sections[fs.SectionIndex].Name);
        kallsyms.TryFind(f, out _, out _, out ulong size);
        Assert.Equal(size, fs.Size);
        Assert.All(syms.Where(s => s.IsFunction), s => Assert.True(elf.Sections[s.SectionIndex].IsExecutable && elf.Sections[s.SectionIndex].Contains(s.Value, s.Size)));
        var stext = syms.Single(s => s.Name == "_stext");
        Assert.Equal((0, 0UL), (stext.Type, stext.Size));   // a label: no type, no size
        var etext = syms.Single(s => s.Name == "_etext");
        Assert.Equal(".text", elf.Sections[etext.SectionIndex].Name);   // it ends .text
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void ELFSharp_reads_the_symbols(string id)
    {
        var image = SymbolImage.Get(id);
        var kallsyms = image.Open().Symbols;
        var (with, _, _) = outputs.Get(image);
        Assert.True(ELFReader.TryLoad(with, out IELF? elf));
        using (elf)
        {
            var table = elf!.GetSections<ISymbolTable>().Single();
            var entries = table.Entries.ToList();
            Assert.Equal(kallsyms.Count + 1, entries.Count);
            var names = entries.Select(e => e.Name).ToHashSet(StringComparer.Ordinal);
            Assert.Contains("do_one_initcall", names);
            Assert.Contains("_stext", names);
        }
    }

    private static string? Tool(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    private static string Run(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{tool} {string.Join(' ', args)}: exit {p.ExitCode}: {stderr.Result}");
        return stdout.Result;
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void Nm_and_objdump_show_the_names(string id)
    {
        string? nm = Tool("nm"), objdump = Tool("objdump");
        Skip.If(nm is null || objdump is null, "binutils (nm, objdump) are not installed");
        var image = SymbolImage.Get(id);
        var kallsyms = image.Open().Symbols;
        var (with, _, _) = outputs.Get(image);

        var lines = Run(nm!, "-n", with).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(kallsyms.Count, lines.Length);
        // nm's letter comes from the section and the binding: for code it is kallsyms' own (T, t, W).
        var byLine = lines.Select(l => l.Split(' ')).ToLookup(p => (Convert.ToUInt64(p[0], 16), p[2]), p => p[1][0]);
        foreach (var s in kallsyms.All.Where(s => s.Type is 'T' or 't' && !ElfSymtabWriter.IsLinkerLabel(s.Name)))
            Assert.Contains(s.Type, byLine[(s.Address, s.Name)]);

        ulong f = kallsyms.AddressOf("do_one_initcall");
        string dis = Run(objdump!, "-d", $"--start-address=0x{f:x}", $"--stop-address=0x{f + 0x10:x}", with);
        Assert.Contains($"{f:x16}"[^(image.Open().PointerSize * 2)..] + " <do_one_initcall>:", dis, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void Gdb_names_an_address()
    {
        string? gdb = Tool("gdb");
        Skip.If(gdb is null, "gdb is not installed");
        var image = SymbolImage.Cloud61;
        var kallsyms = image.Open().Symbols;
        var (with, _, _) = outputs.Get(image);
        ulong f = kallsyms.AddressOf("do_one_initcall");
        string output = Run(gdb!, "-batch", "-nx", "-ex", $"info symbol 0x{f + 0x1a:x}", with);
        Assert.Contains("do_one_initcall + 26 in section .text", output, StringComparison.Ordinal);
    }
}

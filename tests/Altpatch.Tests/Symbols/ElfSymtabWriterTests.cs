using Altpatch.Images;
using Altpatch.Tests.Images;
using ELFSharp.ELF;
using ELFSharp.ELF.Sections;

namespace Altpatch.Tests.Symbols;

/// <summary>The .symtab writer on small files whose every symbol's section, type, binding and size is known.</summary>
public class ElfSymtabWriterTests
{
    private static readonly byte[] Relocs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    /// <summary>A kernel with .text (code), a gap, .data and .bss, "relocs" after the ELF, and its kallsyms.</summary>
    private static (ElfFile Elf, KernelSymbols Symbols) Kernel(bool is64)
    {
        ulong text = is64 ? 0xffffffff81000000UL : 0xc1000000UL;
        var symbols = new List<KernelSymbol>
        {
            new("_stext", text, 'T'),
            new("start0123456789", text, 'T'),
            new("helper", text + 0x40, 't'),
            new("weakfn", text + 0x80, 'W'),
            new("_etext", text + 0x1000, 'T'),
            new("__start_things", text + 0x2000, 'D'),
            new("thing", text + 0x2000, 'd'),
            new("__stop_things", text + 0x2100, 'D'),
            new("counter", text + 0x3000, 'B'),
        };
        var elfBytes = KallsymsBuilder.Elf(symbols, is64, KallsymsLayout.NamesFirst, false, out ulong rodata);
        // Rebuild with the sections the symbols live in (the builder's .text spans them all; split it here).
        var tables = KernelImage.Load(elfBytes, "k").Elf.SectionBytes(KernelImage.Load(elfBytes, "k").Elf.FindSection(".rodata")!.Value).ToArray();
        var built = new SyntheticElf(is64, is64 ? ElfFile.MachineX86_64 : ElfFile.MachineI386, text)
            .Section(".text", text, new byte[0x1000], SyntheticElf.Alloc | SyntheticElf.Exec)
            .Section(".data", text + 0x2000, new byte[0x100], SyntheticElf.Alloc | SyntheticElf.Write)
            .Section(".bss", text + 0x3000, new byte[0x100], SyntheticElf.Alloc | SyntheticElf.Write, type: ElfSection.TypeNoBits)
            .Section(".rodata", rodata, tables)
            .Build();
        var withRelocs = built.Concat(Relocs).ToArray();
        var img = KernelImage.Load(withRelocs, "k");
        return (img.Elf, img.Symbols);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Each_symbol_gets_its_section_type_binding_and_size(bool is64)
    {
        var (elf, symbols) = Kernel(is64);
        Assert.Equal(9, symbols.Count);
        using var ms = new MemoryStream();
        var r = ElfSymtabWriter.Write(ms, elf, symbols);
        var bytes = ms.ToArray();
        Assert.Equal(bytes.Length, r.Length);
        Assert.Equal((9, 2), (r.Symbols, r.Locals));
        Assert.Equal(elf.ElfEnd, r.InsertedAt);
        Assert.Equal(0, r.InsertedLength % 8);
        Assert.Equal(Relocs, bytes[^Relocs.Length..]);

        var o = ElfFile.Parse(bytes, "out");
        Assert.Equal(bytes.Length - Relocs.Length, o.ElfEnd);
        int Sec(string name) => o.FindSection(name)!.Value.Index;
        var s = o.Symbols.Skip(1).ToDictionary(x => x.Name);
        ulong text = symbols.AddressOf("_stext");
        // (section, STT, STB, size)
        Assert.Equal((Sec(".text"), 0, 1, 0UL), Describe(s["_stext"]));
        Assert.Equal((Sec(".text"), 2, 1, 0x40UL), Describe(s["start0123456789"]));
        Assert.Equal((Sec(".text"), 2, 0, 0x40UL), Describe(s["helper"]));
        Assert.Equal((Sec(".text"), 2, 2, 0xf80UL), Describe(s["weakfn"]));       // to the end of .text
        Assert.Equal((Sec(".text"), 0, 1, 0UL), Describe(s["_etext"]));           // ends .text
        Assert.Equal((Sec(".data"), 0, 1, 0UL), Describe(s["__start_things"]));
        Assert.Equal((Sec(".data"), 1, 0, 0x100UL), Describe(s["thing"]));
        Assert.Equal((Sec(".data"), 0, 1, 0UL), Describe(s["__stop_things"]));    // ends .data, not the gap after it
        Assert.Equal((Sec(".bss"), 1, 1, 0x100UL), Describe(s["counter"]));       // SHT_NOBITS: a section all the same
        Assert.Equal(text + 0x40, s["helper"].Value);
        // locals first
        Assert.Equal(["helper", "thing"], o.Symbols.Skip(1).Take(2).Select(x => x.Name));

        using var stream = new MemoryStream(bytes);
        Assert.True(ELFReader.TryLoad(stream, false, out IELF? theirs));
        using (theirs)
        {
            var names = theirs!.GetSections<ISymbolTable>().Single().Entries.Select(e => e.Name).ToList();
            Assert.Equal(10, names.Count);
            Assert.Contains("weakfn", names);
        }
    }

    private static (int, int, int, ulong) Describe(ElfSymbol s) => (s.SectionIndex, s.Type, s.Binding, s.Size);

    [Fact]
    public void Without_symbols_or_with_a_symtab_the_file_is_written_as_it_is()
    {
        var (elf, symbols) = Kernel(true);
        using var ms = new MemoryStream();
        var r = ElfSymtabWriter.Write(ms, elf, null);
        Assert.Equal(elf.Bytes.ToArray(), ms.ToArray());
        Assert.Equal(0, r.Symbols);

        using var once = new MemoryStream();
        ElfSymtabWriter.Write(once, elf, symbols);
        var withSymtab = ElfFile.Parse(once.ToArray(), "once");
        using var twice = new MemoryStream();
        r = ElfSymtabWriter.Write(twice, withSymtab, symbols);
        Assert.Equal(once.ToArray(), twice.ToArray());
        Assert.Equal(0, r.InsertedLength);
    }
}

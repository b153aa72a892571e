using System.Buffers.Binary;
using Altpatch.Images;
using CsCheck;

namespace Altpatch.Tests.Images;

/// <summary>The small ELF reader: header errors, address mapping, the program-header fallback.</summary>
public class ElfFileTests
{
    private static byte[] Sample(bool is64) => new SyntheticKernel(is64, AltInstrFormat.Relative12) { WithSymbols = true }.Build();

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Sections_segments_and_mapping(bool is64)
    {
        var k = new SyntheticKernel(is64, AltInstrFormat.Relative12);
        var elf = ElfFile.Parse(k.Build(), "s");
        Assert.Equal(is64, elf.Is64);
        Assert.Equal(is64 ? 8 : 4, elf.PointerSize);
        var text = elf.FindSection(".text")!.Value;
        Assert.True(text.IsExecutable && text.IsAllocated && !text.IsWritable);
        Assert.Equal(k.Text, text.Address);
        Assert.Equal((long)SyntheticElf.DataOffset, elf.FileOffsetOf(k.Text));
        Assert.Equal((long)SyntheticElf.DataOffset + 0x2010, elf.FileOffsetOf(k.Data + 0x10));
        Assert.Equal(".data", elf.SectionContaining(k.Data + 0x10)?.Name);
        Assert.Null(elf.SectionContaining(k.Text + 0x1000 + 0x800)); // gap between .rodata's end and .data
        Assert.True(elf.TryGetFileOffset(k.Text + 0xff0, 16, out _));
        Assert.False(elf.TryGetFileOffset(k.Text + 0xff0, 17, out _));
        Assert.Equal(10, elf.Segments.Count);
        Assert.All(elf.Segments, s => Assert.True(s.IsLoad));
        Assert.Null(elf.FindSection(".nope"));
    }

    [Fact]
    public void Without_section_headers_addresses_map_through_PT_LOAD()
    {
        var k = new SyntheticKernel(true, AltInstrFormat.Relative12);
        var bytes = k.Build();
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(40), 0); // e_shoff = 0
        var elf = ElfFile.Parse(bytes, "s");
        Assert.Empty(elf.Sections);
        Assert.Equal((long)SyntheticElf.DataOffset + 0x2010, elf.FileOffsetOf(k.Data + 0x10));
        Assert.Null(elf.SectionContaining(k.Data + 0x10));
    }

    [Fact]
    public void Header_errors()
    {
        var good = Sample(true);
        Assert.Equal("s: empty file", Fail([]).Message);
        Assert.Equal("s: not an ELF file (no 7f 45 4c 46 magic at offset 0)", Fail(new byte[64]).Message);
        Assert.Equal("s: ELF header truncated (40 bytes, need at least 52)", Fail(good.AsSpan(0, 40).ToArray()).Message);
        Assert.Equal("s: ELF64 header truncated (60 bytes, need 64)", Fail(good.AsSpan(0, 60).ToArray()).Message);
        var b = (byte[])good.Clone();
        b[5] = 2;
        Assert.Equal("s: ELF header: data encoding 2 at offset 0x5 is not little-endian (1); only x86 ELF files are read", Fail(b).Message);
        b = (byte[])good.Clone();
        b[4] = 3;
        Assert.Equal("s: ELF header: unknown class 3 at offset 0x4 (want 1 = ELF32 or 2 = ELF64)", Fail(b).Message);
        Assert.Matches(@"^s: section header table at offset 0x[0-9a-f]+ \(\d+ x 64 bytes\) runs past the end of the file \(0x[0-9a-f]+ bytes\); truncated\?$",
            Fail(good.AsSpan(0, good.Length - 10).ToArray()).Message);
        b = (byte[])good.Clone();
        var parsed = ElfFile.Parse(b, "s");
        var rodata = parsed.FindSection(".rodata")!.Value;
        ulong shoff = BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(40));
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan((int)shoff + rodata.Index * 64 + 24), 0x7fff_0000);
        Assert.Equal($"s: section [{rodata.Index}] (offset 0x7fff0000, size 0x200) runs past the end of the file (0x{b.Length:x} bytes); truncated?", Fail(b).Message);
        b = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(64 + 8), 0x7fff_0000); // first program header's p_offset
        Assert.StartsWith("s: program header [0] (offset 0x7fff0000", Fail(b).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Reads_outside_the_file_bytes_are_refused()
    {
        var k = new SyntheticKernel(false, AltInstrFormat.Relative12);
        var elf = ElfFile.Parse(k.Build(), "s");
        Assert.Equal("s: address 0x10 (+4) is not inside any section with file bytes", Assert.Throws<ImageFormatException>(() => elf.ReadPointer(0x10)).Message);
        Assert.Equal(k.SlotValue(3), elf.ReadPointer(k.PvOps + 12));
        Assert.Equal(0xcc, elf.ReadBytes(k.Text, 1)[0]);
    }

    [Fact]
    public void Symbols_are_read_from_symtab()
    {
        var k = new SyntheticKernel(false, AltInstrFormat.Relative12) { WithSymbols = true };
        var elf = ElfFile.Parse(k.Build(), "s");
        Assert.Equal(["", "_text", "pv_ops", "native_io_delay"], elf.Symbols.Select(s => s.Name));
        var pv = elf.Symbols.Single(s => s.Name == "pv_ops");
        Assert.Equal((k.PvOps, 64UL, 1, 1), (pv.Value, pv.Size, pv.Binding, pv.Type));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Corrupt_headers_and_tables_never_throw_anything_else(bool is64)
    {
        var good = new SyntheticKernel(is64, AltInstrFormat.Relative12) { WithSymbols = true }.Build();
        var elf = ElfFile.Parse(good, "g");
        ulong shoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(good.AsSpan(40)) : BinaryPrimitives.ReadUInt32LittleEndian(good.AsSpan(32));
        // Mutate header bytes, section headers, and the table sections.
        var hot = new List<int>();
        hot.AddRange(Enumerable.Range(0, 64 + 10 * 56));
        hot.AddRange(Enumerable.Range((int)shoff, good.Length - (int)shoff));
        foreach (var name in new[] { ".altinstructions", ".parainstructions", ".smp_locks", ".return_sites" })
        {
            var sec = elf.FindSection(name)!.Value;
            hot.AddRange(Enumerable.Range((int)sec.FileOffset, (int)sec.Size));
        }
        Gen.Select(Gen.Int[0, hot.Count - 1], Gen.Byte, Gen.Int[0, hot.Count - 1], Gen.Byte).Sample((i, v, j, w) =>
        {
            var b = (byte[])good.Clone();
            b[hot[i]] = v;
            b[hot[j]] = w;
            try
            {
                var img = KernelImage.Load(b, "fuzz");
                _ = img.Tables;
                _ = img.Elf.Symbols;
                foreach (var s in img.Sections)
                    _ = img.Elf.SectionBytes(s);
            }
            catch (ImageFormatException)
            {
            }
        }, iter: 5000);
    }

    private static ImageFormatException Fail(byte[] bytes) => Assert.Throws<ImageFormatException>(() => ElfFile.Parse(bytes, "s"));
}

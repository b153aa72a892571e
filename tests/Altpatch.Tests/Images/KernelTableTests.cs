using System.Buffers.Binary;
using Altpatch.Images;

namespace Altpatch.Tests.Images;

/// <summary>Table format detection and entry checks on synthetic kernels, and on a modified copy of the real vmlinux.</summary>
public class KernelTableTests
{
    public static TheoryData<bool, AltInstrFormat> AllLayouts()
    {
        var d = new TheoryData<bool, AltInstrFormat>();
        foreach (bool is64 in new[] { true, false })
            foreach (var f in Enum.GetValues<AltInstrFormat>())
                d.Add(is64, f);
        return d;
    }

    [Theory]
    [MemberData(nameof(AllLayouts))]
    public void Every_alt_instr_layout_is_detected_and_decoded(bool is64, AltInstrFormat format)
    {
        foreach (string? banner in new[] { null, "Linux version 6.1.0-test (x) #1 SMP", $"Linux version {VersionFor(format)} (x) #1 SMP" })
        {
            var k = new SyntheticKernel(is64, format) { Banner = banner };
            var img = KernelImage.Load(k.Build(), "synthetic");
            var t = img.Tables;
            Assert.Equal(format, t.AltFormat);
            Assert.Equal(k.Alts.Count, t.Alternatives.Length);
            for (int i = 0; i < k.Alts.Count; i++)
            {
                var want = k.Alts[i];
                var got = t.Alternatives[i];
                Assert.Equal(i, got.Index);
                Assert.Equal((want.Instr, want.Repl, want.Cpuid, want.Not, want.Flags, want.InstrLen, want.ReplLen, want.PadLen),
                    (got.Address, got.ReplacementAddress, got.Cpuid, got.Not, got.Flags, got.InstrLen, got.ReplacementLen, got.PadLen));
            }
            var info = t.Tables.Single(x => x.Kind == KernelSiteKind.Alternative);
            Assert.Equal(format.EntrySize(k.PointerSize), info.EntrySize);
            Assert.Equal(format.ShortName(), info.Format);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Paravirt_locks_retpolines_returns_and_pv_ops(bool is64)
    {
        var k = new SyntheticKernel(is64, AltInstrFormat.Relative12) { WithSymbols = true };
        var img = KernelImage.Load(k.Build(), "synthetic");
        var t = img.Tables;
        Assert.Equal(k.Paras.Select(p => (p.Instr, p.Type, p.Len, p.Clobbers)), t.Paravirt.Select(p => (p.Address, p.Type, p.Len, p.Clobbers)));
        Assert.Equal(2 * k.PointerSize, t.ParavirtEntrySize);
        Assert.Equal(k.Locks, t.SmpLocks.Select(l => l.Address));
        Assert.Equal(k.Locks.Count + k.LockPadding, t.Tables.Single(x => x.Kind == KernelSiteKind.SmpLock).Entries);
        Assert.Equal(k.Retpolines, t.Retpolines.Select(r => r.Address));
        Assert.Equal(k.Returns, t.Returns.Select(r => r.Address));

        var pv = t.PvOps!;
        Assert.Equal(k.PvOps, pv.Address);
        Assert.Equal(".data", pv.Section);
        Assert.Equal(13, pv.SlotCount); // highest type used is 12
        Assert.Equal(3, pv.SitesAgreeing);
        for (int i = 0; i < pv.SlotCount; i++)
        {
            Assert.Equal(k.SlotValue(i), pv.Slots[i]);
            Assert.Equal(k.SlotValue(i), img.ReadPointer(pv.SlotAddress(i)));
        }

        var symbols = img.Elf.Symbols;
        Assert.Contains(symbols, s => s.Name == "pv_ops" && s.Value == k.PvOps && s.IsObject);
        Assert.Contains(symbols, s => s.Name == "native_io_delay" && s.Value == k.SlotValue(0) && s.IsFunction);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Absolute_smp_locks_of_the_2_6_era(bool is64)
    {
        var k = new SyntheticKernel(is64, AltInstrFormat.AbsoluteByteCpuid) { AbsoluteLocks = true, Banner = "Linux version 2.6.22 (x) #1 SMP" };
        var t = KernelImage.Load(k.Build(), "old").Tables;
        Assert.True(t.SmpLocksAbsolute);
        Assert.Equal(k.Locks, t.SmpLocks.Select(l => l.Address));
        Assert.Equal(AltInstrFormat.AbsoluteByteCpuid, t.AltFormat);
        Assert.Equal($"absolute-ptr{k.PointerSize * 8}", t.Tables.Single(x => x.Kind == KernelSiteKind.SmpLock).Format);
    }

    [Theory]
    [InlineData(true, AltInstrFormat.AbsoluteByteCpuid, 5)]
    [InlineData(false, AltInstrFormat.AbsoluteByteCpuid, 1)]
    [InlineData(true, AltInstrFormat.AbsoluteWordCpuid, 4)]
    public void Seed_era_tables_whose_last_entry_lacks_its_padding(bool is64, AltInstrFormat format, int missing)
    {
        var k = new SyntheticKernel(is64, format) { TrimTrailingPadding = true, Banner = "Linux version 2.6.22 (x) #1 SMP" };
        var img = KernelImage.Load(k.Build(), "seed");
        var sec = img.Elf.FindSection(".altinstructions")!.Value;
        Assert.Equal((ulong)(k.Alts.Count * format.EntrySize(k.PointerSize) - missing), sec.Size);
        Assert.Equal(format, img.Tables.AltFormat);
        Assert.Equal(k.Alts.Select(a => (a.Instr, a.Repl, a.Cpuid, a.InstrLen, a.ReplLen)),
            img.Tables.Alternatives.Select(a => (a.Address, a.ReplacementAddress, a.Cpuid, a.InstrLen, a.ReplacementLen)));
        Assert.Equal(k.Alts.Count, img.Tables.Tables.Single(t => t.Kind == KernelSiteKind.Alternative).Entries);
    }

    [Fact]
    public void Alt_entry_pointing_into_data()
    {
        var k = new SyntheticKernel(true, AltInstrFormat.Relative12);
        k.Alts[2] = k.Alts[2] with { Instr = k.Data + 0x10 };
        var e = TablesFail(k);
        Assert.Equal($"synthetic: .altinstructions[2] at 0x{k.AltTable + 24:x} (relative-12): instruction 0x{k.Data + 0x10:x} lies in .data, which is not executable", e.Message);
    }

    [Fact]
    public void Alt_entry_problems_each_have_their_message()
    {
        Assert.EndsWith("replacementlen 7 is larger than instrlen 5",
            TablesFail(Alter(k => k.Alts[1] = k.Alts[1] with { ReplLen = 7 })).Message, StringComparison.Ordinal);
        var k2 = Alter(k => k.Alts[0] = k.Alts[0] with { Repl = k.Text + 0x10 });
        Assert.EndsWith($"replacement 0x{k2.Text + 0x10:x} (+3) is outside .altinstr_replacement (0x{k2.Replacement:x} … 0x{k2.Replacement + 0x100:x})", TablesFail(k2).Message, StringComparison.Ordinal);
        var k3 = Alter(k => k.Alts[3] = k.Alts[3] with { Instr = k.Replacement + 0x20 });
        Assert.EndsWith($"instruction 0x{k3.Replacement + 0x20:x} lies in .altinstr_replacement, not in the kernel's text", TablesFail(k3).Message, StringComparison.Ordinal);
        var k4 = Alter(k => k.Alts[0] = k.Alts[0] with { Instr = k.Text + 0xffe });
        Assert.EndsWith($"instruction 0x{k4.Text + 0xffe:x} (+5) runs past the end of .text (0x{k4.Text + 0x1000:x})", TablesFail(k4).Message, StringComparison.Ordinal);
        var k5 = Alter(k => k.Alts[0] = k.Alts[0] with { Instr = 0x1000 });
        Assert.EndsWith("instruction 0x1000 is outside every section with file bytes", TablesFail(k5).Message, StringComparison.Ordinal);
        Assert.EndsWith("feature 2000 (62*32+16) is implausible (must be below 1024)",
            TablesFail(Alter(k => k.Alts[0] = k.Alts[0] with { Cpuid = 2000 })).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Layouts_that_do_not_fit_are_named()
    {
        // 5 entries of 24 bytes = 120 bytes: divisible by 12 and 24, so relative-12 is tried too.
        var k = new SyntheticKernel(true, AltInstrFormat.AbsoluteWordCpuid) { Banner = "Linux version 3.0.1 (x) #1 SMP" };
        k.Alts[4] = k.Alts[4] with { Instr = k.Data };
        var e = TablesFail(k);
        Assert.StartsWith($"synthetic: .altinstructions[4] at 0x{k.AltTable + 96:x} (absolute-u16-cpuid): instruction 0x{k.Data:x} lies in .data", e.Message, StringComparison.Ordinal);
        Assert.EndsWith("(other layouts tried, none fits: relative-12, absolute-u8-cpuid)", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Table_sizes_that_fit_no_entry_size()
    {
        var k = new SyntheticKernel(true, AltInstrFormat.Relative12);
        var elf = k.Build();
        SetSectionSize(elf, ".altinstructions", 61);
        Assert.Equal("synthetic: .altinstructions: size 61 is not a multiple of any alt_instr entry size (12, 13, 14, 24 bytes)",
            Assert.Throws<ImageFormatException>(() => KernelImage.Load(elf, "synthetic").Tables).Message);
        elf = k.Build();
        SetSectionSize(elf, ".parainstructions", 40);
        Assert.Equal("synthetic: .parainstructions: size 40 is not a multiple of the 16-byte paravirt_patch_site entry",
            Assert.Throws<ImageFormatException>(() => KernelImage.Load(elf, "synthetic").Tables).Message);
        elf = k.Build();
        SetSectionSize(elf, ".return_sites", 6);
        Assert.Equal("synthetic: .return_sites: size 6 is not a multiple of the 4-byte s32 entry",
            Assert.Throws<ImageFormatException>(() => KernelImage.Load(elf, "synthetic").Tables).Message);
    }

    [Fact]
    public void Paravirt_lock_and_return_entries_outside_the_code()
    {
        var k = Alter(k => k.Paras[1] = k.Paras[1] with { Instr = k.Rodata });
        Assert.Equal($"synthetic: .parainstructions[1] at 0x{k.ParaTable + 16:x} (paravirt_patch_site, 16 bytes): site 0x{k.Rodata:x} lies in .rodata, which is not executable", TablesFail(k).Message);
        Assert.EndsWith("len is 0", TablesFail(Alter(k => k.Paras[0] = k.Paras[0] with { Len = 0 })).Message, StringComparison.Ordinal);
        // 4 + 4 entries of 4 bytes = 32 bytes, so 8-byte absolute pointers are tried as well.
        var k2 = Alter(k => { k.Locks[1] = k.Data + 8; k.LockPadding = 4; });
        Assert.Equal($"synthetic: .smp_locks[1] at 0x{k2.LockTable + 4:x} (s32-relative): target 0x{k2.Data + 8:x} lies in .data, which is not executable (absolute pointers do not fit either)", TablesFail(k2).Message);
        var k3 = Alter(k => k.Returns[0] = k.Data);
        Assert.Equal($"synthetic: .return_sites[0] at 0x{k3.ReturnTable:x} (s32-relative): target 0x{k3.Data:x} lies in .data, which is not executable", TablesFail(k3).Message);
    }

    [Fact]
    public void Expected_layout_by_version()
    {
        static AltInstrFormat? For(string v) => AltInstrFormats.ExpectedFor(KernelVersion.TryParse(v));
        Assert.Equal(AltInstrFormat.AbsoluteByteCpuid, For("2.6.22"));
        Assert.Equal(AltInstrFormat.AbsoluteWordCpuid, For("2.6.35"));
        Assert.Equal(AltInstrFormat.AbsoluteWordCpuid, For("3.0.0"));
        Assert.Equal(AltInstrFormat.Relative12, For("3.10.0"));
        Assert.Equal(AltInstrFormat.Relative13, For("4.19.0-21-amd64"));
        Assert.Equal(AltInstrFormat.Relative12, For("6.1.0-50-cloud-amd64"));
        Assert.Equal(AltInstrFormat.Relative14, For("6.12.0"));
        Assert.Null(AltInstrFormats.ExpectedFor(null));
        Assert.Null(KernelVersion.TryParse("not a version"));
    }

    [SkippableFact]
    public void Modified_copy_of_the_real_vmlinux_is_refused_with_table_index_and_address()
    {
        var real = RealImages.CloudAmd64;
        var bytes = real.ElfBytes.ToArray();
        var sec = real.Elf.FindSection(".altinstructions")!.Value;
        var data = real.Elf.FindSection(".data")!.Value;
        const int index = 17;
        ulong entry = sec.Address + index * 12;
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan((int)sec.FileOffset + index * 12), (int)(long)(data.Address - entry));

        var dir = Directory.CreateTempSubdirectory("altpatch-images-");
        try
        {
            var path = Path.Combine(dir.FullName, "vmlinux");
            File.WriteAllBytes(path, bytes);
            var img = KernelImage.Open(path);
            Assert.Null(img.BzImage);
            Assert.Equal(PayloadCompression.None, img.Compression);
            Assert.Equal(KernelArchitecture.X86_64, img.Architecture);
            Assert.Equal(real.Version, img.Version);
            var e = Assert.Throws<ImageFormatException>(() => img.Tables);
            Assert.Equal($"vmlinux: .altinstructions[17] at 0x{entry:x} (relative-12): instruction 0x{data.Address:x} lies in .data, which is not executable", e.Message);
            // The unmodified raw vmlinux opens with the same tables as the bzImage.
            File.WriteAllBytes(path, real.ElfBytes.ToArray());
            Assert.True(real.Tables.Alternatives.SequenceEqual(KernelImage.Open(path).Tables.Alternatives));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static string VersionFor(AltInstrFormat f) => f switch
    {
        AltInstrFormat.AbsoluteByteCpuid => "2.6.22",
        AltInstrFormat.AbsoluteWordCpuid => "2.6.39",
        AltInstrFormat.Relative13 => "4.19.0",
        AltInstrFormat.Relative14 => "6.6.0",
        _ => "6.1.0",
    };

    private static SyntheticKernel Alter(Action<SyntheticKernel> change)
    {
        var k = new SyntheticKernel(true, AltInstrFormat.Relative12);
        change(k);
        return k;
    }

    private static ImageFormatException TablesFail(SyntheticKernel k) =>
        Assert.Throws<ImageFormatException>(() => KernelImage.Load(k.Build(), "synthetic").Tables);

    /// <summary>Rewrites one section header's sh_size in a built ELF.</summary>
    [Theory]
    [InlineData(".parainstructions", 8u)]  // SHT_NOBITS
    [InlineData(".smp_locks", 0u)]         // SHT_NULL
    [InlineData(".return_sites", 8u)]
    [InlineData(".altinstructions", 8u)]
    public void A_table_section_without_file_bytes_is_a_corrupt_image_not_an_empty_table(string name, uint type)
    {
        var k = new SyntheticKernel(true, AltInstrFormat.Relative12);
        var elf = k.Build();
        SetSectionType(elf, name, type);
        var e = Assert.Throws<ImageFormatException>(() => KernelImage.Load(elf, "synthetic").Tables);
        Assert.StartsWith($"synthetic: {name}: section of ", e.Message, StringComparison.Ordinal);
        Assert.EndsWith($"has no bytes in the file (sh_type {type})", e.Message, StringComparison.Ordinal);
    }

    private static void SetSectionType(byte[] elf, string name, uint type)
    {
        var parsed = ElfFile.Parse(elf, "t");
        var sec = parsed.FindSection(name)!.Value;
        bool is64 = parsed.Is64;
        ulong shoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(elf.AsSpan(40)) : BinaryPrimitives.ReadUInt32LittleEndian(elf.AsSpan(32));
        int at = (int)shoff + sec.Index * (is64 ? 64 : 40) + 4; // sh_type follows sh_name in both classes
        BinaryPrimitives.WriteUInt32LittleEndian(elf.AsSpan(at), type);
    }

    internal static void SetSectionSize(byte[] elf, string name, ulong size)
    {
        var parsed = ElfFile.Parse(elf, "t");
        var sec = parsed.FindSection(name)!.Value;
        bool is64 = parsed.Is64;
        ulong shoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(elf.AsSpan(40)) : BinaryPrimitives.ReadUInt32LittleEndian(elf.AsSpan(32));
        int ent = is64 ? 64 : 40;
        int at = (int)shoff + sec.Index * ent + (is64 ? 32 : 20);
        if (is64) BinaryPrimitives.WriteUInt64LittleEndian(elf.AsSpan(at), size);
        else BinaryPrimitives.WriteUInt32LittleEndian(elf.AsSpan(at), (uint)size);
    }
}

using System.Runtime.InteropServices;
using Altpatch.Images;
using ELFSharp.ELF;
using ELFSharp.ELF.Sections;
using Iced.Intel;
using Decoder = Iced.Intel.Decoder;

namespace Altpatch.Tests.Images;

/// <summary>The real Debian 6.1 images in ../shared/linux: the figures in its README and our own checks.</summary>
public class RealImageTests
{
    [SkippableFact]
    public void CloudAmd64_has_the_readme_figures()
    {
        var img = RealImages.CloudAmd64;
        Assert.Equal(KernelArchitecture.X86_64, img.Architecture);
        Assert.Equal(64, img.Bitness);
        Assert.Equal(PayloadCompression.Lz4, img.Compression);
        var bz = img.BzImage!;
        Assert.Equal("2.15", bz.Header.ProtocolText);
        Assert.Equal(40 * 512, bz.Header.SetupSize);
        Assert.Equal(14_023_999, bz.PayloadLength);
        Assert.Equal(53_241_868u, bz.DecompressedSize);
        Assert.Equal(53_241_868, img.ElfBytes.Length);

        var t = img.Tables;
        Assert.Equal(AltInstrFormat.Relative12, t.AltFormat);
        Assert.Equal(4455, t.Alternatives.Length);
        Assert.Equal(53_460UL, Info(t, KernelSiteKind.Alternative).Size);
        Assert.Equal(3674, t.Paravirt.Length);
        Assert.Equal(16, t.ParavirtEntrySize);
        Assert.Equal(58_784UL, Info(t, KernelSiteKind.Paravirt).Size);
        Assert.Equal(8840, t.SmpLocks.Length);
        Assert.False(t.SmpLocksAbsolute);
        Assert.Equal(36_864UL, Info(t, KernelSiteKind.SmpLock).Size);
        Assert.Equal(9216, Info(t, KernelSiteKind.SmpLock).Entries);
        Assert.Equal(7844, t.Retpolines.Length);
        Assert.Equal(48_017, t.Returns.Length);
    }

    [SkippableFact]
    public void I386_686_has_its_figures()
    {
        var img = RealImages.I386;
        Assert.Equal(KernelArchitecture.I386, img.Architecture);
        Assert.Equal(32, img.Bitness);
        Assert.Equal(4, img.PointerSize);
        Assert.Equal(PayloadCompression.Xz, img.Compression);
        var bz = img.BzImage!;
        Assert.Equal("2.15", bz.Header.ProtocolText);
        Assert.Equal(5_640_108, bz.PayloadLength);
        Assert.Equal(16_256_960, img.ElfBytes.Length);

        var t = img.Tables;
        Assert.Equal(AltInstrFormat.Relative12, t.AltFormat);
        Assert.Equal(954, t.Alternatives.Length);
        Assert.Equal(11_448UL, Info(t, KernelSiteKind.Alternative).Size);
        Assert.Equal(264, t.Paravirt.Length);
        Assert.Equal(8, t.ParavirtEntrySize);
        Assert.Equal(2_112UL, Info(t, KernelSiteKind.Paravirt).Size);
        Assert.Equal(8059, t.SmpLocks.Length);
        Assert.Equal(8192, Info(t, KernelSiteKind.SmpLock).Entries);
        // 6.1 i386 has no objtool-generated retpoline/return site tables.
        Assert.Empty(t.Retpolines);
        Assert.Empty(t.Returns);
        Assert.Null(img.Elf.FindSection(".retpoline_sites"));
        Assert.Equal(64, t.Alternatives.Count(a => a.Not));
        Assert.Equal(2334, RealImages.CloudAmd64.Tables.Alternatives.Count(a => a.Not));
    }

    [SkippableTheory]
    [InlineData("amd64", "6.1.0-50-cloud-amd64")]
    [InlineData("i386", "6.1.0-50-686")]
    public void Version_strings(string which, string release)
    {
        var img = RealImages.Get(which);
        var v = img.Version!;
        Assert.Equal(release, v.Release);
        Assert.Equal((6, 1, 0), (v.Major, v.Minor, v.Patch));
        Assert.StartsWith($"Linux version {release} (debian-kernel@lists.debian.org) (gcc-12", v.Banner, StringComparison.Ordinal);
        Assert.Contains("#1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)", v.Banner, StringComparison.Ordinal);
        Assert.Equal($"{release} (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)", img.BzImage!.Header.KernelVersion);
    }

    [SkippableTheory]
    [InlineData("amd64")]
    [InlineData("i386")]
    public void Every_site_lies_in_an_executable_section(string which)
    {
        var img = RealImages.Get(which);
        var t = img.Tables;
        var sites = t.Alternatives.Select(a => (a.Address, (int)a.InstrLen, "alt"))
            .Concat(t.Paravirt.Select(p => (p.Address, (int)p.Len, "para")))
            .Concat(t.SmpLocks.Select(l => (l.Address, 1, "lock")))
            .Concat(t.Retpolines.Select(r => (r.Address, 1, "retpoline")))
            .Concat(t.Returns.Select(r => (r.Address, 1, "return")));
        var bad = sites.Where(s => img.Elf.SectionContaining(s.Address) is not { IsExecutable: true } sec || !sec.Contains(s.Address, (ulong)s.Item2)).ToList();
        Assert.Empty(bad);
        Assert.All(t.Alternatives, a => Assert.Equal(".altinstr_replacement", img.Elf.SectionContaining(a.ReplacementAddress)?.Name ?? (a.ReplacementLen == 0 ? ".altinstr_replacement" : null)));
    }

    [SkippableTheory]
    [InlineData("amd64")]
    [InlineData("i386")]
    public void Alt_sites_original_and_replacement_bytes_decode_with_Iced(string which)
    {
        var img = RealImages.Get(which);
        var failures = new List<string>();
        foreach (var a in img.Tables.Alternatives)
        {
            if (Decode(img, a.Address, a.InstrLen) is { } e1)
                failures.Add($"alt[{a.Index}] original at 0x{a.Address:x}: {e1}");
            if (a.ReplacementLen > 0 && Decode(img, a.ReplacementAddress, a.ReplacementLen) is { } e2)
                failures.Add($"alt[{a.Index}] replacement at 0x{a.ReplacementAddress:x}: {e2}");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(20)));
    }

    [SkippableTheory]
    [InlineData("amd64")]
    [InlineData("i386")]
    public void Lock_sites_are_lock_prefixed_instructions(string which)
    {
        var img = RealImages.Get(which);
        foreach (var l in img.Tables.SmpLocks)
        {
            Assert.Equal(0xf0, img.ReadBytes(l.Address, 1)[0]);
            var insn = DecodeOne(img, l.Address);
            Assert.False(insn.IsInvalid);
            Assert.True(insn.HasLockPrefix, $"lock site {l.Index} at 0x{l.Address:x}");
        }
    }

    [SkippableFact]
    public void Return_and_retpoline_sites_are_jumps_and_calls()
    {
        var img = RealImages.CloudAmd64;
        Assert.All(img.Tables.Returns, r => Assert.Equal(Mnemonic.Jmp, DecodeOne(img, r.Address).Mnemonic));
        Assert.All(img.Tables.Retpolines, r => Assert.Contains(DecodeOne(img, r.Address).Mnemonic, new[] { Mnemonic.Call, Mnemonic.Jmp }));
        // Every return site jumps to the same thunk (__x86_return_thunk).
        Assert.Single(img.Tables.Returns.Select(r => DecodeOne(img, r.Address).NearBranchTarget).Distinct());
    }

    [SkippableTheory]
    [InlineData("amd64", 0xffffffff82a39b40UL, 84)]
    [InlineData("i386", 0xc1c51680UL, 13)]
    public void PvOps_is_found_through_the_paravirt_calls(string which, ulong address, int slots)
    {
        var img = RealImages.Get(which);
        var t = img.Tables;
        var pv = t.PvOps!;
        Assert.Equal(address, pv.Address);
        Assert.Equal(".data", pv.Section);
        Assert.Equal(img.PointerSize, pv.PointerSize);
        Assert.Equal(slots, pv.SlotCount);
        Assert.Equal(t.Paravirt.Length, pv.SitesAgreeing);
        Assert.Equal(0, pv.SitesDisagreeing);
        Assert.Equal(0, pv.SitesSkipped);
        foreach (var p in t.Paravirt)
        {
            var insn = DecodeOne(img, p.Address);
            Assert.Equal(Mnemonic.Call, insn.Mnemonic);
            Assert.Equal(6, insn.Length);
            ulong target = pv.Slots[p.Type];
            Assert.Equal(img.ReadPointer(pv.SlotAddress(p.Type)), target);
            // Every slot a site uses starts out pointing at code (the native implementation).
            Assert.True(img.Elf.SectionContaining(target) is { IsExecutable: true }, $"slot {p.Type} -> 0x{target:x}");
        }
    }

    [SkippableTheory]
    [InlineData("amd64")]
    [InlineData("i386")]
    public void Elf_reader_agrees_with_ELFSharp(string which)
    {
        var img = RealImages.Get(which);
        Assert.True(MemoryMarshal.TryGetArray<byte>(img.ElfBytes, out var seg));
        using var ms = new MemoryStream(seg.Array!, seg.Offset, seg.Count, false);
        Assert.True(ELFReader.TryLoad(ms, false, out IELF? elf));
        using (elf)
        {
            var theirs = elf!.Sections.ToList();
            Assert.Equal(theirs.Count, img.Sections.Count);
            for (int i = 0; i < theirs.Count; i++)
            {
                var (name, addr, off, size, flags) = theirs[i] switch
                {
                    Section<ulong> s => (s.Name, s.LoadAddress, s.Offset, s.Size, (ulong)s.Flags),
                    Section<uint> s => (s.Name, (ulong)s.LoadAddress, (ulong)s.Offset, (ulong)s.Size, (ulong)s.Flags),
                    _ => throw new InvalidOperationException(),
                };
                var mine = img.Sections[i];
                Assert.Equal((name, addr, off, size, flags), (mine.Name, mine.Address, mine.FileOffset, mine.Size, mine.Flags));
            }
            Assert.Equal(elf.Segments.Count, img.Elf.Segments.Count);
        }
        Assert.Empty(img.Elf.Symbols); // stripped
        Assert.True(img.Elf.ElfEnd < img.ElfBytes.Length, "vmlinux.relocs follows the ELF proper in the payload");
    }

    [SkippableTheory]
    [InlineData("amd64")]
    [InlineData("i386")]
    public void Addresses_map_to_file_offsets_through_sections(string which)
    {
        var img = RealImages.Get(which);
        var text = img.Elf.FindSection(".text")!.Value;
        Assert.Equal((long)text.FileOffset, img.FileOffsetOf(text.Address));
        Assert.Equal((long)text.FileOffset + 0x1234, img.FileOffsetOf(text.Address + 0x1234));
        var a = img.Tables.Alternatives[100];
        long off = img.FileOffsetOf(a.Address);
        Assert.True(img.ReadBytes(a.Address, a.InstrLen).SequenceEqual(img.ElfBytes.Span.Slice((int)off, a.InstrLen)));
        // ReadBytes is a view: a write through it lands in ElfBytes at the same file offset.
        var view = img.ReadBytes(a.Address, 1);
        byte old = view[0];
        view[0] ^= 0xff;
        Assert.Equal((byte)(old ^ 0xff), img.ElfBytes.Span[(int)off]);
        view[0] = old;
        var bss = img.Elf.FindSection(".bss")!.Value;
        Assert.Throws<ImageFormatException>(() => img.FileOffsetOf(bss.Address));
        Assert.Throws<ImageFormatException>(() => img.ReadBytes(text.EndAddress - 2, 8));
    }

    private static KernelTableInfo Info(KernelPatchTables t, KernelSiteKind kind) => t.Tables.Single(x => x.Kind == kind);

    private static Instruction DecodeOne(KernelImage img, ulong address)
    {
        var sec = img.Elf.SectionContaining(address)!.Value;
        var bytes = img.ReadBytes(address, (int)Math.Min(15UL, sec.EndAddress - address)).ToArray();
        var d = Decoder.Create(img.Bitness, new ByteArrayCodeReader(bytes), address);
        d.Decode(out var insn);
        return insn;
    }

    /// <summary>Null when the bytes decode into valid instructions ending exactly at the length; else the problem.</summary>
    private static string? Decode(KernelImage img, ulong address, int length)
    {
        try
        {
            var bytes = img.ReadBytes(address, length).ToArray();
            var d = Decoder.Create(img.Bitness, new ByteArrayCodeReader(bytes), address);
            while (d.IP < address + (ulong)length)
            {
                d.Decode(out var insn);
                if (insn.IsInvalid)
                    return $"invalid instruction at +{insn.IP - address} ({d.LastError}): {Convert.ToHexString(bytes)}";
            }
            return d.IP == address + (ulong)length ? null : $"last instruction runs {d.IP - address - (ulong)length} bytes past the end";
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            return $"exception {e.GetType().Name}: {e.Message}";
        }
    }
}

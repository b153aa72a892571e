using System.Buffers.Binary;
using Altpatch.Images;
using Altpatch.Tests.Images;
using Altpatch.Tests.KernelPatch;

namespace Altpatch.Tests.Verify;

/// <summary>
/// <see cref="KernelRelocations"/> and <see cref="KernelImage.Relocate"/>: the bzImage's own relocation table, applied
/// as the decompressor's <c>handle_relocations()</c> does for KASLR, checked against the real kernels' runtime text.
/// </summary>
public class RelocationTests
{
    [SkippableFact]
    public void The_real_images_carry_their_tables_right_after_the_ELF_file()
    {
        var cloud = RealImages.CloudAmd64.Relocations!;
        Assert.True(cloud.Is64);
        Assert.Equal((70515, 8438, 123579), (cloud.Absolute32.Length, cloud.Inverse32.Length, cloud.Absolute64.Length));
        Assert.Equal(RealImages.CloudAmd64.Elf.ElfEnd, cloud.TableOffset);
        Assert.Equal(RealImages.CloudAmd64.ElfBytes.Length - cloud.TableOffset, cloud.TableLength);
        Assert.Equal(0xffffffff80000000UL, cloud.StartKernelMap);
        Assert.Equal(0xffffffff81000000UL, cloud.TextStart);

        var i386 = RealImages.I386.Relocations!;
        Assert.False(i386.Is64);
        Assert.Equal((276083, 0, 0), (i386.Absolute32.Length, i386.Inverse32.Length, i386.Absolute64.Length));
        Assert.Equal(0xc0000000UL, i386.StartKernelMap);
        Assert.Equal(4 * (276083 + 1), i386.TableLength);
    }

    [SkippableTheory]
    [InlineData("amd64", 0x35c00000L)]
    [InlineData("i386", 0x2000000L)]
    public void Relocate_moves_every_field_and_every_section(string which, long delta)
    {
        var img = RealImages.Get(which);
        var r = img.Relocations!;
        var moved = img.Relocate(delta);
        Assert.Equal(delta, moved.RelocationDelta);
        Assert.Equal(0, img.RelocationDelta);
        Assert.Same(img, img.Relocate(0));
        foreach (var (s, m) in img.Sections.Zip(moved.Sections))
        {
            Assert.Equal(s.Name, m.Name);
            Assert.Equal(s.IsAllocated && s.Address != 0 ? s.Address + (ulong)delta : s.Address, m.Address);
        }
        // Every field, read through the moved image at its moved address, is the original moved by delta.
        foreach (var kind in new[] { KernelRelocationKind.Absolute32, KernelRelocationKind.Inverse32, KernelRelocationKind.Absolute64 })
        {
            foreach (ulong a in r.Entries(kind).Where((_, i) => i % 97 == 0))
            {
                if (!img.Elf.TryGetFileOffset(a, KernelRelocations.Width(kind), out long off))
                    continue;   // a per-CPU field: its section is linked at 0 (checked below through the file)
                var before = img.ElfBytes.Span[(int)off..];
                var after = moved.ReadBytes(a + (ulong)delta, KernelRelocations.Width(kind));
                switch (kind)
                {
                    case KernelRelocationKind.Absolute32:
                        Assert.Equal(unchecked(BinaryPrimitives.ReadUInt32LittleEndian(before) + (uint)delta), BinaryPrimitives.ReadUInt32LittleEndian(after));
                        break;
                    case KernelRelocationKind.Inverse32:
                        Assert.Equal(unchecked(BinaryPrimitives.ReadUInt32LittleEndian(before) - (uint)delta), BinaryPrimitives.ReadUInt32LittleEndian(after));
                        break;
                    default:
                        Assert.Equal(BinaryPrimitives.ReadUInt64LittleEndian(before) + (ulong)delta, BinaryPrimitives.ReadUInt64LittleEndian(after));
                        break;
                }
            }
        }
        // Only the fields changed: the file differs from the original in at most (fields x width) bytes plus the headers.
        long changed = 0;
        var a0 = img.ElfBytes.Span;
        var b0 = moved.ElfBytes.Span;
        for (int i = 0; i < a0.Length; i++)
        {
            if (a0[i] != b0[i])
                changed++;
        }
        Assert.InRange(changed, 1, 4L * (r.Absolute32.Length + r.Inverse32.Length) + 8L * r.Absolute64.Length + 64L * (img.Sections.Count + img.Elf.Segments.Count));
    }

    [SkippableFact]
    public void The_moved_image_has_its_symbols_at_runtime_addresses()
    {
        var img = RealImages.CloudAmd64;
        var moved = img.Relocate(0x35c00000);
        Assert.Equal(img.Symbols.AddressOf("_stext") + 0x35c00000, moved.Symbols.AddressOf("_stext"));
        Assert.Equal(img.Symbols.AddressOf("start_kernel") + 0x35c00000, moved.Symbols.AddressOf("start_kernel"));
        // per-CPU symbols do not move
        Assert.Equal(img.Symbols.AddressOf("fixed_percpu_data"), moved.Symbols.AddressOf("fixed_percpu_data"));
    }

    /// <summary>Against the running kernels (this machine's dumps): after relocation every relocated field of .text
    /// outside the patch sites holds the running kernel's bytes, and the kernel's own /proc/kallsyms agrees with the
    /// moved image's kallsyms.</summary>
    [SkippableTheory]
    [InlineData("6.1.0-50-cloud-amd64", "Haswell-smp2+kaslr")]
    [InlineData("6.1.0-50-cloud-amd64", "EPYC-Rome-smp1+mitigations-off+kaslr")]
    [InlineData("6.1.0-50-686", "Haswell-smp1+kaslr")]
    public void Relocated_fields_hold_the_running_kernels_bytes(string image, string config)
    {
        GroundTruthDumps.SkipUnless(image, config);
        var img = GroundTruthDumps.Image(image);
        var meta = GroundTruthDumps.Meta(image, config);
        long delta = (long)GroundTruthDumps.Hex(meta, "kaslr_delta");
        Assert.NotEqual(0, delta);
        var dump = GroundTruthDumps.Dump(image, config);
        var moved = img.Relocate(delta);
        var text = moved.Elf.FindSection(".text")!.Value;
        ulong dumpBase = GroundTruthDumps.Hex(meta, "link_virt_base") + (ulong)delta;
        var sites = new SortedSet<ulong>();
        var t = img.Tables;
        void Mark(ulong a, int n) { for (int i = 0; i < n; i++) sites.Add(a + (ulong)i + (ulong)delta); }
        foreach (var s in t.Alternatives) Mark(s.Address, s.InstrLen);
        foreach (var s in t.Paravirt) Mark(s.Address, s.Len);
        int same = 0, differ = 0, unmovedSame = 0;
        foreach (var (a, kind) in img.Relocations!.FieldsIn(text.Address - (ulong)delta, text.Size))
        {
            ulong ra = a + (ulong)delta;
            int w = KernelRelocations.Width(kind);
            if (sites.Contains(ra) || sites.Contains(ra + (ulong)w - 1))
                continue;
            var want = dump.AsSpan((int)(ra - dumpBase), w);
            if (moved.ReadBytes(ra, w).SequenceEqual(want)) same++; else differ++;
            if (img.ReadBytes(a, w).SequenceEqual(want)) unmovedSame++;
        }
        Assert.True(same > 1000, $"{same} fields compared");
        Assert.Equal(0, differ);
        Assert.Equal(0, unmovedSame);

        var guest = KernelSymbols.FromSystemMap(GroundTruthDumps.Kallsyms(image, config), "kallsyms");
        Assert.Equal(guest.AddressOf("_stext"), moved.Symbols.AddressOf("_stext"));
        int checkedSymbols = 0;
        foreach (var s in moved.Symbols.All.Where((s, i) => s.IsText && i % 101 == 0))
        {
            Assert.Contains(guest.Named(s.Name), g => g.Address == s.Address);
            checkedSymbols++;
        }
        Assert.True(checkedSymbols > 100);
    }

    [SkippableFact]
    public void The_truth_files_reference_is_the_image_relocated_by_us()
    {
        var configs = WholeTextTruth.Configurations().ToList();
        Skip.If(configs.Count == 0, "no whole-text truth files (tests/data/groundtruth/*/*/run.wtext.gz)");
        int kaslr = 0;
        foreach (var (image, config) in configs)
        {
            if (GroundTruthDumps.ImagePath(image) is null)
                continue;
            var truth = WholeTextTruth.Read(WholeTextTruth.FileOf(image, config));
            var text = truth.RebuildText(GroundTruthDumps.Image(image));   // checks both sha256s
            Assert.Equal(truth.Text.Size, text.Length);
            if (truth.KaslrDelta != 0)
                kaslr++;
        }
        Assert.True(kaslr > 0, "no KASLR configuration among the truth files");
    }

    // ---------------------------------------------------------------- malformed tables (the 686 image's, edited)

    private static KernelImage Edited(Func<byte[], long, byte[]> edit)
    {
        var img = RealImages.I386;
        var bytes = edit(img.ElfBytes.ToArray(), img.Elf.ElfEnd);
        return KernelImage.Load(bytes, "edited.vmlinux");
    }

    private static uint U32(byte[] b, int o) => BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(o));

    [SkippableFact]
    public void A_table_that_is_not_whole_entries_is_refused()
    {
        var img = Edited((b, _) => [.. b, 1, 2, 3]);
        var e = Assert.Throws<ImageFormatException>(() => img.Relocations);
        Assert.Contains("whole number of 4-byte entries", e.Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void Entries_out_of_order_are_refused()
    {
        var img = Edited((b, end) =>
        {
            int o = (int)end + 4 + 4 * 1000;   // entries 1000 and 1001 swapped
            uint x = U32(b, o), y = U32(b, o + 4);
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(o), y);
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(o + 4), x);
            return b;
        });
        var e = Assert.Throws<ImageFormatException>(() => img.Relocations);
        Assert.Contains("32-bit entry 1001", e.Message, StringComparison.Ordinal);
        Assert.Contains("not above the previous entry", e.Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void An_entry_outside_the_kernel_is_refused()
    {
        var img = Edited((b, end) =>
        {
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan((int)end + 4), 0xc0800000);   // below _text
            return b;
        });
        var e = Assert.Throws<ImageFormatException>(() => img.Relocations);
        Assert.Contains("32-bit entry 0 (0xc0800000) is outside the kernel", e.Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void An_entry_in_bss_has_no_bytes_to_relocate()
    {
        ulong bss = RealImages.I386.Elf.FindSection(".bss")!.Value.Address;
        var img = Edited((b, _) =>
        {
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(b.Length - 4), (uint)bss);   // the last (highest) entry
            return b;
        });
        var e = Assert.Throws<ImageFormatException>(() => img.Relocations);
        Assert.Contains("is not in the file bytes of any PT_LOAD", e.Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void A_table_without_its_terminator_or_with_a_gap_is_refused()
    {
        var noTerminator = Edited((b, end) =>
        {
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan((int)end), 0xc1000000);
            return b;
        });
        Assert.Contains("without its 0 terminator", Assert.Throws<ImageFormatException>(() => noTerminator.Relocations).Message, StringComparison.Ordinal);

        var gap = Edited((b, end) => [.. b.AsSpan(0, (int)end), 0, 0, 0, 0, .. b.AsSpan((int)end)]);
        Assert.Contains("4 bytes between the end of the ELF file", Assert.Throws<ImageFormatException>(() => gap.Relocations).Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void A_plain_vmlinux_has_no_table_and_cannot_be_moved()
    {
        var img = Edited((b, end) => b.AsSpan(0, (int)end).ToArray());
        Assert.Null(img.Relocations);
        Assert.Same(img, img.Relocate(0));
        var e = Assert.Throws<ImageFormatException>(() => img.Relocate(0x1000000));
        Assert.Contains("no relocation table", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() => RealImages.I386.Relocate(0x1234));
        Assert.Throws<ArgumentOutOfRangeException>(() => RealImages.I386.Relocate(-0x1000));
    }
}

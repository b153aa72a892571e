using Altpatch.Images;
using Altpatch.Images.Verify;
using Altpatch.Tests.Images;

namespace Altpatch.Tests.Verify;

/// <summary><see cref="ElfCore"/> and <see cref="KernelTextLocator.Find"/>: reading memory cores (/proc/kcore, QEMU's
/// dump-guest-memory -p) and finding the kernel's .text in them, KASLR or not.</summary>
public sealed class CoreTests : IDisposable
{
    private readonly List<string> files = [];

    public void Dispose()
    {
        foreach (var f in files)
            File.Delete(f);
    }

    private string Write(byte[] bytes)
    {
        var path = Path.Combine(Path.GetTempPath(), $"altpatch-core-test-{Environment.ProcessId}-{Guid.NewGuid():N}");
        File.WriteAllBytes(path, bytes);
        files.Add(path);
        return path;
    }

    /// <summary>The image's .text as a kernel moved by <paramref name="delta"/> holds it before patching itself.</summary>
    internal static byte[] MovedText(KernelImage img, long delta)
    {
        var moved = img.Relocate(delta);
        return moved.Elf.SectionBytes(moved.Elf.FindSection(".text")!.Value).ToArray();
    }

    [Fact]
    public void Reads_across_adjacent_segments_and_reports_holes()
    {
        var a = Enumerable.Range(0, 0x1000).Select(i => (byte)i).ToArray();
        var b = Enumerable.Range(0, 0x800).Select(i => (byte)(i * 7)).ToArray();
        using var core = ElfCore.Open(Write(SyntheticCore.Build(true, [(0xffffffff81001000, b), (0xffffffff81000000, a), (0xffff888000000000, a)])));
        Assert.True(core.Is64);
        Assert.Equal(3, core.Loads.Count);
        Assert.Equal([(0xffff888000000000UL, 0x1000UL), (0xffffffff81000000UL, 0x1800UL)], core.Ranges());
        var buf = new byte[0x20];
        Assert.True(core.TryRead(0xffffffff81000ff0, buf));
        Assert.Equal(a.AsSpan(0xff0).ToArray(), buf[..0x10]);
        Assert.Equal(b.AsSpan(0, 0x10).ToArray(), buf[0x10..]);
        Assert.False(core.TryRead(0xffffffff810017f0, buf));   // runs past the end
        Assert.True(core.Covers(0xffffffff81000000, 0x1800));
        Assert.False(core.Covers(0xffffffff81000000, 0x1801));

        using var c32 = ElfCore.Open(Write(SyntheticCore.Build(false, [(0xc1000000, a)])));
        Assert.False(c32.Is64);
        Assert.True(c32.TryRead(0xc1000100, buf));
        Assert.Equal(a.AsSpan(0x100, 0x20).ToArray(), buf);
    }

    [SkippableFact]
    public void Refuses_what_is_not_a_core()
    {
        var notCore = Assert.Throws<ImageFormatException>(() => ElfCore.Open(Write(RealImages.I386.ElfBytes.ToArray())));
        Assert.Contains("not a core file (ET_CORE = 4)", notCore.Message, StringComparison.Ordinal);
        Assert.Contains("no 7f 45 4c 46 magic", Assert.Throws<ImageFormatException>(() => ElfCore.Open(Write("hello, world, not an ELF core file at all, no......"u8.ToArray()))).Message, StringComparison.Ordinal);
        var whole = SyntheticCore.Build(true, [(0xffffffff81000000, new byte[0x1000])]);
        var truncated = Assert.Throws<ImageFormatException>(() => ElfCore.Open(Write(whole[..^0x100])));
        Assert.Contains("runs past the end of the file", truncated.Message, StringComparison.Ordinal);
    }

    [SkippableTheory]
    [InlineData("amd64", 0x35c00000L)]
    [InlineData("amd64", 0L)]
    [InlineData("i386", 0x1b000000L)]
    public void Finds_text_in_the_kernel_mapping_not_in_an_alias(string which, long delta)
    {
        var img = RealImages.Get(which);
        var text = MovedText(img, delta);
        ulong link = img.Elf.FindSection(".text")!.Value.Address;
        ulong at = link + (ulong)delta;
        var junk = new byte[0x200000];
        new Random(1).NextBytes(junk);
        var segments = img.Elf.Is64
            // the direct-map alias holds the same bytes, outside the kernel text mapping
            ? new List<(ulong, byte[])> { (0xffff888006600000, text), (at - 0x200000, junk), (at, text), (at + (ulong)text.Length, junk) }
            : [(0x08000000, junk), (at - 0x200000, junk), (at, text)];
        using var core = ElfCore.Open(Write(SyntheticCore.Build(img.Elf.Is64, segments)));
        Assert.Equal(at, KernelTextLocator.Find(img, core));
    }

    [SkippableFact]
    public void A_core_without_the_kernels_text_is_refused()
    {
        var cloud = RealImages.CloudAmd64;
        // the 686 kernel's text where the cloud kernel's would be, and random bytes
        var other = MovedText(RealImages.I386, 0);
        var noise = new byte[cloud.Elf.FindSection(".text")!.Value.Size + 0x400000];
        new Random(2).NextBytes(noise);
        using var core = ElfCore.Open(Write(SyntheticCore.Build(true, [(0xffffffff81000000, noise), (0xffffffffa0000000, other)])));
        var e = Assert.Throws<KernelVerifyException>(() => KernelTextLocator.Find(cloud, core));
        Assert.Contains("no text of vmlinuz-6.1.0-50-cloud-amd64 in the core", e.Message, StringComparison.Ordinal);

        using var empty = ElfCore.Open(Write(SyntheticCore.Build(true, [(0xffff888000000000, new byte[0x1000])])));
        e = Assert.Throws<KernelVerifyException>(() => KernelTextLocator.Find(cloud, empty));
        Assert.Contains("none of its 0 candidate bases", e.Message, StringComparison.Ordinal);
    }

    /// <summary>The ground truth's real cores (this machine only): QEMU's dump-guest-memory -p of running kernels, one of
    /// them of all 512 MB of the guest.</summary>
    [SkippableTheory]
    [InlineData("6.1.0-50-cloud-amd64", "Haswell-smp2+kaslr")]
    [InlineData("6.1.0-50-cloud-amd64", "Haswell-smp1")]
    [InlineData("6.1.0-50-686", "Haswell-smp1+kaslr")]
    public void Finds_text_in_the_real_cores(string image, string config)
    {
        GroundTruthDumps.SkipUnless(image, config, "run.core.zst");
        var img = GroundTruthDumps.Image(image);
        var path = GroundTruthDumps.CoreFile(image, config);
        files.Add(path);
        using var core = ElfCore.Open(path);
        ulong want = GroundTruthDumps.Hex(GroundTruthDumps.Meta(image, config), "runtime_text");
        Assert.Equal(want, KernelTextLocator.Find(img, core));
        var text = new byte[img.Elf.FindSection(".text")!.Value.Size];
        Assert.True(core.TryRead(want, text));
        var dump = GroundTruthDumps.Dump(image, config);
        Assert.True(text.AsSpan().SequenceEqual(dump.AsSpan(0, text.Length)), "the core's .text is the physical dump's");
    }
}

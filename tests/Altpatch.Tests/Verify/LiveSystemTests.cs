using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Images.Verify;
using Altpatch.Tests.Images;
using Altpatch.Tests.KernelPatch;

namespace Altpatch.Tests.Verify;

/// <summary>
/// <see cref="KernelLiveSystem"/>, what <c>kernel verify --live</c> reads, on a directory laid out like /proc and /boot:
/// each refusal (not root, no kcore, no kallsyms or hidden addresses, no image, another release), and the reading path
/// through a kcore-like core file to a verified text.
/// </summary>
public sealed class LiveSystemTests : IDisposable
{
    private const long Kaslr = 0x35c00000;
    private const string Release = "6.1.0-50-cloud-amd64";
    private readonly string root = Directory.CreateTempSubdirectory("altpatch-live-").FullName;

    public void Dispose() => Directory.Delete(root, recursive: true);

    private string Proc => Path.Combine(root, "proc");
    private string Boot => Path.Combine(root, "boot");

    /// <summary>/proc with osrelease, cpuinfo, cmdline and kallsyms (_stext at <paramref name="stext"/>); /boot empty.</summary>
    private KernelLiveSystem Machine(ulong stext, bool isRoot = true, string release = Release)
    {
        Directory.CreateDirectory(Path.Combine(Proc, "sys", "kernel"));
        Directory.CreateDirectory(Boot);
        File.WriteAllText(Path.Combine(Proc, "sys", "kernel", "osrelease"), release + "\n");
        File.WriteAllText(Path.Combine(Proc, "cmdline"), "BOOT_IMAGE=/boot/vmlinuz root=/dev/sda1 ro quiet preempt=full\n");
        File.WriteAllText(Path.Combine(Proc, "cpuinfo"), "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 60\nstepping\t: 4\nflags\t\t: fpu cx8 cmov sse2\n\nprocessor\t: 1\n");
        File.WriteAllText(Path.Combine(Proc, "kallsyms"), $"{stext:x16} T _text\n{stext:x16} T _stext\n{stext + 0x100:x16} t some_function\n");
        return new KernelLiveSystem(Proc, Boot, isRoot);
    }

    [Fact]
    public void Not_root_is_refused()
    {
        var sys = Machine(0xffffffff81000000, isRoot: false);
        File.WriteAllBytes(Path.Combine(Proc, "kcore"), []);
        var e = Assert.Throws<KernelVerifyException>(sys.CheckAccess);
        Assert.Contains("which only root may read: run it as root", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void No_kcore_is_refused()
    {
        var e = Assert.Throws<KernelVerifyException>(Machine(0xffffffff81000000).CheckAccess);
        Assert.Contains("kcore: this kernel was built without CONFIG_PROC_KCORE", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Hidden_or_missing_addresses_are_refused()
    {
        var sys = Machine(0);
        Assert.Contains("kernel.kptr_restrict hides them", Assert.Throws<KernelVerifyException>(() => sys.TextAddress()).Message, StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(Proc, "kallsyms"), "ffffffff81000000 T startup_64\n");
        Assert.Contains("names neither _stext nor _text", Assert.Throws<KernelVerifyException>(() => sys.TextAddress()).Message, StringComparison.Ordinal);
        File.Delete(Path.Combine(Proc, "kallsyms"));
        Assert.Contains("a kernel without CONFIG_KALLSYMS", Assert.Throws<KernelVerifyException>(() => sys.TextAddress()).Message, StringComparison.Ordinal);
        Assert.Equal(0xffffffffb6c00000UL, Machine(0xffffffffb6c00000).TextAddress());
    }

    [SkippableFact]
    public void The_image_must_be_there_and_be_the_running_release()
    {
        var sys = Machine(0xffffffff81000000);
        var e = Assert.Throws<KernelVerifyException>(sys.ImagePath);
        Assert.Contains($"no image of the running kernel {Release}", e.Message, StringComparison.Ordinal);
        File.CreateSymbolicLink(Path.Combine(Boot, "vmlinuz-" + Release), TestPaths.CloudAmd64);
        Assert.Equal(Path.Combine(Boot, "vmlinuz-" + Release), sys.ImagePath());
        sys.CheckImage(RealImages.CloudAmd64);
        var other = Assert.Throws<KernelVerifyException>(() => sys.CheckImage(RealImages.I386));
        Assert.Contains($"is Linux 6.1.0-50-686, the running kernel is {Release}", other.Message, StringComparison.Ordinal);
    }

    /// <summary>The whole --live reading path on a machine made of files: the text read from the kcore at _stext, the CPU
    /// from cpuinfo, the command line from cmdline, and verified.</summary>
    [SkippableFact]
    public void Reads_the_running_text_through_kcore_and_verifies_it()
    {
        var img = RealImages.CloudAmd64;
        // The running kernel's text: a truth file's when the checkout has one of this KASLR offset, else the moved
        // text before the kernel patched itself.
        var cfg = WholeTextTruth.Configurations().FirstOrDefault(c => c.Image == Release && c.Config == "Haswell-smp2+kaslr");
        byte[] text;
        long delta = Kaslr;
        if (cfg.Image is not null)
        {
            var truth = WholeTextTruth.Read(WholeTextTruth.FileOf(cfg.Image, cfg.Config));
            text = truth.RebuildText(img);
            delta = truth.KaslrDelta;
        }
        else
            text = CoreTests.MovedText(img, Kaslr);
        ulong at = img.Elf.FindSection(".text")!.Value.Address + (ulong)delta;
        var sys = Machine(at);
        File.WriteAllBytes(Path.Combine(Proc, "kcore"), SyntheticCore.Build(true, [(0xffff888006600000, text), (at, text)]));
        File.CreateSymbolicLink(Path.Combine(Boot, "vmlinuz-" + Release), TestPaths.CloudAmd64);

        sys.CheckAccess();
        var image = KernelImage.Open(sys.ImagePath());
        sys.CheckImage(image);
        var (read, address) = sys.ReadText(image);
        Assert.Equal(at, address);
        Assert.Equal(text, read);
        var cpu = KernelCpuDescription.FromCpuInfo(sys.CpuInfo());
        Assert.Equal(2, cpu.Cpus);
        var cmdline = KernelCommandLine.Parse(sys.CommandLine());
        Assert.Equal(PreemptMode.Full, cmdline.Preempt);

        var r = KernelTextVerifier.Verify(image, read, address, sys.KcorePath, cpu with { CommandLine = cmdline });
        Assert.Equal(delta, r.Fit.Delta);
        Assert.Equal(PreemptMode.Full, r.Prediction.Preempt);
        if (cfg.Image is null)
            Assert.False(r.Clean);   // unpatched text
        // (with the truth: this cpuinfo is not the boot's, so only the reading path is checked here)

        // a kcore that does not hold the text at _stext
        File.WriteAllBytes(Path.Combine(Proc, "kcore"), SyntheticCore.Build(true, [(0xffff888006600000, text)]));
        var e = Assert.Throws<KernelVerifyException>(() => sys.ReadText(image));
        Assert.Contains($"has no segment holding .text at 0x{at:x}", e.Message, StringComparison.Ordinal);
    }
}

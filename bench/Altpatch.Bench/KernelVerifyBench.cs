using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Images.Verify;
using BenchmarkDotNet.Attributes;

namespace Altpatch.Bench;

/// <summary>
/// <c>kernel verify</c> beside <c>kernel patch</c> on the same image and CPU, both as the command runs them (in process,
/// through <c>Program.Run</c>, output discarded): the Debian 6.1 cloud-amd64 bzImage (../shared/linux) for the Icelake-Server
/// ground-truth CPU, 2 CPUs. <c>kernel patch</c> opens the image, patches it and writes the 53 MB vmlinux (with its
/// .symtab) to a file; <c>kernel verify --text</c> opens the image, reads a 14.7 MB dump of .text, checks it, moves the
/// image to the dump's KASLR address (Kaslr) or not, patches it and compares every byte. The dump is the predicted text
/// itself (so nothing is unexplained and the listing costs nothing).
/// <c>dotnet run -c Release --project bench/Altpatch.Bench -- --filter '*KernelVerifyBench*'</c>.
/// </summary>
[MemoryDiagnoser]
public class KernelVerifyBench
{
    private const long KaslrOffset = 0x35c00000;
    private string dir = "";
    private string imagePath = "";
    private string cpuinfo = "";
    private string dumpLink = "", dumpKaslr = "";
    private ulong linkText;

    /// <summary>Writes the dumps (the predicted .text at the link address and at a KASLR offset) and the cpuinfo.</summary>
    [GlobalSetup]
    public void Setup()
    {
        imagePath = BenchPaths.SharedImage("vmlinuz-6.1.0-50-cloud-amd64");
        var cpuText = File.ReadAllText(Path.Combine(BenchPaths.RepoRoot, "tests", "data", "groundtruth", "6.1.0-50-cloud-amd64", "Icelake-Server-smp2.cpuinfo"));
        dir = Directory.CreateTempSubdirectory("altpatch-verify-bench-").FullName;
        cpuinfo = Path.Combine(dir, "cpuinfo");
        File.WriteAllText(cpuinfo, cpuText);
        var image = KernelImage.Open(imagePath);
        var cpu = KernelCpuDescription.FromCpuInfo(cpuText) with { Cpus = 2 };
        linkText = image.Elf.FindSection(".text")!.Value.Address;
        dumpLink = Path.Combine(dir, "text-nokaslr.bin");
        dumpKaslr = Path.Combine(dir, "text-kaslr.bin");
        File.WriteAllBytes(dumpLink, PredictedText(image, 0, cpu));
        File.WriteAllBytes(dumpKaslr, PredictedText(image, KaslrOffset, cpu));
    }

    private static byte[] PredictedText(KernelImage image, long delta, KernelCpuDescription cpu)
    {
        var runtime = image.Relocate(delta);
        var p = KernelTextVerifier.Predict(runtime, cpu);
        return p.Patched.SectionBytes(p.Patched.FindSection(".text")!.Value).ToArray();
    }

    /// <summary>Removes the dumps and OUT.</summary>
    [GlobalCleanup]
    public void Cleanup() => Directory.Delete(dir, recursive: true);

    private int Run(params string[] args)
    {
        int exit = Cli.Program.Run(args, TextWriter.Null, TextWriter.Null);
        if (exit != 0)
            throw new InvalidOperationException($"altpatch {string.Join(' ', args)}: exit {exit}");
        return exit;
    }

    /// <summary>The baseline: <c>kernel patch IMAGE --cpuinfo F --smp 2 -o OUT</c>.</summary>
    [Benchmark(Baseline = true)]
    public int KernelPatch() => Run("kernel", "patch", imagePath, "--cpuinfo", cpuinfo, "--smp", "2", "-o", Path.Combine(dir, "vmlinux.out"));

    /// <summary><c>kernel verify IMAGE --text DUMP --base _text --cpuinfo F --smp 2</c>, not moved.</summary>
    [Benchmark]
    public int KernelVerify() => Run("kernel", "verify", imagePath, "--text", dumpLink, "--base", $"0x{linkText:x}", "--cpuinfo", cpuinfo, "--smp", "2");

    /// <summary>The same for a kernel moved by KASLR (the relocation step included).</summary>
    [Benchmark]
    public int KernelVerifyKaslr() => Run("kernel", "verify", imagePath, "--text", dumpKaslr, "--base", $"0x{linkText + KaslrOffset:x}", "--cpuinfo", cpuinfo, "--smp", "2");
}

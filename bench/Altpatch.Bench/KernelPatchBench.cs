using Altpatch.Images;
using Altpatch.Images.Boot;
using BenchmarkDotNet.Attributes;

namespace Altpatch.Bench;

/// <summary>
/// <c>kernel patch</c> in memory on the Debian 6.1 cloud-amd64 image (../shared/linux) for the Icelake-Server
/// ground-truth CPU: opening the bzImage (LZ4 decode + ELF parse), patching (thunks, derivation, five passes over
/// 72,830 sites, a copy of the 53 MB ELF), and the floor: copying the ELF buffer alone.
/// <c>dotnet run -c Release --project bench/Altpatch.Bench -- --filter '*KernelPatchBench*'</c>.
/// </summary>
[MemoryDiagnoser]
public class KernelPatchBench
{
    private string imagePath = "";
    private KernelImage image = null!;
    private KernelCpuDescription cpu = null!;
    private byte[] sink = [];

    /// <summary>Opens the image once and reads the ground-truth cpuinfo.</summary>
    [GlobalSetup]
    public void Setup()
    {
        imagePath = BenchPaths.SharedImage("vmlinuz-6.1.0-50-cloud-amd64");
        image = KernelImage.Open(imagePath);
        _ = image.Tables;
        _ = image.Symbols;
        cpu = KernelCpuDescription.FromCpuInfo(File.ReadAllText(Path.Combine(BenchPaths.RepoRoot, "tests", "data", "groundtruth",
            "6.1.0-50-cloud-amd64", "Icelake-Server-smp2.cpuinfo")));
        sink = new byte[image.ElfBytes.Length];
    }

    /// <summary>The floor of producing a patched copy: copying the 53 MB ELF buffer.</summary>
    [Benchmark(Baseline = true)]
    public int CopyElf()
    {
        image.ElfBytes.Span.CopyTo(sink);
        return sink[^1];
    }

    /// <summary>Opening the bzImage: LZ4 legacy frame decode (parallel blocks) and the ELF headers.</summary>
    [Benchmark]
    public int Open() => KernelImage.Open(imagePath).ElfBytes.Length;

    /// <summary>The boot-time patching on an open image: thunks, derivation, the text writers (jump labels, static
    /// calls, ftrace, the preempt mode, with the image's kallsyms) and alternative_instructions()'s passes, the patched
    /// copy and the list of dynamic sites.</summary>
    [Benchmark]
    public int Patch() => KernelBootPatcher.Patch(image, cpu).Passes.Length;

    /// <summary>The same without the text writers: alternative_instructions()'s passes only (what kernel patch did before).</summary>
    [Benchmark]
    public int PatchAlternativesOnly()
    {
        var thunks = KernelThunks.Find(image);
        var state = KernelBootCpu.Derive(cpu, KernelBuildInfo.Infer(image, thunks), KvmPvOps.None);
        return KernelBootPatcher.Patch(image, state, thunks, new KernelTextOptions { Enabled = false }).Passes.Length;
    }

    /// <summary>Reading the text writers' tables by the image's kallsyms (decoded once in the setup).</summary>
    [Benchmark]
    public int ReadTextTables() => KernelTextTables.Read(image.Elf, Altpatch.Code.NopTable.X86_64Linux61, image.Symbols).Mcount.Length;
}

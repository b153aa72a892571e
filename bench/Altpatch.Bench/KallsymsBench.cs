using System.Text;
using Altpatch.Images;
using BenchmarkDotNet.Attributes;

namespace Altpatch.Bench;

/// <summary>
/// Decoding a kernel's kallsyms tables (<see cref="KernelSymbols.FromKallsyms"/>: finding the tables, expanding every
/// name, the offsets, the seqs check) beside its baseline, reading the same symbols from System.map text
/// (<see cref="KernelSymbols.FromSystemMap"/>, what a user does when the image has a System.map beside it).
/// On the three shared images (../shared/linux). <c>dotnet run -c Release --project bench/Altpatch.Bench -- --filter '*KallsymsBench*'</c>.
/// </summary>
[MemoryDiagnoser]
public class KallsymsBench
{
    private KernelImage image = null!;
    private string systemMap = "";

    /// <summary>The image: 6.1 cloud-amd64 (87,182 symbols), 6.12 cloud-amd64 (154,718), 6.1 686 (45,166).</summary>
    [Params("vmlinuz-6.1.0-50-cloud-amd64", "vmlinuz-6.12.118+deb12-cloud-amd64", "vmlinuz-6.1.0-50-686")]
    public string Image { get; set; } = "";

    /// <summary>Opens the image and writes its symbols as System.map text for the baseline.</summary>
    [GlobalSetup]
    public void Setup()
    {
        image = KernelImage.Open(BenchPaths.SharedImage(Image));
        var sb = new StringBuilder();
        foreach (var s in KernelSymbols.FromKallsyms(image).All)
            sb.Append(s.ToSystemMapLine(image.PointerSize)).Append('\n');
        systemMap = sb.ToString();
    }

    /// <summary>Baseline: parsing the same symbols from System.map text.</summary>
    [Benchmark(Baseline = true)]
    public int ParseSystemMap() => KernelSymbols.FromSystemMap(systemMap, "System.map").Count;

    /// <summary>Finding and decoding the kallsyms tables in the image.</summary>
    [Benchmark]
    public int DecodeKallsyms() => KernelSymbols.FromKallsyms(image).Count;
}

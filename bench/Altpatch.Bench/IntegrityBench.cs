using Altpatch.Images;
using BenchmarkDotNet.Attributes;

namespace Altpatch.Bench;

/// <summary>
/// The cost of checking a bzImage's build CRC-32 on the Debian 6.1 cloud-amd64 image (14 MB, ../shared/linux):
/// build.c's own byte-at-a-time table loop (the baseline), <see cref="KernelCrc32"/> through System.IO.Hashing, the
/// whole check (<see cref="BzImageIntegrity.Check"/>), the same on the Secure Boot-signed twin (CRC as built + PE
/// checksum over the file; artifacts/signed, fetched by tools/signed-image/fetch.sh), and opening the image
/// (decompression), which the check precedes.
/// <c>dotnet run -c Release --project bench/Altpatch.Bench -- --filter '*IntegrityBench*'</c>.
/// </summary>
[MemoryDiagnoser]
public class IntegrityBench
{
    private byte[] file = [];
    private BzImage bz = null!;
    private BzImage? signed;
    private string path = "";

    /// <summary>Reads the images once.</summary>
    [GlobalSetup]
    public void Setup()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Altpatch.slnx")))
            root = root.Parent;
        if (root is null)
            throw new InvalidOperationException("repository root (Altpatch.slnx) not found");
        path = Path.GetFullPath(Path.Combine(root.FullName, "..", "shared", "linux", "vmlinuz-6.1.0-50-cloud-amd64"));
        file = File.ReadAllBytes(path);
        bz = BzImage.Parse(file, "bench");
        var s = Path.Combine(root.FullName, "artifacts", "signed", "boot", "vmlinuz-6.1.0-50-cloud-amd64");
        signed = File.Exists(s) ? BzImage.Parse(File.ReadAllBytes(s), "signed") : null;
    }

    /// <summary>build.c's partial_crc32: one table lookup per byte.</summary>
    [Benchmark(Baseline = true)]
    public uint BuildCBytewise() => KernelCrc32.AppendBytewise(KernelCrc32.Initial, file.AsSpan(0, file.Length - 4));

    /// <summary>The same CRC through System.IO.Hashing's Crc32.</summary>
    [Benchmark]
    public uint Fast() => KernelCrc32.Compute(file.AsSpan(0, file.Length - 4));

    /// <summary>The check Altpatch runs on opening: PE header, CRC over the image as built.</summary>
    [Benchmark]
    public bool Check() => BzImageIntegrity.Check(bz).CrcMatches;

    /// <summary>The check on the signed image: also reads the certificate table and computes the PE checksum.</summary>
    [Benchmark]
    public bool CheckSigned() => signed is null || BzImageIntegrity.Check(signed).CrcMatches;

    /// <summary>Opening the image (LZ4 decode + ELF headers), which includes the check.</summary>
    [Benchmark]
    public int Open() => KernelImage.Open(path).ElfBytes.Length;
}

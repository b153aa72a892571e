using System.Globalization;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using Altpatch.Images;

namespace Altpatch.Tests.Verify;

/// <summary>
/// The committed whole-text truth files (tools/groundtruth/gtwtext.py, docs/groundtruth.md "Whole-text truth files"):
/// tests/data/groundtruth/&lt;image&gt;/&lt;cfg&gt;/run.wtext.gz holds a running kernel's final <c>.text</c> as runs of bytes over
/// the image's vmlinux relocated for the boot's KASLR offset. With the image (which CI has) they give back the dump's
/// <c>.text</c> byte for byte, each step checked by the header's sha256s.
/// </summary>
internal sealed class WholeTextTruth
{
    public const string Magic = "altpatch-groundtruth-text 1";

    public required string Path { get; init; }
    public required Dictionary<string, string> Header { get; init; }
    public required List<Section> Sections { get; init; }

    public sealed record Section(string Name, ulong Address, int Size, string ReferenceSha256, string FinalSha256, List<(int Offset, byte[] Bytes)> Runs);

    public static string Dir => System.IO.Path.Combine(TestPaths.RepoRoot ?? ".", "tests", "data", "groundtruth");

    /// <summary>Every (image, configuration) with a run.wtext.gz.</summary>
    public static IEnumerable<(string Image, string Config)> Configurations()
    {
        if (!Directory.Exists(Dir))
            yield break;
        foreach (var imageDir in Directory.GetDirectories(Dir).Order(StringComparer.Ordinal))
        {
            foreach (var cfgDir in Directory.GetDirectories(imageDir).Order(StringComparer.Ordinal))
            {
                if (File.Exists(System.IO.Path.Combine(cfgDir, "run.wtext.gz")))
                    yield return (System.IO.Path.GetFileName(imageDir), System.IO.Path.GetFileName(cfgDir));
            }
        }
    }

    public static string FileOf(string image, string config) => System.IO.Path.Combine(Dir, image, config, "run.wtext.gz");

    public static WholeTextTruth Read(string path)
    {
        byte[] data;
        using (var gz = new GZipStream(File.OpenRead(path), CompressionMode.Decompress))
        using (var ms = new MemoryStream())
        {
            gz.CopyTo(ms);
            data = ms.ToArray();
        }
        var marker = "\ndata\n"u8;
        int end = data.AsSpan().IndexOf(marker);
        if (end < 0)
            throw new InvalidDataException($"{path}: no data line");
        var lines = Encoding.UTF8.GetString(data, 0, end).Split('\n');
        if (lines[0] != Magic)
            throw new InvalidDataException($"{path}: not a '{Magic}' file");
        var header = new Dictionary<string, string>(StringComparer.Ordinal);
        var sections = new List<Section>();
        foreach (var line in lines.Skip(1))
        {
            if (line.StartsWith("section ", StringComparison.Ordinal))
            {
                var p = line.Split(' ');
                sections.Add(new Section(p[1], ulong.Parse(p[2], NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                    int.Parse(p[3], CultureInfo.InvariantCulture), p[4], p[5], new List<(int, byte[])>(int.Parse(p[6], CultureInfo.InvariantCulture))));
            }
            else
            {
                int c = line.IndexOf(": ", StringComparison.Ordinal);
                header[line[..c]] = line[(c + 2)..];
            }
        }
        int pos = end + marker.Length;
        foreach (var s in sections)
        {
            int off = 0;
            while (true)
            {
                int gap = (int)Varint(data, ref pos), len = (int)Varint(data, ref pos);
                if (len == 0)
                    break;
                off += gap;
                s.Runs.Add((off, data.AsSpan(pos, len).ToArray()));
                pos += len;
                off += len;
            }
        }
        if (pos != data.Length)
            throw new InvalidDataException($"{path}: {data.Length - pos} bytes after the last section");
        return new WholeTextTruth { Path = path, Header = header, Sections = sections };
    }

    private static ulong Varint(byte[] d, ref int pos)
    {
        ulong n = 0;
        for (int shift = 0; ; shift += 7)
        {
            byte b = d[pos++];
            n |= (ulong)(b & 0x7f) << shift;
            if ((b & 0x80) == 0)
                return n;
        }
    }

    public long KaslrDelta => (long)ulong.Parse(Header["kaslr_delta"].AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    public string CommandLine => Header["kernel_cmdline"];

    public int Smp => int.Parse(Header["smp"], CultureInfo.InvariantCulture);

    public Section Text => Sections.Single(s => s.Name == ".text");

    /// <summary>The running kernel's .text: the image relocated for the boot's offset (checked against the reference
    /// sha256), with the runs applied (checked against the final sha256).</summary>
    public byte[] RebuildText(KernelImage linkImage)
    {
        var runtime = linkImage.Relocate(KaslrDelta);
        var sec = runtime.Elf.FindSection(".text")!.Value;
        var t = Text;
        if (sec.Address - (ulong)KaslrDelta != t.Address || (int)sec.Size != t.Size)
            throw new InvalidDataException($"{Path}: .text 0x{t.Address:x}+{t.Size} is not the image's 0x{sec.Address - (ulong)KaslrDelta:x}+{sec.Size}");
        var bytes = runtime.Elf.SectionBytes(sec).ToArray();
        if (Sha(bytes) != t.ReferenceSha256)
            throw new InvalidDataException($"{Path}: the image relocated by 0x{KaslrDelta:x} is not the truth file's reference (.text sha256 {Sha(bytes)}, want {t.ReferenceSha256})");
        foreach (var (off, run) in t.Runs)
            run.CopyTo(bytes, off);
        if (Sha(bytes) != t.FinalSha256)
            throw new InvalidDataException($"{Path}: the rebuilt .text does not have the final sha256");
        return bytes;
    }

    public static string Sha(ReadOnlySpan<byte> b) => Convert.ToHexStringLower(SHA256.HashData(b));
}

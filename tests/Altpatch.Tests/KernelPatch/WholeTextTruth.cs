using System.Globalization;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using Altpatch.Images;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// A committed whole-text truth file (<c>tests/data/groundtruth/&lt;image&gt;/&lt;cfg&gt;/{run,panic}.wtext.gz</c>, written by
/// tools/groundtruth/gtwtext.py; format in docs/groundtruth.md "Whole-text truth files"): the final bytes of whole
/// executable sections of one QEMU dump, as runs of bytes that differ from the image's vmlinux relocated for the dump's
/// KASLR offset. With the image (which CI has) they give back the dump's <c>.text</c> byte for byte, each step checked by
/// the header's sha256s (<see cref="RebuildText"/>). One reader for the whole-text tests (KernelPatch) and the verify tests.
/// </summary>
internal sealed class WholeTextTruth
{
    public const string Magic = "altpatch-groundtruth-text 1";

    /// <summary>Where the committed truth files are.</summary>
    public static string Dir => GroundTruth.Dir;

    public required string Path { get; init; }
    public required IReadOnlyDictionary<string, string> Header { get; init; }
    public required IReadOnlyList<Section> Sections { get; init; }

    /// <summary>One section: its link address and size, the sha256s of its bytes in the relocated vmlinux (reference) and in
    /// the dump (final), and the runs (offset in the section, final bytes).</summary>
    public sealed record Section(string Name, ulong Address, int Size, string ReferenceSha256, string FinalSha256, List<(int Offset, byte[] Bytes)> Runs);

    public string Image => Header["image"];
    public string Config => Header["config"];
    public string CommandLine => Header.GetValueOrDefault("kernel_cmdline", "");
    public int Smp => int.Parse(Header["smp"], CultureInfo.InvariantCulture);

    /// <summary>The dump's KASLR offset (0 without KASLR).</summary>
    public long KaslrDelta => Header.TryGetValue("kaslr_delta", out var d) ? (long)Convert.ToUInt64(d, 16) : 0;

    public Section Text => Sections.Single(s => s.Name == ".text");

    /// <summary>Every committed truth file: (image, configuration, run|panic).</summary>
    public static IEnumerable<(string Image, string Config, string Boot)> Committed()
    {
        if (!Directory.Exists(Dir))
            yield break;
        foreach (var imageDir in Directory.GetDirectories(Dir).Order(StringComparer.Ordinal))
        {
            foreach (var cfgDir in Directory.GetDirectories(imageDir).Order(StringComparer.Ordinal))
            {
                foreach (var boot in new[] { "run", "panic" })
                {
                    if (File.Exists(System.IO.Path.Combine(cfgDir, boot + ".wtext.gz")))
                        yield return (System.IO.Path.GetFileName(imageDir), System.IO.Path.GetFileName(cfgDir), boot);
                }
            }
        }
    }

    /// <summary>Every (image, configuration) with a run.wtext.gz.</summary>
    public static IEnumerable<(string Image, string Config)> Configurations() =>
        Committed().Where(c => c.Boot == "run").Select(c => (c.Image, c.Config));

    public static string FileOf(string image, string config, string boot = "run") =>
        System.IO.Path.Combine(Dir, image, config, boot + ".wtext.gz");

    public static WholeTextTruth Read(string path)
    {
        byte[] all;
        using (var gz = new GZipStream(File.OpenRead(path), CompressionMode.Decompress))
        using (var ms = new MemoryStream())
        {
            gz.CopyTo(ms);
            all = ms.ToArray();
        }
        int pos = 0;
        string Line()
        {
            int nl = Array.IndexOf(all, (byte)'\n', pos);
            if (nl < 0)
                throw new InvalidDataException($"{path}: header ends without \"data\"");
            string l = Encoding.UTF8.GetString(all, pos, nl - pos);
            pos = nl + 1;
            return l;
        }
        if (Line() != Magic)
            throw new InvalidDataException($"{path}: not a whole-text truth file ('{Magic}' expected)");
        var header = new Dictionary<string, string>(StringComparer.Ordinal);
        var sections = new List<Section>();
        for (string l; (l = Line()) != "data";)
        {
            if (l.StartsWith("section ", StringComparison.Ordinal))
            {
                var p = l.Split(' ');
                sections.Add(new Section(p[1], Convert.ToUInt64(p[2], 16), int.Parse(p[3], CultureInfo.InvariantCulture), p[4], p[5],
                    new List<(int, byte[])>(int.Parse(p[6], CultureInfo.InvariantCulture))));
            }
            else if (l.IndexOf(": ", StringComparison.Ordinal) is int c and > 0)
                header[l[..c]] = l[(c + 2)..];
        }
        foreach (var s in sections)
        {
            int at = 0;
            while (true)
            {
                ulong gap = Varint(all, ref pos), len = Varint(all, ref pos);
                if (len == 0)
                    break;
                at += (int)gap;
                s.Runs.Add((at, all.AsSpan(pos, (int)len).ToArray()));
                pos += (int)len;
                at += (int)len;
            }
        }
        if (pos != all.Length)
            throw new InvalidDataException($"{path}: {all.Length - pos} bytes after the last section");
        return new WholeTextTruth { Path = path, Header = header, Sections = sections };
    }

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

    private static ulong Varint(byte[] b, ref int pos)
    {
        ulong n = 0;
        for (int shift = 0; ; shift += 7)
        {
            byte x = b[pos++];
            n |= (ulong)(x & 0x7f) << shift;
            if ((x & 0x80) == 0)
                return n;
        }
    }
}

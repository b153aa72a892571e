using System.Globalization;
using System.IO.Compression;
using System.Text;
using Altpatch.Images;
using Altpatch.Images.Boot;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// A committed whole-text truth file (<c>tests/data/groundtruth/&lt;image&gt;/&lt;cfg&gt;/{run,panic}.wtext.gz</c>, written by
/// tools/groundtruth/gtwtext.py; format in docs/groundtruth.md): the final bytes of whole executable sections of one
/// QEMU dump, as runs of bytes that differ from the image's vmlinux (relocated for the dump's KASLR offset).
/// </summary>
internal sealed class WholeTextTruth
{
    public const string Magic = "altpatch-groundtruth-text 1";

    public required string Path { get; init; }
    public required IReadOnlyDictionary<string, string> Header { get; init; }
    public required IReadOnlyList<Section> Sections { get; init; }

    /// <summary>One section: its link address and size, and the runs (offset in the section, final bytes).</summary>
    public sealed record Section(string Name, ulong Address, int Size, List<(int Offset, byte[] Bytes)> Runs);

    public string Image => Header["image"];
    public string Config => Header["config"];
    public string CommandLine => Header.GetValueOrDefault("kernel_cmdline", "");
    public int Smp => int.Parse(Header["smp"], CultureInfo.InvariantCulture);
    public ulong KaslrDelta => Header.TryGetValue("kaslr_delta", out var d) ? Convert.ToUInt64(d, 16) : 0;

    /// <summary>Every committed truth file: (image, configuration, run|panic).</summary>
    public static IEnumerable<(string Image, string Config, string Boot)> Committed()
    {
        if (!Directory.Exists(GroundTruth.Dir))
            yield break;
        foreach (var imageDir in Directory.GetDirectories(GroundTruth.Dir).Order(StringComparer.Ordinal))
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

    public static string FileOf(string image, string config, string boot) =>
        System.IO.Path.Combine(GroundTruth.Dir, image, config, boot + ".wtext.gz");

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
                sections.Add(new Section(p[1], Convert.ToUInt64(p[2], 16), int.Parse(p[3], CultureInfo.InvariantCulture), []));
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
        return new WholeTextTruth { Path = path, Header = header, Sections = sections };
    }

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

/// <summary>
/// Altpatch's patched text against a whole-text truth, byte by byte, in the terms of issue 8: a byte is as predicted, or
/// differs inside a site whose state the running kernel decides (dynamic) and that is in one of its legal states, or
/// differs anywhere else (unexplained: the test fails on any).
/// </summary>
internal sealed class WholeTextComparison
{
    public required string Section { get; init; }
    public int Size { get; init; }
    public int Differing { get; set; }
    public int Dynamic { get; set; }
    public Dictionary<KernelSiteKind, int> DynamicByKind { get; } = [];
    public List<string> Unexplained { get; } = [];
    public int UnexplainedBytes { get; set; }
    public double Percent => 100.0 * Differing / Size;

    /// <summary>Compares <paramref name="patched"/>'s section with the truth. Positions compared: every byte of a run (the
    /// kernel changed it) and every byte Altpatch changed; elsewhere both left the (relocated) vmlinux alone.
    /// <paramref name="functionStarts"/>: addresses a static call may go to (text symbols); null: any target.</summary>
    public static WholeTextComparison Compare(KernelPatchResult result, ElfFile patched, WholeTextTruth.Section truth, IReadOnlySet<ulong>? functionStarts)
    {
        var img = result.Image;
        var v = img.Elf.ReadBytes(truth.Address, truth.Size);
        var m = patched.ReadBytes(truth.Address, truth.Size);
        var final = v.ToArray();               // the truth, as far as it can be built without the relocation table
        var compare = new bool[truth.Size];
        foreach (var (off, bytes) in truth.Runs)
        {
            bytes.CopyTo(final, off);
            Array.Fill(compare, true, off, bytes.Length);
        }
        for (int i = 0; i < m.Length; i++)
        {
            if (m[i] != v[i])
                compare[i] = true;
        }
        var siteAt = new Dictionary<ulong, KernelTextSite>();
        foreach (var s in result.TextSites)
        {
            for (int k = 0; k < s.Length; k++)
                siteAt.TryAdd(s.Address + (ulong)k, s);
        }
        var c = new WholeTextComparison { Section = truth.Name, Size = truth.Size };
        var judged = new Dictionary<KernelTextSite, bool>();
        for (int i = 0; i < truth.Size; i++)
        {
            if (!compare[i] || m[i] == final[i])
                continue;
            c.Differing++;
            ulong a = truth.Address + (ulong)i;
            if (siteAt.TryGetValue(a, out var s) && s.Dynamic)
            {
                if (!judged.TryGetValue(s, out bool legal))
                {
                    // Explained only when both are states the site may be in: Altpatch's (its boot state) and the kernel's
                    // (where the running kernel moved it). Either one illegal is an error.
                    var found = final.AsSpan((int)(s.Address - truth.Address), s.Length).ToArray();
                    var mine = m.Slice((int)(s.Address - truth.Address), s.Length).ToArray();
                    bool foundLegal = IsLegal(img, s, found, functionStarts), mineLegal = IsLegal(img, s, mine, functionStarts);
                    legal = foundLegal && mineLegal;
                    judged[s] = legal;
                    if (!legal)
                        c.Unexplained.Add($"0x{s.Address:x} {s.Kind} ({s.Detail}): expected {Convert.ToHexString(mine)}, found {Convert.ToHexString(found)}: "
                            + (mineLegal ? "the kernel's bytes are" : "Altpatch's bytes are") + " not a legal state");
                }
                if (legal)
                {
                    c.Dynamic++;
                    c.DynamicByKind[s.Kind] = c.DynamicByKind.GetValueOrDefault(s.Kind) + 1;
                    continue;
                }
                c.UnexplainedBytes++;
                continue;
            }
            c.UnexplainedBytes++;
            if (c.Unexplained.Count < 20)
                c.Unexplained.Add($"0x{a:x}: expected {m[i]:x2}, found {final[i]:x2} (vmlinux {v[i]:x2}){(s is null ? "" : $" in non-dynamic {s.Kind} site 0x{s.Address:x}")}");
        }
        return c;
    }

    /// <summary>In a legal state: the bytes match one, and a branch to "any function" goes to a function start, a branch
    /// to a run-time trampoline goes outside the image's code.</summary>
    private static bool IsLegal(KernelImage img, KernelTextSite s, byte[] code, IReadOnlySet<ulong>? functionStarts) =>
        s.States.Any(st => st.Matches(code, s, s.Address, img.Bitness) && st.Form switch
        {
            KernelTextStateForm.BranchToFunction => functionStarts is null || functionStarts.Contains(st.BranchTarget(code, s.Address, img.Bitness)),
            KernelTextStateForm.BranchToTrampoline => img.Elf.SectionContaining(st.BranchTarget(code, s.Address, img.Bitness)) is not { IsExecutable: true },
            _ => true,
        });

    public override string ToString() =>
        $"{Section}: {Differing} of {Size} bytes differ ({Percent:F4} %): {Dynamic} in dynamic sites in a legal state ("
        + string.Join(", ", DynamicByKind.OrderBy(k => k.Key).Select(k => $"{k.Key} {k.Value}")) + $"), {UnexplainedBytes} unexplained";
}

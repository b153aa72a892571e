using System.Globalization;
using System.IO.Compression;
using Altpatch.Images;
using Altpatch.Images.Boot;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// The committed ground truth of the kernel's own boot-time patching (tests/data/groundtruth/&lt;image&gt;/&lt;cpu&gt;-smp&lt;N&gt;.*):
/// the guest's /proc/cpuinfo and the final bytes of every patch site read from the QEMU dump
/// (<c>.sites.gz</c>, written by tools/groundtruth/gtcheck.py --write-truth).
/// </summary>
internal static class GroundTruth
{
    public static string Dir => Path.Combine(TestPaths.RepoRoot ?? ".", "tests", "data", "groundtruth");

    /// <summary>Every configuration with a truth file: ("6.1.0-50-cloud-amd64", "Icelake-Server-smp1").</summary>
    public static IEnumerable<(string Image, string Config)> Configurations()
    {
        if (!Directory.Exists(Dir))
            yield break;
        foreach (var imageDir in Directory.GetDirectories(Dir).Order(StringComparer.Ordinal))
        {
            foreach (var f in Directory.GetFiles(imageDir, "*.sites.gz").Order(StringComparer.Ordinal))
                yield return (Path.GetFileName(imageDir), Path.GetFileName(f)[..^".sites.gz".Length]);
        }
    }

    public static KernelImage Image(string image) => image switch
    {
        "6.1.0-50-cloud-amd64" => Images.RealImages.CloudAmd64,
        "6.1.0-50-686" => Images.RealImages.I386,
        _ => throw new ArgumentException(image, nameof(image)),
    };

    public static string CpuInfo(string image, string config) => File.ReadAllText(Path.Combine(Dir, image, config + ".cpuinfo"));

    public static int Smp(string config) => int.Parse(config[(config.LastIndexOf("-smp", StringComparison.Ordinal) + 4)..], CultureInfo.InvariantCulture);

    /// <summary>The description the ground-truth boot had: its cpuinfo and -smp.</summary>
    public static KernelCpuDescription Description(string image, string config) =>
        KernelCpuDescription.FromCpuInfo(CpuInfo(image, config)) with { Cpus = Smp(config) };

    /// <summary>A site's final bytes; null entries are bytes another boot-time writer changed (not compared).</summary>
    public sealed record Truth(Dictionary<(KernelSiteKind, int), byte?[]> Changed, Dictionary<KernelSiteKind, int> Totals);

    public static Truth Read(string image, string config) => ReadFile(Path.Combine(Dir, image, config + ".sites.gz"));

    /// <summary>Reads a <c>.sites.gz</c> file (the first matrix's flat files, or a configuration's <c>panic.sites.gz</c>).</summary>
    public static Truth ReadFile(string path)
    {
        using var gz = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        using var reader = new StreamReader(gz);
        var changed = new Dictionary<(KernelSiteKind, int), byte?[]>();
        var totals = new Dictionary<KernelSiteKind, int>();
        KernelSiteKind kind = default;
        int prev = -1;
        for (string? line; (line = reader.ReadLine()) is not null;)
        {
            if (line.Length == 0 || line[0] == '#')
                continue;
            var parts = line.Split(' ');
            if (parts[0] == "kind")
            {
                kind = parts[1] switch
                {
                    "alt" => KernelSiteKind.Alternative,
                    "para" => KernelSiteKind.Paravirt,
                    "lock" => KernelSiteKind.SmpLock,
                    "retpoline" => KernelSiteKind.Retpoline,
                    "return" => KernelSiteKind.Return,
                    "call" => KernelSiteKind.CallSite,
                    "endbr" => KernelSiteKind.Endbr,
                    "runtime_const" => KernelSiteKind.RuntimeConst,
                    _ => throw new InvalidDataException(line),
                };
                totals[kind] = int.Parse(parts[2], CultureInfo.InvariantCulture);
                prev = -1;
                continue;
            }
            int index = prev + int.Parse(parts[0], CultureInfo.InvariantCulture);
            prev = index;
            var hex = parts[1];
            var bytes = new byte?[hex.Length / 2];
            for (int i = 0; i < bytes.Length; i++)
                bytes[i] = hex[2 * i] == '?' ? null : byte.Parse(hex.AsSpan(2 * i, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            changed[(kind, index)] = bytes;
        }
        return new Truth(changed, totals);
    }

    /// <summary>Per kind: sites compared, sites matched, and the first mismatches (described).</summary>
    public sealed record Comparison(Dictionary<KernelSiteKind, (int Total, int Matched)> ByKind, List<string> Mismatches)
    {
        public bool AllMatch => ByKind.Values.All(v => v.Total == v.Matched);

        /// <summary>Sites that differ but that a writer after boot decides (counted as matched), per kind.</summary>
        public Dictionary<KernelSiteKind, int> Dynamic { get; } = [];

        public override string ToString() =>
            string.Join(", ", ByKind.Select(kv => $"{kv.Key} {kv.Value.Matched}/{kv.Value.Total}" + (Dynamic.TryGetValue(kv.Key, out int d) ? $" ({d} dynamic)" : "")))
            + (Mismatches.Count > 0 ? "; " + string.Join("; ", Mismatches.Take(10)) : "");
    }

    /// <summary>Compares every site of a patch result with the truth: listed sites byte for byte (except foreign
    /// bytes), unlisted ones must still hold the image's original bytes.</summary>
    public static Comparison Compare(KernelPatchResult result, Truth truth, Func<KernelSiteOutcome, bool>? dynamic = null)
    {
        var byKind = new Dictionary<KernelSiteKind, (int Total, int Matched)>();
        var bad = new List<string>();
        var dyn = new Dictionary<KernelSiteKind, int>();
        foreach (var s in result.Sites())
        {
            byKind.TryGetValue(s.Kind, out var c);
            bool ok;
            var after = s.After.Span;
            if (truth.Changed.TryGetValue((s.Kind, s.Index), out var want))
            {
                ok = want.Length == after.Length;
                for (int i = 0; ok && i < want.Length; i++)
                    ok = want[i] is not { } b || b == after[i];
            }
            else
                ok = after.SequenceEqual(s.Before.Span);
            if (!ok && dynamic is not null && dynamic(s))
            {
                ok = true;
                dyn[s.Kind] = dyn.GetValueOrDefault(s.Kind) + 1;
            }
            byKind[s.Kind] = (c.Total + 1, c.Matched + (ok ? 1 : 0));
            if (!ok && bad.Count < 50)
            {
                string expected = want is null ? Convert.ToHexStringLower(s.Before.Span) : string.Concat(want.Select(b => b is { } x ? x.ToString("x2", CultureInfo.InvariantCulture) : "??"));
                bad.Add($"{s.Kind}[{s.Index}] 0x{s.Address:x}: expected {expected}, got {Convert.ToHexStringLower(after)} (writers {string.Join(",", s.Writers)})");
            }
        }
        foreach (var (kind, total) in truth.Totals)
        {
            byKind.TryGetValue(kind, out var c);
            if (c.Total != total)
                bad.Add($"{kind}: the image has {c.Total} sites, the truth file {total}");
        }
        var comparison = new Comparison(byKind, bad);
        foreach (var (k, n) in dyn)
            comparison.Dynamic[k] = n;
        return comparison;
    }
}

using System.Globalization;
using System.Text.Json;
using Altpatch.Images;
using ZstdSharp;

namespace Altpatch.Tests.Verify;

/// <summary>
/// The full ground-truth dumps of running kernels (tools/groundtruth, /work/gt-cache/&lt;image&gt;/&lt;cfg&gt;/run.phys.zst
/// with run.json, run.core.zst, kallsyms.zst): on the machine that booted them only, never in CI. Tests that need
/// them skip with <see cref="NoCache"/>.
/// </summary>
internal static class GroundTruthDumps
{
    public const string NoCache = "the full ground-truth dumps (/work/gt-cache, or $GT_CACHE) are not on this machine; CI has only the committed truth files";

    public static string Cache => Environment.GetEnvironmentVariable("GT_CACHE") is { Length: > 0 } c ? c : "/work/gt-cache";

    /// <summary>Every configuration of an image with a run dump.</summary>
    public static IEnumerable<string> Configurations(string image)
    {
        var dir = Path.Combine(Cache, image);
        if (!Directory.Exists(dir))
            yield break;
        foreach (var d in Directory.GetDirectories(dir).Order(StringComparer.Ordinal))
        {
            if (File.Exists(Path.Combine(d, "run.phys.zst")) && File.Exists(Path.Combine(d, "run.json")))
                yield return Path.GetFileName(d);
        }
    }

    public static bool Has(string image, string config, string file = "run.phys.zst") => File.Exists(Path.Combine(Cache, image, config, file));

    public static void SkipUnless(string image, string config, string file = "run.phys.zst") =>
        Skip.IfNot(Has(image, config, file), $"{NoCache} ({image}/{config}/{file})");

    /// <summary>The sidecar (run.json).</summary>
    public static JsonElement Meta(string image, string config, string tag = "run")
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Cache, image, config, tag + ".json")));
        return doc.RootElement.Clone();
    }

    public static ulong Hex(JsonElement meta, string key) =>
        ulong.Parse(meta.GetProperty(key).GetString()!.AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    /// <summary>The dump's bytes: byte 0 = link_virt_base + kaslr_delta.</summary>
    public static byte[] Dump(string image, string config, string tag = "run") => Decompress(Path.Combine(Cache, image, config, tag + ".phys.zst"));

    /// <summary>The run's ELF core decompressed into a temporary file (deleted by the caller).</summary>
    public static string CoreFile(string image, string config)
    {
        var tmp = Path.Combine(Path.GetTempPath(), $"altpatch-core-{image}-{config}-{Environment.ProcessId}-{Guid.NewGuid():N}.core");
        using var input = File.OpenRead(Path.Combine(Cache, image, config, "run.core.zst"));
        using var z = new DecompressionStream(input);
        using var output = File.Create(tmp);
        z.CopyTo(output);
        return tmp;
    }

    public static byte[] Decompress(string path)
    {
        using var input = File.OpenRead(path);
        using var z = new DecompressionStream(input);
        using var ms = new MemoryStream();
        z.CopyTo(ms);
        return ms.ToArray();
    }

    /// <summary>The guest's /proc/kallsyms of the run.</summary>
    public static string Kallsyms(string image, string config) =>
        System.Text.Encoding.UTF8.GetString(Decompress(Path.Combine(Cache, image, config, "kallsyms.zst")));

    /// <summary>The image file a ground-truth image name was booted from: the shared ones (CI), or the untuned -amd64
    /// flavour from /work/debs (this machine only).</summary>
    public static string? ImagePath(string image) => image switch
    {
        "6.1.0-50-cloud-amd64" => TestPaths.CloudAmd64,
        "6.1.0-50-686" => TestPaths.I386,
        "6.12.118+deb12-cloud-amd64" => Path.Combine(TestPaths.SharedLinux, "vmlinuz-6.12.118+deb12-cloud-amd64"),
        // the untuned flavours: this machine's Debian packages (../debs/x beside the repository), not in CI
        _ => Path.GetFullPath(Path.Combine(TestPaths.SharedLinux, "..", "..", "debs", "x", $"linux-image-{image}-unsigned", "boot", $"vmlinuz-{image}")),
    } is { } p && File.Exists(p) ? p : null;

    private static readonly Dictionary<string, KernelImage> Images = [];

    public static KernelImage Image(string image)
    {
        lock (Images)
        {
            if (Images.TryGetValue(image, out var img))
                return img;
            var path = ImagePath(image);
            Skip.If(path is null, $"the image {image} is not on this machine");
            return Images[image] = KernelImage.Open(path!);
        }
    }
}

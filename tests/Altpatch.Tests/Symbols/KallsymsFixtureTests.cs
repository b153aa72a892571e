using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using Altpatch.Images;

namespace Altpatch.Tests.Symbols;

/// <summary>
/// CI has the shared images but no System.map, so a compact fixture per image stands in for it:
/// <c>tests/data/kallsyms/RELEASE.txt.gz</c> holds the number of symbols, the SHA-256 of the whole kallsyms list as
/// System.map lines in kallsyms order, and every 300th symbol plus the symbols the boot passes need, each with
/// address and type. The fixture is derived from the build's System.map by <see cref="KallsymsRules"/>, never from
/// the decoder: <see cref="Fixture_is_what_the_System_map_gives"/> recomputes it from the System.map wherever that
/// file is present (set ALTPATCH_WRITE_FIXTURES=1 to write it). So a decode that matches the fixture's hash equals
/// the System.map's kallsyms list exactly, and the named addresses show which symbols a mismatch is about.
/// </summary>
public class KallsymsFixtureTests
{
    public static TheoryData<string> Shared => new(SymbolImage.Shared.Select(i => i.Id));

    /// <summary>Symbols always listed in the fixture (what issue 8's passes look up), where the build has them.</summary>
    private static readonly string[] Named =
    [
        "_text", "_stext", "_etext", "_sinittext", "_einittext", "__init_begin", "__init_end", "_end",
        "__per_cpu_start", "__per_cpu_end", "__start_mcount_loc", "__stop_mcount_loc", "__start___jump_table",
        "__stop___jump_table", "__start_static_call_sites", "__stop_static_call_sites", "__start_static_call_tramp_key",
        "__stop_static_call_tramp_key", "ftrace_caller", "ftrace_regs_caller", "__fentry__", "do_one_initcall",
        "kallsyms_num_syms", "kallsyms_names", "kallsyms_token_table",
    ];

    private static string FixturePath(SymbolImage image) =>
        Path.Combine(TestPaths.RepoRoot ?? ".", "tests", "data", "kallsyms", $"{image.Release}.txt.gz");

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void Decoded_symbols_match_the_fixture(string id)
    {
        var image = SymbolImage.Get(id);
        var symbols = image.Open().Symbols;
        var fixture = Read(FixturePath(image));
        Assert.Equal(fixture.Count, symbols.Count);
        Assert.Equal(fixture.Sha256, Hash(symbols.All, image.Open().PointerSize));
        Assert.True(fixture.Samples.Count > 100);
        foreach (var (index, sym) in fixture.Samples)
            Assert.Equal(sym, symbols.All[index]);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void Fixture_is_what_the_System_map_gives(string id)
    {
        var image = SymbolImage.Get(id);
        string map = image.ReadSystemMap();
        var fileOrder = map.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l =>
        {
            var p = l.Split(' ');
            return new KernelSymbol(p[2], Convert.ToUInt64(p[0], 16), p[1][0]);
        }).ToList();
        var expected = KallsymsRules.Expected(fileOrder, image.Linux612,
            image.Config("CONFIG_KALLSYMS_ALL"), image.Config("CONFIG_KALLSYMS_ABSOLUTE_PERCPU"));
        int pointerSize = image.Release.EndsWith("686", StringComparison.Ordinal) ? 4 : 8;
        string text = Write(image, expected, pointerSize);
        string path = FixturePath(image);
        if (Environment.GetEnvironmentVariable("ALTPATCH_WRITE_FIXTURES") == "1")
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            using var gz = new GZipStream(File.Create(path), CompressionLevel.SmallestSize);
            gz.Write(Encoding.UTF8.GetBytes(text));
        }
        Assert.Equal(text, ReadText(path));
    }

    private static string Write(SymbolImage image, List<KernelSymbol> expected, int pointerSize)
    {
        var sb = new StringBuilder();
        sb.Append($"# kallsyms of vmlinuz-{image.Release}, derived from System.map-{image.Release} by the rules of its scripts/kallsyms.c\n");
        sb.Append("# (tests/Altpatch.Tests/Symbols/KallsymsRules.cs); lines: INDEX ADDRESS TYPE NAME, INDEX in kallsyms order\n");
        sb.Append($"count {expected.Count}\n");
        sb.Append($"sha256 {Hash(expected, pointerSize)}\n");
        var named = new HashSet<string>(Named, StringComparer.Ordinal);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < expected.Count; i++)
        {
            var s = expected[i];
            if (i % 300 == 0 || (named.Contains(s.Name) && seen.Add(s.Name)))
                sb.Append($"{i} {s.ToSystemMapLine(pointerSize)}\n");
        }
        return sb.ToString();
    }

    /// <summary>SHA-256 of the System.map lines ("%016x %c %s\n", or %08x for i386) of the symbols in this order.</summary>
    internal static string Hash(IEnumerable<KernelSymbol> symbols, int pointerSize)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var s in symbols)
            sha.AppendData(Encoding.UTF8.GetBytes(s.ToSystemMapLine(pointerSize) + "\n"));
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    private static string ReadText(string path)
    {
        Assert.True(File.Exists(path), $"{path}: the fixture is missing");
        using var gz = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        using var r = new StreamReader(gz, Encoding.UTF8);
        return r.ReadToEnd();
    }

    private static (int Count, string Sha256, List<(int Index, KernelSymbol Symbol)> Samples) Read(string path)
    {
        int count = -1;
        string sha = "";
        var samples = new List<(int, KernelSymbol)>();
        foreach (var line in ReadText(path).Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.StartsWith('#'))
                continue;
            var p = line.Split(' ');
            if (p[0] == "count")
                count = int.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture);
            else if (p[0] == "sha256")
                sha = p[1];
            else
                samples.Add((int.Parse(p[0], System.Globalization.CultureInfo.InvariantCulture), new KernelSymbol(p[3], Convert.ToUInt64(p[1], 16), p[2][0])));
        }
        return (count, sha, samples);
    }
}

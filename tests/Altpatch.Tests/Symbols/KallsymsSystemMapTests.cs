using Altpatch.Images;

namespace Altpatch.Tests.Symbols;

/// <summary>
/// The decoded kallsyms of each real kernel equal its build's System.map, symbol for symbol (name, address, type) and
/// in kallsyms' own order, except for exactly what <c>scripts/kallsyms</c> of that version leaves out or changes
/// (<see cref="KallsymsRules"/>). Runs where the System.map is on the machine; CI checks the committed fixture
/// instead (<see cref="KallsymsFixtureTests"/>).
/// </summary>
public class KallsymsSystemMapTests
{
    public static TheoryData<string> Images => new(SymbolImage.Every.Select(i => i.Id));

    [SkippableTheory]
    [MemberData(nameof(Images))]
    public void Decoded_symbols_equal_the_System_map_minus_what_kallsyms_leaves_out(string id)
    {
        var image = SymbolImage.Get(id);
        var map = KernelSymbols.FromSystemMap(image.ReadSystemMap(), Path.GetFileName(image.SystemMapPath!));
        var img = image.Open();
        var decoded = img.Symbols;
        var expected = KallsymsRules.Expected(FileOrder(image.SystemMapPath!), image.Linux612,
            image.Config("CONFIG_KALLSYMS_ALL"), image.Config("CONFIG_KALLSYMS_ABSOLUTE_PERCPU"));

        Assert.Equal(expected.Count, decoded.Count);
        for (int i = 0; i < expected.Count; i++)
        {
            if (expected[i] != decoded.All[i])
                Assert.Fail($"{id}: symbol {i}: expected {expected[i]}, decoded {decoded.All[i]}");
        }
        Assert.True(map.Count > decoded.Count);
    }

    /// <summary>The System.map in file order (FromSystemMap sorts stably by address, which for a System.map is the same).</summary>
    private static List<KernelSymbol> FileOrder(string path) =>
        File.ReadLines(path).Where(l => l.Length > 0).Select(l =>
        {
            var p = l.Split(' ');
            return new KernelSymbol(p[2], Convert.ToUInt64(p[0], 16), p[1][0]);
        }).ToList();
}

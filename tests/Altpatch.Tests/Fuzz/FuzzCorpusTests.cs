using Altpatch.Fuzz;

namespace Altpatch.Tests.Fuzz;

/// <summary>
/// The fuzzers' findings as regression tests: every input kept under <c>tests/data/fuzz/</c> (<c>crashes/TARGET</c>:
/// inputs that once crashed a reader, <c>corpus/TARGET</c>: the corpus the fuzzers grew) goes through its target,
/// uninstrumented, and may only be refused with the reader's own exception type. Then each corpus input is mutated
/// a few hundred times, deterministically (flips, cuts, splices): a bounded fuzz smoke that needs no AFL.
/// </summary>
public class FuzzCorpusTests
{
    public static TheoryData<string> Targets => [.. FuzzTargets.All.Select(t => t.Name)];

    private static string DataDir => Path.Combine(TestPaths.RepoRoot ?? ".", "tests", "data", "fuzz");

    private static List<string> Inputs(string target, string kind)
    {
        var dir = Path.Combine(DataDir, kind, target);
        return Directory.Exists(dir) ? [.. Directory.GetFiles(dir).Order(StringComparer.Ordinal)] : [];
    }

    private static FuzzTarget Target(string name)
    {
        var t = FuzzTargets.Get(name);
        Skip.If(t.NeedsSharedImages && !TestPaths.HaveSharedImages, TestPaths.NoSharedImages);
        return t;
    }

    [SkippableTheory]
    [MemberData(nameof(Targets))]
    public void Every_kept_crash_and_corpus_input_is_refused_cleanly(string target)
    {
        var t = Target(target);
        var files = Inputs(target, "crashes").Concat(Inputs(target, "corpus")).ToList();
        var failures = new List<string>();
        foreach (var f in files)
        {
            try
            {
                t.Execute(File.ReadAllBytes(f));
            }
            catch (Exception e)
            {
                failures.Add($"{Path.GetFileName(f)}: {e.GetType().Name}: {e.Message}");
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [SkippableTheory]
    [MemberData(nameof(Targets))]
    public void Mutations_of_the_corpus_are_refused_cleanly(string target)
    {
        var t = Target(target);
        var corpus = Inputs(target, "corpus").Concat(Inputs(target, "crashes")).Select(File.ReadAllBytes).Where(b => b.Length > 0).ToList();
        Skip.If(corpus.Count == 0, $"no corpus for {target} under tests/data/fuzz/corpus");
        var rng = new Random(12345);
        for (int i = 0; i < 300; i++)
        {
            var input = (byte[])corpus[rng.Next(corpus.Count)].Clone();
            switch (rng.Next(4))
            {
                case 0:
                    for (int k = rng.Next(1, 8); k > 0; k--)
                        input[rng.Next(input.Length)] ^= (byte)(1 << rng.Next(8));
                    break;
                case 1:
                    input = input.AsSpan(0, rng.Next(input.Length)).ToArray();
                    break;
                case 2:
                    input[rng.Next(input.Length)] = (byte)(rng.Next(2) == 0 ? 0xff : 0x00);
                    break;
                default:
                    var other = corpus[rng.Next(corpus.Count)];
                    int at = rng.Next(input.Length), from = rng.Next(other.Length);
                    int n = Math.Min(input.Length - at, Math.Min(other.Length - from, rng.Next(1, 64)));
                    other.AsSpan(from, n).CopyTo(input.AsSpan(at));
                    break;
            }
            try
            {
                t.Execute(input);
            }
            catch (Exception e)
            {
                var path = Path.Combine(Path.GetTempPath(), $"altpatch-fuzz-{target}-{i}");
                File.WriteAllBytes(path, input);
                Assert.Fail($"{target}: mutation {i} ({path}): {e.GetType().Name}: {e.Message}");
            }
        }
    }
}

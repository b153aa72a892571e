using SharpFuzz;

namespace Altpatch.Fuzz;

/// <summary>
/// The fuzzing driver (docs/fuzzing.md):
/// <code>
/// Altpatch.Fuzz list                      the targets, one per line: name and what it covers
/// Altpatch.Fuzz run TARGET                under afl-fuzz (SharpFuzz's in-process fork server); alone: one input from stdin
/// Altpatch.Fuzz replay TARGET PATH…       every file (or every file in each directory) through the target; exit 1 on a crash
/// Altpatch.Fuzz seed DIR                  writes the seed corpus, DIR/TARGET/*, from the real images and small synthetic inputs
/// </code>
/// </summary>
public static class Program
{
    /// <summary>Entry point.</summary>
    public static int Main(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        switch (args)
        {
            case ["list"]:
                foreach (var t in FuzzTargets.All)
                    Console.WriteLine($"{t.Name,-20} {t.Description}");
                return 0;
            case ["run", var name]:
            {
                // Altpatch.dll is instrumented: none of its code may run before Fuzzer.Run sets up the coverage map,
                // so the frame of a table target is loaded by the first input (a slow first execution).
                var target = FuzzTargets.Get(name);
                bool warm = !target.NeedsSharedImages;
                Fuzzer.Run(stream =>
                {
                    if (!warm)
                    {
                        target.Execute([0]);
                        target.Execute([1]);
                        warm = true;
                    }
                    using var ms = new MemoryStream();
                    stream.CopyTo(ms);
                    target.Execute(ms.ToArray());
                });
                return 0;
            }
            case ["replay", var name, .. var paths]:
            {
                var target = FuzzTargets.Get(name);
                int crashes = 0, inputs = 0;
                foreach (var file in paths.SelectMany(p => Directory.Exists(p) ? Directory.GetFiles(p, "*", SearchOption.AllDirectories) : [p]).Order(StringComparer.Ordinal))
                {
                    inputs++;
                    try
                    {
                        target.Execute(File.ReadAllBytes(file));
                    }
                    catch (Exception e)
                    {
                        crashes++;
                        Console.WriteLine($"{file}: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
                        Console.WriteLine(e.StackTrace);
                    }
                }
                Console.WriteLine($"{name}: {inputs} inputs, {crashes} crashes");
                return crashes == 0 ? 0 : 1;
            }
            case ["seed", var dir]:
                SeedCorpus.Write(dir);
                return 0;
            default:
                Console.Error.WriteLine("usage: Altpatch.Fuzz list | run TARGET | replay TARGET PATH... | seed DIR");
                return 2;
        }
    }
}

using System.Diagnostics;
using System.Globalization;

namespace Altpatch.Bench;

/// <summary>
/// A check of the paravirt and SMP lock benchmarks that resists a noisy shared machine: the same
/// emitted loops, run round-robin in a shuffled order for many rounds, so that load from other
/// processes falls on every form alike; reports each form's minimum and median time per operation
/// and their ratios to the group's baseline (the first form of the group).
/// Run: <c>dotnet run -c Release --project bench/Altpatch.Bench -- --interleaved [rounds]</c>.
/// </summary>
public static class Interleaved
{
    /// <summary>One form: its group, name and a call that runs its loop n times.</summary>
    public sealed record Form(string Group, string Name, Func<long, long> Run);

    private const long N = 100_000;

    /// <summary>Runs every form of both benchmarks for <paramref name="rounds"/> rounds and prints a Markdown table.</summary>
    public static void Run(int rounds, TextWriter output)
    {
        ArgumentNullException.ThrowIfNull(output);
        var pv = new ParavirtBench();
        var locks = new SmpLockBench();
        pv.Setup();
        locks.Setup();
        try
        {
            var forms = pv.Forms().Concat(locks.Forms()).ToArray();
            var samples = forms.Select(_ => new List<double>(rounds)).ToArray();
            var rng = new Random(42);
            var order = Enumerable.Range(0, forms.Length).ToArray();
            for (int r = 0; r < 20; r++) foreach (var f in forms) f.Run(N); // warm up
            for (int r = 0; r < rounds; r++)
            {
                rng.Shuffle(order);
                foreach (int i in order)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    forms[i].Run(N);
                    long t1 = Stopwatch.GetTimestamp();
                    samples[i].Add((t1 - t0) * 1e9 / Stopwatch.Frequency / N);
                }
            }
            output.WriteLine($"{rounds} rounds x {N:N0} operations per form, shuffled round-robin; ns per operation");
            output.WriteLine();
            output.WriteLine("| Group | Form | Min ns | Median ns | Min ratio | Median ratio |");
            output.WriteLine("|---|---|---:|---:|---:|---:|");
            string? group = null;
            double baseMin = 0, baseMedian = 0;
            for (int i = 0; i < forms.Length; i++)
            {
                var s = samples[i];
                s.Sort();
                double min = s[0], median = s[s.Count / 2];
                if (forms[i].Group != group)
                {
                    group = forms[i].Group;
                    baseMin = min;
                    baseMedian = median;
                }
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {forms[i].Group} | {forms[i].Name} | {min:F3} | {median:F3} | {min / baseMin:F3} | {median / baseMedian:F3} |"));
            }
        }
        finally
        {
            pv.Cleanup();
            locks.Cleanup();
        }
    }
}

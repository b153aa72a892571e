using System.Diagnostics;
using System.Globalization;
using Altpatch.Images.Boot;

namespace Altpatch.Cli;

/// <summary>
/// With <c>ALTPATCH_PROFILE=1</c> in the environment, a line on standard error per step of a kernel command: wall and CPU
/// time, bytes allocated, garbage collections, GC heap and the process's peak resident set so far
/// (docs/benchmarks.md: what the profile of the kernel commands showed). Without it, nothing.
/// </summary>
internal sealed class StepProfile
{
    private readonly Stopwatch wall = Stopwatch.StartNew();
    private TimeSpan cpu;
    private long allocated;
    private readonly int[] collections = new int[3];

    private string? pass;                              // the boot pass running, when Passes() reports them
    private readonly Stopwatch passWall = new();
    private TimeSpan passCpu;
    private long passAllocated;
    private readonly int[] passCollections = new int[3];

    private StepProfile() => Mark();

    /// <summary>A profile started now, or null when <c>ALTPATCH_PROFILE</c> is not set.</summary>
    public static StepProfile? Start() => Enabled ? new StepProfile() : null;

    /// <summary>Whether <c>ALTPATCH_PROFILE</c> is set (and not 0).</summary>
    public static bool Enabled => Environment.GetEnvironmentVariable("ALTPATCH_PROFILE") is { Length: > 0 } v && v != "0";

    /// <summary>Writes the line for the step that ended now, and starts the next.</summary>
    public void Step(string name)
    {
        EndPass();
        Line(name, wall, cpu, allocated, collections);
        Mark();
    }

    /// <summary>A progress for the boot patcher: a line per pass (its planning and writing), and one for the work of the
    /// step before the first pass ("setup + text tables": the boot CPU, the text tables, the wait for kallsyms).</summary>
    public IProgress<BootPass> Passes()
    {
        pass = "(setup + text tables)";
        MarkPass();
        return new PassReporter(this);
    }

    private sealed class PassReporter(StepProfile profile) : IProgress<BootPass>
    {
        public void Report(BootPass value)
        {
            profile.EndPass();
            profile.pass = value.ToString();
            profile.MarkPass();
        }
    }

    private void EndPass()
    {
        if (pass is not null)
            Line("  · " + pass, passWall, passCpu, passAllocated, passCollections);
        pass = null;
    }

    private static void Line(string name, Stopwatch since, TimeSpan cpuAt, long allocatedAt, int[] collectionsAt)
    {
        var (dWall, dCpu, dAlloc) = (since.Elapsed, Process.GetCurrentProcess().TotalProcessorTime - cpuAt, GC.GetTotalAllocatedBytes() - allocatedAt);
        var gcs = string.Join('/', Enumerable.Range(0, 3).Select(g => GC.CollectionCount(g) - collectionsAt[g]));
        using var self = Process.GetCurrentProcess();
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"profile: {name,-20} wall {dWall.TotalMilliseconds,7:F1} ms  cpu {dCpu.TotalMilliseconds,7:F1} ms  alloc {dAlloc / 1048576.0,7:F1} MiB  gc0/1/2 {gcs,-7}  heap {GC.GetGCMemoryInfo().HeapSizeBytes / 1048576.0,6:F1} MiB  peak rss {self.PeakWorkingSet64 / 1048576.0,6:F1} MiB"));
    }

    private void Mark() => Snapshot(wall, ref cpu, ref allocated, collections);

    private void MarkPass() => Snapshot(passWall, ref passCpu, ref passAllocated, passCollections);

    private static void Snapshot(Stopwatch w, ref TimeSpan cpuAt, ref long allocatedAt, int[] collectionsAt)
    {
        w.Restart();
        cpuAt = Process.GetCurrentProcess().TotalProcessorTime;
        allocatedAt = GC.GetTotalAllocatedBytes();
        for (int g = 0; g < 3; g++)
            collectionsAt[g] = GC.CollectionCount(g);
    }
}

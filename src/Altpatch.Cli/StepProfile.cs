using System.Diagnostics;
using System.Globalization;

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

    private StepProfile() => Mark();

    /// <summary>A profile started now, or null when <c>ALTPATCH_PROFILE</c> is not set.</summary>
    public static StepProfile? Start() => Enabled ? new StepProfile() : null;

    /// <summary>Whether <c>ALTPATCH_PROFILE</c> is set (and not 0).</summary>
    public static bool Enabled => Environment.GetEnvironmentVariable("ALTPATCH_PROFILE") is { Length: > 0 } v && v != "0";

    /// <summary>Writes the line for the step that ended now, and starts the next.</summary>
    public void Step(string name)
    {
        var (dWall, dCpu, dAlloc) = (wall.Elapsed, Process.GetCurrentProcess().TotalProcessorTime - cpu, GC.GetTotalAllocatedBytes() - allocated);
        var gcs = string.Join('/', Enumerable.Range(0, 3).Select(g => GC.CollectionCount(g) - collections[g]));
        using var self = Process.GetCurrentProcess();
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"profile: {name,-20} wall {dWall.TotalMilliseconds,7:F1} ms  cpu {dCpu.TotalMilliseconds,7:F1} ms  alloc {dAlloc / 1048576.0,7:F1} MiB  gc0/1/2 {gcs,-7}  heap {GC.GetGCMemoryInfo().HeapSizeBytes / 1048576.0,6:F1} MiB  peak rss {self.PeakWorkingSet64 / 1048576.0,6:F1} MiB"));
        Mark();
    }

    private void Mark()
    {
        wall.Restart();
        cpu = Process.GetCurrentProcess().TotalProcessorTime;
        allocated = GC.GetTotalAllocatedBytes();
        for (int g = 0; g < 3; g++)
            collections[g] = GC.CollectionCount(g);
    }
}

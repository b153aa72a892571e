using System.Diagnostics;
using System.Globalization;
using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using static Altpatch.Native.LiveCode;

namespace Altpatch.Bench;

/// <summary>
/// <c>-- --live-interleaved [rounds] [batches]</c>: a one-site <see cref="LivePoker"/> batch beside its floor, round-robin
/// in a shuffled order (load on a shared machine falls on every form alike), while two threads call the patched
/// function in a loop, as in <see cref="LivePokerBench"/>:
/// <list type="bullet">
/// <item>Live: <c>LivePoker.Apply</c> of the one-site plan (alternately forward and back);</item>
/// <item>Live, profiled: the same with <see cref="LivePoker.ProfileStamps"/> set, for the breakdown of where a batch's
/// time goes (time-stamp counter readings in <c>Apply</c> and in the batch routine);</item>
/// <item>Floor: the same flip as bare C# on a site of the same bytes that no thread runs (an int3 over its first byte
/// through the RW alias, membarrier(SYNC_CORE), the tail, membarrier, the first byte, membarrier, one cpuid): the
/// kernel protocol's system calls and nothing else; the same without the cpuid (the three membarriers alone); and
/// without the last membarrier, which the live poker no longer makes for sites longer than one byte (docs/live.md).</item>
/// </list>
/// Every batch is timed on its own: prints the mean, median, 90th and 99th percentile and min per batch, the min of the
/// rounds' means, the share of batches above 20 µs and of the time they took, how often the poking thread was preempted
/// (its involuntary context switches), and the breakdown (median and mean per step), in µs.
/// </summary>
internal static unsafe class LiveInterleaved
{
    private static readonly byte[] ImmA = [0xB8, 0x11, 0x11, 0x11, 0x11];
    private static readonly byte[] ImmB = [0xB8, 0x22, 0x22, 0x22, 0x22];

    public static void Run(int rounds, int batches, TextWriter output)
    {
        using var code = ExecutableMemory.Allocate(4096, "bench-live");
        using var spare = ExecutableMemory.Allocate(4096, "bench-spare");
        foreach (var m in new[] { code, spare })
        {
            ImmA.CopyTo(m.Writable);
            m.Writable[ImmA.Length] = 0xC3;
        }
        CoreSync.SyncAllCores();
        var forward = new PatchPlan([new Poke(code.Address, ImmA, ImmB, new SiteRef(SiteKind.Raw, 0, "live"), "bench")]);
        var back = forward.Inverse();
        TrapHandler.Install();
        var tsc = TrapHandler.Code!;
        int stop = 0;
        ulong function = code.Address;
        var callers = new Thread[2];
        for (int t = 0; t < callers.Length; t++)
        {
            callers[t] = new Thread(() =>
            {
                long sink = 0;
                while (Volatile.Read(ref stop) == 0)
                    sink += ((delegate* unmanaged<int>)function)();
                GC.KeepAlive(sink);
            }) { IsBackground = true, Name = $"bench-caller-{t}" };
            callers[t].Start();
        }

        var live = new LivePoker();
        var profiled = new LivePoker();
        const int StampCount = (int)LivePoker.ApplyStamp.Size + 2; // + the bench's own readings before and after Apply
        ulong* stamps = stackalloc ulong[StampCount];
        profiled.ProfileStamps = stamps + 1;
        int total = rounds * batches;
        var profile = new ulong[total * StampCount];
        int profiledCount = 0;
        bool liveFlipped = false, spareFlipped = false;
        byte* rw = (byte*)spare.WritableAddress;
        void Floor(bool cpuid, bool last = true)
        {
            var next = spareFlipped ? ImmA : ImmB;
            rw[0] = 0xCC;
            Membarrier();
            next.AsSpan(1).CopyTo(new Span<byte>(rw + 1, next.Length - 1));
            Membarrier();
            rw[0] = next[0];
            if (last) Membarrier();
            if (cpuid) CoreSync.SerializeThisCore();
            spareFlipped = !spareFlipped;
        }
        (string Name, Action Body)[] forms =
        [
            ("Live: LivePoker.Apply, one site", () => { live.Apply(liveFlipped ? back : forward); liveFlipped = !liveFlipped; }),
            ("Live, profiled (the breakdown below)", () =>
            {
                stamps[0] = tsc.ReadTsc();
                profiled.Apply(liveFlipped ? back : forward);
                stamps[StampCount - 1] = tsc.ReadTsc();
                liveFlipped = !liveFlipped;
                if (profiledCount < total) new ReadOnlySpan<ulong>(stamps, StampCount).CopyTo(profile.AsSpan(profiledCount++ * StampCount));
            }),
            ("Floor: int3 + 3 membarrier + 1 cpuid", () => Floor(true)),
            ("Floor: int3 + 3 membarrier", () => Floor(false)),
            ("Floor: int3 + 2 membarrier (the live poker's count for these sites)", () => Floor(false, last: false)),
        ];
        var perBatch = forms.Select(_ => new List<double>(total)).ToArray();
        var roundMeans = forms.Select(_ => new List<double>(rounds)).ToArray();
        var preempted = new long[forms.Length];
        var random = new Random(14);
        // Warm up for a second at least: tiered compilation promotes the poker's methods after a delay, in the background.
        var warm = Stopwatch.StartNew();
        for (int w = 0; w < 200 || warm.ElapsedMilliseconds < 1000; w++)
            foreach (var f in forms) f.Body();
        profiledCount = 0;
        double tickUs = 1e6 / Stopwatch.Frequency;
        ulong tsc0 = tsc.ReadTsc();
        long sw0 = Stopwatch.GetTimestamp();
        for (int r = 0; r < rounds; r++)
        {
            foreach (int k in Enumerable.Range(0, forms.Length).OrderBy(_ => random.Next()))
            {
                var body = forms[k].Body;
                var list = perBatch[k];
                long switches = InvoluntarySwitches();
                long roundStart = Stopwatch.GetTimestamp(), last = roundStart;
                for (int i = 0; i < batches; i++)
                {
                    body();
                    long now = Stopwatch.GetTimestamp();
                    list.Add((now - last) * tickUs);
                    last = now;
                }
                roundMeans[k].Add((last - roundStart) * tickUs / batches);
                preempted[k] += InvoluntarySwitches() - switches;
            }
        }
        double tscPerUs = (tsc.ReadTsc() - tsc0) / ((Stopwatch.GetTimestamp() - sw0) * tickUs);
        Volatile.Write(ref stop, 1);
        foreach (var t in callers) t.Join();

        var inv = CultureInfo.InvariantCulture;
        string cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':')[1].Trim() ?? "?";
        output.WriteLine(string.Create(inv, $"CPU {cpu}, {Environment.ProcessorCount} CPUs, load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]}; {rounds} rounds of {batches} batches, 2 caller threads"));
        output.WriteLine("Per batch, µs:");
        output.WriteLine("| form | mean | median | p90 | p99 | min | min of round means | batches > 20 µs | their share of the time | poker preempted per 1000 batches |");
        output.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (int k = 0; k < forms.Length; k++)
        {
            var s = perBatch[k];
            double slow = s.Where(x => x > 20).Sum();
            s.Sort();
            output.WriteLine(string.Create(inv, $"| {forms[k].Name} | {s.Average():F2} | {Quantile(s, 0.5):F2} | {Quantile(s, 0.9):F2} | {Quantile(s, 0.99):F2} | {s[0]:F2} | {roundMeans[k].Min():F2} | {100.0 * s.Count(x => x > 20) / s.Count:F1}% | {100 * slow / s.Sum():F0}% | {1000.0 * preempted[k] / s.Count:F1} |"));
        }

        // The breakdown: the time between consecutive readings, per step.
        string[] steps =
        [
            "call, argument checks, membarrier check, memory lease, gate, install check",
            "validation (own code, registry or /proc/self/maps, old bytes), aliases",
            "interior points, known-site table, hazards",
            "descriptor and entries",
            "call into the batch routine",
            "rt_sigprocmask (block)",
            "step 1: int3 writes",
            "step 1: membarrier",
            "step 2: probe (skipped: one instruction)",
            "step 3: tail writes",
            "step 3: membarrier",
            "step 4: first-byte writes",
            "step 4: membarrier",
            "this core serialised",
            "rt_sigprocmask (restore)",
            "return, report",
            "lease release, return to the caller",
        ];
        // Readings in order: bench start, Locked, Validated, Prepared, Described, native 0..10, Returned, bench end.
        int[] order = [0, 1 + (int)LivePoker.ApplyStamp.Locked, 1 + (int)LivePoker.ApplyStamp.Validated, 1 + (int)LivePoker.ApplyStamp.Prepared,
            1 + (int)LivePoker.ApplyStamp.Described,
            .. Enumerable.Range(1 + (int)LivePoker.ApplyStamp.Native, (int)BatchStamp.Count),
            1 + (int)LivePoker.ApplyStamp.Returned, StampCount - 1];
        output.WriteLine();
        output.WriteLine(string.Create(inv, $"Breakdown of the profiled batches ({profiledCount}), µs (time-stamp counter at {tscPerUs:F0} per µs):"));
        output.WriteLine("| step | mean | median | p90 |");
        output.WriteLine("|---|---:|---:|---:|");
        var totals = new List<double>(profiledCount);
        for (int b = 0; b < profiledCount; b++) totals.Add((profile[b * StampCount + order[^1]] - profile[b * StampCount + order[0]]) / tscPerUs);
        for (int j = 0; j + 1 < order.Length; j++)
        {
            var d = new List<double>(profiledCount);
            for (int b = 0; b < profiledCount; b++)
            {
                var row = profile.AsSpan(b * StampCount, StampCount);
                d.Add((row[order[j + 1]] - row[order[j]]) / tscPerUs);
            }
            d.Sort();
            output.WriteLine(string.Create(inv, $"| {steps[j]} | {d.Average():F2} | {Quantile(d, 0.5):F2} | {Quantile(d, 0.9):F2} |"));
        }
        totals.Sort();
        output.WriteLine(string.Create(inv, $"| **whole Apply** | {totals.Average():F2} | {Quantile(totals, 0.5):F2} | {Quantile(totals, 0.9):F2} |"));
    }

    /// <summary>The calling thread's involuntary context switches so far (/proc/thread-self/status): times it was preempted.</summary>
    private static long InvoluntarySwitches()
    {
        foreach (string line in File.ReadLines("/proc/thread-self/status"))
            if (line.StartsWith("nonvoluntary_ctxt_switches:", StringComparison.Ordinal))
                return long.Parse(line.AsSpan("nonvoluntary_ctxt_switches:".Length).Trim(), CultureInfo.InvariantCulture);
        return 0;
    }

    private static double Quantile(List<double> sorted, double q) => sorted[Math.Min(sorted.Count - 1, (int)(q * sorted.Count))];

    private static void Membarrier()
    {
        if (Libc.Syscall(Sys.Membarrier, Sys.MembarrierPrivateExpeditedSyncCore, 0, 0) != 0)
            throw new InvalidOperationException("membarrier(SYNC_CORE) failed");
    }
}

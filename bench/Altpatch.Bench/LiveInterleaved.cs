using System.Diagnostics;
using System.Globalization;
using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Bench;

/// <summary>
/// <c>-- --live-interleaved [rounds] [batches]</c>: a one-site <see cref="LivePoker"/> batch beside its floor, round-robin
/// in a shuffled order (load on a shared machine falls on every form alike), while two threads call the patched
/// function in a loop, as in <see cref="LivePokerBench"/>:
/// <list type="bullet">
/// <item>Live: <c>LivePoker.Apply</c> of the one-site plan (alternately forward and back);</item>
/// <item>Floor: the same flip as bare C# on a site of the same bytes that no thread runs (an int3 over its first byte
/// through the RW alias, membarrier(SYNC_CORE), the tail, membarrier, the first byte, membarrier, one cpuid): the
/// protocol's system calls and nothing else;</item>
/// <item>Floor, cpuid per membarrier: the same with a cpuid before each membarrier, as the batch routine serialised
/// before this change.</item>
/// </list>
/// Prints the mean, median, min and standard deviation of the rounds' mean per batch, in µs.
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
        bool liveFlipped = false, spareFlipped = false;
        byte* rw = (byte*)spare.WritableAddress;
        void Floor(bool cpuidEach)
        {
            var next = spareFlipped ? ImmA : ImmB;
            rw[0] = 0xCC;
            if (cpuidEach) CoreSync.SerializeThisCore();
            Membarrier();
            next.AsSpan(1).CopyTo(new Span<byte>(rw + 1, next.Length - 1));
            if (cpuidEach) CoreSync.SerializeThisCore();
            Membarrier();
            rw[0] = next[0];
            CoreSync.SerializeThisCore();
            Membarrier();
            spareFlipped = !spareFlipped;
        }
        (string Name, Action Body)[] forms =
        [
            ("Live: LivePoker.Apply, one site", () => { live.Apply(liveFlipped ? back : forward); liveFlipped = !liveFlipped; }),
            ("Floor: int3 + 3 membarrier + 1 cpuid", () => Floor(false)),
            ("Floor, a cpuid per membarrier (the old batch routine's serialisation)", () => Floor(true)),
        ];
        var samples = forms.Select(_ => new List<double>()).ToArray();
        var random = new Random(14);
        for (int w = 0; w < 200; w++)
            foreach (var f in forms) f.Body();
        for (int r = 0; r < rounds; r++)
        {
            foreach (int k in Enumerable.Range(0, forms.Length).OrderBy(_ => random.Next()))
            {
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < batches; i++) forms[k].Body();
                samples[k].Add(sw.Elapsed.TotalMicroseconds / batches);
            }
        }
        Volatile.Write(ref stop, 1);
        foreach (var t in callers) t.Join();

        var inv = CultureInfo.InvariantCulture;
        string cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':')[1].Trim() ?? "?";
        output.WriteLine(string.Create(inv, $"CPU {cpu}, {Environment.ProcessorCount} CPUs, load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]}; {rounds} rounds of {batches} batches, 2 caller threads"));
        output.WriteLine("| form | mean µs | median µs | min µs | σ µs |");
        output.WriteLine("|---|---:|---:|---:|---:|");
        for (int k = 0; k < forms.Length; k++)
        {
            var s = samples[k];
            s.Sort();
            double mean = s.Average();
            double sd = Math.Sqrt(s.Sum(x => (x - mean) * (x - mean)) / s.Count);
            output.WriteLine(string.Create(inv, $"| {forms[k].Name} | {mean:F1} | {s[s.Count / 2]:F1} | {s[0]:F1} | {sd:F1} |"));
        }
    }

    private static void Membarrier()
    {
        if (Libc.Syscall(Sys.Membarrier, Sys.MembarrierPrivateExpeditedSyncCore, 0, 0) != 0)
            throw new InvalidOperationException("membarrier(SYNC_CORE) failed");
    }
}

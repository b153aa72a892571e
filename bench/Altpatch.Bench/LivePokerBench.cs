using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using BenchmarkDotNet.Attributes;

namespace Altpatch.Bench;

/// <summary>
/// The live poker's cost per batch: one batch of <see cref="Batch"/> sites switched per invocation (alternately
/// forward and back) while two background threads call every function of the batch in a loop.
/// <list type="bullet">
/// <item><see cref="Protect"/> (baseline): ProtectPoker in read-write-execute mode on the same plan. It
/// is not live-safe (a thread can fetch a half-written site); on these single-instruction sites a tear
/// only gives a wrong immediate, so the threads survive it. Its W^X mode would take execute away
/// from pages the threads are running.</item>
/// <item><see cref="Live"/>: LivePoker on the same plan (single instructions: the kernel's case, no
/// probe).</item>
/// <item><see cref="LiveMultiInstruction"/>: LivePoker on sites of three instructions (mov eax,1; ret;
/// nop and xor; inc; inc; ret): every batch also probes every thread until none is inside a site.
/// ProtectPoker has no counterpart here: the threads would crash.</item>
/// </list>
/// Per-batch latency = mean time; sites/s = <see cref="Batch"/> / mean time.
/// </summary>
[SimpleJob(launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class LivePokerBench
{
    private const int MaxSites = 4096;
    private const int Stride = 16;

    /// <summary>Sites per batch.</summary>
    [Params(1, 16, 256, 4096)]
    public int Batch { get; set; }

    private ExecutableMemory single = null!, multi = null!;
    private PatchPlan singleForward = PatchPlan.Empty, singleBack = PatchPlan.Empty;
    private PatchPlan multiForward = PatchPlan.Empty, multiBack = PatchPlan.Empty;
    private bool singleFlipped, multiFlipped;
    private readonly LivePoker live = new();
    private readonly ProtectPoker protect = new(ProtectPokerMode.ReadWriteExecute);
    private Thread[] callers = [];
    private int stop;

    private static readonly byte[] ImmA = [0xB8, 0x11, 0x11, 0x11, 0x11];
    private static readonly byte[] ImmB = [0xB8, 0x22, 0x22, 0x22, 0x22];
    private static readonly byte[] One = [0xB8, 1, 0, 0, 0, 0xC3, 0x90];
    private static readonly byte[] Two = [0x31, 0xC0, 0xFF, 0xC0, 0xFF, 0xC0, 0xC3];

    /// <summary>Emits the functions, builds the plans and starts the background callers.</summary>
    [GlobalSetup]
    public unsafe void Setup()
    {
        single = ExecutableMemory.Allocate(MaxSites * Stride, "bench-single");
        multi = ExecutableMemory.Allocate(MaxSites * Stride, "bench-multi");
        var s = new List<Poke>();
        var m = new List<Poke>();
        var functions = new List<ulong>();
        for (int i = 0; i < Batch; i++)
        {
            int off = i * Stride;
            ImmA.CopyTo(single.Writable[off..]);
            single.Writable[off + ImmA.Length] = 0xC3;
            One.CopyTo(multi.Writable[off..]);
            ulong fs = single.Address + (ulong)off, fm = multi.Address + (ulong)off;
            functions.Add(fs);
            functions.Add(fm);
            s.Add(new Poke(fs, ImmA, ImmB, new SiteRef(SiteKind.Raw, i, "single"), "bench"));
            m.Add(new Poke(fm, One, Two, new SiteRef(SiteKind.Raw, i, "multi"), "bench"));
        }
        CoreSync.TrySyncAllCores();
        singleForward = new PatchPlan(s);
        singleBack = singleForward.Inverse();
        multiForward = new PatchPlan(m);
        multiBack = multiForward.Inverse();
        TrapHandler.Install();

        var fns = functions.ToArray();
        callers = new Thread[2];
        for (int t = 0; t < callers.Length; t++)
        {
            callers[t] = new Thread(() =>
            {
                long sink = 0;
                while (Volatile.Read(ref stop) == 0)
                    foreach (ulong f in fns) sink += ((delegate* unmanaged<int>)f)();
                GC.KeepAlive(sink);
            }) { IsBackground = true, Name = $"bench-caller-{t}" };
            callers[t].Start();
        }
    }

    /// <summary>Stops the callers and frees the code.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        Volatile.Write(ref stop, 1);
        foreach (var t in callers) t.Join();
        single.Dispose();
        multi.Dispose();
    }

    /// <summary>ProtectPoker (RWX mode, not live-safe) switches the single-instruction sites.</summary>
    [Benchmark(Baseline = true)]
    public int Protect()
    {
        protect.Apply(singleFlipped ? singleBack : singleForward);
        singleFlipped = !singleFlipped;
        return Batch;
    }

    /// <summary>LivePoker switches the same single-instruction sites.</summary>
    [Benchmark]
    public int Live()
    {
        live.Apply(singleFlipped ? singleBack : singleForward);
        singleFlipped = !singleFlipped;
        return Batch;
    }

    /// <summary>LivePoker switches multi-instruction sites (int3 protocol plus the probe).</summary>
    [Benchmark]
    public int LiveMultiInstruction()
    {
        live.Apply(multiFlipped ? multiBack : multiForward);
        multiFlipped = !multiFlipped;
        return Batch;
    }
}

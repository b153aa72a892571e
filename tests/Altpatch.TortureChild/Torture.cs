using System.Diagnostics;
using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.TortureChild;

/// <summary>What one torture run saw.</summary>
/// <param name="Batches">Plans applied.</param>
/// <param name="MultiFlips">Multi-instruction sites switched (each batch of them switches every one).</param>
/// <param name="ImmediateFlips">Single-instruction sites switched.</param>
/// <param name="Calls">Calls made, per worker thread.</param>
/// <param name="Valid">Calls that returned one of the two valid results, per worker thread.</param>
/// <param name="Seen">How often each valid result was returned: [1, 2, 0x11111111, 0x22222222, 28, 118].</param>
/// <param name="Wrong">Calls that returned anything else.</param>
/// <param name="FirstWrong">The first wrong call, described, or null.</param>
/// <param name="Duration">Wall time of the flipping.</param>
/// <param name="ProbedBatches">Batches in which the live poker probed threads.</param>
/// <param name="Stalls">Batches after which no worker completed a pass within a second (starved of CPU, or hung).</param>
public sealed record TortureResult(long Batches, long MultiFlips, long ImmediateFlips, long[] Calls, long[] Valid, long[] Seen,
                                   long Wrong, string? FirstWrong, TimeSpan Duration, long ProbedBatches, long Stalls)
{
    /// <summary>Calls of all threads.</summary>
    public long TotalCalls => Calls.Sum();

    /// <summary>One line for logs.</summary>
    public override string ToString() =>
        $"batches={Batches} multi-flips={MultiFlips} imm-flips={ImmediateFlips} calls={TotalCalls} ({string.Join("+", Calls)}) " +
        $"seen=[1:{Seen[0]} 2:{Seen[1]} 0x11111111:{Seen[2]} 0x22222222:{Seen[3]} 28:{Seen[4]} 118:{Seen[5]}] wrong={Wrong} probed-batches={ProbedBatches} stalls={Stalls} " +
        $"duration={Duration.TotalSeconds:0.00}s{(FirstWrong is null ? "" : " first-wrong: " + FirstWrong)}";
}

/// <summary>
/// Functions that worker threads call in a loop while a poker switches their code under them.
/// Multi-instruction sites switch between <c>mov eax, 1; ret; nop</c> and
/// <c>xor eax, eax; inc eax; inc eax; ret</c> (7 bytes each, different instruction boundaries, the
/// <c>ret</c> inside the site); every other one straddles a 64-byte line, the rest a 16-byte
/// boundary. Single-instruction sites switch <c>mov eax, 0x11111111</c> and <c>mov eax, 0x22222222</c>
/// (every byte of the immediate differs, so a torn fetch returns a mixed value). Long sites switch
/// between <see cref="LongA"/> and <see cref="LongB"/>: 60 bytes of short instructions that the
/// workers spend much of their time in, so that the int3 round often finds a thread stopped inside.
/// </summary>
public sealed unsafe class Torture : IDisposable
{
    /// <summary>mov eax, 1; ret; nop</summary>
    public static readonly byte[] One = [0xB8, 1, 0, 0, 0, 0xC3, 0x90];

    /// <summary>xor eax, eax; inc eax; inc eax; ret</summary>
    public static readonly byte[] Two = [0x31, 0xC0, 0xFF, 0xC0, 0xFF, 0xC0, 0xC3];

    /// <summary>xor eax, eax; 28 x inc eax; ret; nop (60 bytes, returns 28): a long site, so threads are often preempted inside one.</summary>
    public static readonly byte[] LongA = [0x31, 0xC0, .. Repeat([0xFF, 0xC0], 28), 0xC3, 0x90];

    /// <summary>mov eax, 100; 18 x add eax, 1; ret (60 bytes, returns 118). From any boundary of the other, a wrong value or a fault.</summary>
    public static readonly byte[] LongB = [0xB8, 100, 0, 0, 0, .. Repeat([0x83, 0xC0, 0x01], 18), 0xC3];

    private static byte[] Repeat(byte[] unit, int times) => [.. Enumerable.Repeat(unit, times).SelectMany(u => u)];

    /// <summary>mov eax, 0x11111111</summary>
    public static readonly byte[] ImmA = [0xB8, 0x11, 0x11, 0x11, 0x11];

    /// <summary>mov eax, 0x22222222</summary>
    public static readonly byte[] ImmB = [0xB8, 0x22, 0x22, 0x22, 0x22];

    private readonly ExecutableMemory memory;

    /// <summary>Addresses of the multi-instruction functions (each is its site).</summary>
    public ulong[] MultiFunctions { get; }

    /// <summary>Addresses of the long multi-instruction functions (each is its site).</summary>
    public ulong[] LongFunctions { get; }

    /// <summary>Addresses of the single-instruction functions (site = the mov, then a ret).</summary>
    public ulong[] ImmediateFunctions { get; }

    /// <summary>Multi sites from <see cref="One"/> to <see cref="Two"/> and long sites from <see cref="LongA"/> to <see cref="LongB"/> (its inverse goes back).</summary>
    public PatchPlan MultiPlan { get; }

    /// <summary>Single-instruction sites from <see cref="ImmA"/> to <see cref="ImmB"/>.</summary>
    public PatchPlan ImmediatePlan { get; }

    /// <summary>The memory holding the functions.</summary>
    public ExecutableMemory Memory => memory;

    /// <summary>Emits <paramref name="multi"/> short, <paramref name="immediate"/> single-instruction and <paramref name="long"/> long functions.</summary>
    public Torture(int multi, int immediate, int @long = 0)
    {
        memory = ExecutableMemory.Allocate((multi + immediate + @long + 1) * 128, "torture");
        var w = memory.Writable;
        MultiFunctions = new ulong[multi];
        ImmediateFunctions = new ulong[immediate];
        LongFunctions = new ulong[@long];
        var multiPokes = new List<Poke>();
        var immPokes = new List<Poke>();
        for (int i = 0; i < multi; i++)
        {
            int off = i * 128 + (i % 2 == 0 ? 60 : 13);
            One.CopyTo(w[off..]);
            MultiFunctions[i] = memory.Address + (ulong)off;
            multiPokes.Add(new Poke(MultiFunctions[i], One, Two, new SiteRef(SiteKind.Raw, i, "torture"), "flip"));
        }
        for (int j = 0; j < immediate; j++)
        {
            int off = (multi + j) * 128 + 62;
            ImmA.CopyTo(w[off..]);
            w[off + 5] = 0xC3;
            ImmediateFunctions[j] = memory.Address + (ulong)off;
            immPokes.Add(new Poke(ImmediateFunctions[j], ImmA, ImmB, new SiteRef(SiteKind.Raw, multi + j, "torture"), "flip"));
        }
        for (int k = 0; k < @long; k++)
        {
            int off = (multi + immediate + k) * 128 + 40; // crosses a 64-byte line
            LongA.CopyTo(w[off..]);
            LongFunctions[k] = memory.Address + (ulong)off;
            multiPokes.Add(new Poke(LongFunctions[k], LongA, LongB, new SiteRef(SiteKind.Raw, multi + immediate + k, "torture"), "flip"));
        }
        CoreSync.TrySyncAllCores();
        MultiPlan = new PatchPlan(multiPokes);
        ImmediatePlan = new PatchPlan(immPokes);
    }

    /// <summary>
    /// Starts <paramref name="threads"/> workers calling every function in a loop, then switches the
    /// multi-instruction sites <paramref name="multiFlips"/> times in all (a batch switches them all)
    /// and, after each such batch, the single-instruction sites in a batch of their own. After each
    /// batch it waits until a worker has made a whole pass over the functions in the new state (at most
    /// a second: a stall is counted, not failed), so that both versions run between flips and the next
    /// batch lands on threads that are running the sites, not still waiting for the last one.
    /// Stops early on the first wrong result when <paramref name="stopOnWrong"/>. Leaves every site as
    /// it found it.
    /// </summary>
    public TortureResult Run(ITextPoker poker, long multiFlips, int threads, bool stopOnWrong = false, Action? afterBatch = null)
    {
        ArgumentNullException.ThrowIfNull(poker);
        var calls = new long[threads];
        var passes = new long[threads];
        var valid = new long[threads];
        var seen = new long[threads, 6];
        long wrong = 0;
        string? firstWrong = null;
        int stop = 0;
        using var started = new CountdownEvent(threads);
        var workers = new Thread[threads];
        ulong[] multi = MultiFunctions, imm = ImmediateFunctions, lng = LongFunctions;
        for (int t = 0; t < threads; t++)
        {
            int id = t;
            workers[t] = new Thread(() =>
            {
                long c = 0, v = 0, s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0;
                started.Signal();
                while (Volatile.Read(ref stop) == 0)
                {
                    for (int i = 0; i < multi.Length; i++)
                    {
                        int r = ((delegate* unmanaged<int>)multi[i])();
                        c++;
                        if (r == 1) { s0++; v++; }
                        else if (r == 2) { s1++; v++; }
                        else Wrong(multi[i], r);
                    }
                    for (int i = 0; i < imm.Length; i++)
                    {
                        int r = ((delegate* unmanaged<int>)imm[i])();
                        c++;
                        if (r == 0x11111111) { s2++; v++; }
                        else if (r == 0x22222222) { s3++; v++; }
                        else Wrong(imm[i], r);
                    }
                    for (int i = 0; i < lng.Length; i++)
                    {
                        int r = ((delegate* unmanaged<int>)lng[i])();
                        c++;
                        if (r == 28) { s4++; v++; }
                        else if (r == 118) { s5++; v++; }
                        else Wrong(lng[i], r);
                    }
                    Volatile.Write(ref passes[id], passes[id] + 1);
                }
                calls[id] = c;
                valid[id] = v;
                seen[id, 0] = s0; seen[id, 1] = s1; seen[id, 2] = s2; seen[id, 3] = s3; seen[id, 4] = s4; seen[id, 5] = s5;
            }) { IsBackground = true, Name = $"torture-{t}" };
            workers[t].Start();
        }

        void Wrong(ulong fn, int r, string? what = null)
        {
            if (Interlocked.Increment(ref wrong) == 1)
                Interlocked.CompareExchange(ref firstWrong, what ?? $"function 0x{fn:x} returned 0x{r:x}", null);
        }

        started.Wait();
        var clock = Stopwatch.StartNew();
        long batches = 0, flips = 0, immFlips = 0, probed = 0, stalls = 0;
        var mark = new long[threads];
        void AwaitPass()
        {
            // Some worker has made a whole pass in the new state (a pass that started before the batch
            // ended may have run the old code: wait for two of the same worker).
            for (int t = 0; t < threads; t++) mark[t] = Volatile.Read(ref passes[t]) + 2;
            var deadline = Stopwatch.StartNew();
            while (Volatile.Read(ref wrong) == 0)
            {
                for (int t = 0; t < threads; t++)
                    if (Volatile.Read(ref passes[t]) >= mark[t]) return;
                if (deadline.ElapsedMilliseconds > 1000) { stalls++; return; }
                Thread.Yield();
            }
        }
        bool forward = true;
        var multiBack = MultiPlan.Inverse();
        var immBack = ImmediatePlan.Inverse();
        try
        {
            while (flips < multiFlips && !(stopOnWrong && Volatile.Read(ref wrong) > 0))
            {
                if (MultiPlan.Count > 0)
                {
                    poker.Apply(forward ? MultiPlan : multiBack);
                    batches++;
                    flips += MultiPlan.Count;
                    if (poker is LivePoker lp && lp.LastBatch.ThreadsProbed > 0) probed++;
                    AwaitPass();
                }
                if (ImmediatePlan.Count > 0)
                {
                    poker.Apply(forward ? ImmediatePlan : immBack);
                    batches++;
                    immFlips += ImmediatePlan.Count;
                    if (MultiPlan.Count == 0) flips += ImmediatePlan.Count;
                    AwaitPass();
                }
                forward = !forward;
                afterBatch?.Invoke();
            }
            if (!forward)
            {
                if (MultiPlan.Count > 0) poker.Apply(multiBack);
                if (ImmediatePlan.Count > 0) poker.Apply(immBack);
                batches += 2;
            }
        }
        finally
        {
            Volatile.Write(ref stop, 1);
            for (int t = 0; t < threads; t++)
                if (!workers[t].Join(TimeSpan.FromSeconds(30)))
                    Wrong(0, 0, $"worker {t} did not stop: stuck in torn code?"); // counted, not waited for
        }
        clock.Stop();
        var totals = new long[6];
        for (int t = 0; t < threads; t++)
            for (int k = 0; k < 6; k++) totals[k] += seen[t, k];
        return new TortureResult(batches, flips, immFlips, calls, valid, totals, wrong, firstWrong, clock.Elapsed, probed, stalls);
    }

    /// <summary>Frees the functions (no worker may run them any more).</summary>
    public void Dispose() => memory.Dispose();
}

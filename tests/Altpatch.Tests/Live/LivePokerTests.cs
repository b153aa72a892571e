using Altpatch.Cpu;
using Altpatch.Emit;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Live;

/// <summary>The live poker on code that other threads are running: results, bytes, exact reverts.</summary>
[Collection(LiveCollection.Name)]
public class LivePokerTests
{
    /// <summary>Calls a function in a loop on another thread until disposed; counts results.</summary>
    private sealed unsafe class Caller : IDisposable
    {
        private readonly Thread thread;
        private int stop;
        private readonly Dictionary<long, long> seen = [];

        public Caller(ulong fn, long argument = 0)
        {
            thread = new Thread(() =>
            {
                var local = new Dictionary<long, long>();
                while (Volatile.Read(ref stop) == 0)
                {
                    long r = ((delegate* unmanaged<long, long>)fn)(argument);
                    local[r] = local.GetValueOrDefault(r) + 1;
                }
                lock (seen) foreach (var (k, v) in local) seen[k] = v;
            }) { IsBackground = true };
            thread.Start();
        }

        public IReadOnlyDictionary<long, long> Stop()
        {
            Volatile.Write(ref stop, 1);
            thread.Join();
            lock (seen) return new Dictionary<long, long>(seen);
        }

        public void Dispose() { if (thread.IsAlive) Stop(); }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_thread_stopped_inside_a_site_holds_the_batch_until_it_leaves(bool inCallee)
    {
        using var parked = new Parked(inCallee);
        var before = Run.Read(parked.Function, parked.Site.Length);

        var quick = new LivePoker(new LivePokerOptions { QuiescenceTimeout = TimeSpan.FromMilliseconds(300) });
        var e = Assert.Throws<PatchException>(() => quick.Apply(parked.Plan));
        Assert.Contains("raw site #7 of 'parked'", e.Message);
        Assert.True(e.Message.Contains("is stopped inside the site", StringComparison.Ordinal), e.Message);
        Assert.Contains("nothing written", e.Message);
        if (inCallee) Assert.Contains("+5 ", e.Message); // the return address of the call
        Assert.Equal(before, Run.Read(parked.Function, parked.Site.Length)); // first byte back, rest never touched

        // A patient batch waits: it has placed its int3 and probes until the thread leaves.
        var poker = new LivePoker();
        using var batch = new Background(() => poker.Apply(parked.Plan));
        parked.AwaitInt3(batch);
        Assert.Equal(1, parked.Release()); // the thread finished the OLD code
        batch.Join();
        Assert.Equal(parked.Site.New.ToArray(), Run.Read(parked.Function, parked.Site.Length));
        if (!inCallee) Assert.Equal(2, Run.Call(parked.Function));
        poker.Revert(parked.Plan);
        Assert.Equal(before, Run.Read(parked.Function, parked.Site.Length));
    }

    [Fact]
    public void Single_instruction_sites_need_no_probe()
    {
        using var mem = ExecutableMemory.Allocate(4096, "single");
        ulong fn = Emit.Bytes(mem, 62, [0xB8, 1, 0, 0, 0, 0xC3]); // straddles a 64-byte line
        var plan = new PatchPlan([new Poke(fn, new byte[] { 0xB8, 1, 0, 0, 0 }, new byte[] { 0xB8, 2, 0, 0, 0 }, new SiteRef(SiteKind.Raw, 0), "test")]);
        var poker = new LivePoker();
        using var caller = new Caller(fn);
        poker.Apply(plan);
        Assert.Equal(new LiveBatchReport(1, 0, 0, 0), poker.LastBatch);
        Assert.Equal(2, Run.Call(fn));
        poker.Revert(plan);
        Assert.Equal(1, Run.Call(fn));
        var seen = caller.Stop();
        Assert.True(seen.Keys.All(k => k is 1 or 2), string.Join(", ", seen.Keys));
    }

    [Fact]
    public void A_batch_serialises_every_core_after_the_int3s_and_the_tails_and_after_the_first_bytes_only_for_one_byte_sites()
    {
        // docs/live.md, "Why each serialisation": after step 4 an int3 site's first byte can only go from the int3 to the
        // new byte (a core that runs the int3 late traps and is sent back), so only a one-byte site, which no int3
        // fenced off, needs the last membarrier. Threads run every site meanwhile and see only old or new results.
        using var mem = ExecutableMemory.Allocate(8192, "syncs");
        ulong counter = (ulong)mem.WritableAddress + 4096;
        ulong tail = Emit.Bytes(mem, 0, [0xB8, 1, 0, 0, 0, 0xC3]);                   // mov eax, 1; ret
        ulong first = Emit.Bytes(mem, 64, [0x31, 0xC0, 0x05, 5, 0, 0, 0, 0xC3]);    // xor eax, eax; add eax, 5; ret
        ulong locked = Emit.Bytes(mem, 128, [0xF0, 0x83, 0x07, 0x01, 0x8B, 0x07, 0xC3]); // lock add dword [rdi], 1; mov eax, [rdi]; ret
        Poke Make(ulong at, byte[] old, byte[] @new) => new(at, old, @new, new SiteRef(SiteKind.Raw, 0, "syncs"), "test");
        var tailPoke = Make(tail, [0xB8, 1, 0, 0, 0], [0xB8, 2, 0, 0, 0]);          // the tail changes
        var firstPoke = Make(first + 2, [0x05, 5, 0, 0, 0], [0x2D, 5, 0, 0, 0]);   // add eax, 5 -> sub eax, 5: only the first byte
        var lockPoke = Make(locked, [0xF0], [0x3E]);                                  // a one-byte site
        var poker = new LivePoker();
        long Syncs(Action batch)
        {
            long before = TrapHandler.CoreSyncs;
            batch();
            return TrapHandler.CoreSyncs - before;
        }

        using var c1 = new Caller(tail);
        using var c2 = new Caller(first);
        using var c3 = new Caller(locked, (long)counter);
        lock (TrapHandler.Gate) // no other batch counts meanwhile (the poker takes the gate again: it is reentrant)
        {
            Assert.Equal(2, Syncs(() => poker.Apply(new PatchPlan([tailPoke]))));
            Assert.Equal(2, Run.Call(tail));
            Assert.Equal(1, Syncs(() => poker.Apply(new PatchPlan([firstPoke]))));
            Assert.Equal(-5, Run.Call(first));
            Assert.Equal(1, Syncs(() => poker.Apply(new PatchPlan([lockPoke]))));
            Assert.Equal([0x3E], Run.Read(locked, 1));
            // Back, in one batch with a one-byte site: int3s, tails, first bytes, each serialised.
            var back = new PatchPlan([tailPoke, firstPoke, lockPoke]).Inverse();
            Assert.Equal(3, Syncs(() => poker.Apply(back)));
            Assert.Equal(1, Run.Call(tail));
            Assert.Equal(5, Run.Call(first));
            Assert.Equal([0xF0], Run.Read(locked, 1));
        }
        Assert.True(c1.Stop().Keys.All(k => (int)k is 1 or 2));
        Assert.True(c2.Stop().Keys.All(k => (int)k is 5 or -5));
        c3.Stop();
    }

    [Fact]
    public unsafe void A_late_trap_on_an_int3_a_finished_batch_replaced_goes_back_to_the_site()
    {
        // No membarrier follows step 4 for int3 sites, so a core may still run the int3 it saw after Apply returned.
        // What the handler then gets: SIGTRAP from the kernel (SI_KERNEL), RIP just past the site's first byte. Called
        // here with exactly that, it must send the thread back to the site (which holds the new code), not chain it.
        using var mem = ExecutableMemory.Allocate(4096, "late");
        byte[] one = [0xB8, 1, 0, 0, 0], two = [0xB8, 2, 0, 0, 0];
        ulong fn = Emit.Bytes(mem, 0, [.. one, 0xC3]);
        new LivePoker().Apply(new PatchPlan([new Poke(fn, one, two, new SiteRef(SiteKind.Raw, 0, "late"), "test")]));
        Assert.Equal(0xB8, Run.Read(fn, 1)[0]); // the int3 is gone from memory

        byte* info = stackalloc byte[128];
        byte* context = stackalloc byte[1024];
        new Span<byte>(info, 128).Clear();
        new Span<byte>(context, 1024).Clear();
        *(int*)(info + Signals.SiCodeOffset) = Signals.SiKernel;
        *(ulong*)(context + Signals.UcRip) = fn + 1;
        long handled = TrapHandler.TrapsHandled;
        ((delegate* unmanaged<int, byte*, byte*, void>)TrapHandler.Code!.Trap)(Signals.SigTrap, info, context);
        Assert.Equal(fn, *(ulong*)(context + Signals.UcRip)); // back to the site (chaining would leave RIP alone)
        Assert.True(TrapHandler.TrapsHandled > handled);
        Assert.Equal(2, Run.Call(fn));
    }

    [Fact]
    public void One_byte_sites_are_written_once_without_an_int3()
    {
        using var mem = ExecutableMemory.Allocate(8192, "lock");
        ulong counter = (ulong)mem.WritableAddress + 4096;
        // lock add dword [rdi], 1; mov eax, [rdi]; ret  --  the lock prefix is the site, as in .smp_locks
        ulong fn = Emit.Bytes(mem, 0, [0xF0, 0x83, 0x07, 0x01, 0x8B, 0x07, 0xC3]);
        var plan = new PatchPlan([new Poke(fn, new byte[] { 0xF0 }, new byte[] { 0x3E }, new SiteRef(SiteKind.Lock, 0), "UP: ds prefix")]);
        var poker = new LivePoker();
        long trapsBefore = TrapHandler.TrapsHandled;
        using (new Caller(fn, (long)counter))
        {
            for (int i = 0; i < 200; i++)
            {
                poker.Apply(plan);
                Assert.Equal(new LiveBatchReport(1, 0, 0, 0), poker.LastBatch);
                poker.Revert(plan);
            }
        }
        Assert.Equal(trapsBefore, TrapHandler.TrapsHandled); // no int3 was ever placed
        Assert.Equal([0xF0, 0x83, 0x07, 0x01], Run.Read(fn, 4));
        // the code still works: one locked increment, and eax holds the new count
        uint count = BitConverter.ToUInt32(Run.Read(counter, 4));
        Assert.Equal(count + 1UL, Run.Call64(fn, counter));
        Assert.Equal(count + 1, BitConverter.ToUInt32(Run.Read(counter, 4)));
    }

    [Fact]
    public void An_alternatives_plan_is_applied_live_while_threads_run_it_and_reverts_exactly()
    {
        const CpuFeature F = CpuFeature.Popcnt;
        using var cb = new CodeBuilder();
        ulong fn = cb.Function("f", b =>
        {
            b.Alternative(a => a.mov(eax, 1), a => { a.xor(eax, eax); a.inc(eax); a.inc(eax); }, F);
            b.Alternative(a => { a.add(eax, 10); a.nop(); }, a => { a.add(eax, 20); }, F);
            b.Code(a => a.ret());
        });
        cb.Publish();
        var text = Run.Text(cb);
        Assert.Equal(11, Run.Call(fn));
        var plan = Alternatives.Plan(cb.AlternativeSites, CpuFeatures.Empty.With(F), ProcessMemory.Snapshot());
        Assert.Equal(2, plan.Count);
        var poker = new LivePoker();
        using var caller = new Caller(fn);
        for (int i = 0; i < 50; i++)
        {
            poker.Apply(plan);
            Assert.Equal(22, Run.Call(fn));
            foreach (var p in plan) Assert.Equal(p.New.ToArray(), Run.Read(p.Address, p.Length));
            Assert.True(Alternatives.Plan(cb.AlternativeSites, CpuFeatures.Empty.With(F), ProcessMemory.Snapshot()).IsEmpty);
            poker.Revert(plan);
            Assert.Equal(11, Run.Call(fn));
        }
        var seen = caller.Stop();
        // Each site switches whole, but not both at once: a thread that ran the first site just before a batch's int3s
        // (or after its first byte was written) meets the second one in the other state, so 1 + 20 and 2 + 10 are
        // valid too (seen about once in ten runs). A torn site gives none of these, or crashes.
        Assert.True(seen.Keys.All(k => k is 11 or 12 or 21 or 22), "results seen: " + string.Join(", ", seen.Keys));
        Assert.Equal(text, Run.Text(cb));
    }

    /// <summary>Code Altpatch did not allocate, with mov eax,1; ret; nop every 64 bytes.</summary>
    private static ulong Foreign(int size) => Run.MapCode(size, Altpatch.TortureChild.Torture.One);

    private static PatchPlan FlipEvery(ulong m, int size, int stride) =>
        new(Enumerable.Range(0, size / stride).Select(i =>
            new Poke(m + (ulong)(i * stride), Altpatch.TortureChild.Torture.One, Altpatch.TortureChild.Torture.Two, new SiteRef(SiteKind.Raw, i, "foreign"), "test")));

    [Fact]
    public void Foreign_code_is_refused_by_default_nothing_written()
    {
        ulong m = Foreign(4096);
        try
        {
            var before = Run.Read(m, 4096);
            var e = Assert.Throws<PatchException>(() => new LivePoker().Apply(FlipEvery(m, 4096, 256)));
            Assert.Contains("raw site #0 of 'foreign'", e.Message);
            Assert.Contains("not in memory Altpatch allocated", e.Message);
            Assert.Contains("ForeignCode = WritableExecutable", e.Message);
            Assert.Equal(before, Run.Read(m, 4096));
            Assert.Equal("r-xp", Run.Permissions(m));
        }
        finally { Run.Unmap(m, 4096); }
    }

    [Fact]
    public void Foreign_code_with_the_writable_executable_fallback_is_patched_live_and_protection_restored()
    {
        ulong m = Foreign(2 * 4096);
        try
        {
            var plan = FlipEvery(m, 2 * 4096, 128);
            var poker = new LivePoker(new LivePokerOptions { ForeignCode = ForeignCodeMode.WritableExecutable });
            using var caller = new Caller(m);
            for (int i = 0; i < 20; i++)
            {
                poker.Apply(plan);
                Assert.Equal(2, Run.Call(m));
                Assert.Equal(1, Run.Call(m + 64)); // not in the plan
                poker.Revert(plan);
            }
            var seen = caller.Stop();
            Assert.True(seen.Keys.All(k => k is 1 or 2), string.Join(", ", seen.Keys));
            Assert.Equal("r-xp", Run.Permissions(m));
            Assert.Equal("r-xp", Run.Permissions(m + 4096));
            Assert.Equal(Altpatch.TortureChild.Torture.One, Run.Read(m, 7));
        }
        finally { Run.Unmap(m, 2 * 4096); }
    }

    [Fact]
    public void The_empty_plan_writes_nothing_and_needs_nothing()
    {
        // Needs nothing: not core-serialising membarrier (the seam says it is missing and is never asked), not the
        // SIGTRAP handler (not installed by it). Writes nothing: no batch runs, no thread is probed or trapped.
        int asked = 0;
        var poker = new LivePoker { SyncCoreCheck = () => { asked++; return "membarrier is missing (test)"; } };
        bool installed = TrapHandler.IsInstalled;
        long probes = TrapHandler.ProbesSent, traps = TrapHandler.TrapsHandled;
        foreach (var empty in new[] { PatchPlan.Empty, new PatchPlan([]) })
            poker.Apply(empty);
        Assert.Equal(0, asked);
        Assert.Equal(installed, TrapHandler.IsInstalled);
        Assert.Equal(default, poker.LastBatch);
        Assert.Equal(probes, TrapHandler.ProbesSent);
        Assert.Equal(traps, TrapHandler.TrapsHandled);
        // The same seam makes a non-empty plan fail: the check above is real.
        using var mem = ExecutableMemory.Allocate(4096, "empty-plan");
        ulong fn = Emit.Bytes(mem, 0, [0xB8, 1, 0, 0, 0, 0xC3]);
        var plan = new PatchPlan([new Poke(fn, new byte[] { 0xB8, 1, 0, 0, 0 }, new byte[] { 0xB8, 2, 0, 0, 0 }, new SiteRef(SiteKind.Raw, 0), "test")]);
        Assert.Throws<PatchException>(() => poker.Apply(plan));
        Assert.Equal(1, asked);
        Assert.Equal(1, Run.Call(fn));
    }
}

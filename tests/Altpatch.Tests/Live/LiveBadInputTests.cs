using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Tests.Live;

/// <summary>Bad plans and impossible requests: a clear error naming the site, and nothing written.</summary>
[Collection(LiveCollection.Name)]
public class LiveBadInputTests
{
    private static (ExecutableMemory Memory, ulong Fn, PatchPlan Plan) Function()
    {
        var mem = ExecutableMemory.Allocate(4096, "bad");
        ulong fn = Emit.Bytes(mem, 0, Altpatch.TortureChild.Torture.One);
        var plan = new PatchPlan([new Poke(fn, Altpatch.TortureChild.Torture.One, Altpatch.TortureChild.Torture.Two, new SiteRef(SiteKind.Alternative, 3, "bad"), "test")]);
        return (mem, fn, plan);
    }

    [Fact]
    public void A_stale_plan_is_refused_before_anything_is_written()
    {
        var (mem, fn, plan) = Function();
        using var _ = mem;
        var poker = new LivePoker();
        poker.Apply(plan);
        var after = Run.Read(fn, 7);
        var e = Assert.Throws<PatchException>(() => poker.Apply(plan)); // memory no longer holds the old bytes
        Assert.Contains("alternative site #3 of 'bad'", e.Message);
        Assert.Contains($"0x{fn:x}", e.Message);
        Assert.Contains("not the plan's old bytes", e.Message);
        Assert.Equal(after, Run.Read(fn, 7));
        Assert.Equal(2, Run.Call(fn));
    }

    [Fact]
    public void The_handler_and_the_tables_are_never_patched()
    {
        TrapHandler.Install();
        var (start, end) = TrapHandler.CodeRange;
        Assert.True(end > start);
        var poker = new LivePoker();
        var handler = Run.Read(start, 4);
        var e = Assert.Throws<PatchException>(() => poker.Apply(new PatchPlan([new Poke(start, handler, new byte[] { 0x90, 0x90, 0x90, 0x90 }, new SiteRef(SiteKind.Raw, 1, "self"), "test")])));
        Assert.Contains("raw site #1 of 'self'", e.Message);
        Assert.Contains("live poker's own SIGTRAP and probe handlers", e.Message);
        Assert.Contains("never patches the code it patches with", e.Message);
        Assert.Equal(handler, Run.Read(start, 4));

        // Any page it lives in: a site in the handler's last page.
        var e2 = Assert.Throws<PatchException>(() => poker.Apply(new PatchPlan([new Poke(end - 8, Run.Read(end - 8, 2), new byte[] { 0x90, 0x90 }, new SiteRef(SiteKind.Raw, 2, "self"), "test")])));
        Assert.Contains("live poker's own", e2.Message);

        ulong tables = (ulong)TrapHandler.Code!.Data;
        var e3 = Assert.Throws<PatchException>(() => poker.Apply(new PatchPlan([new Poke(tables + 64, Run.Read(tables + 64, 1), new byte[] { 0x90 }, new SiteRef(SiteKind.Raw, 3, "self"), "test")])));
        Assert.Contains("live poker's own site tables", e3.Message);
    }

    [Fact]
    public void Without_core_serialising_membarrier_live_patching_is_refused()
    {
        var (mem, fn, plan) = Function();
        using var _ = mem;
        var poker = new LivePoker { SyncCoreCheck = () => "this kernel's membarrier lacks MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE" };
        var e = Assert.Throws<PatchException>(() => poker.Apply(plan));
        Assert.Contains("alternative site #3 of 'bad'", e.Message);
        Assert.Contains("needs membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)", e.Message);
        Assert.Contains("lacks", e.Message);
        Assert.Contains("nothing written", e.Message);
        Assert.Equal(Altpatch.TortureChild.Torture.One, Run.Read(fn, 7));
    }

    [SkippableFact]
    public void This_kernel_has_core_serialising_membarrier()
    {
        // Everything else in this folder depends on it; say so plainly when it is missing.
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, "membarrier SYNC_CORE unavailable: " + CoreSync.UnavailableReason);
        Assert.True(CoreSync.TrySyncAllCores());
    }

    [Fact]
    public void After_code_is_freed_and_new_code_mapped_a_batch_validates_against_what_is_mapped_now()
    {
        // The poker keeps no snapshot of the mappings: the registry of ExecutableMemory changes with every allocation
        // and release, and the known-site table keeps the freed site (a late trap may still name it).
        var (mem, fn, plan) = Function();
        new LivePoker().Apply(plan); // fn is a known site now
        new LivePoker().Revert(plan);
        mem.Dispose();
        var e = Assert.Throws<PatchException>(() => new LivePoker().Apply(plan));
        Assert.Contains("alternative site #3 of 'bad'", e.Message); // unmapped, or someone else's memory by now

        // New code, maybe at the same address: the old plan is stale there and changes nothing; a plan made for the new
        // code goes live while a thread runs it.
        using var fresh = ExecutableMemory.Allocate(4096, "bad-again");
        byte[] other = [0xB8, 9, 0, 0, 0, 0xC3, 0x90];                  // mov eax, 9; ret; nop
        ulong g = Emit.Bytes(fresh, 0, other);
        if (fresh.Contains(fn, 7))
        {
            var before = Run.Read(fn, 7);
            Assert.Throws<PatchException>(() => new LivePoker().Apply(plan));
            Assert.Equal(before, Run.Read(fn, 7));
        }
        var now = new PatchPlan([new Poke(g, other, Altpatch.TortureChild.Torture.Two, new SiteRef(SiteKind.Raw, 1, "again"), "test")]);
        int stop = 0, wrong = 0;
        var caller = new Thread(() =>
        {
            while (Volatile.Read(ref stop) == 0)
                if (Run.Call(g) is not (9 or 2)) Interlocked.Increment(ref wrong);
        });
        caller.Start();
        var poker = new LivePoker();
        for (int i = 0; i < 50; i++)
        {
            poker.Apply(now);
            poker.Revert(now);
        }
        Volatile.Write(ref stop, 1);
        caller.Join();
        Assert.Equal(0, wrong);
        Assert.Equal(other, Run.Read(g, 7));
    }

    [Fact]
    public void An_unmapped_site_is_refused()
    {
        ulong m = Run.NeverMapped; // an unmap-then-use address could be reused by another thread's mmap
        var e = Assert.Throws<PatchException>(() => new LivePoker().Apply(new PatchPlan([new Poke(m, new byte[] { 0x90, 0x90 }, new byte[] { 0xCC, 0xCC }, new SiteRef(SiteKind.Raw, 4, "gone"), "test")])));
        Assert.Contains("raw site #4 of 'gone'", e.Message);
        Assert.Contains("not mapped", e.Message);
    }
}

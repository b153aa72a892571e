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
    public void An_unmapped_site_is_refused()
    {
        ulong m = Run.NeverMapped; // an unmap-then-use address could be reused by another thread's mmap
        var e = Assert.Throws<PatchException>(() => new LivePoker().Apply(new PatchPlan([new Poke(m, new byte[] { 0x90, 0x90 }, new byte[] { 0xCC, 0xCC }, new SiteRef(SiteKind.Raw, 4, "gone"), "test")])));
        Assert.Contains("raw site #4 of 'gone'", e.Message);
        Assert.Contains("not mapped", e.Message);
    }
}

using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Tests.Pokers;

/// <summary>Pokers hold the executable memory they write into: a Dispose meanwhile waits for them.</summary>
public class MemoryLeaseTests
{
    [Fact]
    public void Disposing_memory_while_a_poker_holds_it_defers_the_unmapping()
    {
        var mem = ExecutableMemory.Allocate(4096, "lease");
        mem.Writable[0] = 0x90;
        var plan = new PatchPlan([new Poke(mem.Address, new byte[] { 0x90 }, new byte[] { 0xC3 }, new SiteRef(SiteKind.Raw, 0, "lease"), "test")]);
        using (MemoryLease.For(plan))
        {
            mem.Dispose();
            // still mapped: the lease keeps the handle's release from running
            Assert.True(MemoryMap.Read().TryFind(mem.Address, out var region), "unmapped under the lease");
            Assert.Equal("r-xs", region.Permissions);
            // a second poker arriving now takes its own reference and writes into pages that stay mapped
            new ProtectPoker().Apply(plan);
            Assert.Equal([0xC3], Run.Read(mem.Address, 1));
        }
        Assert.False(MemoryMap.Read().TryFind(mem.Address, out var after) && after.Path.Contains("lease", StringComparison.Ordinal), "still mapped after the lease");
    }

    [Fact]
    public void Memory_already_freed_is_not_found_and_the_plan_is_refused_by_the_poker()
    {
        var mem = ExecutableMemory.Allocate(4096, "freed");
        ulong at = mem.Address;
        mem.Dispose();
        var plan = new PatchPlan([new Poke(at, new byte[] { 0xCC }, new byte[] { 0xC3 }, new SiteRef(SiteKind.Raw, 3, "freed"), "test")]);
        using (MemoryLease.For(plan)) { } // nothing to hold: the registry no longer lists it
        var e = Assert.Throws<PatchException>(() => new ProtectPoker().Apply(plan));
        Assert.Contains("raw site #3 of 'freed'", e.Message);
    }
}

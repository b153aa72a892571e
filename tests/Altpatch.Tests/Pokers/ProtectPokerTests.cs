using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Tests.Pokers;

public class ProtectPokerTests
{
    private static readonly byte[] Ret1 = [0xB8, 1, 0, 0, 0, 0xC3];  // mov eax,1; ret
    private static readonly byte[] Ret2 = [0xB8, 2, 0, 0, 0, 0xC3];

    /// <summary>Code Altpatch did not allocate, with mov eax,1; ret every 64 bytes.</summary>
    private static ulong Functions(int pages) => Run.MapCode(pages * 4096, Ret1);

    private static PatchPlan PlanEvery(ulong m, int pages, int stride) =>
        new(Enumerable.Range(0, pages * 4096 / stride).Select(i =>
            new Poke(m + (ulong)(i * stride), Ret1, Ret2, new SiteRef(SiteKind.Raw, i), "test")));

    [Theory]
    [InlineData(ProtectPokerMode.WriteXorExecute)]
    [InlineData(ProtectPokerMode.ReadWriteExecute)]
    public void Patches_code_it_did_not_allocate_and_restores_page_protection(ProtectPokerMode mode)
    {
        ulong m = Functions(3);
        try
        {
            var plan = PlanEvery(m, 3, 256);
            new ProtectPoker(mode).Apply(plan);
            for (int i = 0; i < plan.Count; i++) Assert.Equal(2, Run.Call(plan[i].Address));
            Assert.Equal(1, Run.Call(m + 64)); // untouched function
            for (int p = 0; p < 3; p++) Assert.Equal("r-xp", Run.Permissions(m + (ulong)p * 4096));
            new ProtectPoker(mode).Revert(plan);
            for (int i = 0; i < plan.Count; i++) Assert.Equal(1, Run.Call(plan[i].Address));
        }
        finally { Run.Unmap(m, 3 * 4096); }
    }

    [Fact]
    public void A_failed_write_part_way_reverts_what_was_written_and_restores_protection()
    {
        ulong m = Functions(2);
        try
        {
            var before = Run.Read(m, 2 * 4096);
            var plan = PlanEvery(m, 2, 128);
            var poker = new ProtectPoker { BeforeWrite = i => { if (i == 40) throw new IOException("simulated failure"); } };
            var e = Assert.Throws<PatchException>(() => poker.Apply(plan));
            Assert.Contains("40 earlier site(s) reverted", e.Message);
            Assert.Contains("raw site #40", e.Message);
            Assert.Equal(before, Run.Read(m, 2 * 4096));
            Assert.Equal("r-xp", Run.Permissions(m));
            Assert.Equal("r-xp", Run.Permissions(m + 4096));
            Assert.Equal(1, Run.Call(m));
        }
        finally { Run.Unmap(m, 2 * 4096); }
    }

    [Fact]
    public void Plans_reject_overlaps_and_bad_lengths_before_any_poker_runs()
    {
        var a = new Poke(0x1000, new byte[4], new byte[4], new SiteRef(SiteKind.Raw, 0), "a");
        var b = new Poke(0x1002, new byte[4], new byte[4], new SiteRef(SiteKind.Raw, 1), "b");
        Assert.Contains("overlaps raw site #0", Assert.Throws<PatchException>(() => new PatchPlan([b, a])).Message);
        var c = new Poke(0x1000, new byte[3], new byte[4], new SiteRef(SiteKind.Raw, 2), "c");
        Assert.Contains("differ in length", Assert.Throws<PatchException>(() => new PatchPlan([c])).Message);
        var d = new Poke(0x1000, new byte[255], new byte[255], new SiteRef(SiteKind.Raw, 3), "d");
        Assert.Contains("MAX_PATCH_LEN", Assert.Throws<PatchException>(() => new PatchPlan([d])).Message);
    }

    [Fact]
    public void Inverse_of_the_inverse_is_the_plan()
    {
        var plan = PlanEvery(0x10000, 1, 512);
        var twice = plan.Inverse().Inverse();
        Assert.Equal(plan.Select(p => (p.Address, Convert.ToHexString(p.Old.Span), Convert.ToHexString(p.New.Span))),
                     twice.Select(p => (p.Address, Convert.ToHexString(p.Old.Span), Convert.ToHexString(p.New.Span))));
    }
}

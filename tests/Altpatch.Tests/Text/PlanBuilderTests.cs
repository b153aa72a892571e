using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Tests.Text;

public class PlanBuilderTests
{
    private static SiteRef Site(int i) => new(SiteKind.Raw, i, "builder");

    [Fact]
    public void Build_sorts_the_pokes_and_keeps_their_bytes()
    {
        var b = new PlanBuilder(capacity: 1);
        b.Add(0x2000, [0x90], [0xC3], Site(1), "b");
        b.Add(0x1000, [0x90, 0x90], [0xCC, 0xC3], Site(0), "a");
        var plan = b.Build();
        Assert.Equal([0x1000UL, 0x2000UL], plan.Select(p => p.Address));
        Assert.Equal(new byte[] { 0xCC, 0xC3 }, plan[0].New.ToArray());
        Assert.Equal(new byte[] { 0x90 }, plan[1].Old.ToArray());
    }

    [Fact]
    public void Add_or_Build_after_Build_is_a_clear_error_and_the_plan_is_untouched()
    {
        var b = new PlanBuilder(capacity: 2);
        b.Add(0x1000, [0x90], [0xC3], Site(0), "a");
        b.Add(0x1010, [0x90], [0xC3], Site(1), "b");   // the capacity was right: the plan takes the builder's array
        var plan = b.Build();
        var add = Assert.Throws<InvalidOperationException>(() => b.Add(0x2000, [0x90], [0xC3], Site(2), "late"));
        Assert.Contains("already built its plan", add.Message, StringComparison.Ordinal);
        Assert.Throws<InvalidOperationException>(() => b.Build());
        Assert.Equal(2, plan.Count);
        Assert.Equal([0x1000UL, 0x1010UL], plan.Select(p => p.Address));
        var empty = new PlanBuilder();
        Assert.Same(PatchPlan.Empty, empty.Build());
        Assert.Throws<InvalidOperationException>(() => empty.Add(0x1000, [0x90], [0xC3], Site(0), "late"));
    }
}

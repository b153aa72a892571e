using System.Numerics;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Paravirt;

/// <summary>Switching backends at run time: results follow the backend, bytes come back exactly.</summary>
public class ParavirtSwitchTests
{
    private sealed class Functions
    {
        public ulong Ident, Mix, MixKept, Popcount, Flags, HandFlags, Tail, IoDelay;
    }

    private static Functions Emit(PvFixture f)
    {
        var fns = new Functions();
        fns.Ident = f.Site(ParavirtOps.Ident64, Clobbers.RetReg).Fn;
        fns.Mix = f.Site(ParavirtOps.Mix64, Clobbers.Any).Fn;
        fns.MixKept = f.Site(ParavirtOps.Mix64, Clobbers.RetReg).Fn;
        fns.Popcount = f.Site(ParavirtOps.Popcount, Clobbers.RetReg).Fn;
        fns.Flags = f.Site(ParavirtOps.SaveFl, Clobbers.RetReg, before: a => a.xor(eax, eax)).Fn;
        fns.HandFlags = f.Hand("flags", a => { a.xor(eax, eax); a.pushfq(); a.pop(rax); });
        fns.Tail = f.JumpSite(ParavirtOps.TailReturn).Fn;
        fns.IoDelay = f.Site(ParavirtOps.IoDelay, Clobbers.None, before: a => a.mov(rax, rdi)).Fn;
        f.Cb.Publish();
        return fns;
    }

    /// <summary>Calls every function once (7 op calls) and checks the results.</summary>
    private static void RunAll(Functions fns, ulong x)
    {
        Assert.Equal(x, Run.Call64(fns.Ident, x));
        Assert.Equal(ParavirtOps.Mix64Reference(x), Run.Call64(fns.Mix, x));
        Assert.Equal(ParavirtOps.Mix64Reference(x), Run.Call64(fns.MixKept, x));
        Assert.Equal((ulong)BitOperations.PopCount(x), Run.Call64(fns.Popcount, x));
        Assert.Equal(Run.Call64(fns.HandFlags), Run.Call64(fns.Flags));
        Assert.Equal(unchecked(x * 2), Run.Call64(fns.Tail, x));
        Assert.Equal(x, Run.Call64(fns.IoDelay, x));
    }

    private const int OpCallsPerRun = 7;

    [Fact]
    public void Switching_100_times_follows_the_backend_and_restores_native_bytes_exactly()
    {
        using var f = new PvFixture();
        var fns = Emit(f);
        var original = f.Text();
        var rt = new ParavirtRuntime(f.Table, f.Cb.ParavirtSites, f.Native, new ProtectPoker());
        RunAll(fns, 5); // indirect calls through native slots

        var first = rt.Apply();
        Assert.True(rt.IsPatched);
        Assert.Equal(f.Cb.ParavirtSites.Count - 1, first.Count); // every site but the one that keeps its indirect call
        var nativeText = f.Text();
        RunAll(fns, 6);

        for (int round = 0; round < 100; round++)
        {
            ulong x = (ulong)round * 0x0123_4567_89AB_CDEFUL;
            f.Hypervisor.ResetCounters();
            var toHv = rt.SwitchTo(f.Hypervisor);
            Assert.Same(f.Hypervisor, rt.Active);
            Assert.Equal(f.Cb.ParavirtSites.Count - 1, toHv.Count); // one write per changed site, in one plan
            Assert.Equal(f.Hypervisor.Implementation(ParavirtOps.Mix64).Slot, f.Table[ParavirtOps.Mix64]);
            RunAll(fns, x);
            Assert.Equal(OpCallsPerRun, f.Hypervisor.TotalCalls);
            Assert.Equal(2, f.Hypervisor.Calls(ParavirtOps.Mix64)); // the direct call and the indirect one both counted
            Assert.Equal(1, f.Hypervisor.Calls(ParavirtOps.IoDelay)); // a nop natively, counted here

            var toNative = rt.SwitchTo(f.Native);
            Assert.Equal(nativeText, f.Text());
            Assert.Equal(toHv.Count, toNative.Count);
            RunAll(fns, x);
            Assert.Equal(OpCallsPerRun, f.Hypervisor.TotalCalls); // nothing goes through the shims any more
        }

        rt.Restore();
        Assert.False(rt.IsPatched);
        Assert.Equal(original, f.Text());
        RunAll(fns, 7);
    }

    [Fact]
    public void Hypervisor_sites_are_direct_calls_to_the_counting_shims()
    {
        using var f = new PvFixture();
        var fns = Emit(f);
        var rt = new ParavirtRuntime(f.Table, f.Cb.ParavirtSites, f.Native, new ProtectPoker());
        rt.SwitchTo(f.Hypervisor);
        foreach (var d in rt.Decisions)
        {
            var site = f.Cb.ParavirtSites[d.Index];
            var impl = f.Hypervisor.Implementation(site.Type);
            if (d.Strategy == ParavirtStrategy.Indirect) continue;
            var (_, target, _) = PvFixture.Decode(f.SiteBytes(d.Index), site.Address);
            Assert.Equal(impl.Target, target);
            Assert.NotEqual(f.Native.Implementation(site.Type).Target, target);
        }
        Assert.Equal(1, rt.Decisions.Count(d => d.Strategy == ParavirtStrategy.Jump));
        RunAll(fns, 3);
        Assert.Equal(OpCallsPerRun, f.Hypervisor.TotalCalls);
        rt.SwitchTo(f.Native);
    }

    [Fact]
    public void With_noreplace_paravirt_only_the_slots_switch_and_indirect_calls_follow_them()
    {
        using var f = new PvFixture();
        var fns = Emit(f);
        var original = f.Text();
        var rt = new ParavirtRuntime(f.Table, f.Cb.ParavirtSites, f.Native, new ProtectPoker(), new ParavirtOptions { NoReplace = true });
        Assert.True(rt.Apply().IsEmpty);
        Assert.True(rt.SwitchTo(f.Hypervisor).IsEmpty);
        Assert.Equal(original, f.Text());
        RunAll(fns, 11);
        Assert.Equal(OpCallsPerRun, f.Hypervisor.TotalCalls); // every indirect call went through the hypervisor's slots
        Assert.True(rt.SwitchTo(f.Native).IsEmpty);
        RunAll(fns, 12);
        Assert.Equal(OpCallsPerRun, f.Hypervisor.TotalCalls);
    }

    private sealed class FailingPoker : ITextPoker
    {
        public void Apply(PatchPlan plan) => throw new PatchException(plan[0].Site, plan[0].Address, "simulated write failure");
    }

    [Fact]
    public void A_failed_switch_sets_the_slots_back_and_keeps_the_backend()
    {
        using var f = new PvFixture();
        Emit(f);
        var text = f.Text();
        var rt = new ParavirtRuntime(f.Table, f.Cb.ParavirtSites, f.Native, new FailingPoker());
        var slots = Enumerable.Range(0, f.Table.Count).Select(i => f.Table[i]).ToArray();
        var e = Assert.Throws<PatchException>(() => rt.SwitchTo(f.Hypervisor));
        Assert.Contains("simulated write failure", e.Message);
        Assert.Same(f.Native, rt.Active);
        Assert.False(rt.IsPatched);
        Assert.Equal(slots, Enumerable.Range(0, f.Table.Count).Select(i => f.Table[i]));
        Assert.Equal(text, f.Text());
    }
}

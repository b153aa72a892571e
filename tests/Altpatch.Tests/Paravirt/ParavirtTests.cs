using System.Numerics;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;
using Pv = Altpatch.Patching.Paravirt;

namespace Altpatch.Tests.Paravirt;

/// <summary>Every paravirt strategy on emitted code: the bytes are checked first, then the code runs.</summary>
public class ParavirtTests
{
    private static readonly ProtectPoker Poker = new();
    private static readonly ulong[] Inputs = [0, 1, 0xFF, 0x1234_5678_9ABC_DEF0, ulong.MaxValue, 1UL << 63];

    private static PatchPlan Plan(PvFixture f, ParavirtBackend backend, List<ParavirtDecision>? decisions = null, ParavirtOptions? options = null) =>
        Pv.Plan(f.Cb.ParavirtSites, backend, ProcessMemory.Snapshot(), options, decisions: decisions);

    private static byte[] Padded(PvFixture f, ReadOnlySpan<byte> code, int length)
    {
        var b = new byte[length];
        code.CopyTo(b);
        f.Cb.Nops.AddNops(b.AsSpan(code.Length));
        return b;
    }

    [Fact]
    public void Native_inline_sequences_replace_the_indirect_calls_and_compute_the_same()
    {
        using var f = new PvFixture();
        var (saveFl, s0) = f.Site(ParavirtOps.SaveFl, Clobbers.RetReg, before: a => a.xor(eax, eax));
        var (tsc, s1) = f.Site(ParavirtOps.ReadTsc, Clobbers.Rax | Clobbers.Rdx, length: 9);
        var (ident, s2) = f.Site(ParavirtOps.Ident64, Clobbers.RetReg);
        ulong handFlags = f.Hand("flags", a => { a.xor(eax, eax); a.pushfq(); a.pop(rax); });
        ulong handTsc = f.Hand("tsc", a => { a.rdtsc(); a.shl(rdx, 32); a.or(rax, rdx); });
        f.Cb.Publish();
        var text = f.Text();

        ulong flags = Run.Call64(handFlags);
        Assert.Equal(flags, Run.Call64(saveFl));            // indirect, through the native slot
        foreach (ulong x in Inputs) Assert.Equal(x, Run.Call64(ident, x));

        var plan = Plan(f, f.Native);
        Assert.Equal(f.Native.InlineSequence(ParavirtOps.SaveFl)!.Value.Bytes.ToArray(), new byte[] { 0x9C, 0x58 });
        Assert.Equal(Padded(f, [0x9C, 0x58], 6), plan.Single(p => p.Site.Index == s0).New.ToArray());
        Assert.Equal(new byte[] { 0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0 }, plan.Single(p => p.Site.Index == s1).New.ToArray());
        Assert.Equal(Padded(f, [0x48, 0x89, 0xF8], 6), plan.Single(p => p.Site.Index == s2).New.ToArray());

        Poker.Apply(plan);
        Assert.Equal(Padded(f, [0x9C, 0x58], 6), f.SiteBytes(s0));
        Assert.Equal(flags, Run.Call64(saveFl));
        foreach (ulong x in Inputs) Assert.Equal(x, Run.Call64(ident, x));
        ulong t0 = Run.Call64(handTsc), t = Run.Call64(tsc), t1 = Run.Call64(handTsc);
        Assert.InRange(t, t0, t1);

        Poker.Revert(plan);
        Assert.Equal(text, f.Text());
        Assert.Equal(flags, Run.Call64(saveFl));
    }

    [Fact]
    public void Popcount_is_inlined_when_the_cpu_has_popcnt_and_a_direct_call_otherwise()
    {
        using var f = new PvFixture();
        var (fn, s) = f.Site(ParavirtOps.Popcount, Clobbers.RetReg);
        f.Cb.Publish();
        foreach (ulong x in Inputs) Assert.Equal((ulong)BitOperations.PopCount(x), Run.Call64(fn, x));
        var plan = Plan(f, f.Native);
        var bytes = Assert.Single(plan).New.ToArray();
        if (f.Cpu.Has(Altpatch.Cpu.CpuFeature.Popcnt))
            Assert.Equal(Padded(f, [0xF3, 0x48, 0x0F, 0xB8, 0xC7], 6), bytes);
        else
            Assert.Equal(Mnemonic.Call, PvFixture.Decode(bytes, f.Cb.ParavirtSites[s].Address).Mnemonic);
        Poker.Apply(plan);
        foreach (ulong x in Inputs) Assert.Equal((ulong)BitOperations.PopCount(x), Run.Call64(fn, x));
        Poker.Revert(plan);
    }

    /// <summary>
    /// The seed's rule: the call's rel32 is computed against the site's final address. The target is
    /// decoded at the site's address before anything runs, so a rel32 computed against the buffer (or
    /// anything else) fails this assertion instead of crashing the test host.
    /// </summary>
    [Fact]
    public void Direct_call_rel32_is_computed_against_the_site_address()
    {
        using var f = new PvFixture();
        var (fn, s) = f.Site(ParavirtOps.Mix64, Clobbers.Any);
        f.Cb.Publish();
        var site = f.Cb.ParavirtSites[s];
        var decisions = new List<ParavirtDecision>();
        var plan = Plan(f, f.Native, decisions);
        var bytes = Assert.Single(plan).New.ToArray();

        var (mnemonic, target, length) = PvFixture.Decode(bytes, site.Address);
        Assert.Equal(Mnemonic.Call, mnemonic);
        Assert.Equal(5, length);
        Assert.Equal(f.Native.Implementation(ParavirtOps.Mix64).Target, target);
        Assert.Equal(Padded(f, bytes.AsSpan(0, 5), 6), bytes);
        Assert.Equal(ParavirtStrategy.DirectCall, decisions.Single().Strategy);
        Assert.Contains($"0x{target:x}", decisions.Single().Detail);

        foreach (ulong x in Inputs) Assert.Equal(ParavirtOps.Mix64Reference(x), Run.Call64(fn, x));
        Poker.Apply(plan);
        foreach (ulong x in Inputs) Assert.Equal(ParavirtOps.Mix64Reference(x), Run.Call64(fn, x));
        Poker.Revert(plan);
        Assert.Equal(site.Original.ToArray(), f.SiteBytes(s));
    }

    [Fact]
    public void A_jump_op_becomes_jmp_rel32_to_its_implementation()
    {
        using var f = new PvFixture();
        var (fn, s) = f.JumpSite(ParavirtOps.TailReturn);
        f.Cb.Publish();
        var site = f.Cb.ParavirtSites[s];
        Assert.Equal(new byte[] { 0xFF, 0x25 }, site.Original[..2].ToArray());
        Assert.Equal(14UL, Run.Call64(fn, 7));
        var plan = Plan(f, f.Native);
        var (mnemonic, target, _) = PvFixture.Decode(plan[0].New.ToArray(), site.Address);
        Assert.Equal(Mnemonic.Jmp, mnemonic);
        Assert.Equal(f.Native.Implementation(ParavirtOps.TailReturn).Target, target);
        Poker.Apply(plan);
        Assert.Equal(14UL, Run.Call64(fn, 7));
        Assert.Equal(0UL, Run.Call64(fn, 1UL << 63));
        Poker.Revert(plan);
    }

    [Fact]
    public void A_nop_op_becomes_nothing_but_nops()
    {
        using var f = new PvFixture();
        var (fn, s) = f.Site(ParavirtOps.IoDelay, Clobbers.None, length: 8, before: a => a.mov(rax, rdi));
        f.Cb.Publish();
        Assert.Equal(42UL, Run.Call64(fn, 42));
        var decisions = new List<ParavirtDecision>();
        var plan = Plan(f, f.Native, decisions);
        Assert.Equal(Padded(f, [], 8), plan[0].New.ToArray());
        Assert.Equal(ParavirtStrategy.Nop, decisions[0].Strategy);
        Poker.Apply(plan);
        Assert.Equal(42UL, Run.Call64(fn, 42));
        Poker.Revert(plan);
    }

    /// <summary>The site of an op without implementation becomes ud2 (it is not run: it would raise SIGILL in the test host).</summary>
    [Fact]
    public void A_missing_op_becomes_ud2()
    {
        using var f = new PvFixture();
        var (_, s) = f.Site(ParavirtOps.SafeHalt, Clobbers.Any);
        f.Cb.Publish();
        var decisions = new List<ParavirtDecision>();
        var plan = Plan(f, f.Native, decisions);
        Assert.Equal(Padded(f, [0x0F, 0x0B], 6), plan[0].New.ToArray());
        Assert.Equal(Mnemonic.Ud2, PvFixture.Decode(plan[0].New.ToArray(), f.Cb.ParavirtSites[s].Address).Mnemonic);
        Assert.Equal(ParavirtStrategy.Ud2, decisions[0].Strategy);
        Poker.Apply(plan);
        Assert.Equal(plan[0].New.ToArray(), f.SiteBytes(s));
        Poker.Revert(plan);
        Assert.Equal(f.Cb.ParavirtSites[s].Original.ToArray(), f.SiteBytes(s));
    }

    [Fact]
    public void A_site_that_forbids_a_register_the_target_clobbers_keeps_its_indirect_call()
    {
        using var f = new PvFixture();
        const ulong K = 0x1111_2222_3333_4444;
        // rcx and rdx are live across these sites: they allow only rax
        var (mixKept, s0) = f.Site(ParavirtOps.Mix64, Clobbers.RetReg, before: a => a.mov(rcx, K), after: a => a.add(rax, rcx));
        var (tscKept, s1) = f.Site(ParavirtOps.ReadTsc, Clobbers.RetReg, length: 9, before: a => a.mov(rdx, K), after: a => a.mov(rax, rdx));
        // the same ops at sites that allow what the target clobbers
        var (mixCalled, s2) = f.Site(ParavirtOps.Mix64, Clobbers.Rax | Clobbers.Rcx | Clobbers.Rdx);
        var (tscShort, s3) = f.Site(ParavirtOps.ReadTsc, Clobbers.Rax | Clobbers.Rdx, length: 6); // inline (9 bytes) does not fit
        f.Cb.Publish();
        var text = f.Text();

        var decisions = new List<ParavirtDecision>();
        var plan = Plan(f, f.Native, decisions);
        Assert.DoesNotContain(plan, p => p.Site.Index == s0 || p.Site.Index == s1);
        Assert.Equal(ParavirtStrategy.Indirect, decisions[s0].Strategy);
        Assert.Contains("target clobbers rax|rcx|rdx, the site allows rax", decisions[s0].Detail);
        Assert.Equal(ParavirtReason.ClobbersNotAllowed, decisions[s0].Reason);
        Assert.Equal("target clobbers rax|rcx|rdx, the site allows rax", decisions[s0].Why);
        Assert.Equal(ParavirtStrategy.Indirect, decisions[s1].Strategy);
        Assert.Equal(ParavirtReason.ClobbersNotAllowed, decisions[s1].Reason);
        Assert.Equal(ParavirtReason.Patched, decisions[s2].Reason);
        Assert.Equal("", decisions[s2].Why);
        Assert.Equal(ParavirtStrategy.DirectCall, decisions[s2].Strategy);
        Assert.Equal(ParavirtStrategy.DirectCall, decisions[s3].Strategy);
        var tscPoke = plan.Single(p => p.Site.Index == s3).New.ToArray();
        Assert.Equal(f.Native.Implementation(ParavirtOps.ReadTsc).Target, PvFixture.Decode(tscPoke, f.Cb.ParavirtSites[s3].Address).Target);

        Poker.Apply(plan);
        foreach (ulong x in Inputs)
        {
            Assert.Equal(ParavirtOps.Mix64Reference(x) + K, Run.Call64(mixKept, x)); // rcx survived: the thunk kept it
            Assert.Equal(ParavirtOps.Mix64Reference(x), Run.Call64(mixCalled, x));
        }
        Assert.Equal(K, Run.Call64(tscKept));
        Assert.NotEqual(0UL, Run.Call64(tscShort));
        Poker.Revert(plan);
        Assert.Equal(text, f.Text());
    }

    [Fact]
    public void A_target_beyond_rel32_reach_keeps_the_indirect_call_and_says_why()
    {
        using var f = new PvFixture();
        var (fn, s) = f.Site(ParavirtOps.Mix64, Clobbers.Any);
        f.Cb.Publish();
        var site = f.Cb.ParavirtSites[s];
        var ops = Enumerable.Range(0, ParavirtOps.Count).Select(f.Native.Implementation).ToArray();
        var real = ops[ParavirtOps.Mix64];
        ops[ParavirtOps.Mix64] = real with { Target = site.Address + (3UL << 30) }; // 3 GiB away: never called
        var far = new ParavirtBackend("far", ops);

        var decisions = new List<ParavirtDecision>();
        var plan = Plan(f, far, decisions);
        Assert.True(plan.IsEmpty);
        Assert.Equal(ParavirtStrategy.Indirect, decisions[0].Strategy);
        Assert.Contains("beyond rel32 reach", decisions[0].Detail);
        Assert.Equal(ParavirtReason.OutOfReach, decisions[0].Reason);
        Assert.Equal($"target 0x{site.Address + (3UL << 30):x} is beyond rel32 reach of the site", decisions[0].Why);
        Assert.Equal(site.Original.ToArray(), f.SiteBytes(s));
        Assert.Equal(ParavirtOps.Mix64Reference(99), Run.Call64(fn, 99)); // through the slot
    }

    [Fact]
    public void Planning_twice_for_the_same_backend_gives_an_empty_second_plan()
    {
        using var f = new PvFixture();
        f.Site(ParavirtOps.Ident64, Clobbers.RetReg);
        f.Site(ParavirtOps.Mix64, Clobbers.Any);
        f.Cb.Publish();
        var plan = Plan(f, f.Native);
        Assert.Equal(2, plan.Count);
        Poker.Apply(plan);
        Assert.True(Pv.Plan(f.Cb.ParavirtSites, f.Native, ProcessMemory.Snapshot(), previous: f.Native).IsEmpty);
        Poker.Revert(plan);
    }

    [Fact]
    public void Noreplace_paravirt_gives_an_empty_plan()
    {
        using var f = new PvFixture();
        f.Site(ParavirtOps.Ident64, Clobbers.RetReg);
        f.Site(ParavirtOps.SafeHalt, Clobbers.Any);
        f.Cb.Publish();
        var log = new StringWriter();
        Assert.True(Plan(f, f.Native, options: new ParavirtOptions { NoReplace = true, Log = log }).IsEmpty);
        Assert.Contains("noreplace-paravirt", log.ToString());
    }

    [Fact]
    public void Debug_switch_logs_every_site_before_and_after()
    {
        using var f = new PvFixture();
        f.Site(ParavirtOps.Ident64, Clobbers.RetReg);
        f.Site(ParavirtOps.Mix64, Clobbers.RetReg);
        f.Cb.Publish();
        var log = new StringWriter();
        var site0 = f.Cb.ParavirtSites[0];
        Plan(f, f.Native, options: new ParavirtOptions { Log = log, TableName = "t" });
        var lines = log.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length);
        Assert.Contains("paravirt site #0 of 't'", lines[0]);
        Assert.Contains("ident_64", lines[0]);
        Assert.Contains($"{Convert.ToHexString(site0.Original.Span)} -> 4889F8", lines[0]);
        Assert.Contains("unchanged (indirect call kept", lines[1]);
    }

    [Fact]
    public void Emitted_sites_are_indirect_calls_through_their_slot()
    {
        using var f = new PvFixture();
        var (_, s) = f.Site(ParavirtOps.Popcount, Clobbers.RetReg, length: 11);
        var site = f.Cb.ParavirtSites[s];
        Assert.Equal(11, site.Length);
        var d = Decoder.Create(64, new ByteArrayCodeReader(site.Original.ToArray()), site.Address);
        d.Decode(out var call);
        Assert.Equal(Mnemonic.Call, call.Mnemonic);
        Assert.Equal(f.Table.SlotAddress(ParavirtOps.Popcount), call.IPRelativeMemoryAddress);
        d.Decode(out var pad);
        Assert.Equal(Mnemonic.Nop, pad.Mnemonic);
        Assert.Equal(5, pad.Length);
        Assert.Equal(f.Native.Implementation(ParavirtOps.Popcount).Slot, f.Table[ParavirtOps.Popcount]);
    }
}

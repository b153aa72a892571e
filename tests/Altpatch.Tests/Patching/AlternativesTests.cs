using Altpatch.Cpu;
using Altpatch.Emit;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Patching;

public class AlternativesTests
{
    // Features that select replacements in these tests. The replacements only use baseline x86-64
    // instructions, so they run on any CPU whatever the feature's name says.
    private const CpuFeature F1 = CpuFeature.Popcnt;
    private const CpuFeature F2 = CpuFeature.Avx2;
    private static readonly CpuFeatures None = CpuFeatures.Empty;
    private static readonly CpuFeatures Both = CpuFeatures.Empty.With(F1, F2);
    private static readonly ProtectPoker Poker = new();

    private static PatchPlan Plan(CodeBuilder cb, CpuFeatures cpu, AlternativeOptions? o = null) =>
        Alternatives.Plan(cb.AlternativeSites, cpu, ProcessMemory.Snapshot(), o);

    [Fact]
    public void Replacement_applies_when_the_feature_is_present_and_reverts_exactly()
    {
        using var cb = new CodeBuilder();
        ulong fn = cb.Function("f", b =>
        {
            b.Alternative(a => a.mov(eax, 1), a => { a.mov(eax, edi); a.add(eax, 100); }, F1);
            b.Code(a => a.ret());
        });
        cb.Publish();
        var site = cb.AlternativeSites[0];
        var before = Run.Text(cb);
        Assert.Equal(1, Run.Call(fn, 5));

        var plan = Plan(cb, None.With(F1));
        var poke = Assert.Single(plan);
        Assert.Equal(site.Address, poke.Address);
        Assert.Equal(site.Original.ToArray(), poke.Old.ToArray());
        var expected = new byte[site.Length];
        site.Replacement.Span.CopyTo(expected);
        cb.Nops.AddNops(expected.AsSpan(site.Replacement.Length));
        Assert.Equal(expected, poke.New.ToArray());

        Poker.Apply(plan);
        Assert.Equal(expected, Run.Read(site.Address, site.Length));
        Assert.Equal(105, Run.Call(fn, 5));

        Poker.Revert(plan);
        Assert.Equal(before, Run.Text(cb));
        Assert.Equal(1, Run.Call(fn, 5));
    }

    [Fact]
    public void Feature_absent_leaves_the_original_and_the_plan_is_empty()
    {
        using var cb = new CodeBuilder();
        cb.Function("f", b => { b.Alternative(a => a.mov(eax, 1), a => a.mov(eax, 2), F1); b.Code(a => a.ret()); });
        Assert.True(Plan(cb, None).IsEmpty);
    }

    [Fact]
    public void Decisions_name_the_alternative_each_site_gets_and_whether_the_plan_writes_it()
    {
        using var cb = new CodeBuilder();
        cb.Function("f", b =>
        {
            b.Alternative2(a => a.mov(eax, 1), a => a.mov(eax, 2), F1, a => a.mov(eax, 3), F2); // sites 0 and 1
            b.Alternative(a => a.mov(ecx, 1), a => a.mov(ecx, 2), F2);                          // site 2
            b.Code(a => a.ret());
        });
        cb.Publish();
        var decisions = new List<AlternativeDecision>();
        var plan = Alternatives.Plan(cb.AlternativeSites, None.With(F1), ProcessMemory.Snapshot(), null, decisions);
        Assert.Equal(2, decisions.Count);                                  // one per address
        Assert.Equal((0, 0, true, true), (decisions[0].Index, decisions[0].Chosen, decisions[0].Applied, decisions[0].Changed));
        Assert.Equal("X86_FEATURE_POPCNT present: replacement", decisions[0].Reason);
        Assert.Equal(plan[0].Why, decisions[0].Reason);
        Assert.Equal((2, -1, false, false), (decisions[1].Index, decisions[1].Chosen, decisions[1].Applied, decisions[1].Changed));
        Assert.Equal("X86_FEATURE_AVX2 absent: original", decisions[1].Reason);

        Poker.Apply(plan);
        decisions.Clear();
        var again = Alternatives.Plan(cb.AlternativeSites, Both, ProcessMemory.Snapshot(), null, decisions);
        Assert.Equal(1, decisions[0].Chosen);                               // both hold: ALTERNATIVE_2's second wins
        Assert.True(decisions[0].Changed && decisions[1].Changed && decisions[1].Chosen == 2);
        Assert.Equal(2, again.Count);
        Poker.Revert(plan);
    }

    [Fact]
    public void Not_flag_applies_when_the_feature_is_absent()
    {
        using var cb = new CodeBuilder();
        ulong fn = cb.Function("f", b => { b.Alternative(a => a.mov(eax, 1), a => a.mov(eax, 2), F1, AltFlags.Not); b.Code(a => a.ret()); });
        cb.Publish();
        Assert.True(Plan(cb, None.With(F1)).IsEmpty);
        var plan = Plan(cb, None);
        Poker.Apply(plan);
        Assert.Equal(2, Run.Call(fn, 0));
        Poker.Revert(plan);
        Assert.Equal(1, Run.Call(fn, 0));
    }

    [Theory]
    [InlineData(false, false, 1)]
    [InlineData(true, false, 2)]
    [InlineData(false, true, 3)]
    [InlineData(true, true, 3)] // both hold: the second alternative wins, as ALTERNATIVE_2 does
    public void Alternative2_the_last_alternative_whose_condition_holds_wins(bool f1, bool f2, int expected)
    {
        using var cb = new CodeBuilder();
        ulong fn = cb.Function("f", b =>
        {
            b.Alternative2(a => a.mov(eax, 1), a => a.mov(eax, 2), F1, a => { a.xor(eax, eax); a.add(eax, 3); }, F2);
            b.Code(a => a.ret());
        });
        cb.Publish();
        var cpu = None;
        if (f1) cpu = cpu.With(F1);
        if (f2) cpu = cpu.With(F2);
        var plan = Plan(cb, cpu);
        Poker.Apply(plan);
        Assert.Equal(expected, Run.Call(fn, 0));
        Assert.True(Plan(cb, cpu).IsEmpty);
        Poker.Revert(plan);
        Assert.Equal(1, Run.Call(fn, 0));
    }

    [Fact]
    public void Switching_features_replans_from_the_current_state()
    {
        using var cb = new CodeBuilder();
        ulong fn = cb.Function("f", b =>
        {
            b.Alternative2(a => a.mov(eax, 1), a => a.mov(eax, 2), F1, a => a.mov(eax, 3), F2);
            b.Code(a => a.ret());
        });
        cb.Publish();
        var before = Run.Text(cb);
        foreach (var (cpu, want) in new[] { (None.With(F1), 2), (Both, 3), (None.With(F1), 2), (None, 1), (None.With(F2), 3), (None, 1) })
        {
            Poker.Apply(Plan(cb, cpu));
            Assert.Equal(want, Run.Call(fn, 0));
        }
        Assert.Equal(before, Run.Text(cb));
    }

    /// <summary>
    /// The seed's bug: the replacement's call rel32 must be computed against the site's final address.
    /// The bytes are checked before anything runs: if the offset were computed against the buffer or
    /// the replacement's address, the decoded target would not be the helper and this test fails.
    /// </summary>
    [Fact]
    public void Call_in_a_replacement_is_encoded_against_the_site_address()
    {
        using var cb = new CodeBuilder();
        ulong helper = cb.Function("times3", b => b.Code(a => { a.lea(eax, __[rdi + rdi * 2]); a.ret(); }));
        ulong fn = cb.Function("f", b =>
        {
            b.Alternative(a => a.imul(eax, edi, 3), a => a.call(helper), F1);
            b.Code(a => a.ret());
        });
        cb.Publish();
        var site = cb.AlternativeSites[0];
        var plan = Plan(cb, None.With(F1));
        var bytes = plan[0].New.ToArray();

        Assert.Equal(0xE8, bytes[0]);
        int rel = BitConverter.ToInt32(bytes, 1);
        Assert.Equal(helper, (ulong)((long)site.Address + 5 + rel));
        // what a copy of the replacement would have been: wrong at the site
        Assert.NotEqual(site.Replacement.ToArray(), bytes[..5]);
        int relFromBuffer = BitConverter.ToInt32(site.Replacement.ToArray(), 1);
        Assert.NotEqual(helper, (ulong)((long)site.Address + 5 + relFromBuffer));

        Poker.Apply(plan);
        Assert.Equal(21, Run.Call(fn, 7));
        Poker.Revert(plan);
        Assert.Equal(21, Run.Call(fn, 7));
    }

    [Fact]
    public void Rip_relative_load_in_a_replacement_reads_the_same_data()
    {
        using var cb = new CodeBuilder();
        ulong data = cb.Data(BitConverter.GetBytes(0x1234_5678));
        ulong fn = cb.Function("f", b =>
        {
            b.Alternative(a => a.mov(eax, 0x1234_5678),
                          a => a.AddInstruction(Instruction.Create(Iced.Intel.Code.Mov_r32_rm32, Register.EAX, new MemoryOperand(Register.RIP, (long)data))), F1);
            b.Code(a => a.ret());
        });
        cb.Publish();
        var plan = Plan(cb, None.With(F1));
        var d = Decoder.Create(64, new ByteArrayCodeReader(plan[0].New.ToArray()), plan[0].Address);
        d.Decode(out var insn);
        Assert.Equal(data, insn.IPRelativeMemoryAddress);
        Poker.Apply(plan);
        Assert.Equal(0x1234_5678, Run.Call(fn, 0));
        Poker.Revert(plan);
    }

    [Fact]
    public void Internal_branches_in_a_replacement_stay_internal()
    {
        using var cb = new CodeBuilder();
        // abs(x): original uses cmov, replacement uses a branch to its own end
        ulong fn = cb.Function("abs", b =>
        {
            b.Alternative(a => { a.mov(eax, edi); a.neg(eax); a.cmovs(eax, edi); },
                          a =>
                          {
                              var done = a.CreateLabel();
                              a.mov(eax, edi);
                              a.test(eax, eax);
                              a.jns(done);
                              a.neg(eax);
                              a.Label(ref done);
                              a.nop();
                          }, F1);
            b.Code(a => a.ret());
        });
        cb.Publish();
        foreach (int x in new[] { 0, 5, -5, int.MaxValue, -int.MaxValue }) Assert.Equal(Math.Abs(x), Run.Call(fn, x));
        var plan = Plan(cb, None.With(F1));
        Poker.Apply(plan);
        foreach (int x in new[] { 0, 5, -5, int.MaxValue, -int.MaxValue }) Assert.Equal(Math.Abs(x), Run.Call(fn, x));
        Poker.Revert(plan);
    }

    [Fact]
    public void Debug_switch_logs_every_site_before_and_after()
    {
        using var cb = new CodeBuilder();
        cb.Function("f", b => { b.Alternative(a => a.mov(eax, 1), a => a.mov(eax, 2), F1); b.Alternative(a => a.mov(eax, 1), a => a.mov(eax, 2), F2); b.Code(a => a.ret()); });
        var log = new StringWriter();
        Plan(cb, None.With(F1), new AlternativeOptions { Log = log, TableName = "t" });
        var lines = log.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length);
        Assert.Contains("alternative site #0 of 't'", lines[0]);
        Assert.Contains("B801000000 -> B802000000", lines[0]);
        Assert.Contains("unchanged", lines[1]);
    }
}

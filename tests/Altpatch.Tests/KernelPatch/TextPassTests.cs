using Altpatch.Cpu;
using Altpatch.Images;
using Altpatch.Images.Boot;
using static Altpatch.Tests.Images.SyntheticTables;
using static Altpatch.Tests.KernelPatch.BootImageBuilder;
using F = Altpatch.Cpu.CpuFeature;

namespace Altpatch.Tests.KernelPatch;

/// <summary>The text writers besides alternative_instructions() (jump_label_init, static_call_init, ftrace_init,
/// sched_dynamic_update) on synthetic images, against bytes worked out by hand from the kernel's functions.</summary>
public class TextPassTests
{
    private static KernelBootState State(ReturnThunkKind thunk = ReturnThunkKind.Default, params F[] features) => State(KernelCommandLine.Empty, thunk, features);

    private static KernelBootState State(KernelCommandLine cmdline, ReturnThunkKind thunk = ReturnThunkKind.Default, params F[] features) =>
        new(CpuFeatures.Empty.With(features).WithIdentity(CpuVendor.Intel, 6, 85, 7), thunk, 2, KernelHypervisor.None, commandLine: cmdline);

    private static byte[] At(KernelPatchResult r, ulong address, int n) => r.Patched.ReadBytes(address, n).ToArray();

    private static KernelPatchResult Patch(BootImageBuilder b, bool symbols = true, PreemptMode? preempt = null, KernelBootState? state = null)
    {
        var img = b.Open();
        var cmdline = KernelCommandLine.Parse(preempt is { } m ? "preempt=" + m.ToString().ToLowerInvariant() : "");
        state ??= State(cmdline);
        return KernelBootPatcher.Patch(img, state, KernelThunks.Find(img), new KernelTextOptions { Symbols = symbols ? b.TableSymbols() : null });
    }

    private static readonly byte[] Nop5 = Hex("0f 1f 44 00 00"), Xor5Rax = Hex("2e 2e 2e 31 c0"), RetForm = Hex("c3 cc cc cc cc");

    /// <summary>Names the kernel functions a synthetic image needs (at fixed places in .text).</summary>
    private static BootImageBuilder Builder(bool is64 = true)
    {
        var b = new BootImageBuilder(is64);
        b.Symbols = new Dictionary<string, ulong>
        {
            ["__fentry__"] = b.Text + 0x2f00,
            ["__static_call_return0"] = b.Text + 0x2e20,
            ["__static_call_return"] = b.Text + 0x2e30,
            ["ftrace_caller"] = b.Text + 0x2f10,
            ["ftrace_regs_caller"] = b.Text + 0x2f20,
        };
        b.Put(b.Text + 0x2f00, 0xc3);
        b.Put(b.Text + 0x2e20, 0x31, 0xc0, 0xc3);
        b.Put(b.Text + 0x2e30, 0xc3, 0xcc);
        return b;
    }

    private static ulong Func(BootImageBuilder b, int n) => b.Text + 0x2e40 + (ulong)n * 0x10;

    // ---------------------------------------------------------------- ftrace_init

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Ftrace_turns_every_call_fentry_into_the_5_byte_nop(bool is64)
    {
        var b = Builder(is64);
        ulong f = b.Symbols!["__fentry__"];
        ulong[] sites = [b.Text + 0x100, b.Text + 0x200, b.InitText + 0x10];
        foreach (var s in sites)
            b.Put(s, Branch(0xe8, s, f));
        b.McountRecords.AddRange([sites[0], 0, sites[1], sites[2]]);   // a NULL word is padding
        var r = Patch(b);
        foreach (var s in sites)
            Assert.Equal(is64 ? Nop5 : Hex("3e 8d 74 26 00"), At(r, s, 5));
        Assert.Equal(3, r.Passes.Single(p => p.Pass == BootPass.Ftrace).Pokes);
        Assert.Equal(3, r.TextTables!.Mcount.Length);
        Assert.Equal(3, r.TextTables.Mcount[2].Index);
    }

    [Fact]
    public void Ftrace_stops_at_a_record_that_is_not_call_fentry_as_ftrace_bug_does()
    {
        var b = Builder();
        ulong f = b.Symbols!["__fentry__"];
        ulong a = b.Text + 0x100, bad = b.Text + 0x200, c = b.Text + 0x300;
        b.Put(a, Branch(0xe8, a, f));
        b.Put(bad, Branch(0xe8, bad, b.Text + 0x2e30));   // a call, but not to __fentry__
        b.Put(c, Branch(0xe8, c, f));
        b.McountRecords.AddRange([c, bad, a]);              // processed in address order
        var r = Patch(b);
        Assert.Equal(Nop5, At(r, a, 5));
        Assert.Equal(0xe8, At(r, bad, 1)[0]);
        Assert.Equal(Branch(0xe8, c, f), At(r, c, 5));
        Assert.Contains(r.TextDecisions, d => d.Contains("ftrace_bug() disables ftrace", StringComparison.Ordinal));
    }

    [Fact]
    public void Ftrace_boot_tracer_keeps_the_nops_and_says_why()
    {
        var b = Builder();
        ulong f = b.Symbols!["__fentry__"], s = b.Text + 0x100;
        b.Put(s, Branch(0xe8, s, f));
        b.McountRecords.Add(s);
        var img = b.Open();
        var r = KernelBootPatcher.Patch(img, State(KernelCommandLine.Parse("ftrace=function ftrace_filter=vfs_read")), KernelThunks.Find(img),
            new KernelTextOptions { Symbols = b.TableSymbols() });
        Assert.Equal(Nop5, At(r, s, 5));
        Assert.Contains(r.TextDecisions, d => d.StartsWith("ftrace=function: the boot tracer starts in early_trace_init()", StringComparison.Ordinal)
            && d.Contains("ftrace_filter=vfs_read", StringComparison.Ordinal));
    }

    [Fact]
    public void Ftrace_finds_its_records_and_fentry_without_symbols()
    {
        var b = Builder();
        ulong f = b.Symbols!["__fentry__"];
        for (int i = 0; i < 10; i++)
        {
            ulong s = b.Text + 0x100 + (ulong)i * 0x20;
            b.Put(s, Branch(0xe8, s, f));
            b.McountRecords.Add(s);
        }
        var r = Patch(b, symbols: false);
        Assert.Equal(f, r.TextTables!.Fentry);
        Assert.Equal(10, r.TextTables.Mcount.Length);
        Assert.Equal(Nop5, At(r, b.Text + 0x100 + 9 * 0x20, 5));
        Assert.Contains("scan", r.TextTables.Tables.Single(t => t.Kind == KernelSiteKind.Mcount).Format, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------- static_call_init

    [Fact]
    public void Static_call_init_points_every_site_at_its_keys_function()
    {
        var b = Builder();
        ulong tramp = b.Text + 0x2d00;
        b.PutTrampoline(tramp, Func(b, 0));
        ulong kF = b.Keys, kNull = b.Keys + 0x10, kRet0 = b.Keys + 0x20;
        b.PutKey(kF, Func(b, 1));                              // key->func moved on (e.g. static_call_update_early)
        b.PutKey(kRet0, b.Symbols!["__static_call_return0"]);
        ulong call = b.Text + 0x100, nul = b.Text + 0x110, ret0 = b.Text + 0x120, tail = b.Text + 0x130, tailNull = b.Text + 0x140,
            jcc = b.Text + 0x150, init = b.InitText + 0x20, exit = b.ExitText + 0x10;
        foreach (var (at, key, isTail, op) in new[] { (call, kF, false, 0xe8), (nul, kNull, false, 0xe8), (ret0, kRet0, false, 0xe8),
                     (tail, kF, true, 0xe9), (tailNull, kNull, true, 0xe9), (init, kF, false, 0xe8), (exit, kF, false, 0xe8) })
        {
            b.Put(at, Branch((byte)op, at, tramp));
            b.StaticCallSites.Add((at, key, isTail));
        }
        b.Put(jcc, Branch(0x85, jcc, tramp, 6));
        b.StaticCallSites.Add((jcc, kNull, true));
        var r = Patch(b);
        Assert.Equal(Branch(0xe8, call, Func(b, 1)), At(r, call, 5));
        Assert.Equal(Nop5, At(r, nul, 5));                                          // NOP: x86_nops[5]
        Assert.Equal(Xor5Rax, At(r, ret0, 5));                                      // __static_call_return0: xor5rax
        Assert.Equal(Branch(0xe9, tail, Func(b, 1)), At(r, tail, 5));
        Assert.Equal(RetForm, At(r, tailNull, 5));                                  // RETHUNK not set yet in setup_arch()
        Assert.Equal(Branch(0x85, jcc, b.Symbols["__static_call_return"], 6), At(r, jcc, 6));
        Assert.Equal(Branch(0xe8, init, Func(b, 1)), At(r, init, 5));              // .init.text too
        Assert.Equal(Branch(0xe8, exit, Func(b, 1)), At(r, exit, 5));              // and .exit.text: no kernel_text_address() check
        Assert.Equal(Branch(0xe9, tramp, Func(b, 0)), At(r, tramp, 5));            // trampolines are left alone
    }

    [Fact]
    public void Static_call_init_without_symbols_is_not_done_and_says_so()
    {
        var b = Builder();
        ulong tramp = b.Text + 0x2d00;
        b.PutTrampoline(tramp, Func(b, 0));
        b.PutTrampoline(tramp + 8, Func(b, 2));
        b.PutKey(b.Keys, Func(b, 1));
        ulong site = b.Text + 0x100;
        for (int i = 0; i < 8; i++)                 // enough for the scan to take them for the table
        {
            b.Put(site + (ulong)i * 8, Branch(0xe8, site + (ulong)i * 8, tramp));
            b.StaticCallSites.Add((site + (ulong)i * 8, b.Keys, false));
        }
        var img = b.Open();
        var r = KernelBootPatcher.Patch(img, State(), KernelThunks.Find(img), new KernelTextOptions());
        Assert.Equal(8, r.TextTables!.StaticCalls.Length);
        Assert.Equal(Branch(0xe8, site, tramp), At(r, site, 5));
        Assert.Contains(r.TextDecisions, d => d.StartsWith("static_call_init(): NOT DONE", StringComparison.Ordinal));
    }

    [Fact]
    public void A_non_tail_static_call_site_holding_a_jmp_is_a_table_error_naming_the_entry()
    {
        var b = Builder();
        ulong tramp = b.Text + 0x2d00;
        b.PutTrampoline(tramp, Func(b, 0));
        ulong site = b.Text + 0x100;
        b.Put(site, Branch(0xe8, site, tramp));
        b.Put(site + 0x10, Branch(0xe9, site + 0x10, tramp));
        b.StaticCallSites.Add((site, b.Keys, false));
        b.StaticCallSites.Add((site + 0x10, b.Keys, false));
        var e = Assert.Throws<ImageFormatException>(() => Patch(b));
        Assert.Contains(".static_call_sites[1]", e.Message, StringComparison.Ordinal);
        Assert.Contains("__static_call_validate()", e.Message, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------- jump_label_init

    [Fact]
    public void Jump_labels_are_left_as_built_and_listed_with_their_two_legal_states()
    {
        var b = Builder();
        ulong nop2 = b.Text + 0x100, jmp5 = b.Text + 0x110, target = b.Text + 0x180, exitSite = b.ExitText + 0x20;
        b.Put(nop2, 0x66, 0x90);
        b.Put(jmp5, Branch(0xe9, jmp5, target));
        b.Put(exitSite, Nop5);
        b.PutKey(b.Keys + 0x40, 1, pointer: false);                 // enabled: a likely branch (branch=1) is then a NOP
        b.JumpEntries.Add((nop2, target, b.Keys + 0x40, true));
        b.JumpEntries.Add((jmp5, target, b.Keys + 0x50, true));     // disabled ^ branch = jmp
        b.JumpEntries.Add((exitSite, target, b.Keys + 0x50, false));
        var r = Patch(b);
        Assert.True(r.Passes.Single(p => p.Pass == BootPass.JumpLabels).Plan.IsEmpty);
        var sites = r.TextSites.Where(s => s.Kind == KernelSiteKind.JumpLabel).ToList();
        Assert.Equal(3, sites.Count);
        var s0 = sites[0];
        Assert.True(s0.Dynamic);
        Assert.Equal(target, s0.Target);
        Assert.Contains(s0.States, st => st.Matches(Hex("66 90"), s0, s0.Address, 64));
        byte[] jmp8 = [0xeb, (byte)(target - (nop2 + 2))];
        Assert.Contains(s0.States, st => st.Matches(jmp8, s0, s0.Address, 64));
        Assert.DoesNotContain(s0.States, st => st.Matches([0xeb, 0x00], s0, s0.Address, 64));   // a jmp elsewhere is not legal
        Assert.Contains(sites[1].States, st => st.Matches(Nop5, sites[1], sites[1].Address, 64));
        Assert.False(sites[2].Dynamic);                                // .exit.text: never updated after boot
        Assert.Empty(sites[2].States);
        Assert.Contains(r.TextDecisions, d => d.StartsWith("jump_label_init(): 3 jump labels (1 jmp, 2 NOP as built)", StringComparison.Ordinal));
    }

    [Fact]
    public void A_jump_label_that_is_neither_nop_nor_jmp_to_its_target_is_a_table_error()
    {
        var b = Builder();
        ulong site = b.Text + 0x100;
        b.Put(site, Branch(0xe9, site, b.Text + 0x200));
        b.JumpEntries.Add((site, b.Text + 0x180, b.Keys, false));   // the jmp goes elsewhere
        var e = Assert.Throws<ImageFormatException>(() => Patch(b));
        Assert.Contains("__jump_table[0]", e.Message, StringComparison.Ordinal);
        Assert.Contains("not to the entry's target", e.Message, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------- sched_dynamic_update

    /// <summary>The five PREEMPT_DYNAMIC static calls: trampolines, keys, one site each, the enabled functions, and a
    /// sched_init that calls sched_dynamic_update(<paramref name="defaultMode"/>) (none: no call, CONFIG_PREEMPT).</summary>
    private static (BootImageBuilder B, ulong[] Tramps, ulong[] Sites) Preempt(bool is64, int? defaultMode)
    {
        var b = Builder(is64);
        var sym = b.Symbols!;
        string[] names = ["cond_resched", "might_resched", "preempt_schedule", "preempt_schedule_notrace", "irqentry_exit_cond_resched"];
        string[] enabled = ["__cond_resched", "__cond_resched", "preempt_schedule_thunk", "preempt_schedule_notrace_thunk", "raw_irqentry_exit_cond_resched"];
        for (int i = 0; i < 4; i++)
            sym[enabled[i + (i > 0 ? 1 : 0)]] = Func(b, i);
        var tramps = new ulong[5];
        var sites = new ulong[5];
        for (int i = 0; i < 5; i++)
        {
            tramps[i] = b.Text + 0x2d00 + (ulong)i * 8;
            sym["__SCT__" + names[i]] = tramps[i];
            ulong init = i < 2 ? sym["__static_call_return0"] : sym[enabled[i]];   // DEFINE_STATIC_CALL_RET0 for the first two
            b.PutTrampoline(tramps[i], init);
            sites[i] = b.Text + 0x100 + (ulong)i * 0x10;
            if (is64)
            {
                b.PutKey(b.Keys + (ulong)i * 0x10, init);
                b.Put(sites[i], Branch(0xe8, sites[i], tramps[i]));
                b.StaticCallSites.Add((sites[i], b.Keys + (ulong)i * 0x10, false));
            }
        }
        ulong schedInit = b.Text + 0x2c00, update = b.Text + 0x2bf0;
        sym["sched_init"] = schedInit;
        sym["sched_dynamic_update"] = update;
        sym["sched_init_end"] = schedInit + 0x40;
        b.Put(update, 0xc3);
        byte[] mov = defaultMode is { } m ? (is64 ? [0xbf, (byte)m, 0, 0, 0] : [0xb8, (byte)m, 0, 0, 0]) : [0x90, 0x90, 0x90, 0x90, 0x90];
        b.Put(schedInit, [0x90, .. mov, .. defaultMode is null ? Nop5 : Branch(0xe8, schedInit + 6, update), 0xc3]);
        return (b, tramps, sites);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Preempt_voluntary_as_the_build_default(bool is64)
    {
        var (b, tramps, sites) = Preempt(is64, 1);
        var r = Patch(b);
        Assert.Equal(PreemptMode.Voluntary, r.Preempt);
        ulong cr = b.Symbols!["__cond_resched"];
        Assert.Equal(Branch(0xe9, tramps[0], cr), At(r, tramps[0], 5));     // cond_resched <- __cond_resched
        Assert.Equal(Branch(0xe9, tramps[1], cr), At(r, tramps[1], 5));
        for (int i = 2; i < 5; i++)
            Assert.Equal(RetForm, At(r, tramps[i], 5));                     // <- NULL: ret; int3 (RETHUNK not set yet)
        if (is64)
        {
            Assert.Equal(Branch(0xe8, sites[0], cr), At(r, sites[0], 5));
            for (int i = 2; i < 5; i++)
                Assert.Equal(Nop5, At(r, sites[i], 5));
        }
        Assert.Contains(r.TextDecisions, d => d.StartsWith("Dynamic Preempt: voluntary (the build's default: sched_init+0x6 calls sched_dynamic_update(1))", StringComparison.Ordinal));
        // ftrace's pass comes first, then sched_init()'s preempt_dynamic_init()
        var order = r.Passes.Select(p => p.Pass).ToList();
        Assert.True(order.IndexOf(BootPass.Ftrace) < order.IndexOf(BootPass.PreemptDynamic));
    }

    [Fact]
    public void Preempt_full_from_the_command_line_leaves_the_calls_as_built_and_runs_before_ftrace()
    {
        var (b, tramps, sites) = Preempt(true, 1);
        var img = b.Open();
        var before = img.ReadBytes(tramps[0], 5).ToArray();
        var r = Patch(b, preempt: PreemptMode.Full);
        Assert.Equal(PreemptMode.Full, r.Preempt);
        // cond_resched/might_resched <- __static_call_return0 (their initial func: nothing written), the others enabled
        Assert.Equal(before, At(r, tramps[0], 5));
        Assert.Equal(Xor5Rax, At(r, sites[0], 5));                          // static_call_init() made it xor5rax
        Assert.Equal(Branch(0xe8, sites[2], b.Symbols!["preempt_schedule_thunk"]), At(r, sites[2], 5));
        var order = r.Passes.Select(p => p.Pass).ToList();
        Assert.True(order.IndexOf(BootPass.PreemptDynamic) < order.IndexOf(BootPass.Ftrace));
    }

    [Fact]
    public void Preempt_none_disables_might_resched_too()
    {
        var (b, tramps, sites) = Preempt(true, 0);
        var r = Patch(b);
        Assert.Equal(PreemptMode.None, r.Preempt);
        Assert.Equal(Branch(0xe8, sites[0], b.Symbols!["__cond_resched"]), At(r, sites[0], 5));
        Assert.Equal(Xor5Rax, At(r, sites[1], 5));                           // might_resched <- __static_call_return0
        Assert.Equal(Branch(0xe9, tramps[1], b.Symbols["__static_call_return0"]), At(r, tramps[1], 5));
    }

    [Fact]
    public void A_build_whose_sched_init_does_not_call_sched_dynamic_update_is_preempt_full()
    {
        var (b, _, _) = Preempt(true, null);
        var r = Patch(b);
        Assert.Equal(PreemptMode.Full, r.Preempt);
        Assert.Contains(r.TextDecisions, d => d.Contains("does not call sched_dynamic_update (CONFIG_PREEMPT)", StringComparison.Ordinal));
    }

    // ---------------------------------------------------------------- the sites' legal states

    [Fact]
    public void Static_call_and_ftrace_sites_list_their_legal_states()
    {
        var b = Builder();
        ulong f = b.Symbols!["__fentry__"];
        ulong m = b.Text + 0x300;
        b.Put(m, Branch(0xe8, m, f));
        b.McountRecords.Add(m);
        ulong tramp = b.Text + 0x2d00;
        b.PutTrampoline(tramp, Func(b, 0));
        b.Symbols["__SCT__test"] = tramp;
        b.PutKey(b.Keys, Func(b, 1));
        ulong call = b.Text + 0x100, tail = b.Text + 0x110;
        b.Put(call, Branch(0xe8, call, tramp));
        b.Put(tail, Branch(0xe9, tail, tramp));
        b.StaticCallSites.Add((call, b.Keys, false));
        b.StaticCallSites.Add((tail, b.Keys, true));
        b.AddReturn(b.Text + 0x400);                                         // tells where __x86_return_thunk is
        var r = Patch(b, state: State(ReturnThunkKind.Default, F.Rethunk));

        var ms = r.TextSites.Single(s => s.Kind == KernelSiteKind.Mcount);
        Assert.Equal(Nop5, ms.After.ToArray());
        Assert.Equal([BootPass.Ftrace], ms.Writers.AsEnumerable());
        Assert.Contains(ms.States, st => st.Matches(Branch(0xe8, m, b.Symbols["ftrace_regs_caller"]), ms, m, 64));
        Assert.Contains(ms.States, st => st.Form == KernelTextStateForm.BranchToTrampoline && st.Matches(Branch(0xe8, m, 0xffffffffc0000000), ms, m, 64));

        var cs = r.TextSites.Single(s => s.Kind == KernelSiteKind.StaticCall && s.Address == call);
        Assert.Contains(cs.States, st => st.Matches(Nop5, cs, call, 64));
        Assert.Contains(cs.States, st => st.Matches(Xor5Rax, cs, call, 64));
        Assert.Contains(cs.States, st => st.Form == KernelTextStateForm.BranchToFunction && st.Matches(Branch(0xe8, call, Func(b, 5)), cs, call, 64));
        Assert.DoesNotContain(cs.States, st => st.Matches(RetForm, cs, call, 64));
        var ts = r.TextSites.Single(s => s.Kind == KernelSiteKind.StaticCall && s.Address == tail);
        Assert.Contains(ts.States, st => st.Matches(RetForm, ts, tail, 64));
        Assert.Contains(ts.States, st => st.Matches(Branch(0xe9, tail, b.ReturnThunk), ts, tail, 64));   // RET form with RETHUNK
        var tr = r.TextSites.Single(s => s.Kind == KernelSiteKind.StaticCallTrampoline);
        Assert.Equal(5, tr.Length);
        Assert.True(tr.Dynamic);
        Assert.Equal("__SCT__test", tr.Detail);
        Assert.Equal("test", cs.Detail);
    }
}

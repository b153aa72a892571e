using System.Globalization;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Emit;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Iced.Intel;
using Spectre.Console;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Cli.Commands;

/// <summary>The demo's paravirt and SMP lock parts.</summary>
internal static partial class DemoCommand
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>A function around one paravirt site; <c>Expected</c> is null where the result cannot be predicted (the TSC).</summary>
    private sealed record PvFunction(string Name, int Site, ulong Address, ulong[] Inputs, Func<ulong, ulong>? Expected, bool Called = true);

    private sealed record PvSiteRow(int Index, string Function, ParavirtSite Site, byte[] Original, byte[] Native, ParavirtDecision NativeDecision,
                                    byte[] Hypervisor, ParavirtDecision HypervisorDecision);

    private sealed record PvFunctionRow(PvFunction F, ulong[] Indirect, ulong[] Native, ulong[] Hypervisor, ulong[] NativeAgain, bool Agree);

    private sealed record ParavirtDemo(ulong Table, List<PvSiteRow> Sites, List<PvFunctionRow> Functions, int NativePokes, int HypervisorPokes,
                                       int BackPokes, long HypervisorCalls, long HypervisorCallsAfterSwitchBack, bool BackToNativeExact, bool RestoreExact)
    {
        public bool ResultsAgree => Functions.All(f => f.Agree);

        public bool Ok => ResultsAgree && BackToNativeExact && RestoreExact && HypervisorCalls > 0 && HypervisorCallsAfterSwitchBack == HypervisorCalls;

        public JsonObject ToJson() => new()
        {
            ["opsTable"] = Terminal.Addr(Table),
            ["backends"] = new JsonArray("native", "hypervisor", "native"),
            ["pokes"] = new JsonObject { ["native"] = NativePokes, ["hypervisor"] = HypervisorPokes, ["backToNative"] = BackPokes },
            ["sites"] = new JsonArray([.. Sites.Select(r => (JsonNode)new JsonObject
            {
                ["index"] = r.Index,
                ["function"] = r.Function,
                ["address"] = Terminal.Addr(r.Site.Address),
                ["op"] = ParavirtOps.Name(r.Site.Type),
                ["type"] = r.Site.Type,
                ["clobbers"] = r.Site.Clobbers.ToRegisterList(),
                ["length"] = r.Site.Length,
                ["original"] = Terminal.Hex(r.Original),
                ["originalAsm"] = Disassembler.Text(r.Original, r.Site.Address),
                ["native"] = Terminal.Hex(r.Native),
                ["nativeAsm"] = Disassembler.Text(r.Native, r.Site.Address),
                ["nativeStrategy"] = r.NativeDecision.Strategy.ToString(),
                ["nativeWhy"] = r.NativeDecision.Detail,
                ["hypervisor"] = Terminal.Hex(r.Hypervisor),
                ["hypervisorAsm"] = Disassembler.Text(r.Hypervisor, r.Site.Address),
                ["hypervisorStrategy"] = r.HypervisorDecision.Strategy.ToString(),
                ["hypervisorWhy"] = r.HypervisorDecision.Detail,
            })]),
            ["functions"] = new JsonArray([.. Functions.Select(r => (JsonNode)new JsonObject
            {
                ["name"] = r.F.Name,
                ["inputs"] = Numbers(r.F.Inputs),
                ["indirect"] = Numbers(r.Indirect),
                ["native"] = Numbers(r.Native),
                ["hypervisor"] = Numbers(r.Hypervisor),
                ["nativeAgain"] = Numbers(r.NativeAgain),
                ["agree"] = r.Agree,
            })]),
            ["hypervisorCalls"] = HypervisorCalls,
            ["hypervisorCallsAfterSwitchBack"] = HypervisorCallsAfterSwitchBack,
            ["backToNativeExact"] = BackToNativeExact,
            ["restoreExact"] = RestoreExact,
            ["resultsAgree"] = ResultsAgree,
        };

        public void Print(IAnsiConsole console)
        {
            console.MarkupLine($"[bold]Paravirt[/]: op sites calling through the ops table at {Terminal.Addr(Table)}; native backend, then hypervisor-like (counting shims), then native again");
            var t = new Table().Border(TableBorder.Simple).AddColumns("#", "function", "op", "clobbers", "len", "original", "native", "hypervisor");
            foreach (var r in Sites)
                t.AddRow(N(r.Index), r.Function, ParavirtOps.Name(r.Site.Type), r.Site.Clobbers.ToRegisterList(), N(r.Site.Length),
                         Markup.Escape(Compact(r.Original, r.Site.Address)),
                         Markup.Escape($"{Compact(r.Native, r.Site.Address)}\n({r.NativeDecision.Strategy}{Why(r.NativeDecision)})"),
                         Markup.Escape($"{Compact(r.Hypervisor, r.Site.Address)}\n({r.HypervisorDecision.Strategy})"));
            console.Write(t);
            console.MarkupLine($"Plans: native {NativePokes} poke(s), to hypervisor {HypervisorPokes}, back to native {BackPokes}; one write per site.");
            var res = new Table().Border(TableBorder.Simple).AddColumns("function", "input", "indirect", "native", "hypervisor", "native again", "");
            foreach (var r in Functions.Where(r => r.F.Called))
                for (int k = 0; k < r.F.Inputs.Length; k++)
                    res.AddRow(r.F.Name, Terminal.Addr(r.F.Inputs[k]), Terminal.Addr(r.Indirect[k]), Terminal.Addr(r.Native[k]), Terminal.Addr(r.Hypervisor[k]), Terminal.Addr(r.NativeAgain[k]),
                               r.Agree ? "[green]ok[/]" : "[red]MISMATCH[/]");
            console.Write(res);
            console.MarkupLine($"Hypervisor shims counted {HypervisorCalls} op call(s); after switching back: {HypervisorCallsAfterSwitchBack} (no more calls go through them).");
            console.MarkupLine(BackToNativeExact ? "Back to native: every site byte-identical to the first native patch. [green]ok[/]" : "[red]Back to native: bytes differ![/]");
            console.MarkupLine(RestoreExact ? "Restore: every site is its original indirect call again. [green]ok[/]" : "[red]Restore: text differs from the original![/]");
        }

        private static string Why(ParavirtDecision d) => d.Reason is ParavirtReason.Patched or ParavirtReason.Restored ? "" : ": " + d.Why;
    }

    private sealed record LockSiteRow(int Index, ulong Address, string Instruction, byte Smp, byte Up, byte Restored);

    private sealed record LockDemo(List<LockSiteRow> Sites, int UpPokes, int SmpPokes, long[] Expected, long[] SmpCounts, long[] UpCounts,
                                   int Threads, long[] ThreadedExpected, long[] ThreadedCounts, bool RestoreExact)
    {
        public bool ResultsAgree => Expected.AsSpan().SequenceEqual(SmpCounts) && Expected.AsSpan().SequenceEqual(UpCounts) && ThreadedExpected.AsSpan().SequenceEqual(ThreadedCounts);

        public bool Ok => ResultsAgree && RestoreExact;

        public JsonObject ToJson() => new()
        {
            ["sites"] = new JsonArray([.. Sites.Select(r => (JsonNode)new JsonObject
            {
                ["index"] = r.Index,
                ["address"] = Terminal.Addr(r.Address),
                ["instruction"] = r.Instruction,
                ["smp"] = r.Smp.ToString("x2", Inv),
                ["up"] = r.Up.ToString("x2", Inv),
                ["restored"] = r.Restored.ToString("x2", Inv),
            })]),
            ["pokes"] = new JsonObject { ["up"] = UpPokes, ["smp"] = SmpPokes },
            ["expected"] = Numbers(Expected),
            ["smpCounts"] = Numbers(SmpCounts),
            ["upCounts"] = Numbers(UpCounts),
            ["threads"] = Threads,
            ["threadedExpected"] = Numbers(ThreadedExpected),
            ["threadedCounts"] = Numbers(ThreadedCounts),
            ["restoreExact"] = RestoreExact,
            ["resultsAgree"] = ResultsAgree,
        };

        public void Print(IAnsiConsole console)
        {
            console.MarkupLine("[bold]SMP locks[/]: lock prefixes recorded like LOCK_PREFIX's .smp_locks; SMP -> UP -> SMP");
            var t = new Table().Border(TableBorder.Simple).AddColumns("#", "address", "instruction", "SMP", "UP", "SMP again");
            foreach (var r in Sites)
                t.AddRow(N(r.Index), Terminal.Addr(r.Address), Markup.Escape(r.Instruction), r.Smp.ToString("X2", Inv), r.Up.ToString("X2", Inv), r.Restored.ToString("X2", Inv));
            console.Write(t);
            console.MarkupLine($"Plans: to UP {UpPokes} poke(s) of 1 byte, back to SMP {SmpPokes}.");
            console.MarkupLine($"Counters (xadd, add 2, inc, cmpxchg +3) after {Expected[0]} rounds: SMP {string.Join(' ', SmpCounts)}, UP single thread {string.Join(' ', UpCounts)} (want {string.Join(' ', Expected)}).");
            console.MarkupLine($"Back on SMP, {Threads} threads: {string.Join(' ', ThreadedCounts)} (want {string.Join(' ', ThreadedExpected)}) " +
                               (ThreadedExpected.AsSpan().SequenceEqual(ThreadedCounts) ? "[green]no increment lost[/]" : "[red]LOST INCREMENTS[/]"));
            console.MarkupLine(RestoreExact ? "Restore: every lock prefix is back. [green]ok[/]" : "[red]Restore: text differs from the original![/]");
        }
    }

    private static JsonArray Numbers(IEnumerable<ulong> xs) => new([.. xs.Select(x => (JsonNode)x)]);

    private static JsonArray Numbers(IEnumerable<long> xs) => new([.. xs.Select(x => (JsonNode)x)]);

    private static unsafe ulong Call(ulong fn, ulong x) => ((delegate* unmanaged<ulong, ulong>)fn)(x);

    private static ParavirtDemo RunParavirt(CpuFeatures cpu)
    {
        using var cb = new CodeBuilder();
        var table = cb.CreateOpsTable(ParavirtOps.Count);
        var native = NativeBackend.Emit(cb, cpu);
        using var hypervisor = HypervisorBackend.Emit(cb, native);
        const ulong Live = 0x5EED_0000_0000_0005;
        ulong[] xs = [0, 7, 0xFF, 0x1234_5678_9ABC_DEF0, ulong.MaxValue];
        var fns = new List<PvFunction>();

        PvFunction Site(string name, int type, Clobbers clobbers, int length, ulong[] inputs, Func<ulong, ulong>? expected,
                        Action<Assembler>? before = null, Action<Assembler>? after = null, bool called = true)
        {
            int site = -1;
            ulong fn = cb.Function(name, b =>
            {
                b.Code(a => { a.sub(rsp, 8); before?.Invoke(a); });
                site = b.ParavirtCall(type, clobbers, length);
                b.Code(a => { after?.Invoke(a); a.add(rsp, 8); a.ret(); });
            });
            var f = new PvFunction(name, site, fn, inputs, expected, called);
            fns.Add(f);
            return f;
        }

        ulong handFlags = cb.Function("hand_save_fl", b => b.Code(a => { a.xor(eax, eax); a.pushfq(); a.pop(rax); a.ret(); }));
        ulong flags = 0;
        Site("save_fl", ParavirtOps.SaveFl, Clobbers.RetReg, 6, [0], _ => flags, before: a => a.xor(eax, eax));
        Site("read_tsc", ParavirtOps.ReadTsc, Clobbers.Rax | Clobbers.Rdx, 9, [0], null);
        Site("popcount", ParavirtOps.Popcount, Clobbers.RetReg, 6, xs, x => (ulong)BitOperations.PopCount(x));
        Site("ident_64", ParavirtOps.Ident64, Clobbers.RetReg, 6, xs, x => x);
        Site("mix64", ParavirtOps.Mix64, Clobbers.Any, 6, xs, ParavirtOps.Mix64Reference);
        Site("mix64_keeps_rcx", ParavirtOps.Mix64, Clobbers.RetReg, 6, xs, x => ParavirtOps.Mix64Reference(x) + Live,
             before: a => a.mov(rcx, Live), after: a => a.add(rax, rcx));
        Site("io_delay", ParavirtOps.IoDelay, Clobbers.None, 6, xs, x => x, before: a => a.mov(rax, rdi));
        int tailSite = -1;
        ulong tail = cb.Function("tail_return", b => tailSite = b.ParavirtJump(ParavirtOps.TailReturn));
        fns.Add(new PvFunction("tail_return", tailSite, tail, xs, x => unchecked(x * 2)));
        Site("safe_halt", ParavirtOps.SafeHalt, Clobbers.Any, 6, [], null, called: false); // ud2 once patched: never called
        cb.Publish();
        flags = Call(handFlags, 0);

        var sites = cb.ParavirtSites;
        byte[] SiteBytes(int i) => cb.Memory.Code.Slice((int)(sites[i].Address - cb.TextStart), sites[i].Length).ToArray();
        ulong[] Results(PvFunction f) => f.Called ? [.. f.Inputs.Select(x => Call(f.Address, x))] : [];

        var original = Text(cb);
        var rt = new ParavirtRuntime(table, sites, native, new ProtectPoker(), new ParavirtOptions { TableName = "demo-pv" });
        var indirect = fns.Select(Results).ToList();
        var toNative = rt.Apply();
        var nativeDecisions = rt.Decisions.ToList();
        var nativeBytes = Enumerable.Range(0, sites.Count).Select(SiteBytes).ToList();
        var nativeText = Text(cb);
        var nativeResults = fns.Select(Results).ToList();
        var toHv = rt.SwitchTo(hypervisor);
        var hvDecisions = rt.Decisions.ToList();
        var hvBytes = Enumerable.Range(0, sites.Count).Select(SiteBytes).ToList();
        var hvResults = fns.Select(Results).ToList();
        long hvCalls = hypervisor.TotalCalls;
        var back = rt.SwitchTo(native);
        bool backExact = Text(cb).AsSpan().SequenceEqual(nativeText);
        var againResults = fns.Select(Results).ToList();
        long hvCallsAfter = hypervisor.TotalCalls;
        rt.Restore();
        bool restoreExact = Text(cb).AsSpan().SequenceEqual(original);

        var siteRows = new List<PvSiteRow>();
        for (int i = 0; i < sites.Count; i++)
            siteRows.Add(new PvSiteRow(i, fns.Last(f => f.Address <= sites[i].Address).Name, sites[i], sites[i].Original.ToArray(),
                                       nativeBytes[i], nativeDecisions[i], hvBytes[i], hvDecisions[i]));
        var fnRows = new List<PvFunctionRow>();
        for (int k = 0; k < fns.Count; k++)
        {
            var f = fns[k];
            bool agree = true;
            for (int j = 0; j < f.Inputs.Length; j++)
            {
                ulong[] got = [indirect[k][j], nativeResults[k][j], hvResults[k][j], againResults[k][j]];
                agree &= f.Expected is { } e ? got.All(g => g == e(f.Inputs[j])) : got.All(g => g != 0);
            }
            fnRows.Add(new PvFunctionRow(f, indirect[k], nativeResults[k], hvResults[k], againResults[k], agree));
        }
        return new ParavirtDemo(table.Address, siteRows, fnRows, toNative.Count, toHv.Count, back.Count, hvCalls, hvCallsAfter, backExact, restoreExact);
    }

    private static unsafe LockDemo RunLocks()
    {
        using var cb = new CodeBuilder();
        ulong count = cb.Function("count", b =>
        {
            ulong top = b.Code(a => a.mov(eax, 1));
            b.Lock(a => a.xadd(__qword_ptr[rdi], rax));
            b.Lock(a => a.add(__qword_ptr[rdi + 8], 2));
            b.Lock(a => a.inc(__qword_ptr[rdi + 16]));
            b.Code(a => a.mov(rax, __qword_ptr[rdi + 24]));
            ulong retry = b.Code(a => a.lea(rcx, __[rax + 3]));
            b.Lock(a => a.cmpxchg(__qword_ptr[rdi + 24], rcx));
            b.Code(a => { a.jne(retry); a.dec(rsi); a.jnz(top); a.ret(); });
        });
        cb.Publish();
        var counters = (long*)NativeMemory.AlignedAlloc(64, 64);
        try
        {
            long[] Run(long n, int threads)
            {
                new Span<long>(counters, 4).Clear();
                var ts = Enumerable.Range(0, threads).Select(_ => new Thread(() => ((delegate* unmanaged<long*, long, long>)count)(counters, n))).ToList();
                ts.ForEach(t => t.Start());
                ts.ForEach(t => t.Join());
                return new Span<long>(counters, 4).ToArray();
            }
            static long[] Want(long n) => [n, 2 * n, n, 3 * n];
            byte At(ulong a) => cb.Memory.Code[(int)(a - cb.TextStart)];

            var original = Text(cb);
            const long Rounds = 1000, PerThread = 100_000;
            const int Threads = 2;
            var reg = new SmpLockRegistry(new ProtectPoker());
            reg.Add(cb.LockModule("demo-locks"));
            var smpCounts = Run(Rounds, 1);
            var smp = cb.LockSites.Select(At).ToArray();
            var up = reg.SwitchToUp();
            var upBytes = cb.LockSites.Select(At).ToArray();
            var upCounts = Run(Rounds, 1);
            var back = reg.SwitchToSmp();
            var restored = cb.LockSites.Select(At).ToArray();
            var threaded = Run(PerThread, Threads);
            bool exact = Text(cb).AsSpan().SequenceEqual(original);

            var rows = new List<LockSiteRow>();
            for (int i = 0; i < cb.LockSites.Count; i++)
            {
                ulong a = cb.LockSites[i];
                var bytes = cb.Memory.Code.Slice((int)(a - cb.TextStart), 16).ToArray();
                rows.Add(new LockSiteRow(i, a, Disassembler.Lines(bytes, a)[0], smp[i], upBytes[i], restored[i]));
            }
            return new LockDemo(rows, up.Count, back.Count, Want(Rounds), smpCounts, upCounts, Threads, Want(Threads * PerThread), threaded, exact);
        }
        finally
        {
            NativeMemory.AlignedFree(counters);
        }
    }
}

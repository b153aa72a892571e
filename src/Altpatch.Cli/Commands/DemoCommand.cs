using System.CommandLine;
using System.Text.Json.Nodes;
using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Emit;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using Iced.Intel;
using Spectre.Console;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Cli.Commands;

/// <summary>
/// <c>altpatch demo</c>: emits functions with alternatives keyed to features this CPU has and lacks,
/// runs them, patches them for this CPU, runs them again, reverts and checks every byte is back.
/// Then the same for paravirt call sites (native backend, switch to the hypervisor-like backend and
/// back) and for lock prefixes (SMP, UP, SMP again, with threads).
/// </summary>
internal static partial class DemoCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print the result as JSON instead of tables." };
        var cmd = new Command("demo", "Patch live code in this process: alternatives for this CPU, paravirt sites (native, hypervisor-like, native), lock prefixes (SMP, UP, SMP); run, patch, run again, revert.")
        {
            json,
        };
        cmd.SetAction(parse => Execute(parse, parse.GetValue(json)));
        return cmd;
    }

    /// <summary>A demo function: its name, its inputs and how to call it.</summary>
    private sealed record Function(string Name, ulong Address, int[] Inputs, bool NoArgs = false)
    {
        public int Call(int x) => NoArgs ? Run0(Address) : Run1(Address, x);

        private static unsafe int Run1(ulong fn, int x) => ((delegate* unmanaged<int, int>)fn)(x);
        private static unsafe int Run0(ulong fn) => ((delegate* unmanaged<int>)fn)();
    }

    /// <summary>Runs the demo; also what <c>altpatch</c> with no command does.</summary>
    internal static int Execute(ParseResult parse, bool json)
    {
        var cpu = CpuFeatures.Detect();
        using var cb = new CodeBuilder();
        var functions = Emit(cb);
        var siteFunction = new Dictionary<ulong, string>();
        foreach (var s in cb.AlternativeSites)
            siteFunction[s.Address] = functions.Last(f => f.Address <= s.Address).Name;
        cb.Publish();

        var textBefore = Text(cb);
        var before = functions.Select(f => f.Inputs.Select(f.Call).ToArray()).ToArray();

        var decisions = new List<AlternativeDecision>();
        var plan = Alternatives.Plan(cb.AlternativeSites, cpu, ProcessMemory.Snapshot(), new AlternativeOptions { TableName = "demo" }, decisions);
        var siteBytesBefore = cb.AlternativeSites.Select(s => s.Original.ToArray()).ToArray();
        var poker = new ProtectPoker();
        poker.Apply(plan);
        var siteBytesAfter = cb.AlternativeSites.Select(s => cb.Memory.Code.Slice((int)(s.Address - cb.TextStart), s.Length).ToArray()).ToArray();
        var after = functions.Select(f => f.Inputs.Select(f.Call).ToArray()).ToArray();

        poker.Revert(plan);
        var textReverted = Text(cb);
        var reverted = functions.Select(f => f.Inputs.Select(f.Call).ToArray()).ToArray();
        bool revertExact = textBefore.AsSpan().SequenceEqual(textReverted);
        bool agree = true;
        for (int i = 0; i < functions.Count; i++)
            agree &= before[i].AsSpan().SequenceEqual(after[i]) && before[i].AsSpan().SequenceEqual(reverted[i]);

        // which alternative of each address the plan applied
        var applied = new bool[cb.AlternativeSites.Count];
        foreach (var d in decisions)
            if (d.Applied && d.Changed) applied[d.Chosen] = true;

        var pv = RunParavirt(cpu);
        var locks = RunLocks();
        var hookDemo = RunHook();

        if (json)
        {
            var sites = new JsonArray();
            for (int i = 0; i < cb.AlternativeSites.Count; i++)
            {
                var s = cb.AlternativeSites[i];
                sites.Add((JsonNode)new JsonObject
                {
                    ["index"] = i,
                    ["function"] = siteFunction[s.Address],
                    ["address"] = Terminal.Addr(s.Address),
                    ["length"] = s.Length,
                    ["feature"] = CpuFeatureInfo.MacroName(s.Feature),
                    ["condition"] = s.Condition,
                    ["cpuHasFeature"] = cpu.Has(s.Feature),
                    ["applied"] = applied[i],
                    ["before"] = Terminal.Hex(siteBytesBefore[i]),
                    ["after"] = Terminal.Hex(siteBytesAfter[i]),
                    ["beforeAsm"] = Disassembler.Text(siteBytesBefore[i], s.Address),
                    ["afterAsm"] = Disassembler.Text(siteBytesAfter[i], s.Address),
                });
            }
            var fns = new JsonArray();
            for (int i = 0; i < functions.Count; i++)
            {
                var f = functions[i];
                fns.Add((JsonNode)new JsonObject
                {
                    ["name"] = f.Name,
                    ["address"] = Terminal.Addr(f.Address),
                    ["inputs"] = new JsonArray([.. f.Inputs.Select(x => (JsonNode)x)]),
                    ["before"] = new JsonArray([.. before[i].Select(x => (JsonNode)x)]),
                    ["after"] = new JsonArray([.. after[i].Select(x => (JsonNode)x)]),
                    ["reverted"] = new JsonArray([.. reverted[i].Select(x => (JsonNode)x)]),
                });
            }
            Terminal.Json(parse, new JsonObject
            {
                ["cpu"] = new JsonObject
                {
                    ["vendor"] = cpu.Vendor.ToString(),
                    ["family"] = cpu.Family,
                    ["featureCount"] = cpu.Features.Count(),
                },
                ["pokes"] = plan.Count,
                ["sites"] = sites,
                ["functions"] = fns,
                ["resultsAgree"] = agree,
                ["revertExact"] = revertExact,
                ["paravirt"] = pv.ToJson(),
                ["smpLocks"] = locks.ToJson(),
                ["hook"] = hookDemo.ToJson(),
            });
        }
        else
        {
            var console = Terminal.Console(parse);
            console.MarkupLine($"[bold]Altpatch demo[/]: alternatives on live x86-64 code in this process");
            console.MarkupLine(Markup.Escape($"CPU: {cpu.Vendor} family {cpu.Family}, {cpu.Features.Count()} features detected"));
            console.WriteLine();
            var table = new Table().Border(TableBorder.Simple).AddColumns("#", "function", "address", "len", "condition", "applied", "before", "after");
            for (int i = 0; i < cb.AlternativeSites.Count; i++)
            {
                var s = cb.AlternativeSites[i];
                table.AddRow(
                    i.ToString(System.Globalization.CultureInfo.InvariantCulture), siteFunction[s.Address], Terminal.Addr(s.Address),
                    s.Length.ToString(System.Globalization.CultureInfo.InvariantCulture), Markup.Escape(s.Condition),
                    applied[i] ? "[green]yes[/]" : "no",
                    Markup.Escape(Compact(siteBytesBefore[i], s.Address)), Markup.Escape(Compact(siteBytesAfter[i], s.Address)));
            }
            console.Write(table);
            console.MarkupLine($"Plan: {plan.Count} poke(s), {plan.TotalBytes} bytes, one write per site.");
            console.WriteLine();
            var results = new Table().Border(TableBorder.Simple).AddColumns("function", "input", "original", "patched", "reverted", "");
            for (int i = 0; i < functions.Count; i++)
            {
                var f = functions[i];
                for (int k = 0; k < f.Inputs.Length; k++)
                {
                    bool ok = before[i][k] == after[i][k] && before[i][k] == reverted[i][k];
                    results.AddRow(f.Name, f.NoArgs ? "-" : Terminal.Addr((uint)f.Inputs[k]), N(before[i][k]), N(after[i][k]), N(reverted[i][k]), ok ? "[green]ok[/]" : "[red]MISMATCH[/]");
                }
            }
            console.Write(results);
            console.MarkupLine(revertExact
                ? $"Revert: all {textBefore.Length} bytes of text are back exactly. [green]ok[/]"
                : "[red]Revert: text differs from the original![/]");
            console.WriteLine();
            pv.Print(console);
            console.WriteLine();
            locks.Print(console);
            console.WriteLine();
            hookDemo.Print(console);
        }
        return agree && revertExact && pv.Ok && locks.Ok && hookDemo.Ok ? 0 : 1;
    }

    private static string N(int v) => v.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>What <paramref name="cb"/> has emitted so far: its text from the start up to the cursor.</summary>
    private static byte[] Text(CodeBuilder cb) => cb.Memory.Code[..(int)(cb.Cursor - cb.TextStart)].ToArray();

    /// <summary>Disassembly with runs of NOPs collapsed ("nop x36 bytes").</summary>
    private static string Compact(byte[] bytes, ulong address)
    {
        var lines = Disassembler.Lines(bytes, address);
        var outLines = new List<string>();
        int nops = 0;
        // count NOP bytes by re-decoding lengths
        var d = Iced.Intel.Decoder.Create(64, new ByteArrayCodeReader(bytes), address);
        foreach (var line in lines)
        {
            d.Decode(out var insn);
            if (insn.Mnemonic == Mnemonic.Nop) { nops += insn.Length; continue; }
            if (nops > 0) { outLines.Add($"nops({nops})"); nops = 0; }
            outLines.Add(line);
        }
        if (nops > 0) outLines.Add($"nops({nops})");
        return string.Join("\n", outLines);
    }

    /// <summary>The demo's functions, each with at least one alternative site.</summary>
    private static List<Function> Emit(CodeBuilder cb)
    {
        var list = new List<Function>();

        // popcount(x): a SWAR bit count, replaced by POPCNT when the CPU has it
        list.Add(new("popcount", cb.Function("popcount", b =>
        {
            b.Alternative(a =>
            {
                a.mov(eax, edi); a.shr(eax, 1); a.and(eax, 0x55555555); a.sub(edi, eax);
                a.mov(eax, edi); a.shr(edi, 2); a.and(eax, 0x33333333); a.and(edi, 0x33333333); a.add(eax, edi);
                a.mov(edi, eax); a.shr(edi, 4); a.add(eax, edi); a.and(eax, 0x0F0F0F0F);
                a.imul(eax, eax, 0x01010101); a.shr(eax, 24);
            }, a => a.popcnt(eax, edi), CpuFeature.Popcnt);
            b.Code(a => a.ret());
        }), [0, 1, 0xFF, 0x12345678, -1]));

        // triple(x): imul, replaced by a call to a helper (the call's rel32 must be computed for the site)
        ulong helper = cb.Function("times3_helper", b => b.Code(a => { a.lea(eax, __[rdi + rdi * 2]); a.ret(); }));
        list.Add(new("triple", cb.Function("triple", b =>
        {
            b.Alternative(a => a.imul(eax, edi, 3), a => a.call(helper), CpuFeature.Always);
            b.Code(a => a.ret());
        }), [0, 7, -5, 1_000_000]));

        // magic(): an immediate, replaced by a RIP-relative load of the same constant
        ulong constant = cb.Data(BitConverter.GetBytes(0x1234_5678));
        list.Add(new("magic", cb.Function("magic", b =>
        {
            b.Alternative(a => a.mov(eax, 0x1234_5678),
                          a => a.AddInstruction(Instruction.Create(Iced.Intel.Code.Mov_r32_rm32, Register.EAX, new MemoryOperand(Register.RIP, (long)constant))),
                          CpuFeature.Sse4_2);
            b.Code(a => a.ret());
        }), [0], NoArgs: true));

        // abs(x): cmov, replaced when the CPU LACKS XOP (a NOT-flag site) by a branch to the end of the replacement
        list.Add(new("abs", cb.Function("abs", b =>
        {
            b.Alternative(a => { a.mov(eax, edi); a.neg(eax); a.cmovs(eax, edi); },
                          a =>
                          {
                              var done = a.CreateLabel();
                              a.mov(eax, edi); a.test(eax, eax); a.jns(done); a.neg(eax);
                              a.Label(ref done);
                              a.nop();
                          }, CpuFeature.Xop, AltFlags.Not);
            b.Code(a => a.ret());
        }), [0, 5, -5, int.MaxValue, -int.MaxValue]));

        // tzcnt(x), x != 0: BSF; TZCNT with BMI1; with AVX2 also break the false output dependency (ALTERNATIVE_2)
        list.Add(new("trailing_zeros", cb.Function("trailing_zeros", b =>
        {
            b.Alternative2(a => a.bsf(eax, edi),
                           a => a.tzcnt(eax, edi), CpuFeature.Bmi1,
                           a => { a.xor(eax, eax); a.tzcnt(eax, edi); }, CpuFeature.Avx2);
            b.Code(a => a.ret());
        }), [1, 8, 0x10_0000, int.MinValue]));

        // clear_lowest(x): lea/and, replaced by BLSR on CPUs with AMD's TBM (absent on Intel: stays original)
        list.Add(new("clear_lowest", cb.Function("clear_lowest", b =>
        {
            b.Alternative(a => { a.lea(eax, __[rdi - 1]); a.and(eax, edi); }, a => a.blsr(eax, edi), CpuFeature.Tbm);
            b.Code(a => a.ret());
        }), [0b1100, 1, int.MinValue, 0]));

        return list;
    }
}

using Altpatch.Cpu;
using Altpatch.Emit;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using CsCheck;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Patching;

/// <summary>
/// Random site sets, executed: every function returns what its chosen alternative computes; applying
/// the same features twice gives an empty second plan; applying then reverting leaves memory
/// byte-identical.
/// </summary>
public class AlternativesPropertyTests
{
    private static readonly CpuFeature[] Features = [CpuFeature.Popcnt, CpuFeature.Avx2, CpuFeature.Bmi1, CpuFeature.Always];

    /// <summary>Code that leaves <paramref name="v"/> in eax, in one of several shapes (some position-dependent).</summary>
    private static Action<Assembler> Returning(int kind, int v, ulong identity) => kind switch
    {
        0 => a => a.mov(eax, v),
        1 => a => { a.xor(eax, eax); a.add(eax, v); },
        2 => a => { a.mov(edi, v); a.call(identity); },            // relative call to a helper
        _ => a =>                                                  // internal branch
        {
            var l = a.CreateLabel();
            a.mov(eax, v);
            a.jmp(l);
            a.mov(eax, -1);
            a.Label(ref l);
            a.nop();
        },
    };

    private readonly record struct Spec(int Orig, int Repl, int Feature, bool Not, bool Two, int Repl2, int Feature2)
    {
        public static Spec From(int s) => new(s & 3, (s >> 2) & 3, (s >> 4) & 3, ((s >> 6) & 1) != 0, ((s >> 7) & 1) != 0, (s >> 8) & 3, (s >> 10) & 3);
    }

    [Fact]
    public void Apply_twice_is_idempotent_and_revert_restores_memory_exactly()
    {
        Gen.Select(Gen.Int.Array[1, 40], Gen.Int[0, 15]).Sample((specs, cpuBits) =>
        {
            var cpu = CpuFeatures.Empty;
            for (int i = 0; i < Features.Length; i++)
                if ((cpuBits & (1 << i)) != 0) cpu = cpu.With(Features[i]);

            using var cb = new CodeBuilder();
            ulong identity = cb.Function("identity", b => b.Code(a => { a.mov(eax, edi); a.ret(); }));
            var fns = new List<(ulong Fn, int Expected, int Original)>();
            for (int i = 0; i < specs.Length; i++)
            {
                var s = Spec.From(specs[i]);
                int vo = 1000 + i * 4, v1 = vo + 1, v2 = vo + 2;
                ulong fn = cb.Function($"f{i}", b =>
                {
                    var list = new List<(Action<Assembler>, CpuFeature, AltFlags)>
                    {
                        (Returning(s.Repl, v1, identity), Features[s.Feature], s.Not ? AltFlags.Not : AltFlags.None),
                    };
                    if (s.Two) list.Add((Returning(s.Repl2, v2, identity), Features[s.Feature2], AltFlags.None));
                    b.AlternativeN(Returning(s.Orig, vo, identity), list);
                    b.Code(a => a.ret());
                });
                bool a1 = cpu.Has(Features[s.Feature]) != s.Not;
                bool a2 = s.Two && cpu.Has(Features[s.Feature2]);
                fns.Add((fn, a2 ? v2 : a1 ? v1 : vo, vo));
            }
            cb.Publish();
            var before = Run.Text(cb);

            var poker = new ProtectPoker();
            var plan = Alternatives.Plan(cb.AlternativeSites, cpu, ProcessMemory.Snapshot());
            poker.Apply(plan);
            foreach (var (fn, expected, _) in fns) Assert.Equal(expected, Run.Call(fn, 0));

            var again = Alternatives.Plan(cb.AlternativeSites, cpu, ProcessMemory.Snapshot());
            Assert.True(again.IsEmpty, $"second plan has {again.Count} pokes");

            poker.Revert(plan);
            Assert.Equal(before, Run.Text(cb));
            foreach (var (fn, _, original) in fns) Assert.Equal(original, Run.Call(fn, 0));
        }, iter: 60);
    }
}

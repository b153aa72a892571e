using Altpatch.Cpu;
using Altpatch.Emit;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Bench;

/// <summary>
/// Paravirt op call cost: the cost of one op call (popcount, <c>rax = popcnt(rdi)</c>) in each form a
/// site can take, measured inside emitted code: every function is the same loop, 64-byte aligned,
/// that runs its site <see cref="Calls"/> times (<c>mov rdi, rbx; SITE; add r12, rax; dec rbx; jnz</c>),
/// so one managed call covers 10,000 op calls. Baselines are the same loop written by hand: a direct
/// <c>call</c> to the same function, and the <c>popcnt</c> instruction itself.
/// </summary>
[SimpleJob(launchCount: 2, warmupCount: 5, iterationCount: 15)]
[MedianColumn, MinColumn]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public unsafe class ParavirtBench
{
    /// <summary>Op calls per benchmark invocation.</summary>
    public const int Calls = 10_000;

    private CodeBuilder cb = null!;
    private HypervisorBackend hypervisor = null!;
    private ulong indirect, patchedCall, patchedInline, hypervisorCall, handCall, handInline, handCallNop, handInlineNop;

    [GlobalSetup]
    public void Setup()
    {
        cb = new CodeBuilder();
        var table = cb.CreateOpsTable(ParavirtOps.Count);
        var native = NativeBackend.Emit(cb, CpuFeatures.Detect());
        if (native.InlineSequence(ParavirtOps.Popcount) is null) throw new InvalidOperationException("this benchmark needs POPCNT");
        hypervisor = HypervisorBackend.Emit(cb, native);
        native.FillSlots(table);
        // "native without inline": the same implementations, the seed's default patch (a direct call)
        var callsOnly = new ParavirtBackend("native-calls", Enumerable.Range(0, native.OpCount).Select(native.Implementation).ToArray());
        ulong popcountFn = native.Implementation(ParavirtOps.Popcount).Target;

        indirect = Loop(b => b.ParavirtCall(ParavirtOps.Popcount, Clobbers.RetReg));
        patchedCall = Loop(b => b.ParavirtCall(ParavirtOps.Popcount, Clobbers.RetReg));
        patchedInline = Loop(b => b.ParavirtCall(ParavirtOps.Popcount, Clobbers.RetReg));
        hypervisorCall = Loop(b => b.ParavirtCall(ParavirtOps.Popcount, Clobbers.RetReg));
        handCall = Loop(b => b.Code(a => a.call(popcountFn)));
        handInline = Loop(b => b.Code(a => a.popcnt(rax, rdi)));
        handCallNop = Loop(b => b.Code(a => { a.call(popcountFn); a.nop(); }));
        handInlineNop = Loop(b => b.Code(a => { a.popcnt(rax, rdi); a.nop(); }));
        cb.Publish();

        var sites = cb.ParavirtSites;
        var poker = new ProtectPoker();
        poker.Apply(Paravirt.Plan([sites[1]], callsOnly, ProcessMemory.Snapshot()));
        poker.Apply(Paravirt.Plan([sites[2]], native, ProcessMemory.Snapshot()));
        poker.Apply(Paravirt.Plan([sites[3]], hypervisor, ProcessMemory.Snapshot()));

        // every form computes the same sum
        long want = Run(handInline);
        foreach (ulong fn in new[] { indirect, patchedCall, patchedInline, hypervisorCall, handCall, handCallNop, handInlineNop })
            if (Run(fn) != want) throw new InvalidOperationException("a loop computes the wrong result");
    }

    /// <summary>
    /// <c>f(n)</c>: push rbx, r12; loop n times over SITE with rdi = the counter; returns the sum of rax.
    /// The loop starts on a 64-byte boundary (NOP-padded prologue), so every variant has the same alignment.
    /// </summary>
    private ulong Loop(Action<CodeBuilder> site) => cb.Function($"loop{cb.Functions.Count}", b =>
    {
        b.Code(a => { a.push(rbx); a.push(r12); a.sub(rsp, 8); a.mov(rbx, rdi); a.xor(r12d, r12d); });
        ulong top = LoopAlignment.NopAlign64(b);
        b.Code(a => a.mov(rdi, rbx));
        site(b);
        b.Code(a => { a.add(r12, rax); a.dec(rbx); a.jnz(top); a.mov(rax, r12); a.add(rsp, 8); a.pop(r12); a.pop(rbx); a.ret(); });
    });

    private static long Run(ulong fn) => ((delegate* unmanaged<long, long>)fn)(Calls);

    /// <summary>Every form's loop (baselines first in each group), for <see cref="Interleaved"/>.</summary>
    public IReadOnlyList<Interleaved.Form> Forms() =>
    [
        new("call", "HandCall", n => ((delegate* unmanaged<long, long>)handCall)(n)),
        new("call", "PatchedCall", n => ((delegate* unmanaged<long, long>)patchedCall)(n)),
        new("call", "HandCallNop", n => ((delegate* unmanaged<long, long>)handCallNop)(n)),
        new("call", "IndirectCall", n => ((delegate* unmanaged<long, long>)indirect)(n)),
        new("call", "HypervisorShimCall", n => ((delegate* unmanaged<long, long>)hypervisorCall)(n)),
        new("inline", "HandInline", n => ((delegate* unmanaged<long, long>)handInline)(n)),
        new("inline", "PatchedInline", n => ((delegate* unmanaged<long, long>)patchedInline)(n)),
        new("inline", "HandInlineNop", n => ((delegate* unmanaged<long, long>)handInlineNop)(n)),
    ];

    [GlobalCleanup]
    public void Cleanup()
    {
        hypervisor.Dispose();
        cb.Dispose();
    }

    /// <summary>Hand-written <c>call popcount</c>: the baseline of the call forms.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Calls), BenchmarkCategory("call")]
    public long HandCall() => Run(handCall);

    /// <summary>The site patched by the default strategy: <c>call rel32</c> + 1-byte NOP.</summary>
    [Benchmark(OperationsPerInvoke = Calls), BenchmarkCategory("call")]
    public long PatchedCall() => Run(patchedCall);

    /// <summary>Hand-written <c>call popcount; nop</c>: what the patched site is, written by hand.</summary>
    [Benchmark(OperationsPerInvoke = Calls), BenchmarkCategory("call")]
    public long HandCallNop() => Run(handCallNop);

    /// <summary>The site before patching: <c>call [rip+slot]</c> through the ops table.</summary>
    [Benchmark(OperationsPerInvoke = Calls), BenchmarkCategory("call")]
    public long IndirectCall() => Run(indirect);

    /// <summary>The site patched for the hypervisor-like backend: a direct call to the counting shim.</summary>
    [Benchmark(OperationsPerInvoke = Calls), BenchmarkCategory("call")]
    public long HypervisorShimCall() => Run(hypervisorCall);

    /// <summary>Hand-written <c>popcnt rax, rdi</c>: the baseline of the inline form.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Calls), BenchmarkCategory("inline")]
    public long HandInline() => Run(handInline);

    /// <summary>The site patched by the native backend: <c>popcnt rax, rdi</c> + 1-byte NOP.</summary>
    [Benchmark(OperationsPerInvoke = Calls), BenchmarkCategory("inline")]
    public long PatchedInline() => Run(patchedInline);

    /// <summary>Hand-written <c>popcnt rax, rdi; nop</c>: what the patched site is, written by hand.</summary>
    [Benchmark(OperationsPerInvoke = Calls), BenchmarkCategory("inline")]
    public long HandInlineNop() => Run(handInlineNop);
}

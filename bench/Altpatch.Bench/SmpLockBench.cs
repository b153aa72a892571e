using System.Runtime.InteropServices;
using Altpatch.Emit;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using BenchmarkDotNet.Attributes;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Bench;

/// <summary>
/// The cost of a locked instruction and of its UP-patched forms, single thread: <c>lock xadd [rdi], rax</c> against its UP-patched forms
/// (0x3E DS prefix, 0x90 NOP) and a hand-written plain <c>xadd</c>, each in the same 64-byte aligned
/// loop run <see cref="Ops"/> times inside emitted code (<c>mov eax, 1; [lock] xadd [rdi], rax; dec rsi; jnz</c>).
/// </summary>
[SimpleJob(launchCount: 2, warmupCount: 5, iterationCount: 15)]
[MedianColumn, MinColumn]
public unsafe class SmpLockBench
{
    /// <summary>xadd operations per benchmark invocation.</summary>
    public const int Ops = 10_000;

    private CodeBuilder cb = null!;
    private long* counter;
    private ulong locked, upDs, upNop, plain;

    [GlobalSetup]
    public void Setup()
    {
        cb = new CodeBuilder();
        counter = (long*)NativeMemory.AlignedAlloc(64, 64);
        *counter = 0;
        locked = Loop(b => b.Lock(a => a.xadd(__qword_ptr[rdi], rax)));
        upDs = Loop(b => b.Lock(a => a.xadd(__qword_ptr[rdi], rax)));
        upNop = Loop(b => b.Lock(a => a.xadd(__qword_ptr[rdi], rax)));
        plain = Loop(b => b.Code(a => a.xadd(__qword_ptr[rdi], rax)));
        cb.Publish();
        var locks = cb.LockSites;
        var poker = new ProtectPoker();
        poker.Apply(SmpLocks.Plan(new SmpLockModule("ds", cb.TextStart, cb.TextEnd, [locks[1]]), SmpMode.Up, ProcessMemory.Snapshot()));
        poker.Apply(SmpLocks.Plan(new SmpLockModule("nop", cb.TextStart, cb.TextEnd, [locks[2]]), SmpMode.Up, ProcessMemory.Snapshot(),
                                  new SmpLockOptions { UpByte = UpLockByte.Nop }));
    }

    private ulong Loop(Action<CodeBuilder> xadd) => cb.Function($"loop{cb.Functions.Count}", b =>
    {
        LoopAlignment.NopAlign64(b);
        ulong top = b.Code(a => a.mov(eax, 1));
        xadd(b);
        b.Code(a => { a.dec(rsi); a.jnz(top); a.ret(); });
    });

    private long Run(ulong fn) => ((delegate* unmanaged<long*, long, long>)fn)(counter, Ops);

    /// <summary>Every form's loop (the baseline first), for <see cref="Interleaved"/>.</summary>
    public IReadOnlyList<Interleaved.Form> Forms() =>
    [
        new("lock", "LockXadd", n => ((delegate* unmanaged<long*, long, long>)locked)(counter, n)),
        new("lock", "UpDsXadd", n => ((delegate* unmanaged<long*, long, long>)upDs)(counter, n)),
        new("lock", "UpNopXadd", n => ((delegate* unmanaged<long*, long, long>)upNop)(counter, n)),
        new("lock", "PlainXadd", n => ((delegate* unmanaged<long*, long, long>)plain)(counter, n)),
    ];

    [GlobalCleanup]
    public void Cleanup()
    {
        cb.Dispose();
        NativeMemory.AlignedFree(counter);
    }

    /// <summary>SMP form: <c>lock xadd</c>.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Ops)]
    public long LockXadd() => Run(locked);

    /// <summary>UP form with the DS prefix (0x3E): <c>ds xadd</c>.</summary>
    [Benchmark(OperationsPerInvoke = Ops)]
    public long UpDsXadd() => Run(upDs);

    /// <summary>UP form with a NOP (0x90): <c>nop; xadd</c>.</summary>
    [Benchmark(OperationsPerInvoke = Ops)]
    public long UpNopXadd() => Run(upNop);

    /// <summary>Hand-written plain <c>xadd</c>.</summary>
    [Benchmark(OperationsPerInvoke = Ops)]
    public long PlainXadd() => Run(plain);
}

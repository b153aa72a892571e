using Altpatch.Code;
using Altpatch.Hooks;
using Altpatch.Native;
using BenchmarkDotNet.Attributes;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Bench;

/// <summary>
/// Native hooks, side by side in one run (docs/benchmarks.md, "Native hooks"):
/// <list type="bullet">
/// <item><see cref="MprotectCopyOne"/> (baseline of installing): what peers do to put one jump in and take it out
/// again: <c>mprotect</c> RWX, copy the 5 bytes, <c>mprotect</c> RX, twice. Not live-safe.</item>
/// <item><see cref="EnableDisableOne"/>: <see cref="NativeHook.Enable"/> + <see cref="NativeHook.Disable"/> of one hook
/// (two live batches, each one int3 round, a probe of every thread, three core serialisations).</item>
/// <item><see cref="EnableDisable1000"/>: <see cref="NativeHook.EnableAll"/> + <see cref="NativeHook.DisableAll"/> of 1,000
/// hooks (two batches).</item>
/// <item><see cref="DirectCall"/>, <see cref="HookedCall"/>, <see cref="OriginalCall"/>: 1,000 calls from a native loop
/// to a 5-byte function, to the same function hooked (the detour calls <see cref="NativeHook.Original"/>: target jump,
/// relay, detour, trampoline, jump back), and to the trampoline alone. Per call = mean / 1,000.</item>
/// </list>
/// In process: the live poker's handlers and the hooks belong to this process (and the out-of-process build times
/// out on this busy machine).
/// </summary>
[InProcess]
public unsafe class HookBench
{
    private const int Many = 1000, Stride = 16, Calls = 1000;
    private ExecutableMemory code = null!, targets = null!, second = null!;
    private nint page;
    private NativeHook one = null!, called = null!;
    private List<NativeHook> many = [];
    private ulong loop, plain, hooked;
    private byte[] jump = [], original = [];

    /// <summary>Emits the targets, the detours and the call loop; creates the hooks.</summary>
    [GlobalSetup]
    public void Setup()
    {
        code = ExecutableMemory.Allocate(64 * 1024, "bench-hook-code");
        targets = ExecutableMemory.Allocate((Many + 2) * Stride, "bench-hook-targets");
        for (int i = 0; i < Many + 2; i++)
            Put(targets, i * Stride, a => { a.mov(eax, i); a.ret(); a.nop(); a.nop(); a.nop(); a.nop(); a.nop(); a.nop(); a.nop(); a.nop(); a.nop(); a.nop(); });
        ulong zero = Put(code, 0, a => { a.xor(eax, eax); a.ret(); });
        ulong slot = code.Address + 60 * 1024;
        ulong detour = Put(code, 64, a => { a.mov(r11, slot); a.jmp(__qword_ptr[r11]); });
        loop = Put(code, 128, a =>
        {
            var top = a.CreateLabel();
            a.push(rbx); a.push(r12);
            a.sub(rsp, 8);
            a.mov(rbx, Calls);
            a.mov(r12, rdi);
            a.Label(ref top);
            a.call(r12);
            a.dec(rbx);
            a.jne(top);
            a.add(rsp, 8);
            a.pop(r12); a.pop(rbx);
            a.ret();
        });
        one = NativeHook.Create((nint)(targets.Address + Many * Stride), (nint)zero);
        plain = targets.Address + (Many + 1) * Stride;
        second = ExecutableMemory.Allocate(4096, "bench-hook-called");
        hooked = Put(second, 0, a => { a.mov(eax, 7); a.ret(); });
        called = NativeHook.Create((nint)hooked, (nint)detour);
        *(ulong*)(code.WritableAddress + 60 * 1024) = (ulong)called.Original;
        called.Enable();
        try
        {
            many = [.. Enumerable.Range(0, Many).Select(i => NativeHook.Create((nint)(targets.Address + (ulong)(i * Stride)), (nint)zero))];
        }
        catch (HookException) when (Environment.GetEnvironmentVariable("ALTPATCH_BENCH_MAPS") is not null)
        {
            ulong lo = targets.Address - (1UL << 31), hi = targets.Address + (1UL << 31);
            foreach (var r in MemoryMap.Read().Regions)
                if (r.End > lo && r.Start < hi) Console.Error.WriteLine($"maps: {r.Start:x}-{r.End:x} {r.Permissions} {r.Path}");
            throw;
        }
        jump = one.PatchBytes.ToArray();
        original = one.OriginalBytes.ToArray();
        page = Libc.Mmap(0, 4096, Libc.ProtRead | Libc.ProtExec, Libc.MapPrivate | Libc.MapAnonymous, -1, 0);
        CoreSync.TrySyncAllCores();
    }

    /// <summary>Takes the hooks off and frees what <see cref="Setup"/> made (BenchmarkDotNet runs every case's setup in this one process).</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        NativeHook.DisableAll(many);
        foreach (var h in many) h.Dispose();
        one.Dispose();
        called.Dispose();
        bool released = many.Append(one).Append(called).All(h => h.WaitUntilReleased(TimeSpan.FromSeconds(10)));
        Libc.Munmap(page, 4096);
        if (!released) return; // a thread may still be in a trampoline: keep the code it could return to
        code.Dispose();
        targets.Dispose();
        second.Dispose();
    }

    /// <summary>Peers' way, one jump in and out: mprotect RWX, copy, mprotect RX (twice).</summary>
    [Benchmark(Baseline = true)]
    public void MprotectCopyOne()
    {
        Copy(jump);
        Copy(original);
    }

    private void Copy(byte[] bytes)
    {
        Libc.Mprotect(page, 4096, Libc.ProtRead | Libc.ProtWrite | Libc.ProtExec);
        bytes.CopyTo(new Span<byte>((void*)page, bytes.Length));
        Libc.Mprotect(page, 4096, Libc.ProtRead | Libc.ProtExec);
    }

    /// <summary>One hook enabled and disabled live.</summary>
    [Benchmark]
    public void EnableDisableOne()
    {
        one.Enable();
        one.Disable();
    }

    /// <summary>1,000 hooks enabled in one batch and disabled in another.</summary>
    [Benchmark]
    public void EnableDisable1000()
    {
        NativeHook.EnableAll(many);
        NativeHook.DisableAll(many);
    }

    /// <summary>1,000 direct calls of a 5-byte function.</summary>
    [Benchmark(OperationsPerInvoke = Calls)]
    public void DirectCall() => ((delegate* unmanaged<ulong, void>)loop)(plain);

    /// <summary>1,000 calls of the same function hooked, the detour calling Original.</summary>
    [Benchmark(OperationsPerInvoke = Calls)]
    public void HookedCall() => ((delegate* unmanaged<ulong, void>)loop)(hooked);

    /// <summary>1,000 calls of the trampoline alone.</summary>
    [Benchmark(OperationsPerInvoke = Calls)]
    public void OriginalCall() => ((delegate* unmanaged<ulong, void>)loop)((ulong)called.Original);

    private static ulong Put(ExecutableMemory mem, int offset, Action<Assembler> emit)
    {
        var a = new Assembler(64);
        emit(a);
        ulong at = mem.Address + (ulong)offset;
        var w = new ArrayCodeWriter();
        a.Assemble(w, at);
        w.Written.CopyTo(mem.Writable[offset..]);
        return at;
    }
}

using System.Buffers.Binary;
using Altpatch.Hooks;
using Altpatch.Code;
using Altpatch.Native;
using Altpatch.Tests.Live;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;
using static Altpatch.Tests.Hooks.HookTestCode;

namespace Altpatch.Tests.Hooks;

/// <summary>
/// The 14-byte absolute jump: forced (<see cref="HookJump.Absolute"/>), and taken by <see cref="HookJump.Auto"/> for a
/// target with no free page within 2 GiB (every page around it reserved by the test), with the code run and its bytes checked.
/// </summary>
[Collection(LiveCollection.Name)]
public unsafe class AbsoluteJumpTests
{
    private const long GiB = 1L << 30;

    private static byte[] Bytes(ulong at, int n) => new ReadOnlySpan<byte>((void*)at, n).ToArray();

    /// <summary>
    /// f(x) = x &lt; 0 ? 7 : g() + x, with a short jcc, a push and a call rel32 in its first 14 bytes; g (returning 9)
    /// after it.
    /// </summary>
    private static void CallingG(Assembler a)
    {
        var neg = a.CreateLabel();
        var g = a.CreateLabel();
        a.test(edi, edi);
        a.js(neg);
        a.push(rbx);
        a.mov(ebx, edi);
        a.call(g);
        a.add(eax, ebx);
        a.pop(rbx);
        a.ret();
        a.Label(ref neg);
        a.mov(eax, 7);
        a.ret();
        a.int3();
        a.Label(ref g);
        a.mov(eax, 9);
        a.ret();
    }

    /// <summary>f(x) = [data] + x: a RIP-relative load in its first bytes.</summary>
    private static void LoadingData(Assembler a)
    {
        var data = a.CreateLabel();
        a.mov(eax, __dword_ptr[data]);
        a.add(eax, edi);
        a.nop();
        a.nop();
        a.nop();
        a.nop();
        a.nop();
        a.nop();
        a.ret();
        a.Label(ref data);
        a.dd(40);
    }

    private static void HookedAndRestored(ulong target, int[] inputs, NativeHookOptions options, bool absoluteExpected)
    {
        var f = (delegate* unmanaged<int, int>)target;
        var expected = inputs.Select(x => f(x)).ToArray();
        var before = Bytes(target, 32);
        using var detours = new Detours();
        var (detour, slot) = detours.Answering(false, unchecked((ulong)Magic), 777, 0);
        using (var hook = NativeHook.Create((nint)target, detour, options))
        {
            detours.SetOriginal(slot, hook);
            Assert.Equal(absoluteExpected, hook.IsAbsoluteJump);
            Assert.Equal(before, Bytes(target, 32)); // Create writes nothing
            var original = (delegate* unmanaged<int, int>)hook.Original;
            Assert.Equal(expected, inputs.Select(x => original(x)).ToArray());
            hook.Enable();
            var patch = Bytes(target, hook.PatchLength);
            Assert.Equal(hook.PatchBytes.ToArray(), patch);
            if (absoluteExpected)
            {
                Assert.True(hook.PatchLength >= 14, $"{hook.PatchLength} bytes moved");
                Assert.Equal(new byte[] { 0xFF, 0x25, 0, 0, 0, 0 }, patch[..6]); // jmp qword ptr [rip+0]
                Assert.Equal((ulong)hook.Relay, BinaryPrimitives.ReadUInt64LittleEndian(patch.AsSpan(6)));
                Assert.All(patch[14..], b => Assert.Equal(0xCC, b));
            }
            else Assert.Equal(0xE9, patch[0]);
            Assert.Equal(777, f(Magic));
            Assert.Equal(expected, inputs.Select(x => f(x)).ToArray());
            Assert.Equal(1 + inputs.Length, detours.Counters[0]);
            hook.Disable();
            Assert.Equal(before, Bytes(target, 32));
            Assert.Equal(expected, inputs.Select(x => f(x)).ToArray());
            hook.Enable();
            Assert.Equal(777, f(Magic));
        }
        Assert.Equal(before, Bytes(target, 32));
        Assert.Equal(expected, inputs.Select(x => f(x)).ToArray());
    }

    [SkippableFact]
    public void The_absolute_jump_when_asked_moves_14_bytes_and_restores_them()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var mem = ExecutableMemory.Allocate(8192, "absolute-jump");
        var (target, _) = Altpatch.Tests.Live.Emit.At(mem, 0, CallingG);
        HookedAndRestored(target, [-3, 0, 5], NativeHookOptions.Default with { Jump = HookJump.Absolute }, absoluteExpected: true);
    }

    [SkippableFact]
    public void The_absolute_jump_goes_in_and_out_while_threads_call_the_function()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var mem = ExecutableMemory.Allocate(8192, "absolute-jump-threads");
        var (target, _) = Altpatch.Tests.Live.Emit.At(mem, 0, CallingG);
        var f = (delegate* unmanaged<int, int>)target;
        var before = Bytes(target, 32);
        using var detours = new Detours();
        var (detour, slot) = detours.Answering(false, unchecked((ulong)Magic), 777, 4);
        var hook = NativeHook.Create((nint)target, detour, NativeHookOptions.Default with { Jump = HookJump.Absolute });
        detours.SetOriginal(slot, hook);
        long wrong = 0, hooked = 0, original = 0, calls = 0;
        bool stop = false;
        var threads = Enumerable.Range(0, 2).Select(_ => new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                int m = f(Magic), x = f(5);
                if (m == 777) Interlocked.Increment(ref hooked);
                else if (m == 7) Interlocked.Increment(ref original);
                else Interlocked.Increment(ref wrong);
                if (x != 14) Interlocked.Increment(ref wrong);
                Interlocked.Add(ref calls, 2);
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        try
        {
            for (int round = 0; round < 200; round++)
            {
                hook.Enable();
                Thread.Yield();
                hook.Disable();
                Assert.Equal(before, Bytes(target, 32));
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            threads.ForEach(t => t.Join());
        }
        Assert.Equal(0, wrong);
        Assert.True(calls > 0);
        Assert.True(original > 0, "the original function was never seen");
        hook.Enable();
        Assert.Equal(777, f(Magic));
        hook.Dispose();
        Assert.Equal(before, Bytes(target, 32));
        Assert.Equal(7, f(Magic));
    }

    [SkippableFact]
    public void The_absolute_jump_refuses_a_function_shorter_than_14_bytes_and_writes_nothing()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var mem = ExecutableMemory.Allocate(4096, "absolute-jump-short");
        var (target, _) = Altpatch.Tests.Live.Emit.At(mem, 0, a =>
        {
            a.lea(eax, __[rdi + rdi]);
            a.add(eax, 0x1234);
            a.ret();
        });
        using var detours = new Detours();
        var (detour, slot) = detours.Counting(1);
        var before = Bytes(target, 16);
        int inUse = HookArena.InUse;
        var e = Assert.Throws<HookException>(() => NativeHook.Install((nint)target, detour, NativeHookOptions.Default with { Jump = HookJump.Absolute }));
        Assert.Contains("the jump needs 14", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, Bytes(target, 16));
        Assert.True(HookArena.InUse <= inUse, "a refused hook kept a slot");
        // The same function takes the rel32 jump.
        var hook = NativeHook.Create((nint)target, detour);
        detours.SetOriginal(slot, hook);
        hook.Enable();
        Assert.False(hook.IsAbsoluteJump);
        Assert.Equal(2 * 21 + 0x1234, ((delegate* unmanaged<int, int>)target)(21));
        Assert.Equal(1, detours.Counters[1]);
    }

    /// <summary>
    /// Code at the middle of a 6 GiB <c>PROT_NONE</c> reservation: no page within rel32 reach of it is free, as near a
    /// library the runtime packed its reservations around. Unmapped (code and reservation) by <see cref="Dispose"/>.
    /// </summary>
    private sealed class Crowded : IDisposable
    {
        private const long Size = 6 * GiB;
        private readonly ulong reservation;

        public Crowded(Action<Assembler> emit)
        {
            nint r = Altpatch.Native.Libc.Mmap(0, unchecked((nuint)Size), Altpatch.Native.Libc.ProtNone, Altpatch.Native.Libc.MapPrivate | Altpatch.Native.Libc.MapAnonymous | Altpatch.Native.Libc.MapNoReserve, -1, 0);
            Skip.If(r == Altpatch.Native.Libc.MapFailed, "cannot reserve 6 GiB of address space (PROT_NONE, MAP_NORESERVE) for the test");
            reservation = (ulong)r;
            Code = (reservation + (ulong)(3 * GiB)) & ~0xFFFUL;
            nint c = Altpatch.Native.Libc.Mmap((nint)Code, 4096, Altpatch.Native.Libc.ProtRead | Altpatch.Native.Libc.ProtWrite, Altpatch.Native.Libc.MapPrivate | Altpatch.Native.Libc.MapAnonymous | Altpatch.Native.Libc.MapFixed, -1, 0);
            Assert.Equal((nint)Code, c);
            var a = new Assembler(64);
            emit(a);
            var writer = new ArrayCodeWriter();
            a.Assemble(writer, Code);
            Run.Write(Code, writer.Written.ToArray());
            Run.Protect(Code, 4096, Altpatch.Native.Libc.ProtRead | Altpatch.Native.Libc.ProtExec);
        }

        public ulong Code { get; }

        public void Dispose() => Altpatch.Native.Libc.Munmap((nint)reservation, unchecked((nuint)Size));
    }

    [SkippableFact]
    public void With_no_free_page_within_reach_the_default_takes_the_absolute_jump()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var crowded = new Crowded(CallingG);
        var options = NativeHookOptions.Default with { ForeignText = ForeignTextMode.WritableExecutable };
        HookedAndRestored(crowded.Code, [-3, 0, 5], options, absoluteExpected: true);

        // Relative only: refused, with the reason, nothing written.
        var before = Bytes(crowded.Code, 16);
        using var detours = new Detours();
        var (detour, _) = detours.Counting(2);
        var e = Assert.Throws<HookException>(() => NativeHook.Install((nint)crowded.Code, detour, options with { Jump = HookJump.Relative }));
        Assert.Contains("no room for a trampoline within rel32 reach of the target", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, Bytes(crowded.Code, 16));
    }

    [SkippableFact]
    public void With_no_free_page_within_reach_a_RIP_relative_prologue_is_refused_with_both_reasons()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var crowded = new Crowded(LoadingData);
        Assert.Equal(45, ((delegate* unmanaged<int, int>)crowded.Code)(5));
        var before = Bytes(crowded.Code, 32);
        using var detours = new Detours();
        var (detour, _) = detours.Counting(3);
        int inUse = HookArena.InUse;
        var e = Assert.Throws<HookException>(() => NativeHook.Install((nint)crowded.Code, detour, NativeHookOptions.Default with { ForeignText = ForeignTextMode.WritableExecutable }));
        Assert.Contains("no room for a trampoline within rel32 reach of the target", e.Message, StringComparison.Ordinal);
        Assert.Contains("cannot be re-encoded", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, Bytes(crowded.Code, 32));
        Assert.True(HookArena.InUse <= inUse, "a refused hook kept a slot");
        Assert.Equal(45, ((delegate* unmanaged<int, int>)crowded.Code)(5));
    }
}

using Altpatch.Hooks;
using Altpatch.Native;
using Altpatch.Tests.Live;
using static Iced.Intel.AssemblerRegisters;
using static Altpatch.Tests.Hooks.HookTestCode;

namespace Altpatch.Tests.Hooks;

/// <summary>What a hook refuses, with the reason, and that nothing is written then; what it relocates.</summary>
[Collection(LiveCollection.Name)]
public unsafe class HookRefusalTests
{
    private static byte[] Bytes(ulong at, int n) => new ReadOnlySpan<byte>((void*)at, n).ToArray();

    private static void Refused(ulong target, nint detour, string expected, NativeHookOptions? options = null)
    {
        var before = target == 0 ? [] : Bytes(target, 16);
        int inUse = HookArena.InUse;
        var e = Assert.Throws<HookException>(() => NativeHook.Install((nint)target, detour, options));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        if (target != 0) Assert.Equal(before, Bytes(target, 16));
        Assert.True(HookArena.InUse <= inUse, "a refused hook kept a slot"); // released slots of earlier hooks may come back meanwhile
    }

    [SkippableFact]
    public void Prologues_that_cannot_be_moved_are_refused_with_the_reason_and_nothing_written()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var mem = ExecutableMemory.Allocate(4096, "refusals");
        var (detour, _) = Altpatch.Tests.Live.Emit.At(mem, 0, a => { a.xor(eax, eax); a.ret(); });
        var (tooShort, _) = Altpatch.Tests.Live.Emit.At(mem, 64, a => { a.xor(eax, eax); a.ret(); });
        var (branchBack, _) = Altpatch.Tests.Live.Emit.At(mem, 128, a =>
        {
            var back = a.CreateLabel();
            a.nop(); a.nop();
            a.Label(ref back);
            a.nop(); a.nop(); a.nop(); a.nop();
            a.dec(ecx);
            a.jne(back);
            a.ret();
        });
        var (withInt3, _) = Altpatch.Tests.Live.Emit.At(mem, 192, a => { a.nop(); a.int3(); a.mov(eax, 1); a.ret(); });
        var (withUd2, _) = Altpatch.Tests.Live.Emit.At(mem, 256, a => { a.nop(); a.ud2(); a.mov(eax, 1); a.ret(); });
        var (jumping, _) = Altpatch.Tests.Live.Emit.At(mem, 320, a => { a.jmp(DetourAddress(mem)); });

        Refused(tooShort, (nint)detour, "the function is only 3 bytes long up to its ret");
        Refused(branchBack, (nint)detour, "branches to +2, inside the 5 bytes the jump overwrites");
        Refused(withInt3, (nint)detour, "+1 holds int3");
        Refused(withUd2, (nint)detour, "+1 holds ud2");
        Refused(jumping, (nint)detour, "already hooked");
        Refused(0, (nint)detour, "the target is null");
        Refused(tooShort, 0, "the detour is null");
        nint heap = System.Runtime.InteropServices.Marshal.AllocHGlobal(64);
        try
        {
            Refused(tooShort, heap, "is not in readable, executable memory");
            Assert.Throws<HookException>(() => NativeHook.Create(heap, (nint)detour));
        }
        finally
        {
            System.Runtime.InteropServices.Marshal.FreeHGlobal(heap);
        }
        Refused((ulong)Libc("abs") + 1, (nint)detour, "in the middle of the instruction at abs+0");
        var e = Assert.Throws<HookException>(() => NativeHook.Create(0x1000, (nint)detour));
        Assert.Contains("not mapped", e.Message, StringComparison.Ordinal);

        // Chaining onto someone else's jump is what Chain is for: the jump moves into the trampoline.
        using var chained = NativeHook.Install((nint)jumping, (nint)detour, new NativeHookOptions { Chain = true });
        Assert.Equal(0, ((delegate* unmanaged<int>)chained.Original)());
    }

    private static ulong DetourAddress(ExecutableMemory mem) => mem.Address; // the xor eax,eax; ret above

    [SkippableFact]
    public void C_library_functions_it_runs_with_every_signal_blocked_are_refused_unless_allowed()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var mem = ExecutableMemory.Allocate(4096, "refusals-blocked");
        var (detour, _) = Altpatch.Tests.Live.Emit.At(mem, 0, a => { a.xor(eax, eax); a.ret(); });
        // A live int3 reached with SIGTRAP blocked kills the process: glibc's thread exit runs these with every signal
        // blocked, and pthread_kill runs getpid so (the runtime's GC suspension calls it all the time).
        foreach (var (name, caller) in new[] { ("getpagesize", "a thread's exit"), ("free", "a detached thread's exit"), ("munmap", "a thread's exit"),
                                               ("madvise", "a thread's exit"), ("getpid", "pthread_kill"), ("clone", "pthread_create") })
            Refused((ulong)Libc(name), (nint)detour, $"the C library's {name}, which the C library itself calls with every signal blocked ({caller}");
        // Allowed on request: Create prepares it (writing nothing); it is never switched here, so no thread can meet its int3.
        nint getpid = Libc("getpid");
        var before = Bytes((ulong)getpid, 16);
        using (var hook = CreateOrSkip(getpid, (nint)detour, new NativeHookOptions { AllowSignalBlockedTargets = true }))
            Assert.False(hook.IsEnabled);
        Assert.Equal(before, Bytes((ulong)getpid, 16));
        // The functions the torture test hooks instead are not on the list.
        foreach (string name in new[] { "__libc_current_sigrtmin", "getppid", "strlen", "abs", "atoi" })
            using (CreateOrSkip(Libc(name), (nint)detour)) { }
    }

    [SkippableFact]
    public void Relative_prologues_are_relocated_jrcxz_loop_short_jcc_and_rip_relative()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var mem = ExecutableMemory.Allocate(8192, "relocation");
        // jrcxz + RIP-relative lea in the first bytes: f(x) = x == 0 ? -1 : [data] + x
        var (jr, _) = Altpatch.Tests.Live.Emit.At(mem, 0, a =>
        {
            var zero = a.CreateLabel();
            var data = a.CreateLabel();
            a.mov(ecx, edi);
            a.jrcxz(zero);
            a.lea(rax, __[data]);
            a.mov(eax, __dword_ptr[rax]);
            a.add(eax, ecx);
            a.ret();
            a.Label(ref zero);
            a.mov(eax, -1);
            a.ret();
            a.Label(ref data);
            a.dd(40);
        });
        // loop in the first bytes: f(x) = x == 1 ? 100 : 200 (loop decrements rcx and branches when not 0)
        var (lp, _) = Altpatch.Tests.Live.Emit.At(mem, 128, a =>
        {
            var more = a.CreateLabel();
            a.mov(ecx, edi);
            a.loop(more);
            a.mov(eax, 100);
            a.ret();
            a.Label(ref more);
            a.mov(eax, 200);
            a.ret();
        });
        // short jcc and a call rel32 in the first bytes: f(x) = x < 0 ? 7 : g() = 9
        var (g, _) = Altpatch.Tests.Live.Emit.At(mem, 512, a => { a.mov(eax, 9); a.ret(); });
        var (jc, _) = Altpatch.Tests.Live.Emit.At(mem, 256, a =>
        {
            var neg = a.CreateLabel();
            a.test(edi, edi);
            a.js(neg);
            a.sub(rsp, 8);
            a.call(g);
            a.add(rsp, 8);
            a.ret();
            a.Label(ref neg);
            a.mov(eax, 7);
            a.ret();
        });
        using var detours = new Detours();
        foreach (var (target, inputs) in new[] { (jr, new[] { 0, 1, 5 }), (lp, new[] { 1, 2, 3 }), (jc, new[] { -1, 0, 4 }) })
        {
            var f = (delegate* unmanaged<int, int>)target;
            var expected = inputs.Select(x => f(x)).ToArray();
            var (detour, slot) = detours.Counting(5);
            using var hook = CreateOrSkip((nint)target, detour);
            detours.SetOriginal(slot, hook);
            var original = (delegate* unmanaged<int, int>)hook.Original;
            Assert.Equal(expected, inputs.Select(x => original(x)).ToArray());
            long calls = detours.Counters[5];
            hook.Enable();
            Assert.Equal(expected, inputs.Select(x => f(x)).ToArray());
            Assert.Equal(calls + inputs.Length, detours.Counters[5]);
        }
    }
}

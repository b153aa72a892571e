using System.Runtime.InteropServices;
using Altpatch.Hooks;
using Altpatch.Native;
using Altpatch.Tests.Live;
using Xunit.Abstractions;
using static Altpatch.Tests.Hooks.HookTestCode;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Hooks;

/// <summary>Threads inside a detour while its hook goes away; chains of hooks; targets in other libraries.</summary>
[Collection(LiveCollection.Name)]
public unsafe class HookLifetimeTests(ITestOutputHelper output)
{
    [SkippableFact]
    public void Threads_inside_a_detour_while_the_hook_is_disposed_finish_through_its_original()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var detours = new Detours();
        long* hold = detours.Counters + 10, entered = detours.Counters + 11;
        *hold = 1;
        // labs detour: count the entry, wait while *hold != 0, then go to Original.
        var (detour, slot) = detours.Add((a, original) =>
        {
            var spin = a.CreateLabel();
            a.mov(r11, (ulong)entered);
            a.@lock.inc(__qword_ptr[r11]);
            a.mov(r11, (ulong)hold);
            a.Label(ref spin);
            a.pause();
            a.cmp(__qword_ptr[r11], 0);
            a.jne(spin);
            a.mov(r11, original);
            a.jmp(__qword_ptr[r11]);
        });
        nint labs = Libc("labs");
        var before = new ReadOnlySpan<byte>((void*)labs, 16).ToArray();
        var hook = CreateOrSkip(labs, detour);
        detours.SetOriginal(slot, hook);
        hook.Enable();
        const long Magic = -987654321;
        var f = (delegate* unmanaged<long, long>)labs;
        var results = new long[3];
        var threads = Enumerable.Range(0, 3).Select(i => new Thread(() => results[i] = f(Magic)) { IsBackground = true }).ToList();
        threads.ForEach(t => t.Start());
        while (Volatile.Read(ref *entered) < 3) Thread.Sleep(1);
        Assert.Equal(3, hook.InFlight);
        hook.Dispose(); // three threads are inside the detour: it must not block, and they must still finish
        Assert.Equal(before, new ReadOnlySpan<byte>((void*)labs, 16).ToArray());
        Assert.True(threads.All(t => t.IsAlive), "the threads left the detour before it was released");
        HookReclaimer.Sweep(TimeSpan.FromMilliseconds(10));
        Assert.False(hook.IsReleased, "the slot was released while three threads were in the detour");
        Assert.Equal(3, hook.InFlight);
        Volatile.Write(ref *hold, 0);
        threads.ForEach(t => t.Join());
        Assert.All(results, r => Assert.Equal(987654321, r));
        Assert.Equal(0, hook.InFlight);
        Assert.Equal(987654321, f(Magic));
        for (int i = 0; i < 1000 && !hook.IsReleased; i++) HookReclaimer.Sweep(TimeSpan.FromMilliseconds(100));
        Assert.True(hook.IsReleased, "the slot was never released after the threads left");
        output.WriteLine($"3 threads inside the detour during Dispose, all returned 987654321 through the trampoline; slot released after they left");
    }

    [SkippableFact]
    public void Two_hooks_of_one_function_chain_the_later_first_and_come_off_to_the_exact_bytes()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var detours = new Detours();
        nint abs = Libc("abs");
        var f = (delegate* unmanaged<int, int>)abs;
        var before = new ReadOnlySpan<byte>((void*)abs, 16).ToArray();
        var (da, sa) = detours.Answering(false, unchecked((ulong)Magic), 777, 20);
        var (db, sb) = detours.Counting(21);
        using var first = CreateOrSkip(abs, da);
        detours.SetOriginal(sa, first);
        first.Enable();
        Assert.Throws<HookException>(() => NativeHook.Create(abs, db));
        using var second = CreateOrSkip(abs, db, new NativeHookOptions { Chain = true });
        detours.SetOriginal(sb, second);
        second.Enable();
        Assert.Equal(777, f(Magic)); // second (counts) -> its Original -> first (answers)
        Assert.Equal((1, 1), (detours.Counters[20], detours.Counters[21]));
        first.Disable(); // under second: its relay now skips its detour
        Assert.Equal(123457, f(Magic));
        Assert.Equal((1, 2), (detours.Counters[20], detours.Counters[21]));
        first.Enable();
        Assert.Equal(777, f(Magic));
        second.Disable(); // the top: the target jumps to first again
        Assert.Equal(777, f(Magic));
        Assert.Equal((3, 3), (detours.Counters[20], detours.Counters[21]));
        second.Enable();
        first.Disable();
        second.Disable(); // both off: the original bytes, exactly
        Assert.Equal(before, new ReadOnlySpan<byte>((void*)abs, 16).ToArray());
        Assert.Equal(123457, f(Magic));
    }

    [SkippableFact]
    public void A_function_of_another_shared_library_is_hooked()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        nint lib = NativeLibrary.Load("libSystem.Native", typeof(object).Assembly, null);
        nint getpid = NativeLibrary.GetExport(lib, "SystemNative_GetPid");
        using var detours = new Detours();
        var (d, s) = detours.Counting(30);
        using var hook = CreateOrSkip(getpid, d);
        detours.SetOriginal(s, hook);
        output.WriteLine($"SystemNative_GetPid: moves {hook.MovedInstructions}");
        hook.Enable();
        var f = (delegate* unmanaged<int>)getpid;
        Assert.Equal(Environment.ProcessId, f());
        Assert.True(detours.Counters[30] >= 1);
        hook.Disable();
        Assert.Equal(hook.OriginalBytes.ToArray(), new ReadOnlySpan<byte>((void*)getpid, hook.PatchLength).ToArray());
        Assert.DoesNotContain(MemoryMap.Read().Regions, r => (r.Protection & MapProtection.Write) != 0 && (r.Protection & MapProtection.Execute) != 0);
    }
}

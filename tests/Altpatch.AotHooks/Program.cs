using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Altpatch.Emit;
using Altpatch.Hooks;
using Altpatch.Native;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.AotHooks;

/// <summary>
/// Hooks in a NativeAOT executable (run by tools/aot/check.sh after publishing this project): a function of its own
/// AOT-compiled code (an <c>[UnmanagedCallersOnly]</c> method: the runtime's reverse-P/Invoke prologue, then the body)
/// and libc's <c>abs</c>, each enabled and disabled live while threads call it. Prints one line per target and exits 0
/// when every result was the original or the hooked one, both were seen and the bytes came back exactly
/// (<c>AOT_HOOKS_DEBUG=1</c> adds the bytes written and the process's threads).
/// </summary>
public static unsafe class Program
{
    private const int Magic = 1000, Answer = -4242, Rounds = 400;

    [UnmanagedCallersOnly]
    private static int Scale(int x) => x * 3 + 1;

    public static int Main()
    {
        if (RuntimeFeature.IsDynamicCodeSupported)
        {
            Console.Error.WriteLine("aot-hooks: not a NativeAOT process (publish it: dotnet publish tests/Altpatch.AotHooks -c Release)");
            return 2;
        }
        if (!CoreSync.IsAllCoresSyncAvailable)
        {
            Console.WriteLine($"aot-hooks: skipped: {CoreSync.UnavailableReason}");
            return 0;
        }
        using var code = new CodeBuilder(4096, 0, 4096);
        nint scale = (nint)(delegate* unmanaged<int, int>)&Scale;
        nint abs = NativeLibrary.GetExport(NativeLibrary.Load("libc.so.6"), "abs");
        bool ok = Torture("Scale (NativeAOT code)", scale, code, x => x * 3 + 1)
                & Torture("abs (libc)", abs, code, Math.Abs);
        return ok ? 0 : 1;
    }

    /// <summary>Hooks <paramref name="target"/> with a detour that answers <see cref="Magic"/> itself and passes the rest to Original.</summary>
    private static bool Torture(string name, nint target, CodeBuilder code, Func<int, int> expected)
    {
        ulong slot = code.Data(new byte[8]);
        ulong detour = code.Code(a =>
        {
            var passOn = a.CreateLabel();
            a.cmp(edi, Magic);
            a.jne(passOn);
            a.mov(eax, Answer);
            a.ret();
            a.Label(ref passOn);
            a.mov(r11, slot);
            a.jmp(__qword_ptr[r11]);
        });
        var before = new ReadOnlySpan<byte>((void*)target, 16).ToArray();
        var hook = NativeHook.Create(target, (nint)detour);
        *(ulong*)(code.Memory.WritableAddress + (nint)(slot - code.Memory.Address)) = (ulong)hook.Original;
        CoreSync.TrySyncAllCores();
        var f = (delegate* unmanaged<int, int>)target;
        int original = expected(Magic);
        // Per thread: calls, hooked results, original results, wrong results (read by the main thread as they go).
        var counts = new long[2 * 4];
        bool stop = false;
        var threads = Enumerable.Range(0, 2).Select(i => new Thread(() =>
        {
            long c = 0, h = 0, o = 0, w = 0;
            while (!Volatile.Read(ref stop))
            {
                int r = f(Magic), other = f(7 + i);
                c += 2;
                if (r == Answer) h++; else if (r == original) o++; else w++;
                if (other != expected(7 + i)) w++;
                Volatile.Write(ref counts[4 * i], c);
                Volatile.Write(ref counts[4 * i + 1], h);
                Volatile.Write(ref counts[4 * i + 2], o);
                Volatile.Write(ref counts[4 * i + 3], w);
            }
        }) { IsBackground = true }).ToList();
        long Sum(int k) => Volatile.Read(ref counts[k]) + Volatile.Read(ref counts[4 + k]);
        threads.ForEach(t => t.Start());
        if (Environment.GetEnvironmentVariable("AOT_HOOKS_DEBUG") is not null)
        {
            hook.Enable();
            Console.WriteLine($"debug: {name} at 0x{target:x}: {Convert.ToHexString(new ReadOnlySpan<byte>((void*)target, 8))}, f(Magic) = {f(Magic)}, relay 0x{hook.Relay:x}, detour 0x{detour:x}");
            hook.Disable();
        }
        for (int r = 0; r < Rounds; r++)
        {
            hook.Enable();
            // Until the callers ran through the hook (a busy machine may not schedule them at once), at most 20 ms.
            long seen = Sum(1);
            for (var t = DateTime.UtcNow; Sum(1) == seen && DateTime.UtcNow - t < TimeSpan.FromMilliseconds(20);) Thread.SpinWait(100);
            hook.Disable();
            Thread.SpinWait(2000);
        }
        Volatile.Write(ref stop, true);
        threads.ForEach(t => t.Join());
        long calls = Sum(0), hooked = Sum(1), plain = Sum(2), wrong = Sum(3);
        string moved = hook.MovedInstructions;
        hook.Dispose();
        bool released = hook.WaitUntilReleased(TimeSpan.FromSeconds(30));
        if (Environment.GetEnvironmentVariable("AOT_HOOKS_DEBUG") is not null)
        {
            Console.WriteLine($"debug: in flight {hook.InFlight}, released {released}, relay 0x{hook.Relay:x} original 0x{hook.Original:x}");
            foreach (var task in Directory.GetDirectories("/proc/self/task"))
            {
                var st = File.ReadAllLines(Path.Combine(task, "status"));
                Console.WriteLine($"debug: task {Path.GetFileName(task)} {st.First(l => l.StartsWith("Name:", StringComparison.Ordinal))} {st.First(l => l.StartsWith("SigBlk:", StringComparison.Ordinal))} {File.ReadAllText(Path.Combine(task, "syscall")).Split(' ')[0]}");
            }
        }
        bool restored = before.AsSpan().SequenceEqual(new ReadOnlySpan<byte>((void*)target, 16));
        // Not required: a stale copy of a trampoline address on some thread's stack keeps the slot (safe, released later).
        bool ok = wrong == 0 && hooked > 0 && plain > 0 && restored;
        Console.WriteLine($"aot-hooks: {(ok ? "ok" : "FAILED")}: {name}: moved {moved}; {Rounds} rounds, {calls} calls, " +
                          $"{hooked} hooked, {plain} original, {wrong} wrong; bytes {(restored ? "restored" : "DIFFER")}; slot {(released ? "released" : "kept for now")}");
        return ok;
    }
}

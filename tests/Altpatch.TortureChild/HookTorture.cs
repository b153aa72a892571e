using System.Runtime.InteropServices;
using Altpatch.Code;
using Altpatch.Hooks;
using Altpatch.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.TortureChild;

/// <summary>
/// The hook torture's negative control: threads call a function (in an anonymous executable page Altpatch did not
/// allocate, like a library's text) from a native loop that checks every result, while its hook goes in and out.
/// <c>naive</c> does what peers do: <c>mprotect</c> the page read-write-execute, copy the jump's bytes (one at a time,
/// with a pause, as a memcpy may), <c>mprotect</c> it back, and the same to restore. <c>live</c> uses
/// <see cref="NativeHook.Enable"/>/<see cref="NativeHook.Disable"/>. Both write the same bytes (the hook's).
/// </summary>
internal static unsafe partial class HookTorture
{
    private const int Page = 4096;

    [LibraryImport("libc", EntryPoint = "mmap")]
    private static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "mprotect")]
    private static partial int Mprotect(nint addr, nuint length, int prot);

    /// <summary>Runs the torture; returns the number of wrong results (a crash ends the process).</summary>
    public static long Run(string mode, int rounds, int threadCount)
    {
        // The target: f(x) = x through a prologue of short instructions that threads are often inside.
        nint page = Mmap(0, Page, 3, 0x22, -1, 0);
        if (page == -1) throw new InvalidOperationException("mmap failed");
        var target = Assemble((ulong)page, a =>
        {
            a.mov(eax, edi);
            for (int i = 0; i < 6; i++) { a.inc(eax); a.dec(eax); }
            a.ret();
        });
        target.CopyTo(new Span<byte>((void*)page, target.Length));
        if (Mprotect(page, Page, 5) != 0) throw new InvalidOperationException("mprotect failed");

        using var code = ExecutableMemory.Allocate(Page, "hook-torture");
        // detour(x) = x + 1000; loop(n, fn) calls fn(i) n times and counts results that are neither i nor i + 1000.
        var detour = Put(code, 0, a => { a.lea(eax, __[rdi + 1000]); a.ret(); });
        var loop = Put(code, 64, a =>
        {
            var top = a.CreateLabel();
            var ok = a.CreateLabel();
            a.push(rbx); a.push(r12); a.push(r13); a.push(r14);
            a.sub(rsp, 8);
            a.mov(rbx, rdi);      // n
            a.mov(r12, rsi);      // fn
            a.xor(r13d, r13d);    // wrong
            a.xor(r14d, r14d);    // i
            a.Label(ref top);
            a.mov(edi, r14d);
            a.and(edi, 0xffff);
            a.call(r12);
            a.mov(ecx, r14d);
            a.and(ecx, 0xffff);
            a.cmp(eax, ecx);
            a.je(ok);
            a.add(ecx, 1000);
            a.cmp(eax, ecx);
            a.je(ok);
            a.inc(r13);
            a.Label(ref ok);
            a.inc(r14);
            a.cmp(r14, rbx);
            a.jb(top);
            a.mov(rax, r13);
            a.add(rsp, 8);
            a.pop(r14); a.pop(r13); a.pop(r12); a.pop(rbx);
            a.ret();
        });
        CoreSync.TrySyncAllCores();

        var hook = NativeHook.Create(page, (nint)detour);
        byte[] jump = hook.PatchBytes.ToArray(), original = hook.OriginalBytes.ToArray();
        long wrong = 0, calls = 0;
        bool stop = false;
        var f = (delegate* unmanaged<long, nint, long>)loop;
        var threads = Enumerable.Range(0, threadCount).Select(_ => new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                Interlocked.Add(ref wrong, f(10_000, page));
                Interlocked.Add(ref calls, 10_000);
            }
        }) { IsBackground = true }).ToList();
        threads.ForEach(t => t.Start());
        for (int r = 0; r < rounds && Interlocked.Read(ref wrong) == 0; r++)
        {
            if (mode == "naive")
            {
                Naive(page, jump);
                Thread.SpinWait(2000);
                Naive(page, original);
            }
            else
            {
                hook.Enable();
                Thread.SpinWait(2000);
                hook.Disable();
            }
        }
        Volatile.Write(ref stop, true);
        threads.ForEach(t => t.Join());
        Console.WriteLine($"hook-torture {mode}: {rounds} rounds, {calls} calls, {wrong} wrong results");
        return wrong;
    }

    private static void Naive(nint page, byte[] bytes)
    {
        if (Mprotect(page, Page, 7) != 0) throw new InvalidOperationException("mprotect RWX failed");
        for (int i = 0; i < bytes.Length; i++)
        {
            Volatile.Write(ref *(byte*)(page + i), bytes[i]);
            Thread.SpinWait(50);
        }
        Mprotect(page, Page, 5);
    }

    private static byte[] Assemble(ulong at, Action<Assembler> emit)
    {
        var a = new Assembler(64);
        emit(a);
        var w = new ArrayCodeWriter();
        a.Assemble(w, at);
        return w.Written.ToArray();
    }

    private static ulong Put(ExecutableMemory mem, int offset, Action<Assembler> emit)
    {
        ulong at = mem.Address + (ulong)offset;
        Assemble(at, emit).CopyTo(mem.Writable[offset..]);
        return at;
    }
}

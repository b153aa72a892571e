using System.Runtime.InteropServices;
using Altpatch.Code;
using Altpatch.Hooks;
using Altpatch.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Hooks;

/// <summary>libc's functions by name, and detours assembled into W^X memory for the hook tests.</summary>
internal static unsafe class HookTestCode
{
    private static readonly nint LibcHandle = NativeLibrary.Load("libc.so.6");

    /// <summary>The address dlsym gives for <paramref name="name"/> (IFUNCs resolved).</summary>
    public static nint Libc(string name) => NativeLibrary.GetExport(LibcHandle, name);

    /// <summary>
    /// <see cref="NativeHook.Create"/>, or the test skips, saying so, when this process's layout leaves no free page
    /// within rel32 reach of the target: in the test host the runtime's reservations (the GC's, the JIT's code range
    /// near its libraries) and a thousand tests' mappings can fill the ±2 GiB around a library (docs/hooks.md, "Limits").
    /// </summary>
    public static NativeHook CreateOrSkip(nint target, nint detour, NativeHookOptions? options = null)
    {
        try
        {
            return NativeHook.Create(target, detour, options);
        }
        catch (HookException e) when (e.Message.Contains("no room for a trampoline within rel32 reach", StringComparison.Ordinal))
        {
            Skip.If(true, $"this process has no free page within rel32 reach of the target (docs/hooks.md, Limits): {e.Message}");
            throw;
        }
    }

    /// <summary>The magic argument the detours answer themselves; every other call goes to Original.</summary>
    public const int Magic = -123457;

    /// <summary>Memory for detours; each detour has an 8-byte slot (the hook's Original) in the same page.</summary>
    public sealed class Detours : IDisposable
    {
        private readonly ExecutableMemory memory = ExecutableMemory.Allocate(64 * 1024, "test-detours");
        private int code = 0, data = 60 * 1024;

        /// <summary>Counter slots live in ordinary memory (read-write).</summary>
        public long* Counters { get; } = (long*)NativeMemory.AllocZeroed(64 * 8);

        /// <summary>
        /// Emits a detour; <paramref name="body"/> gets the address of its Original slot (read it with <c>jmp [slot]</c>)
        /// and must end the function. Returns the detour and the slot's index.
        /// </summary>
        public (nint Detour, int Slot) Add(Action<Assembler, ulong> body)
        {
            int slot = data;
            data += 8;
            ulong slotAddress = memory.Address + (ulong)slot;
            var a = new Assembler(64);
            body(a, slotAddress);
            ulong at = memory.Address + (ulong)code;
            var writer = new ArrayCodeWriter();
            a.Assemble(writer, at);
            writer.Written.CopyTo(memory.Writable[code..]);
            code = (code + writer.Written.Length + 15) & ~15;
            CoreSync.TrySyncAllCores();
            return ((nint)at, slot);
        }

        private readonly List<NativeHook> hooks = [];

        /// <summary>Sets a detour's Original slot to <paramref name="hook"/>'s, and frees the detours only once that hook is released.</summary>
        public void SetOriginal(int slot, NativeHook hook)
        {
            hooks.Add(hook);
            Volatile.Write(ref *(long*)((nint)memory.WritableAddress + slot), hook.Original);
            CoreSync.TrySyncAllCores();
        }

        /// <summary>abs/atoi style: if edi == Magic (or rdi == magic pointer) return <paramref name="answer"/>, else go to Original; counts its calls in counter <paramref name="counter"/>.</summary>
        public (nint Detour, int Slot) Answering(bool pointerArgument, ulong magic, int answer, int counter) => Add((a, slot) =>
        {
            var passOn = a.CreateLabel();
            a.mov(r11, (ulong)(Counters + counter));
            a.@lock.inc(__qword_ptr[r11]);
            if (pointerArgument)
            {
                a.mov(r11, magic);
                a.cmp(rdi, r11);
            }
            else a.cmp(edi, (int)magic);
            a.jne(passOn);
            a.mov(eax, answer);
            a.ret();
            a.Label(ref passOn);
            a.mov(r11, slot);
            a.jmp(__qword_ptr[r11]);
        });

        /// <summary>No-argument style (getpid, getpagesize): counts the call and goes to Original.</summary>
        public (nint Detour, int Slot) Counting(int counter) => Add((a, slot) =>
        {
            a.mov(r11, (ulong)(Counters + counter));
            a.@lock.inc(__qword_ptr[r11]);
            a.mov(r11, slot);
            a.jmp(__qword_ptr[r11]);
        });

        /// <summary>
        /// Disposes the hooks and frees the detours once every hook is released (no thread in a detour any more: a
        /// runtime thread may have called a hooked libc function); otherwise they stay mapped.
        /// </summary>
        public void Dispose()
        {
            foreach (var h in hooks) h.Dispose();
            if (!hooks.All(h => h.WaitUntilReleased(TimeSpan.FromSeconds(10)))) return;
            memory.Dispose();
            NativeMemory.Free(Counters);
        }
    }
}

using System.Runtime.InteropServices;
using Altpatch.Code;
using Altpatch.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Hooks;

/// <summary>
/// A hook's relay: the code near the target that the target's <c>jmp rel32</c> reaches. It counts the thread in
/// (the hook's in-flight counter), swaps the caller's return address for a shared exit stub (the original one is
/// kept in a side table keyed by the address of the return-address slot, which is unique per live frame across all
/// threads), and goes on to the detour through an absolute pointer (<c>jmp [rip+destination]</c>), so any detour
/// address works. When the detour (or the trampoline it tail-called) returns, the exit stub finds the entry, counts
/// the thread out and jumps to the original return address. The stack the detour sees is the caller's, unchanged
/// but for its return address, so stack arguments stay where they were. Registers: <c>r11</c> and the flags are
/// clobbered on the way in and out (both are free at a call boundary in the SysV ABI); <c>rax</c>, <c>rcx</c>,
/// <c>rdx</c> are preserved (the way in keeps <c>al</c>, the vector count of varargs calls; the way out keeps the
/// return values; xmm registers are never touched). The exit stub uses the red zone below the stack pointer, which
/// signal delivery preserves. This is frida's in-flight counting, done with a side table instead of a per-thread stack.
/// </summary>
internal static unsafe class Relays
{
    private const int TableBits = 16;
    private const int EntrySize = 32; // key (slot address), original return address, counter address, unused
    private const int IndexMask = ((1 << TableBits) - 1) * EntrySize;

    private static readonly Lazy<(ulong Table, ulong Exit)> Shared = new(CreateShared);

    /// <summary>The side table (for tests: entries in use are those with a non-zero key).</summary>
    internal static ulong Table => Shared.Value.Table;

    /// <summary>The exit stub every counted call returns through.</summary>
    internal static ulong ExitStub => Shared.Value.Exit;

    /// <summary>
    /// Assembles the relay of <paramref name="slot"/> (counting into <paramref name="counter"/>, going on to the
    /// pointer at its end) into the slot's writable bytes <paramref name="w"/>; returns the destination pointer's
    /// offset in the slot and the relay's instruction boundaries.
    /// </summary>
    public static (int DestinationOffset, ulong[] Boundaries) Write(Span<byte> w, HookArena.Slot slot, long* counter)
    {
        // Twice: the first pass finds where the pointer falls, the second pads it to 8 bytes (an atomic store).
        var (_, first, _) = Assemble(slot, counter, 0);
        int pad = (int)((8 - first % 8) % 8);
        var (bytes, destAddress, codeLength) = Assemble(slot, counter, pad);
        if (bytes.Length > HookArena.RelayCapacity)
            throw new InvalidOperationException($"the relay takes {bytes.Length} bytes, more than the slot's {HookArena.RelayCapacity}");
        bytes.CopyTo(w[HookArena.RelayOffset..]);
        return ((int)(destAddress - slot.Address), Boundaries(bytes.AsSpan(0, codeLength), slot.Relay));
    }

    private static (byte[] Bytes, ulong Destination, int CodeLength) Assemble(HookArena.Slot slot, long* counter, int pad)
    {
        var (table, exit) = Shared.Value;
        var a = new Assembler(64);
        var claim = a.CreateLabel();
        var got = a.CreateLabel();
        var dest = a.CreateLabel();
        a.push(rax);
        a.push(rcx);
        a.push(rdx);
        a.lea(rdx, __[rsp + 24]);          // the return-address slot: the key
        a.mov(rcx, rdx);
        a.shr(rcx, 3);
        a.shl(rcx, 5);                     // * EntrySize
        a.and(ecx, IndexMask);
        a.mov(r11, table);
        a.Label(ref claim);
        a.xor(eax, eax);
        a.@lock.cmpxchg(__qword_ptr[r11 + rcx], rdx);
        a.je(got);
        a.pause();
        a.add(ecx, EntrySize);
        a.and(ecx, IndexMask);
        a.jmp(claim);
        a.Label(ref got);
        a.mov(rax, __qword_ptr[rdx]);
        a.mov(__qword_ptr[r11 + rcx + 8], rax);   // the original return address
        a.mov(rax, (ulong)counter);
        a.mov(__qword_ptr[r11 + rcx + 16], rax);
        a.@lock.inc(__qword_ptr[rax]);           // counted in
        a.mov(rax, exit);
        a.mov(__qword_ptr[rdx], rax);             // the detour returns to the exit stub
        a.pop(rdx);
        a.pop(rcx);
        a.pop(rax);
        a.jmp(__qword_ptr[dest]);
        for (int i = 0; i < pad; i++) a.int3();
        a.Label(ref dest);
        a.dq(0UL);
        var writer = new ArrayCodeWriter();
        var result = a.Assemble(writer, slot.Relay, BlockEncoderOptions.ReturnNewInstructionOffsets);
        ulong destAddress = result.GetLabelRIP(dest);
        return (writer.Written.ToArray(), destAddress, (int)(destAddress - slot.Relay) - pad);
    }

    /// <summary>Instruction starts (and the end) of <paramref name="code"/> at <paramref name="at"/>.</summary>
    public static ulong[] Boundaries(ReadOnlySpan<byte> code, ulong at)
    {
        var list = new List<ulong>();
        var d = DecoderCache.Current.Start(code, at, 64);
        ulong end = at + (ulong)code.Length;
        while (d.IP < end)
        {
            list.Add(d.IP);
            d.Decode(out var insn);
            if (insn.IsInvalid) break;
        }
        list.Add(end);
        return [.. list];
    }

    /// <summary>Points the relay at <paramref name="destination"/> (one aligned 8-byte store: a data write, not code).</summary>
    public static void Route(nint destinationWritable, ulong destination) =>
        Volatile.Write(ref *(ulong*)destinationWritable, destination);

    private static (ulong, ulong) CreateShared()
    {
        ulong table = (ulong)NativeMemory.AlignedAlloc((nuint)(EntrySize << TableBits), 64);
        new Span<byte>((void*)table, EntrySize << TableBits).Clear();
        var mem = ExecutableMemory.Allocate(4096, "altpatch-hook-exit");
        GC.SuppressFinalize(mem);
        KeepAlive = mem;
        var a = new Assembler(64);
        var find = a.CreateLabel();
        var found = a.CreateLabel();
        a.mov(__qword_ptr[rsp - 16], rax);     // the red zone: signal frames are built below it
        a.mov(__qword_ptr[rsp - 24], rcx);
        a.mov(__qword_ptr[rsp - 32], rdx);
        a.lea(rdx, __[rsp - 8]);               // the return-address slot the relay swapped
        a.mov(rcx, rdx);
        a.shr(rcx, 3);
        a.shl(rcx, 5);
        a.and(ecx, IndexMask);
        a.mov(r11, table);
        a.Label(ref find);
        a.cmp(__qword_ptr[r11 + rcx], rdx);
        a.je(found);
        a.add(ecx, EntrySize);
        a.and(ecx, IndexMask);
        a.jmp(find);
        a.Label(ref found);
        a.mov(rax, __qword_ptr[r11 + rcx + 8]);
        a.mov(__qword_ptr[rsp - 8], rax);      // the original return address, where the ret took it from
        a.mov(rax, __qword_ptr[r11 + rcx + 16]);
        a.mov(__qword_ptr[r11 + rcx], 0);      // the entry is free (read before)
        a.@lock.dec(__qword_ptr[rax]);         // counted out
        a.mov(rax, __qword_ptr[rsp - 16]);
        a.mov(rcx, __qword_ptr[rsp - 24]);
        a.mov(rdx, __qword_ptr[rsp - 32]);
        a.jmp(__qword_ptr[rsp - 8]);
        var writer = new ArrayCodeWriter();
        a.Assemble(writer, mem.Address);
        writer.Written.CopyTo(mem.Writable);
        CoreSync.TrySyncAllCores();
        return (table, mem.Address);
    }

    private static ExecutableMemory? KeepAlive { get; set; }
}

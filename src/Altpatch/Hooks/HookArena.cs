using Altpatch.Native;

namespace Altpatch.Hooks;

/// <summary>
/// Where hooks keep their trampolines and relays: W^X <see cref="ExecutableMemory"/> placed within rel32 reach of
/// the targets (chunks of <see cref="ChunkSize"/> bytes, found or allocated near each target; anywhere for a hook
/// with the absolute jump), cut into slots of
/// <see cref="SlotSize"/> bytes. A slot holds one hook's trampoline (<see cref="TrampolineOffset"/>) and its relay
/// (<see cref="RelayOffset"/>, ending with its destination pointer); its in-flight counter is in ordinary memory
/// (a cache line each), not in the code's page. Slots go back to
/// their chunk only when the hook's release is proven safe (<see cref="HookReclaimer"/>); chunks are never unmapped.
/// </summary>
internal static class HookArena
{
    public const int SlotSize = 256;
    public const int ChunkSize = 64 * 1024;
    public const int TrampolineOffset = 0;
    public const int TrampolineCapacity = 96;
    public const int RelayOffset = 96;
    public const int RelayCapacity = 160;

    private static readonly object Gate = new();
    private static readonly List<Chunk> Chunks = [];

    /// <summary>A chunk of slots.</summary>
    internal sealed unsafe class Chunk(ExecutableMemory memory)
    {
        public ExecutableMemory Memory { get; } = memory;
        public Stack<int> Free { get; } = new(Enumerable.Range(0, memory.Size / SlotSize).Reverse());
        public long* Counters { get; } = Zeroed(memory.Size / SlotSize * 64);

        private static long* Zeroed(int bytes)
        {
            var p = (long*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)bytes, 64);
            new Span<byte>(p, bytes).Clear();
            return p;
        }
    }

    /// <summary>One slot: where it runs and where it is written.</summary>
    /// <remarks>A plain struct, not a record struct: NativeAOT's compiler (ILC 10.0.12) fails on the synthesized
    /// <c>PrintMembers</c> of a record struct with a pointer property (<see cref="Counter"/>).</remarks>
    internal readonly unsafe struct Slot(Chunk chunk, int index)
    {
        public Chunk Chunk { get; } = chunk;
        public int Index { get; } = index;

        public long* Counter => Chunk.Counters + Index * 8;
        public ulong Address => Chunk.Memory.Address + (ulong)(Index * SlotSize);
        public nint Writable => Chunk.Memory.WritableAddress + Index * SlotSize;
        public ulong Trampoline => Address + TrampolineOffset;
        public ulong Relay => Address + RelayOffset;
    }

    /// <summary>Number of slots in use (for tests).</summary>
    public static int InUse
    {
        get
        {
            lock (Gate) return Chunks.Sum(c => c.Memory.Size / SlotSize - c.Free.Count);
        }
    }

    /// <summary>
    /// A free slot whose every byte is within rel32 reach of [target, target + span); false with the reason when no
    /// chunk there has one and no page within reach can be mapped.
    /// </summary>
    public static bool TryRent(ulong target, int span, out Slot slot, out string problem)
    {
        lock (Gate)
        {
            problem = "";
            foreach (var c in Chunks)
                if (c.Free.Count > 0 && NearMemory.IsInReach(target, target + (ulong)span, c.Memory.Address, c.Memory.Size))
                {
                    slot = new Slot(c, c.Free.Pop());
                    return true;
                }
            ExecutableMemory memory;
            try
            {
                memory = ExecutableMemory.AllocateNear(ChunkSize, target, span, "altpatch-hooks");
            }
            catch (NativeException)
            {
                // Near a library the runtime packed its reservations around, a page may fit where a chunk does not.
                try
                {
                    memory = ExecutableMemory.AllocateNear(Environment.SystemPageSize, target, span, "altpatch-hooks");
                }
                catch (NativeException e)
                {
                    slot = default;
                    problem = e.Message;
                    return false;
                }
            }
            slot = Add(memory);
            return true;
        }
    }

    /// <summary>A free slot anywhere (for a hook whose target reaches its relay by an absolute jump).</summary>
    public static Slot RentAnywhere()
    {
        lock (Gate)
        {
            foreach (var c in Chunks)
                if (c.Free.Count > 0) return new Slot(c, c.Free.Pop());
            return Add(ExecutableMemory.Allocate(ChunkSize, "altpatch-hooks"));
        }
    }

    private static Slot Add(ExecutableMemory memory)
    {
        var chunk = new Chunk(memory);
        Chunks.Add(chunk);
        return new Slot(chunk, chunk.Free.Pop());
    }

    /// <summary>Gives a slot back, filled with int3 again.</summary>
    public static unsafe void Return(Slot slot)
    {
        new Span<byte>((void*)slot.Writable, SlotSize).Fill(0xCC);
        *slot.Counter = 0;
        lock (Gate) slot.Chunk.Free.Push(slot.Index);
    }
}

using Altpatch.Native;

namespace Altpatch.Patching;

/// <summary>
/// The paravirt ops table (the kernel's <c>pv_ops</c>): one 8-byte function pointer per op type, in
/// read-write, non-executable memory of its own (data, never code). Paravirt call sites call through
/// a slot, <c>call [rip+slot]</c>, so the table must lie within ±2 GiB of the code that uses it:
/// <see cref="Allocate"/> places it near an address (the builder passes its text). Slots are written
/// with single aligned 8-byte stores, so a thread calling through a slot sees the old or the new
/// pointer, never a mix. Disposing unmaps the table; code must not call through it afterwards.
/// </summary>
public sealed unsafe class OpsTable : IDisposable
{
    private readonly int mappedSize;
    private ulong* slots;

    /// <summary>Number of slots (op types 0..Count-1).</summary>
    public int Count { get; }

    /// <summary>Address of slot 0.</summary>
    public ulong Address { get; }

    private OpsTable(ulong address, int count, int mappedSize)
    {
        Address = address;
        Count = count;
        this.mappedSize = mappedSize;
        slots = (ulong*)address;
    }

    /// <summary>
    /// Maps a table of <paramref name="count"/> zeroed slots. When <paramref name="near"/> is not 0 the
    /// table is placed so that every slot is within rel32 reach of [near, near + <paramref name="span"/>)
    /// (<see cref="NearMemory"/>); throws <see cref="NativeException"/> when no such place is free.
    /// </summary>
    public static OpsTable Allocate(int count, ulong near = 0, long span = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, 1 << 20);
        ArgumentOutOfRangeException.ThrowIfNegative(span);
        var (address, size) = NearMemory.Map(count * 8, near, span, $"a {count}-slot ops table");
        return new OpsTable(address, count, size);
    }

    /// <summary>Address of the slot of op <paramref name="type"/>.</summary>
    public ulong SlotAddress(int type)
    {
        CheckType(type);
        return Address + (ulong)type * 8;
    }

    /// <summary>The pointer in slot <paramref name="type"/>: where an indirect call through it goes.</summary>
    public ulong this[int type]
    {
        get
        {
            CheckType(type);
            ObjectDisposedException.ThrowIf(slots == null, this);
            return Volatile.Read(ref slots[type]);
        }
        set
        {
            CheckType(type);
            ObjectDisposedException.ThrowIf(slots == null, this);
            Volatile.Write(ref slots[type], value);
        }
    }

    /// <summary>True when a <c>call [rip+slot]</c> at any address of [start, end) reaches every slot.</summary>
    public bool IsInReach(ulong start, ulong end) => NearMemory.IsInReach(start, end, Address, (long)Count * 8);

    private void CheckType(int type)
    {
        if ((uint)type >= (uint)Count)
            throw new ArgumentOutOfRangeException(nameof(type), type, $"the ops table has {Count} slots (op types 0..{Count - 1})");
    }

    /// <summary>Unmaps the table.</summary>
    public void Dispose()
    {
        if (slots == null) return;
        NearMemory.Unmap((ulong)slots, mappedSize);
        slots = null;
    }
}

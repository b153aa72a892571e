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
    private const int MapFixedNoReplace = 0x100000; // MAP_FIXED_NOREPLACE (Linux 4.17+)
    private const long Reach = int.MaxValue;
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
    /// table is placed so that every slot is within rel32 reach of [near, near + <paramref name="span"/>);
    /// throws <see cref="NativeException"/> when no such place is free.
    /// </summary>
    public static OpsTable Allocate(int count, ulong near = 0, long span = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, 1 << 20);
        ArgumentOutOfRangeException.ThrowIfNegative(span);
        long page = Environment.SystemPageSize;
        int size = (int)(((long)count * 8 + page - 1) / page * page);
        if (near == 0)
        {
            nint any = Libc.Mmap(0, (nuint)size, Libc.ProtRead | Libc.ProtWrite, Libc.MapPrivate | Libc.MapAnonymous, -1, 0);
            if (any == Libc.MapFailed) throw NativeException.Last($"mmap of a {count}-slot ops table");
            return new OpsTable((ulong)any, count, size);
        }
        // Try the hint first (the kernel takes it when free); otherwise look for the free gap closest to
        // the code in /proc/self/maps (the runtime reserves large ranges, so blind probing can miss) and
        // map there without replacing anything. A few rounds absorb races with other threads' mmaps.
        ulong first = (near - (ulong)size) & ~((ulong)page - 1);
        if (TryMap(first, size, 0, near, span, out var table, count)) return table!;
        for (int round = 0; round < 4; round++)
        {
            foreach (ulong at in FreeGapsNear(MemoryMap.Read(), near, span, size, (ulong)page))
                if (TryMap(at, size, MapFixedNoReplace, near, span, out table, count)) return table!;
        }
        throw new NativeException($"no free memory for a {count}-slot ops table within rel32 reach of 0x{near:x}", 0);
    }

    /// <summary>Page-aligned places of <paramref name="size"/> free bytes within reach of [near, near+span), closest first.</summary>
    private static IEnumerable<ulong> FreeGapsNear(MemoryMap map, ulong near, long span, int size, ulong page)
    {
        long limit = Reach - span - size - (long)page;
        ulong lowest = near > (ulong)limit ? near - (ulong)limit : page;
        ulong highest = near + (ulong)span + (ulong)limit;
        var candidates = new List<ulong>();
        var regions = map.Regions;
        for (int i = 0; i + 1 < regions.Count; i++)
        {
            ulong gapStart = regions[i].End, gapEnd = regions[i + 1].Start;
            if (gapEnd - gapStart < (ulong)size) continue;
            // the end of a gap below the code, or the start of a gap above it
            ulong below = (gapEnd - (ulong)size) & ~(page - 1);
            if (below >= gapStart && below >= lowest && below + (ulong)size <= near) candidates.Add(below);
            ulong above = (gapStart + page - 1) & ~(page - 1);
            if (above + (ulong)size <= gapEnd && above >= near + (ulong)span && above + (ulong)size <= highest) candidates.Add(above);
        }
        return candidates.OrderBy(c => c < near ? near - c : c - near);
    }

    private static bool TryMap(ulong hint, int size, int extraFlags, ulong near, long span, out OpsTable? table, int count)
    {
        table = null;
        nint p = Libc.Mmap((nint)hint, (nuint)size, Libc.ProtRead | Libc.ProtWrite, Libc.MapPrivate | Libc.MapAnonymous | extraFlags, -1, 0);
        if (p == Libc.MapFailed) return false;
        ulong a = (ulong)p;
        bool inReach = Math.Abs((long)(a - near)) < Reach - span - size && Math.Abs((long)(a + (ulong)size - near)) < Reach - span - size;
        if (!inReach)
        {
            Libc.Munmap(p, (nuint)size);
            return false;
        }
        table = new OpsTable(a, count, size);
        return true;
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
    public bool IsInReach(ulong start, ulong end)
    {
        ulong last = Address + (ulong)Count * 8;
        return Math.Abs((long)(Address - start)) < Reach - 16 && Math.Abs((long)(last - end)) < Reach - 16
            && Math.Abs((long)(Address - end)) < Reach - 16 && Math.Abs((long)(last - start)) < Reach - 16;
    }

    private void CheckType(int type)
    {
        if ((uint)type >= (uint)Count)
            throw new ArgumentOutOfRangeException(nameof(type), type, $"the ops table has {Count} slots (op types 0..{Count - 1})");
    }

    /// <summary>Unmaps the table.</summary>
    public void Dispose()
    {
        if (slots == null) return;
        Libc.Munmap((nint)slots, (nuint)mappedSize);
        slots = null;
    }
}

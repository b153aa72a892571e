using System.Runtime.InteropServices;

namespace Altpatch.Native;

/// <summary>
/// Data that code reaches with a RIP-relative operand (<c>call [rip+disp32]</c>, <c>mov rax, [rip+disp32]</c>):
/// read-write, non-executable pages placed within rel32 reach (±2 GiB) of the code that uses them. The kernel links
/// such data beside its text; user space asks <c>mmap</c> for a place near the code and, when the hint is taken,
/// looks for the free gap closest to the code in <c>/proc/self/maps</c>.
/// </summary>
public static class NearMemory
{
    private const int MapFixedNoReplace = 0x100000; // MAP_FIXED_NOREPLACE (Linux 4.17+)
    private const long Reach = int.MaxValue;

    /// <summary>
    /// Maps <paramref name="size"/> bytes (rounded up to pages) of zeroed read-write memory and returns its address
    /// and mapped size. When <paramref name="near"/> is not 0, every byte of it is within rel32 reach of every
    /// address of [near, near + <paramref name="span"/>). Throws <see cref="NativeException"/>, naming
    /// <paramref name="what"/>, when the mapping fails or no such place is free.
    /// </summary>
    public static (ulong Address, int Size) Map(int size, ulong near, long span, string what)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(size);
        ArgumentOutOfRangeException.ThrowIfNegative(span);
        long page = Environment.SystemPageSize;
        int mapped = (int)((size + page - 1) / page * page);
        if (near == 0)
        {
            nint any = Libc.Mmap(0, (nuint)mapped, Libc.ProtRead | Libc.ProtWrite, Libc.MapPrivate | Libc.MapAnonymous, -1, 0);
            if (any == Libc.MapFailed) throw NativeException.Last($"mmap of {what}");
            return ((ulong)any, mapped);
        }
        // Try the hint first (the kernel takes it when free); otherwise look for the free gap closest to
        // the code in /proc/self/maps (the runtime reserves large ranges, so blind probing can miss) and
        // map there without replacing anything. A few rounds absorb races with other threads' mmaps.
        return (MapNear(mapped, near, span, Libc.ProtRead | Libc.ProtWrite, Libc.MapPrivate | Libc.MapAnonymous, -1, what), mapped);
    }

    /// <summary>
    /// Maps <paramref name="mapped"/> bytes (a whole number of pages) with <paramref name="prot"/> and
    /// <paramref name="flags"/> (of <paramref name="fd"/>, or anonymous) so that every byte is within rel32 reach of
    /// [near, near + <paramref name="span"/>): the hint first, then the free gaps closest to <paramref name="near"/>.
    /// </summary>
    internal static ulong MapNear(int mapped, ulong near, long span, int prot, int flags, int fd, string what)
    {
        long page = Environment.SystemPageSize;
        ulong first = (near - (ulong)mapped) & ~((ulong)page - 1);
        int errno = 0, tried = 0, regions = 0;
        if (TryMap(first, mapped, prot, flags, fd, near, span, out ulong at, ref errno)) return at;
        for (int round = 0; round < 4; round++)
        {
            var map = MemoryMap.Read();
            regions = map.Regions.Count;
            foreach (ulong gap in FreeGapsNear(map, near, span, mapped, (ulong)page))
            {
                tried++;
                if (TryMap(gap, mapped, prot, flags | MapFixedNoReplace, fd, near, span, out at, ref errno)) return at;
            }
        }
        string last = errno == 0 ? "each place it gave was out of reach" : $"the last failed with {Libc.ErrorText(errno)}";
        throw new NativeException($"no free memory for {what} within rel32 reach of 0x{near:x} ({tried} free gaps tried among {regions} mappings; mmap: {last})", errno);
    }

    /// <summary>Unmaps what <see cref="Map"/> returned.</summary>
    public static void Unmap(ulong address, int size) => Libc.Munmap((nint)address, (nuint)size);

    /// <summary>True when a RIP-relative operand at any address of [start, end) reaches every byte of [address, address + length).</summary>
    public static bool IsInReach(ulong start, ulong end, ulong address, long length)
    {
        ulong last = address + (ulong)length;
        return Math.Abs((long)(address - start)) < Reach - 16 && Math.Abs((long)(last - end)) < Reach - 16
            && Math.Abs((long)(address - end)) < Reach - 16 && Math.Abs((long)(last - start)) < Reach - 16;
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

    private static bool TryMap(ulong hint, int size, int prot, int flags, int fd, ulong near, long span, out ulong address, ref int errno)
    {
        address = 0;
        nint p = Libc.Mmap((nint)hint, (nuint)size, prot, flags, fd, 0);
        if (p == Libc.MapFailed)
        {
            errno = Marshal.GetLastPInvokeError();
            return false;
        }
        ulong a = (ulong)p;
        bool inReach = Math.Abs((long)(a - near)) < Reach - span - size && Math.Abs((long)(a + (ulong)size - near)) < Reach - span - size;
        if (!inReach)
        {
            Libc.Munmap(p, (nuint)size);
            return false;
        }
        address = a;
        return true;
    }
}

namespace Altpatch.Native;

// The trap handler's table of known sites: every site that ever carried an int3, sorted, with the generation of
// the last batch that touched it, double-buffered so that the handler never reads a table being rebuilt.
internal sealed unsafe partial class LiveCode
{
    private KnownTable* CurrentKnown => (KnownTable*)Volatile.Read(ref *(nint*)&Control->Known);

    private static long IndexOf(KnownTable* table, ulong address)
    {
        ulong* addrs = KnownTable.Addresses(table);
        long i = LowerBound(addrs, table->Count, address, 0);
        return i < table->Count && addrs[i] == address ? i : -1;
    }

    /// <summary>First index at or after <paramref name="from"/> whose address is not below <paramref name="x"/> (galloping, then binary search).</summary>
    private static long LowerBound(ulong* addrs, long count, ulong x, long from)
    {
        long lo = from, step = 1, hi = from;
        while (hi < count && addrs[hi] < x)
        {
            lo = hi + 1;
            hi += step;
            step <<= 1;
        }
        if (hi > count) hi = count;
        while (lo < hi)
        {
            long mid = (lo + hi) >>> 1;
            if (addrs[mid] < x) lo = mid + 1; else hi = mid;
        }
        return lo;
    }

    /// <summary>
    /// Makes the trap handler's table of known sites hold every address of <paramref name="add"/> and
    /// none of <paramref name="remove"/> (both ascending), then marks the <paramref name="add"/> sites
    /// as part of batch <paramref name="gen"/>. When the table must change, the new one is built in
    /// the spare buffer, published with one pointer store, and the old one is not reused before every
    /// handler that may be reading it has finished. Returns false when the table would be full.
    /// </summary>
    public bool PrepareBatch(ReadOnlySpan<ulong> add, ReadOnlySpan<ulong> remove, ulong gen)
    {
        KnownTable* cur = CurrentKnown;
        bool change = false;
        var indices = add.Length <= 1024 ? stackalloc long[add.Length] : new long[add.Length];
        long count = cur->Count, at = 0;
        ulong* addrs = KnownTable.Addresses(cur);
        for (int k = 0; k < add.Length; k++)
        {
            at = LowerBound(addrs, count, add[k], at);
            if (at >= count || addrs[at] != add[k]) { change = true; break; }
            indices[k] = at;
        }
        if (!change) foreach (ulong x in remove) if (IndexOf(cur, x) >= 0) { change = true; break; }
        if (change)
        {
            if (!Rebuild(cur, add, remove)) return false;
            cur = CurrentKnown;
            count = cur->Count;
            addrs = KnownTable.Addresses(cur);
            at = 0;
            for (int k = 0; k < add.Length; k++) indices[k] = at = LowerBound(addrs, count, add[k], at);
        }
        ulong* gens = KnownTable.Generations(cur);
        foreach (long i in indices) Volatile.Write(ref gens[i], gen);
        return true;
    }

    private bool Rebuild(KnownTable* cur, ReadOnlySpan<ulong> add, ReadOnlySpan<ulong> remove)
    {
        long count = cur->Count;
        ulong* curAddrs = KnownTable.Addresses(cur), curGens = KnownTable.Generations(cur);
        KnownTable* next = cur == KnownA ? KnownB : KnownA;
        ulong* addrs = KnownTable.Addresses(next);
        // Merge into addrs; gens are written after (their place depends on the final count).
        var gens = new ulong[count + add.Length];
        long n = 0, i = 0, j = 0, r = 0;
        while (i < count || j < add.Length)
        {
            ulong x; ulong g = 0;
            if (j >= add.Length || (i < count && curAddrs[i] <= add[(int)j]))
            {
                x = curAddrs[i]; g = curGens[i];
                if (j < add.Length && add[(int)j] == x) j++;
                i++;
            }
            else x = add[(int)j++];
            while (r < remove.Length && remove[(int)r] < x) r++;
            if (r < remove.Length && remove[(int)r] == x) continue;
            if (n > 0 && addrs[n - 1] == x) continue;
            if (n >= DataLayout.KnownCapacity) return false;
            addrs[n] = x;
            gens[n] = g;
            n++;
        }
        next->Count = n;
        next->Reserved = 0;
        ulong* nextGens = KnownTable.Generations(next);
        for (long k = 0; k < n; k++) nextGens[k] = gens[k];
        Volatile.Write(ref *(nint*)&Control->Known, (nint)next);
        Interlocked.MemoryBarrier();
        var spin = new SpinWait();
        while (Volatile.Read(ref Control->Readers) != 0) spin.SpinOnce();
        return true;
    }
}

using Altpatch.Code;

namespace Altpatch.Pokers;

/// <summary>
/// Where a thread may be stopped inside a site's old code such that rewriting the site under it would
/// break it: the int3 protocol stops threads at the first byte, but a thread already past it (preempted
/// after the first instruction, or inside a function the site called) resumes at an instruction
/// boundary of the old code and would run the new bytes from the middle of an instruction.
/// <para>
/// An interior point is an instruction boundary <c>k</c> of the old code (0 &lt; k &lt; n) from which
/// the thread would not simply run the rest of the old code: the bytes from <c>k</c> differ between
/// old and new, or the old code from <c>k</c> branches back before <c>k</c>. When the old bytes do not
/// decode into instructions that end exactly at the site's end, every interior offset counts. A site
/// of one instruction has none: that is the case the kernel's <c>text_poke_bp</c> handles, and the
/// live poker needs no probe for it.
/// </para>
/// </summary>
internal static class InteriorPoints
{
    /// <summary>
    /// Writes the interior points of a poke, as addresses in ascending order, to
    /// <paramref name="destination"/> (at least <c>old.Length</c> long) and returns how many there are.
    /// </summary>
    public static int Find(ulong address, ReadOnlySpan<byte> old, ReadOnlySpan<byte> @new, Span<ulong> destination)
    {
        int n = old.Length;
        if (n <= 1) return 0;
        Span<int> starts = stackalloc int[n + 1];
        Span<int> lowestTarget = stackalloc int[n + 1]; // per instruction: lowest in-site branch target offset, n if none
        int count = 0;
        bool decoded = true;
        var d = DecoderCache.Current.Start(old, address, 64);
        ulong end = address + (ulong)n;
        while (d.IP < end)
        {
            ulong ip = d.IP;
            d.Decode(out var insn);
            if (insn.IsInvalid || insn.NextIP > end) { decoded = false; break; }
            starts[count] = (int)(ip - address);
            lowestTarget[count] = n;
            if (Relocator.IsBranch(insn)) // call, jmp, jcc, loop, jrcxz, and xbegin's abort target
            {
                ulong t = insn.NearBranchTarget;
                if (t >= address && t < end) lowestTarget[count] = (int)(t - address);
            }
            count++;
        }

        int found = 0;
        if (!decoded)
        {
            for (int k = 1; k < n; k++) destination[found++] = address + (ulong)k;
            return found;
        }
        // From the last instruction back: the lowest target any instruction from k on branches to.
        int minTarget = n;
        Span<int> suffixMin = stackalloc int[count];
        for (int i = count - 1; i >= 0; i--)
        {
            minTarget = Math.Min(minTarget, lowestTarget[i]);
            suffixMin[i] = minTarget;
        }
        for (int i = 1; i < count; i++)
        {
            int k = starts[i];
            if (!old[k..].SequenceEqual(@new[k..]) || suffixMin[i] < k)
                destination[found++] = address + (ulong)k;
        }
        return found;
    }

    private readonly record struct Key(ReadOnlyMemory<byte> Old, ReadOnlyMemory<byte> New);

    private sealed class KeyComparer : IEqualityComparer<Key>
    {
        public bool Equals(Key a, Key b) => a.Old.Span.SequenceEqual(b.Old.Span) && a.New.Span.SequenceEqual(b.New.Span);

        public int GetHashCode(Key k)
        {
            var h = new HashCode();
            h.AddBytes(k.Old.Span);
            h.AddBytes(k.New.Span);
            return h.ToHashCode();
        }
    }

    private static readonly Dictionary<Key, ulong[]> Cache = new(new KeyComparer());
    private static readonly object CacheLock = new();

    /// <summary>
    /// The interior points of any site whose old and new bytes are these, as offsets from the site's
    /// address (<see cref="Find"/> at address 0), through a cache keyed by the bytes: the offsets do not
    /// depend on the address (branch targets are relative), and plans repeat the same patch at many
    /// sites. The array is shared: do not change it.
    /// </summary>
    public static ulong[] Offsets(ReadOnlyMemory<byte> old, ReadOnlyMemory<byte> @new)
    {
        var key = new Key(old, @new);
        lock (CacheLock)
        {
            if (!Cache.TryGetValue(key, out var offsets))
            {
                Span<ulong> points = stackalloc ulong[old.Length];
                offsets = points[..Find(0, old.Span, @new.Span, points)].ToArray();
                if (Cache.Count >= 4096) Cache.Clear();
                // Keep copies: the key must not pin (or change with) the caller's plan buffers.
                Cache[new Key(old.ToArray(), @new.ToArray())] = offsets;
            }
            return offsets;
        }
    }
}

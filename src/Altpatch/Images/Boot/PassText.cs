using System.Runtime.InteropServices;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>
/// The text one boot-time pass sees: the image's current bytes (what earlier passes left) with the writes
/// this pass has planned so far laid over them. The kernel's passes patch site after site with
/// <c>text_poke_early()</c>, and a later site of the same pass sees what an earlier one wrote (two
/// <c>.altinstructions</c> entries of one <c>ALTERNATIVE_2</c> name the same bytes; the later wins).
/// Here each site's bytes are assembled in a buffer and recorded with <see cref="Write"/>; at the end
/// <see cref="ToPlan"/> turns the changed ranges into pokes (one per site, or one per group of
/// overlapping sites), which a text poker validates and writes in one go.
/// </summary>
internal sealed class PassText
{
    private const int ChunkSize = 1 << 16;
    private const int BlockMax = 256;
    private readonly ImagePoker image;
    // The writes so far, sorted by Start and non-overlapping, in blocks of at most BlockMax: the tables are in link
    // order, which runs backwards hundreds of times (6.1's .return_sites: 931 times in 48,017 entries), and an insert
    // moves the rest of its block only, not of the whole list.
    private readonly List<List<Segment>> blocks = [];
    private byte[] chunk = [];                      // the segments' bytes, in 64 KiB chunks (not an array per site)
    private int used;

    private struct Segment(ulong start, Memory<byte> data, SiteRef site, string why)
    {
        public ulong Start = start;
        public Memory<byte> Data = data;
        public SiteRef Site = site;
        public string Why = why;
        public readonly ulong End => Start + (ulong)Data.Length;
    }

    public PassText(ImagePoker image) => this.image = image;

    /// <summary>Room for <paramref name="length"/> bytes of a segment.</summary>
    private Memory<byte> Store(int length)
    {
        if (length > chunk.Length - used)
        {
            chunk = new byte[Math.Max(ChunkSize, length)];
            used = 0;
        }
        var m = new Memory<byte>(chunk, used, length);
        used += length;
        return m;
    }

    /// <summary>The current bytes of [address, address + destination.Length), with this pass's writes applied.</summary>
    /// <exception cref="PatchException">The range is not inside one executable section.</exception>
    public void Read(ulong address, Span<byte> destination, SiteRef site)
    {
        image.Read(address, destination.Length, site).CopyTo(destination);
        ulong end = address + (ulong)destination.Length;
        var (b, i) = FirstOverlapping(address);
        for (; b < blocks.Count; b++, i = 0)
        {
            var block = CollectionsMarshal.AsSpan(blocks[b]);
            for (; i < block.Length; i++)
            {
                ref readonly var s = ref block[i];
                if (s.Start >= end)
                    return;
                ulong from = Math.Max(s.Start, address), to = Math.Min(s.End, end);
                s.Data.Span.Slice((int)(from - s.Start), (int)(to - from)).CopyTo(destination[(int)(from - address)..]);
            }
        }
    }

    /// <summary>Whether [address, address + length) lies inside one executable section.</summary>
    public bool IsCode(ulong address, int length) => image.IsCode(address, length);

    /// <summary>
    /// Records that the site's bytes at <paramref name="address"/> become <paramref name="bytes"/> (the kernel's
    /// <c>text_poke_early(addr, buf, len)</c>). Returns false, recording nothing, when the bytes are already there.
    /// </summary>
    public bool Write(ulong address, ReadOnlySpan<byte> bytes, SiteRef site, string why)
    {
        if (bytes.IsEmpty)
            return false;
        ulong end = address + (ulong)bytes.Length;
        var (b, i) = FirstOverlapping(address);
        bool overlaps = b < blocks.Count && blocks[b][i].Start < end;
        if (!overlaps)
        {
            // Nothing of this pass there yet: compare with the image directly.
            if (image.Read(address, bytes.Length, site).SequenceEqual(bytes))
                return false;
            var stored = Store(bytes.Length);
            bytes.CopyTo(stored.Span);
            Insert(b, i, new Segment(address, stored, site, why));
            return true;
        }
        Span<byte> current = bytes.Length <= 256 ? stackalloc byte[bytes.Length] : new byte[bytes.Length];
        Read(address, current, site);
        if (current.SequenceEqual(bytes))
            return false;
        // Merge with the overlapping segments into one: union range, this write on top. (Touching neighbours,
        // s.End == address, are not merged: they are separate sites.)
        ulong start = Math.Min(address, blocks[b][i].Start), stop = end;
        int count = 0;
        for (var (cb, ci) = (b, i); cb < blocks.Count && blocks[cb][ci].Start < end; count++)
        {
            stop = Math.Max(stop, blocks[cb][ci].End);
            if (++ci == blocks[cb].Count)
                (cb, ci) = (cb + 1, 0);
        }
        var data = Store((int)(stop - start));
        Read(start, data.Span, site);
        bytes.CopyTo(data.Span[(int)(address - start)..]);
        ref var keep = ref CollectionsMarshal.AsSpan(blocks[b])[i];
        keep.Start = start;
        keep.Data = data;
        keep.Why += "; " + why;
        // Remove the other count - 1 merged segments, which follow it.
        int next = i + 1;
        for (int k = 1; k < count; k++)
        {
            if (next == blocks[b].Count)
                (b, next) = (b + 1, 0);
            blocks[b].RemoveAt(next);
            if (blocks[b].Count == 0)
                blocks.RemoveAt(b);
        }
        return true;
    }

    /// <summary>The pass's pokes: old bytes from the image, new bytes from the writes (unchanged ranges dropped).</summary>
    public PatchPlan ToPlan()
    {
        var builder = new PlanBuilder(blocks.Sum(x => x.Count));
        foreach (var block in blocks)
        {
            foreach (ref readonly var s in CollectionsMarshal.AsSpan(block))
            {
                var old = image.Read(s.Start, s.Data.Length, s.Site);
                if (!old.SequenceEqual(s.Data.Span))
                    builder.Add(s.Start, old, s.Data.Span, s.Site, s.Why);
            }
        }
        return builder.Build();
    }

    /// <summary>Inserts at position <paramref name="i"/> of block <paramref name="b"/> (<c>b == blocks.Count</c>: at the
    /// end). A full block (<see cref="BlockMax"/>) is split in two first, or, when the segment goes after its last one,
    /// followed by a new block: the lists never grow past the capacity they are made with.</summary>
    private void Insert(int b, int i, Segment segment)
    {
        if (blocks.Count == 0)
        {
            blocks.Add(new List<Segment>(BlockMax) { segment });
            return;
        }
        if (b == blocks.Count)
            (b, i) = (b - 1, blocks[b - 1].Count);
        var block = blocks[b];
        if (block.Count == BlockMax)
        {
            if (i == BlockMax)
            {
                blocks.Insert(b + 1, new List<Segment>(BlockMax) { segment });
                return;
            }
            var tail = new List<Segment>(BlockMax);
            tail.AddRange(CollectionsMarshal.AsSpan(block)[(BlockMax / 2)..]);
            block.RemoveRange(BlockMax / 2, BlockMax - BlockMax / 2);
            blocks.Insert(b + 1, tail);
            if (i > BlockMax / 2)
                (block, i) = (tail, i - BlockMax / 2);
        }
        block.Insert(i, segment);
    }

    /// <summary>Block and index of the first segment whose end is after <paramref name="address"/>; (blocks.Count, 0)
    /// when there is none.</summary>
    private (int Block, int Index) FirstOverlapping(ulong address)
    {
        int lo = 0, hi = blocks.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            var block = blocks[mid];
            if (block[^1].End <= address)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == blocks.Count)
            return (lo, 0);
        var all = CollectionsMarshal.AsSpan(blocks[lo]);
        int l = 0, h = all.Length;
        while (l < h)
        {
            int mid = (l + h) >>> 1;
            if (all[mid].End <= address)
                l = mid + 1;
            else
                h = mid;
        }
        return (lo, l);
    }
}

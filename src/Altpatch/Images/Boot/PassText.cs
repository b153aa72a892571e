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
    private readonly ImagePoker image;
    private readonly List<Segment> segments = [];   // sorted by Start, non-overlapping
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
        if (segments.Count == 0)
            return;
        ulong end = address + (ulong)destination.Length;
        var all = CollectionsMarshal.AsSpan(segments);
        for (int i = FirstOverlapping(address); i < all.Length && all[i].Start < end; i++)
        {
            ref readonly var s = ref all[i];
            ulong from = Math.Max(s.Start, address), to = Math.Min(s.End, end);
            s.Data.Span.Slice((int)(from - s.Start), (int)(to - from)).CopyTo(destination[(int)(from - address)..]);
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
        int first = FirstOverlapping(address);
        if (first == segments.Count || segments[first].Start >= end)
        {
            // Nothing of this pass there yet: compare with the image directly.
            if (image.Read(address, bytes.Length, site).SequenceEqual(bytes))
                return false;
        }
        else
        {
            Span<byte> current = bytes.Length <= 256 ? stackalloc byte[bytes.Length] : new byte[bytes.Length];
            Read(address, current, site);
            if (current.SequenceEqual(bytes))
                return false;
        }
        // Touching neighbours (s.End == address) are not merged: they are separate sites.
        int last = first;
        while (last < segments.Count && segments[last].Start < end)
            last++;
        if (first == last)
        {
            var stored = Store(bytes.Length);
            bytes.CopyTo(stored.Span);
            segments.Insert(first, new Segment(address, stored, site, why));
            return true;
        }
        // Merge with the overlapping segments into one: union range, this write on top.
        ulong start = Math.Min(address, segments[first].Start);
        ulong stop = Math.Max(end, segments[last - 1].End);
        var data = Store((int)(stop - start));
        Read(start, data.Span, site);
        bytes.CopyTo(data.Span[(int)(address - start)..]);
        ref var keep = ref CollectionsMarshal.AsSpan(segments)[first];
        keep.Start = start;
        keep.Data = data;
        keep.Why += "; " + why;
        segments.RemoveRange(first + 1, last - first - 1);
        return true;
    }

    /// <summary>The pass's pokes: old bytes from the image, new bytes from the writes (unchanged ranges dropped).</summary>
    public PatchPlan ToPlan()
    {
        var builder = new PlanBuilder(segments.Count);
        foreach (ref readonly var s in CollectionsMarshal.AsSpan(segments))
        {
            var old = image.Read(s.Start, s.Data.Length, s.Site);
            if (!old.SequenceEqual(s.Data.Span))
                builder.Add(s.Start, old, s.Data.Span, s.Site, s.Why);
        }
        return builder.Build();
    }

    /// <summary>Index of the first segment whose end is after <paramref name="address"/>.</summary>
    private int FirstOverlapping(ulong address)
    {
        var all = CollectionsMarshal.AsSpan(segments);
        int lo = 0, hi = all.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (all[mid].End <= address)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    }
}

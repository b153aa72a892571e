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
    private readonly ImagePoker image;
    private readonly List<Segment> segments = [];   // sorted by Start, non-overlapping

    private sealed class Segment(ulong start, byte[] data, SiteRef site, string why)
    {
        public ulong Start = start;
        public byte[] Data = data;
        public SiteRef Site = site;
        public string Why = why;
        public ulong End => Start + (ulong)Data.Length;
    }

    public PassText(ImagePoker image) => this.image = image;

    /// <summary>The current bytes of [address, address + destination.Length), with this pass's writes applied.</summary>
    /// <exception cref="PatchException">The range is not inside one executable section.</exception>
    public void Read(ulong address, Span<byte> destination, SiteRef site)
    {
        image.Read(address, destination.Length, site).CopyTo(destination);
        if (segments.Count == 0)
            return;
        ulong end = address + (ulong)destination.Length;
        for (int i = FirstOverlapping(address); i < segments.Count && segments[i].Start < end; i++)
        {
            var s = segments[i];
            ulong from = Math.Max(s.Start, address), to = Math.Min(s.End, end);
            s.Data.AsSpan((int)(from - s.Start), (int)(to - from)).CopyTo(destination[(int)(from - address)..]);
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
            segments.Insert(first, new Segment(address, bytes.ToArray(), site, why));
            return true;
        }
        // Merge with the overlapping segments into one: union range, this write on top.
        ulong start = Math.Min(address, segments[first].Start);
        ulong stop = Math.Max(end, segments[last - 1].End);
        var data = new byte[stop - start];
        Read(start, data, site);
        bytes.CopyTo(data.AsSpan((int)(address - start)));
        var keep = segments[first];
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
        foreach (var s in segments)
        {
            var old = image.Read(s.Start, s.Data.Length, s.Site);
            if (!old.SequenceEqual(s.Data))
                builder.Add(s.Start, old, s.Data, s.Site, s.Why);
        }
        return builder.Build();
    }

    /// <summary>Index of the first segment whose end is after <paramref name="address"/>.</summary>
    private int FirstOverlapping(ulong address)
    {
        int lo = 0, hi = segments.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (segments[mid].End <= address)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    }
}

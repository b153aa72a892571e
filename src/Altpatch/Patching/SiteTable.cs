using Altpatch.Code;
using Altpatch.Sites;

namespace Altpatch.Patching;

/// <summary>Checks and orderings every planner applies to its site table.</summary>
internal static class SiteTable
{
    /// <summary>
    /// Indexes of <paramref name="sites"/> in ascending address order, table order kept among equal
    /// addresses (no sort when the table is already sorted, the usual case).
    /// </summary>
    public static int[] OrderByAddress<T>(IReadOnlyList<T> sites) where T : IPatchSite
    {
        var order = new int[sites.Count];
        bool sorted = true;
        for (int i = 0; i < order.Length; i++)
        {
            order[i] = i;
            if (i > 0 && sites[i].Address < sites[i - 1].Address) sorted = false;
        }
        if (!sorted)
        {
            var keys = new (ulong, int)[order.Length];
            for (int i = 0; i < keys.Length; i++) keys[i] = (sites[i].Address, i);
            Array.Sort(keys, order); // (address, index): stable by table order within one address
        }
        return order;
    }

    /// <summary>
    /// What is wrong with a site's length or recorded original bytes beyond its kind's minimum length
    /// (longer than MAX_PATCH_LEN, original bytes of another length), or null.
    /// </summary>
    public static string? BufferProblem<T>(in T s) where T : IPatchSite
    {
        if (s.Length > X86.MaxPatchLength)
            return $"length {s.Length} exceeds MAX_PATCH_LEN ({X86.MaxPatchLength})";
        if (s.Original.Length != s.Length)
            return $"{s.Original.Length} original bytes recorded for a {s.Length}-byte site";
        return null;
    }

    /// <summary>
    /// Why a site cannot be planned from the bytes memory holds (<paramref name="current"/>): neither its
    /// recorded <paramref name="original"/> nor, when given, <paramref name="norWhat"/> (the other states
    /// the planner knows, in words).
    /// </summary>
    public static string UnknownState(ReadOnlySpan<byte> current, ReadOnlySpan<byte> original, string? norWhat) =>
        $"memory holds {Convert.ToHexString(current)}, which is neither the recorded original {Convert.ToHexString(original)}" +
        (norWhat is null ? "" : " nor " + norWhat);

    /// <summary>
    /// The last site a planner took in address order: a site that starts before it ends overlaps it.
    /// </summary>
    public struct Overlaps
    {
        private ulong end;
        private SiteRef? last;

        /// <summary>What is wrong with a site at <paramref name="address"/> that starts before the last site ends, or null.</summary>
        public readonly string? Problem(ulong address) =>
            last is { } site && address < end ? $"overlaps {site} which ends at 0x{end:x}" : null;

        /// <summary>Takes <paramref name="site"/>, of <paramref name="length"/> bytes at <paramref name="address"/>, as the last site.</summary>
        public void Add(SiteRef site, ulong address, int length)
        {
            last = site;
            end = address + (ulong)length;
        }
    }
}

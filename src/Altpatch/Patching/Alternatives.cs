using System.Collections.Concurrent;
using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Patching;

/// <summary>
/// The alternatives patcher (the kernel's <c>apply_alternatives()</c>), as a pure function from sites
/// and CPU features to a <see cref="PatchPlan"/>. For each site address, the last alternative whose
/// condition holds wins; its replacement is assembled in a buffer of at most
/// <see cref="X86.MaxPatchLength"/> bytes, re-encoded for the site's final address
/// (<see cref="Relocator"/>), and padded with the CPU's best NOPs. A site where no condition holds
/// gets its original bytes back. Sites whose memory already holds the wanted bytes produce no poke,
/// so applying the same features twice gives an empty second plan.
/// </summary>
public static class Alternatives
{
    private static readonly ConcurrentDictionary<(CpuFeature, AltFlags, bool), string> Reasons = new();

    /// <summary>
    /// Plans the sites for <paramref name="cpu"/>, reading each site's current bytes through
    /// <paramref name="code"/>. Throws <see cref="PatchException"/> naming the site for: a site longer
    /// than 254 bytes or of length 0, original bytes not of the site's length, a replacement longer than
    /// its site, alternatives of one address with different lengths or originals, overlapping sites,
    /// a site that cannot be read, memory that holds neither the original nor a replacement, and a
    /// replacement that cannot be re-encoded to fit at the site. When <paramref name="decisions"/> is given,
    /// each site address's outcome is appended to it (in address order).
    /// </summary>
    public static PatchPlan Plan(IReadOnlyList<AlternativeSite> sites, CpuFeatures cpu, ICodeReader code, AlternativeOptions? options = null,
                                 ICollection<AlternativeDecision>? decisions = null)
    {
        ArgumentNullException.ThrowIfNull(sites);
        ArgumentNullException.ThrowIfNull(cpu);
        ArgumentNullException.ThrowIfNull(code);
        options ??= AlternativeOptions.Default;

        int[] order = SiteTable.OrderByAddress(sites);
        var builder = new PlanBuilder(sites.Count);
        Span<byte> wanted = stackalloc byte[X86.MaxPatchLength];
        Span<byte> current = stackalloc byte[X86.MaxPatchLength];
        var overlaps = new SiteTable.Overlaps();

        for (int g = 0; g < order.Length;)
        {
            int first = order[g];
            var head = sites[first];
            int groupEnd = g + 1;
            while (groupEnd < order.Length && sites[order[groupEnd]].Address == head.Address) groupEnd++;

            CheckShape(head, first, options);
            int chosen = -1;
            for (int k = g; k < groupEnd; k++)
            {
                int idx = order[k];
                var s = sites[idx];
                if (k > g)
                {
                    CheckShape(s, idx, options);
                    if (s.Length != head.Length)
                        throw Error(idx, s, options, $"length {s.Length} differs from {Ref(first, options)} at the same address (length {head.Length})");
                    if (!s.Original.Span.SequenceEqual(head.Original.Span))
                        throw Error(idx, s, options, $"original bytes differ from {Ref(first, options)} at the same address");
                }
                if (s.Applies(cpu)) chosen = idx; // the last one that applies wins, as sequential patching would leave it
            }
            if (overlaps.Problem(head.Address) is { } overlap)
                throw Error(first, head, options, overlap);

            int len = head.Length;
            var want = wanted[..len];
            if (chosen >= 0) AssembleInto(sites[chosen], chosen, want, options);
            else head.Original.Span.CopyTo(want);

            var cur = current[..len];
            if (!code.TryRead(head.Address, cur, out var problem))
                throw Error(first, head, options, problem);

            int siteIndex = chosen >= 0 ? chosen : first;
            bool changed = !cur.SequenceEqual(want);
            decisions?.Add(new AlternativeDecision(first, head.Address, len, chosen, changed, Reason(sites[siteIndex], chosen >= 0)));
            if (changed)
            {
                if (!IsKnownState(sites, order, g, groupEnd, cur, chosen, options))
                    throw Error(first, head, options, SiteTable.UnknownState(cur, head.Original.Span, "any of its replacements"));
                builder.Add(head.Address, cur, want, Site(siteIndex, options), Reason(sites[siteIndex], chosen >= 0));
                options.Log?.WriteLine($"alternatives: {Ref(siteIndex, options)} 0x{head.Address:x} len {len} {(chosen >= 0 ? "apply " + sites[chosen].Condition : "original")}: {Convert.ToHexString(cur)} -> {Convert.ToHexString(want)}");
            }
            else
            {
                options.Log?.WriteLine($"alternatives: {Ref(siteIndex, options)} 0x{head.Address:x} len {len} unchanged: {Convert.ToHexString(cur)}");
            }

            overlaps.Add(Site(first, options), head.Address, len);
            g = groupEnd;
        }
        return builder.Build();
    }

    /// <summary>
    /// Assembles one site's new bytes in <paramref name="buffer"/> (its first <see cref="AlternativeSite.Length"/>
    /// bytes): the replacement re-encoded for the site's address, then NOPs. Pure: touches no code.
    /// Returns the number of bytes of replacement before the padding.
    /// </summary>
    public static int Assemble(in AlternativeSite site, Span<byte> buffer, AlternativeOptions? options = null)
    {
        options ??= AlternativeOptions.Default;
        CheckShape(site, 0, options);
        if (buffer.Length < site.Length)
            throw new ArgumentException($"buffer of {buffer.Length} bytes is shorter than the site ({site.Length})", nameof(buffer));
        return AssembleInto(site, 0, buffer[..site.Length], options);
    }

    private static int AssembleInto(in AlternativeSite site, int index, Span<byte> dest, AlternativeOptions options)
    {
        if (!Relocator.TryRelocate(site.Replacement.Span, site.ReplacementAddress, site.Address, dest, out int used, out var error, options.Bitness))
            throw Error(index, site, options, $"replacement for {site.Condition} cannot be placed: {error}");
        options.Nops.AddNops(dest[used..]);
        return used;
    }

    private static bool IsKnownState(IReadOnlyList<AlternativeSite> sites, int[] order, int g, int groupEnd, ReadOnlySpan<byte> cur, int chosen, AlternativeOptions options)
    {
        var head = sites[order[g]];
        if (cur.SequenceEqual(head.Original.Span)) return true;
        Span<byte> candidate = stackalloc byte[X86.MaxPatchLength];
        for (int k = g; k < groupEnd; k++)
        {
            int idx = order[k];
            if (idx == chosen) continue;
            var c = candidate[..head.Length];
            AssembleInto(sites[idx], idx, c, options);
            if (cur.SequenceEqual(c)) return true;
        }
        return false;
    }

    private static void CheckShape(in AlternativeSite s, int index, AlternativeOptions options)
    {
        if (s.Length <= 0)
            throw Error(index, s, options, $"length {s.Length} is not positive");
        if (SiteTable.BufferProblem(s) is { } problem)
            throw Error(index, s, options, problem);
        if (s.Replacement.Length > s.Length)
            throw Error(index, s, options, $"replacement ({s.Replacement.Length} bytes) is longer than the site ({s.Length} bytes)");
    }

    private static string Reason(in AlternativeSite s, bool applied) =>
        Reasons.GetOrAdd((s.Feature, s.Flags, applied), static k =>
        {
            string name = CpuFeatureInfo.MacroName(k.Item1);
            bool not = (k.Item2 & AltFlags.Not) != 0;
            return k.Item3
                ? $"{name} {(not ? "absent" : "present")}: replacement"
                : $"{name} {(not ? "present" : "absent")}: original";
        });

    private static SiteRef Site(int index, AlternativeOptions options) => new(SiteKind.Alternative, index, options.TableName);

    private static string Ref(int index, AlternativeOptions options) => Site(index, options).ToString();

    private static PatchException Error(int index, in AlternativeSite s, AlternativeOptions options, string problem) =>
        new(Site(index, options), s.Address, problem);
}

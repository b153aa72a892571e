using Altpatch.Native;
using Altpatch.Text;

namespace Altpatch.Pokers;

/// <summary>How <see cref="ProtectPoker"/> opens pages for writing.</summary>
public enum ProtectPokerMode
{
    /// <summary>Pages become read-write and lose execute while they are written (W^X: never writable and executable).</summary>
    WriteXorExecute,
    /// <summary>Pages become read-write-execute while written, as simple patchers do. Other threads may keep running code in them.</summary>
    ReadWriteExecute,
}

/// <summary>
/// Writes plans into this process's code by toggling page protection: validates the whole plan
/// against /proc/self/maps and the memory's current bytes, makes the affected pages writable, writes
/// each site with one copy of its whole buffer, restores every page's previous protection (as
/// /proc/self/maps showed it), then serialises (cpuid here, core-serialising membarrier for other
/// threads when the kernel has it). Not safe for code other threads may be running at that moment:
/// use the live poker for that.
/// </summary>
public sealed unsafe class ProtectPoker : ITextPoker
{
    private readonly ProtectPokerMode mode;

    /// <summary>Creates a poker; the default mode never makes a page writable and executable at once.</summary>
    public ProtectPoker(ProtectPokerMode mode = ProtectPokerMode.WriteXorExecute) => this.mode = mode;

    /// <summary>Test seam: called with each poke's index before it is written; may throw to simulate a failed write.</summary>
    internal Action<int>? BeforeWrite { get; set; }

    /// <inheritdoc />
    public void Apply(PatchPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        if (plan.IsEmpty) return;
        using var lease = MemoryLease.For(plan);
        var map = MemoryMap.Read();
        PlanValidation.ValidateAgainstMemory(plan, map);

        var runs = PageProtection.Runs(plan, map);
        PageProtection.Open(runs, Libc.ProtRead | Libc.ProtWrite | (mode == ProtectPokerMode.ReadWriteExecute ? Libc.ProtExec : 0));
        var pokes = plan.AsSpan();
        int written = 0;
        try
        {
            for (; written < pokes.Length; written++)
            {
                BeforeWrite?.Invoke(written);
                var p = pokes[written];
                p.New.Span.CopyTo(new Span<byte>((void*)p.Address, p.Length));
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            for (int i = written - 1; i >= 0; i--)
                pokes[i].Old.Span.CopyTo(new Span<byte>((void*)pokes[i].Address, pokes[i].Length));
            PageProtection.Restore(runs, runs.Count);
            CoreSync.TrySyncAllCores();
            if (e is AltpatchException) throw;
            var site = pokes[written];
            throw new PatchException(site.Site, site.Address, $"write failed, {written} earlier site(s) reverted: {e.Message}", e);
        }
        PageProtection.Restore(runs, runs.Count);
        CoreSync.TrySyncAllCores();
    }
}

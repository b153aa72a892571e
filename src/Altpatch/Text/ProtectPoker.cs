using Altpatch.Native;

namespace Altpatch.Text;

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
        var map = MemoryMap.Read();
        PlanValidation.ValidateAgainstMemory(plan, map);

        var runs = PlanValidation.PageRuns(plan, map);
        int opened = 0;
        int written = 0;
        try
        {
            int writeProt = Libc.ProtRead | Libc.ProtWrite | (mode == ProtectPokerMode.ReadWriteExecute ? Libc.ProtExec : 0);
            for (; opened < runs.Count; opened++)
            {
                var r = runs[opened];
                if (Libc.Mprotect((nint)r.Start, (nuint)(r.End - r.Start), writeProt) != 0)
                    throw NativeException.Last($"mprotect(0x{r.Start:x}, {r.End - r.Start}, RW) for {r.FirstSite}");
            }
            var pokes = plan.AsSpan();
            for (; written < pokes.Length; written++)
            {
                BeforeWrite?.Invoke(written);
                var p = pokes[written];
                p.New.Span.CopyTo(new Span<byte>((void*)p.Address, p.Length));
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            var pokes = plan.AsSpan();
            for (int i = written - 1; i >= 0; i--)
                pokes[i].Old.Span.CopyTo(new Span<byte>((void*)pokes[i].Address, pokes[i].Length));
            RestoreProtection(runs, opened);
            CoreSync.TrySyncAllCores();
            var site = plan[Math.Min(written, plan.Count - 1)];
            throw e is AltpatchException ? e
                : new PatchException(site.Site, site.Address, $"write failed, {written} earlier site(s) reverted: {e.Message}", e);
        }
        RestoreProtection(runs, opened);
        CoreSync.TrySyncAllCores();
    }

    private static void RestoreProtection(List<PlanValidation.PageRun> runs, int count)
    {
        var failures = new List<string>();
        for (int i = 0; i < count; i++)
        {
            var r = runs[i];
            if (Libc.Mprotect((nint)r.Start, (nuint)(r.End - r.Start), r.Protection) != 0)
                failures.Add($"0x{r.Start:x}-0x{r.End:x}");
        }
        if (failures.Count > 0)
            throw new NativeException($"could not restore page protection of {string.Join(", ", failures)}", System.Runtime.InteropServices.Marshal.GetLastPInvokeError());
    }

    /// <summary>Checks every poke: inside mapped executable memory and the memory holds its old bytes (see <see cref="PlanValidation"/>).</summary>
    internal static void ValidateAgainstMemory(PatchPlan plan, MemoryMap map) => PlanValidation.ValidateAgainstMemory(plan, map);
}

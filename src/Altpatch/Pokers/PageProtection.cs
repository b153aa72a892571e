using System.Runtime.InteropServices;
using Altpatch.Native;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Pokers;

/// <summary>
/// Opening the pages a plan writes for writing, and giving them their protection back, for the pokers that
/// write through the code's own mapping: <see cref="ProtectPoker"/>, and <see cref="LivePoker"/> for code
/// outside <see cref="ExecutableMemory"/>. Both do it the same way, so it is done here once.
/// </summary>
internal static class PageProtection
{
    /// <summary>A run of pages of equal original protection that pokes touch.</summary>
    internal readonly record struct PageRun(ulong Start, ulong End, int Protection, SiteRef FirstSite);

    /// <summary>The pages <paramref name="pokes"/> (ascending) touch, merged into runs of equal original protection.</summary>
    internal static List<PageRun> Runs(IEnumerable<Poke> pokes, MemoryMap map)
    {
        ulong page = (ulong)Environment.SystemPageSize;
        var runs = new List<PageRun>();
        foreach (var p in pokes)
        {
            for (ulong pg = p.Address & ~(page - 1); pg < p.End; pg += page)
            {
                map.TryFind(pg, out var region);
                int prot = (int)region.Protection; // MapProtection bits match PROT_* bits
                if (runs.Count > 0)
                {
                    var last = runs[^1];
                    if (pg < last.End) continue; // already covered
                    if (pg == last.End && last.Protection == prot)
                    {
                        runs[^1] = last with { End = pg + page };
                        continue;
                    }
                }
                runs.Add(new PageRun(pg, pg + page, prot, p.Site));
            }
        }
        return runs;
    }

    /// <summary>
    /// Gives every run <paramref name="protection"/> (PROT_* bits). When one <c>mprotect</c> fails, the runs
    /// opened before it get their protection back and a <see cref="NativeException"/> names the failed
    /// run's first site: either every run is open or none is.
    /// </summary>
    internal static void Open(List<PageRun> runs, int protection)
    {
        for (int opened = 0; opened < runs.Count; opened++)
        {
            var r = runs[opened];
            if (Libc.Mprotect((nint)r.Start, (nuint)(r.End - r.Start), protection) != 0)
            {
                var failure = NativeException.Last($"mprotect(0x{r.Start:x}, {r.End - r.Start}, {Name(protection)}) for {r.FirstSite}");
                Restore(runs, opened);
                throw failure;
            }
        }
    }

    /// <summary>
    /// Gives the first <paramref name="count"/> runs their original protection back, trying every one; throws
    /// <see cref="NativeException"/> listing those that failed, with the errno of the first failure.
    /// </summary>
    internal static void Restore(List<PageRun> runs, int count)
    {
        List<string>? failures = null;
        int errno = 0;
        for (int i = 0; i < count; i++)
        {
            var r = runs[i];
            if (Libc.Mprotect((nint)r.Start, (nuint)(r.End - r.Start), r.Protection) != 0)
            {
                // Read errno now: a later call that succeeds leaves 0 behind.
                if (failures is null) errno = Marshal.GetLastPInvokeError();
                (failures ??= []).Add($"0x{r.Start:x}-0x{r.End:x}");
            }
        }
        if (failures is not null)
            throw new NativeException($"could not restore page protection of {string.Join(", ", failures)}", errno);
    }

    private static string Name(int protection) =>
        string.Concat((protection & Libc.ProtRead) != 0 ? "R" : "", (protection & Libc.ProtWrite) != 0 ? "W" : "",
                      (protection & Libc.ProtExec) != 0 ? "X" : "");
}

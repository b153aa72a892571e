using Altpatch.Native;
using Altpatch.Text;

namespace Altpatch.Pokers;

/// <summary>
/// Keeps every <see cref="ExecutableMemory"/> that a plan writes into alive while a poker works on it:
/// a SafeHandle reference on each, so that a concurrent Dispose (say, of the CodeBuilder that owns the
/// code) defers the unmapping until the poker is done instead of pulling the pages from under it.
/// Memory whose release already ran between the registry lookup and the reference is refused, naming
/// the site; memory disposed while another lease holds it stays mapped and may still be written.
/// </summary>
internal readonly struct MemoryLease : IDisposable
{
    // The first allocation held, then any others (a plan usually writes into one: no list then).
    private readonly ExecutableMemory? first;
    private readonly List<ExecutableMemory>? more;

    private MemoryLease(ExecutableMemory? first, List<ExecutableMemory>? more)
    {
        this.first = first;
        this.more = more;
    }

    /// <summary>Takes a reference on each allocation holding a poke of <paramref name="plan"/>.</summary>
    public static MemoryLease For(PatchPlan plan)
    {
        ExecutableMemory? first = null;
        List<ExecutableMemory>? more = null;
        foreach (var p in plan.AsSpan())
        {
            var m = ExecutableMemory.Owner(p.Address, p.Length);
            if (m is null || ReferenceEquals(m, first) || (more is not null && more.Contains(m))) continue;
            bool added = false;
            try
            {
                m.DangerousAddRef(ref added);
            }
            catch (ObjectDisposedException)
            {
                new MemoryLease(first, more).Dispose();
                throw new PatchException(p.Site, p.Address, $"its executable memory '{m.Name}' is being freed; nothing written");
            }
            if (first is null) first = m;
            else (more ??= []).Add(m);
        }
        return new MemoryLease(first, more);
    }

    /// <summary>Releases the references.</summary>
    public void Dispose()
    {
        first?.DangerousRelease();
        if (more is null) return;
        foreach (var m in more) m.DangerousRelease();
    }
}

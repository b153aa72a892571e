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
    private readonly List<ExecutableMemory>? held;

    private MemoryLease(List<ExecutableMemory>? held) => this.held = held;

    /// <summary>Takes a reference on each allocation holding a poke of <paramref name="plan"/>.</summary>
    public static MemoryLease For(PatchPlan plan)
    {
        List<ExecutableMemory>? held = null;
        foreach (var p in plan.AsSpan())
        {
            var m = ExecutableMemory.Owner(p.Address, p.Length);
            if (m is null || (held is not null && held.Contains(m))) continue;
            bool added = false;
            try
            {
                m.DangerousAddRef(ref added);
            }
            catch (ObjectDisposedException)
            {
                new MemoryLease(held).Dispose();
                throw new PatchException(p.Site, p.Address, $"its executable memory '{m.Name}' is being freed; nothing written");
            }
            (held ??= []).Add(m);
        }
        return new MemoryLease(held);
    }

    /// <summary>Releases the references.</summary>
    public void Dispose()
    {
        if (held is null) return;
        foreach (var m in held) m.DangerousRelease();
    }
}

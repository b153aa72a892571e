using Altpatch.Native;
using Altpatch.Text;

namespace Altpatch.TortureChild;

/// <summary>
/// The negative control: what a patcher without the int3 protocol does. It copies each site's new
/// bytes through the RW alias one byte at a time, first to last, pausing between bytes so that other
/// threads fetch half-written sites, and never serialises other cores. No validation either.
/// </summary>
public sealed unsafe class NaivePoker : ITextPoker
{
    /// <summary>Spin iterations between two byte writes (widens the window a reader can see).</summary>
    public int PauseBetweenBytes { get; init; } = 50;

    /// <inheritdoc />
    public void Apply(PatchPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        foreach (var p in plan)
        {
            if (!ExecutableMemory.TryGetWritableAlias(p.Address, p.Length, out nint rw))
                throw new InvalidOperationException($"0x{p.Address:x} is not in ExecutableMemory");
            var bytes = p.New.Span;
            for (int i = 0; i < bytes.Length; i++)
            {
                Volatile.Write(ref *(byte*)(rw + i), bytes[i]);
                Thread.SpinWait(PauseBetweenBytes);
            }
        }
    }
}

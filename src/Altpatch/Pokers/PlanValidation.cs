using Altpatch.Native;
using Altpatch.Text;

namespace Altpatch.Pokers;

/// <summary>
/// Checks every poker makes before its first write, shared so that they are the same everywhere: a
/// poke lies in mapped executable memory and the memory holds its old bytes.
/// </summary>
internal static unsafe class PlanValidation
{
    /// <summary>Checks every poke against <paramref name="map"/> and the memory's current bytes.</summary>
    internal static void ValidateAgainstMemory(PatchPlan plan, MemoryMap map)
    {
        foreach (var p in plan.AsSpan())
        {
            CheckMapped(p, map);
            CheckOldBytes(p);
        }
    }

    /// <summary>
    /// Checks every poke and finds where to write it: the RW alias when the poke lies in
    /// <see cref="ExecutableMemory"/> (whose registry says it is mapped RX, no /proc read needed),
    /// 0 otherwise (code Altpatch did not allocate, checked against /proc/self/maps, read once, lazily).
    /// Returns the map when it had to be read.
    /// </summary>
    internal static MemoryMap? Validate(PatchPlan plan, Span<nint> aliases)
    {
        MemoryMap? map = null;
        var pokes = plan.AsSpan();
        for (int i = 0; i < pokes.Length; i++)
        {
            var p = pokes[i];
            if (ExecutableMemory.TryGetWritableAlias(p.Address, p.Length, out nint rw)) aliases[i] = rw;
            else
            {
                map ??= MemoryMap.Read();
                CheckMapped(p, map);
                aliases[i] = 0;
            }
            CheckOldBytes(p);
        }
        return map;
    }

    private static void CheckMapped(in Poke p, MemoryMap map)
    {
        if (!map.Covers(p.Address, p.Length, MapProtection.Read | MapProtection.Execute, out var problem))
            throw new PatchException(p.Site, p.Address, problem);
    }

    private static void CheckOldBytes(in Poke p)
    {
        var current = new ReadOnlySpan<byte>((void*)p.Address, p.Length);
        if (!current.SequenceEqual(p.Old.Span))
            throw new PatchException(p.Site, p.Address,
                $"memory holds {Convert.ToHexString(current)}, not the plan's old bytes {Convert.ToHexString(p.Old.Span)}");
    }
}

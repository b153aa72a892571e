using Altpatch.Text;

namespace Altpatch.Native;

/// <summary>
/// Reads this process's memory for planners, checking each range against a snapshot of
/// /proc/self/maps first so that a bad site address becomes an error instead of a crash.
/// Take a fresh instance (<see cref="Snapshot"/>) for each planning pass.
/// </summary>
public sealed unsafe class ProcessMemory : ICodeReader
{
    /// <summary>The mappings this reader checks against.</summary>
    public MemoryMap Map { get; }

    private ProcessMemory(MemoryMap map) => Map = map;

    /// <summary>Reads /proc/self/maps now and returns a reader that uses it.</summary>
    public static ProcessMemory Snapshot() => new(MemoryMap.Read());

    /// <inheritdoc />
    public bool TryRead(ulong address, Span<byte> destination, out string problem)
    {
        if (!Map.Covers(address, destination.Length, MapProtection.Read | MapProtection.Execute, out problem))
            return false;
        new ReadOnlySpan<byte>((void*)address, destination.Length).CopyTo(destination);
        return true;
    }
}

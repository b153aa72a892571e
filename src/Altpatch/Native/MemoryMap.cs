using System.Globalization;

namespace Altpatch.Native;

/// <summary>Protection bits of a mapping as /proc/self/maps shows them.</summary>
[Flags]
public enum MapProtection
{
    /// <summary>No access.</summary>
    None = 0,
    /// <summary>r</summary>
    Read = 1,
    /// <summary>w</summary>
    Write = 2,
    /// <summary>x</summary>
    Execute = 4,
}

/// <summary>One line of /proc/self/maps.</summary>
/// <param name="Start">First address.</param>
/// <param name="End">One past the last address.</param>
/// <param name="Protection">r/w/x bits.</param>
/// <param name="Shared">True for 's' (shared) mappings, false for 'p' (private).</param>
/// <param name="Path">The mapped file or pseudo-name, empty for anonymous memory.</param>
public readonly record struct MemoryRegion(ulong Start, ulong End, MapProtection Protection, bool Shared, string Path)
{
    /// <summary>Permissions as /proc/self/maps prints them, e.g. "r-xp".</summary>
    public string Permissions =>
        string.Concat((Protection & MapProtection.Read) != 0 ? "r" : "-", (Protection & MapProtection.Write) != 0 ? "w" : "-",
                      (Protection & MapProtection.Execute) != 0 ? "x" : "-", Shared ? "s" : "p");
}

/// <summary>
/// A snapshot of this process's mappings (/proc/self/maps), sorted by address, with lookups by
/// binary search. Pokers read it once per plan to validate every site and to learn each page's
/// protection before changing it.
/// </summary>
public sealed class MemoryMap
{
    private readonly MemoryRegion[] regions;

    /// <summary>The mappings, ascending.</summary>
    public IReadOnlyList<MemoryRegion> Regions => regions;

    private MemoryMap(MemoryRegion[] regions) => this.regions = regions;

    /// <summary>Reads /proc/self/maps now.</summary>
    public static MemoryMap Read() => Parse(File.ReadAllText("/proc/self/maps"));

    /// <summary>Parses text in /proc/PID/maps format.</summary>
    public static MemoryMap Parse(string text)
    {
        var list = new List<MemoryRegion>(512);
        foreach (var raw in text.AsSpan().EnumerateLines())
        {
            var line = raw.Trim();
            if (line.IsEmpty) continue;
            int dash = line.IndexOf('-');
            int sp = line.IndexOf(' ');
            if (dash < 0 || sp < dash) throw new FormatException($"bad maps line: {line}");
            ulong start = ulong.Parse(line[..dash], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            ulong end = ulong.Parse(line[(dash + 1)..sp], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            var perms = line.Slice(sp + 1, 4);
            var prot = (perms[0] == 'r' ? MapProtection.Read : 0) | (perms[1] == 'w' ? MapProtection.Write : 0) | (perms[2] == 'x' ? MapProtection.Execute : 0);
            // path: after offset, dev, inode
            var rest = line[(sp + 5)..];
            string path = "";
            for (int field = 0; field < 3 && !rest.IsEmpty; field++)
            {
                rest = rest.TrimStart();
                int next = rest.IndexOf(' ');
                rest = next < 0 ? [] : rest[next..];
            }
            if (!rest.IsEmpty) path = rest.Trim().ToString();
            list.Add(new MemoryRegion(start, end, prot, perms[3] == 's', path));
        }
        list.Sort((a, b) => a.Start.CompareTo(b.Start));
        return new MemoryMap([.. list]);
    }

    /// <summary>The mapping that contains <paramref name="address"/>, if any.</summary>
    public bool TryFind(ulong address, out MemoryRegion region)
    {
        int i = IndexOf(address);
        region = i >= 0 ? regions[i] : default;
        return i >= 0;
    }

    private int IndexOf(ulong address)
    {
        int lo = 0, hi = regions.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (address < regions[mid].Start) hi = mid - 1;
            else if (address >= regions[mid].End) lo = mid + 1;
            else return mid;
        }
        return -1;
    }

    /// <summary>
    /// Checks that [address, address+length) is covered by contiguous mappings that all have
    /// <paramref name="required"/>; on failure <paramref name="problem"/> says what is wrong.
    /// </summary>
    public bool Covers(ulong address, int length, MapProtection required, out string problem)
    {
        ulong end = address + (ulong)Math.Max(length, 1);
        int i = IndexOf(address);
        if (i < 0) { problem = $"0x{address:x} is not mapped"; return false; }
        ulong at = address;
        while (true)
        {
            var r = regions[i];
            if ((r.Protection & required) != required)
            {
                problem = $"0x{Math.Max(at, r.Start):x} is in a {r.Permissions} mapping {Describe(r)}, not {Need(required)}";
                return false;
            }
            if (end <= r.End) { problem = ""; return true; }
            if (i + 1 >= regions.Length || regions[i + 1].Start != r.End)
            {
                problem = $"0x{r.End:x} (inside the range) is not mapped";
                return false;
            }
            at = r.End;
            i++;
        }
    }

    private static string Need(MapProtection p) =>
        string.Concat((p & MapProtection.Read) != 0 ? "readable" : "", (p & MapProtection.Read) != 0 && (p & MapProtection.Execute) != 0 ? " and " : "",
                      (p & MapProtection.Execute) != 0 ? "executable" : "");

    private static string Describe(MemoryRegion r) => $"0x{r.Start:x}-0x{r.End:x}{(r.Path.Length > 0 ? " " + r.Path : "")}";
}

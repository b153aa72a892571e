using System.Collections;
using System.Globalization;
using System.Text;
using Altpatch.Code;

namespace Altpatch.Text;

/// <summary>
/// An immutable, validated list of pokes sorted by address: the only thing a text poker executes.
/// A plan is pure data; it can be printed, compared, tested and inverted without running anything.
/// Construction checks what can be checked without memory: each poke's old and new bytes have the
/// same length, between 1 and <see cref="X86.MaxPatchLength"/>, and no two pokes overlap.
/// </summary>
public sealed class PatchPlan : IReadOnlyList<Poke>
{
    private readonly Poke[] pokes;

    /// <summary>The empty plan.</summary>
    public static PatchPlan Empty { get; } = new([], validated: true);

    private PatchPlan(Poke[] pokes, bool validated)
    {
        this.pokes = pokes;
        if (!validated) Validate(this.pokes);
    }

    /// <summary>Creates a plan from pokes in any order; throws <see cref="PatchException"/> when invalid.</summary>
    public PatchPlan(IEnumerable<Poke> pokes) : this(SortByAddress(pokes.ToArray()), validated: false) { }

    /// <summary>Sorts <paramref name="array"/> by address in place (unless it already is) and returns it.</summary>
    private static Poke[] SortByAddress(Poke[] array)
    {
        if (!IsSorted(array)) Array.Sort(array, static (a, b) => a.Address.CompareTo(b.Address));
        return array;
    }

    private static bool IsSorted(Poke[] array)
    {
        for (int i = 1; i < array.Length; i++)
            if (array[i].Address < array[i - 1].Address) return false;
        return true;
    }

    private static void Validate(Poke[] array)
    {
        for (int i = 0; i < array.Length; i++)
        {
            ref readonly var p = ref array[i];
            if (p.Old.Length != p.New.Length)
                throw new PatchException(p.Site, p.Address, $"old bytes ({p.Old.Length}) and new bytes ({p.New.Length}) differ in length");
            if (p.New.Length == 0)
                throw new PatchException(p.Site, p.Address, "empty poke");
            if (p.New.Length > X86.MaxPatchLength)
                throw new PatchException(p.Site, p.Address, $"{p.New.Length} bytes is longer than MAX_PATCH_LEN ({X86.MaxPatchLength})");
            if (p.Address + (ulong)p.Length < p.Address)
                throw new PatchException(p.Site, p.Address, "range wraps around the address space");
            if (i > 0 && array[i - 1].End > p.Address)
            {
                ref readonly var prev = ref array[i - 1];
                throw new PatchException(p.Site, p.Address, $"overlaps {prev.Site} at 0x{prev.Address:x} ({prev.Length} bytes)");
            }
        }
    }

    /// <summary>Takes ownership of <paramref name="array"/> (sorting it in place if needed) and validates it.</summary>
    internal static PatchPlan Adopt(Poke[] array) => new(SortByAddress(array), validated: false);

    /// <summary>Wraps pokes a planner has already sorted and checked (internal fast path).</summary>
    internal static PatchPlan FromSortedValidated(Poke[] pokes) => pokes.Length == 0 ? Empty : new(pokes, validated: true);

    /// <inheritdoc />
    public int Count => pokes.Length;

    /// <summary>True when the plan writes nothing.</summary>
    public bool IsEmpty => pokes.Length == 0;

    /// <inheritdoc />
    public Poke this[int index] => pokes[index];

    /// <summary>The pokes as a span, ascending by address.</summary>
    public ReadOnlySpan<Poke> AsSpan() => pokes;

    /// <summary>Total bytes written.</summary>
    public long TotalBytes
    {
        get
        {
            long n = 0;
            foreach (var p in pokes) n += p.Length;
            return n;
        }
    }

    /// <summary>The plan that restores every old byte: same sites, old and new swapped.</summary>
    public PatchPlan Inverse()
    {
        var inv = new Poke[pokes.Length];
        for (int i = 0; i < inv.Length; i++) inv[i] = pokes[i].Inverse();
        return FromSortedValidated(inv);
    }

    /// <summary>A plan with the pokes of both plans; throws <see cref="PatchException"/> if they overlap.</summary>
    public PatchPlan Concat(PatchPlan other) => new(pokes.Concat(other.pokes));

    /// <inheritdoc />
    public IEnumerator<Poke> GetEnumerator() => ((IEnumerable<Poke>)pokes).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => pokes.GetEnumerator();

    /// <summary>One line per poke: address, site, reason, old → new bytes.</summary>
    public override string ToString()
    {
        var sb = new StringBuilder();
        foreach (var p in pokes)
            sb.Append(CultureInfo.InvariantCulture, $"0x{p.Address:x} {p.Site} ({p.Why}): {Convert.ToHexString(p.Old.Span)} -> {Convert.ToHexString(p.New.Span)}").AppendLine();
        return sb.ToString();
    }
}

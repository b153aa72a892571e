using Altpatch.Sites;

namespace Altpatch.Text;

/// <summary>
/// Collects pokes for a plan while planners run. Old and new bytes are copied into large shared
/// chunks instead of one array per poke, and the poke array is handed to the plan without a copy when
/// the capacity was right, so planning 100,000 sites allocates a handful of arrays.
/// </summary>
public sealed class PlanBuilder
{
    private const int ChunkSize = 1 << 16;
    private Poke[] pokes;
    private int count;
    private byte[] chunk = [];
    private int used;
    private bool built;

    /// <summary>Creates a builder; <paramref name="capacity"/> is the expected number of pokes.</summary>
    public PlanBuilder(int capacity = 16) => pokes = new Poke[Math.Max(capacity, 1)];

    /// <summary>Number of pokes added so far.</summary>
    public int Count => count;

    /// <summary>Adds a poke, copying both byte spans.</summary>
    /// <exception cref="InvalidOperationException"><see cref="Build"/> was called: the builder's pokes belong to that plan.</exception>
    public void Add(ulong address, ReadOnlySpan<byte> oldBytes, ReadOnlySpan<byte> newBytes, SiteRef site, string why)
    {
        ThrowIfBuilt();
        if (count == pokes.Length) Array.Resize(ref pokes, pokes.Length * 2);
        pokes[count++] = new Poke(address, Store(oldBytes), Store(newBytes), site, why);
    }

    private ReadOnlyMemory<byte> Store(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > chunk.Length - used)
        {
            chunk = new byte[Math.Max(ChunkSize, bytes.Length)];
            used = 0;
        }
        bytes.CopyTo(chunk.AsSpan(used));
        var m = new ReadOnlyMemory<byte>(chunk, used, bytes.Length);
        used += bytes.Length;
        return m;
    }

    /// <summary>
    /// Builds the plan (sorted and validated: throws <see cref="PatchException"/> on overlaps). A builder makes one
    /// plan: the plan takes its array, so <see cref="Add"/> and <see cref="Build"/> throw
    /// <see cref="InvalidOperationException"/> afterwards.
    /// </summary>
    public PatchPlan Build()
    {
        ThrowIfBuilt();
        built = true;
        if (count == 0) return PatchPlan.Empty;
        if (count != pokes.Length) Array.Resize(ref pokes, count);
        var plan = PatchPlan.Adopt(pokes);
        pokes = [];
        count = 0;
        return plan;
    }

    private void ThrowIfBuilt()
    {
        if (built)
            throw new InvalidOperationException("this PlanBuilder has already built its plan (Build takes the pokes); use a new builder");
    }
}

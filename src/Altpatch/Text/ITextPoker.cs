namespace Altpatch.Text;

/// <summary>
/// The only writers of code. A poker validates a whole plan before writing its first byte, writes
/// each site with one copy (or a batch protocol), makes the result visible to instruction fetch,
/// and on a failure part-way reverts what it wrote. <see cref="Apply"/> on <see cref="PatchPlan.Inverse"/>
/// restores the original bytes exactly.
/// </summary>
public interface ITextPoker
{
    /// <summary>Validates and writes the plan; throws <see cref="PatchException"/> (nothing written) when invalid.</summary>
    void Apply(PatchPlan plan);
}

/// <summary>Helpers shared by every poker.</summary>
public static class TextPokerExtensions
{
    /// <summary>Restores the bytes <paramref name="plan"/> replaced: applies its inverse.</summary>
    public static void Revert(this ITextPoker poker, PatchPlan plan)
    {
        ArgumentNullException.ThrowIfNull(poker);
        ArgumentNullException.ThrowIfNull(plan);
        poker.Apply(plan.Inverse());
    }
}

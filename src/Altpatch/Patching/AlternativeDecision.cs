namespace Altpatch.Patching;

/// <summary>
/// One site address's outcome in an alternatives plan (the kernel's <c>debug-alternative</c> line, as data): which
/// alternative's replacement the site holds after the plan, if any, and whether the plan writes the site.
/// </summary>
/// <param name="Index">Index of the first alternative of the address in the table.</param>
/// <param name="Address">The site's address.</param>
/// <param name="Length">The site's length.</param>
/// <param name="Chosen">Index of the alternative whose replacement the site gets (the last whose condition holds), or -1 when the site keeps (or gets back) its original bytes.</param>
/// <param name="Changed">Whether the plan writes the site (memory did not already hold the wanted bytes).</param>
/// <param name="Reason">The reason in words, the poke's: "X86_FEATURE_POPCNT present: replacement", "... absent: original".</param>
public readonly record struct AlternativeDecision(int Index, ulong Address, int Length, int Chosen, bool Changed, string Reason)
{
    /// <summary>Whether a replacement is wanted (<see cref="Chosen"/> is an alternative).</summary>
    public bool Applied => Chosen >= 0;
}

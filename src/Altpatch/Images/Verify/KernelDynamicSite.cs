namespace Altpatch.Images.Verify;

/// <summary>
/// Decides whether the bytes found at a dynamic site are one of its legal states.
/// </summary>
/// <param name="found">The site's bytes in the running kernel (its whole length).</param>
/// <returns>The state's name (e.g. "jmp to its target", "call ftrace_caller", "call __cond_resched"), or null when
/// the bytes are in no legal state.</returns>
public delegate string? KernelSiteStateMatcher(ReadOnlySpan<byte> found);

/// <summary>
/// A site of the kernel's text whose state the running kernel decides after boot (a jump label whose key was flipped,
/// a static call updated, a function traced by ftrace), at its runtime address, with the bytes boot patching left
/// there and a matcher for the states it may legally be in.
/// </summary>
/// <param name="Kind">The table the site comes from.</param>
/// <param name="Index">Entry index in that table.</param>
/// <param name="Address">Runtime address of the site's first byte.</param>
/// <param name="Length">Bytes of the site.</param>
/// <param name="Initial">The bytes the kernel holds there after boot patching (the prediction).</param>
/// <param name="Detail">What the site is, for people ("key __use_tsc, branch 0", "static call cond_resched").</param>
/// <param name="Matcher">Names the legal state the found bytes are in, or returns null.</param>
public sealed record KernelDynamicSite(KernelSiteKind Kind, int Index, ulong Address, int Length, ReadOnlyMemory<byte> Initial,
    string Detail, KernelSiteStateMatcher Matcher)
{
    /// <summary>The address just past the site.</summary>
    public ulong End => Address + (ulong)Length;
}

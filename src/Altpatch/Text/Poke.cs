using Altpatch.Sites;

namespace Altpatch.Text;

/// <summary>
/// One write of a plan: at <see cref="Address"/>, the bytes <see cref="Old"/> become <see cref="New"/>
/// (same length), for <see cref="Site"/>, because of <see cref="Why"/>. A poke is the whole of a
/// site: a poker writes it with one copy.
/// </summary>
/// <param name="Address">Final address of the site (where the code runs).</param>
/// <param name="Old">The bytes expected at the address before the write.</param>
/// <param name="New">The bytes to write.</param>
/// <param name="Site">The site this write belongs to.</param>
/// <param name="Why">A short reason, e.g. "X86_FEATURE_POPCNT present".</param>
public readonly record struct Poke(ulong Address, ReadOnlyMemory<byte> Old, ReadOnlyMemory<byte> New, SiteRef Site, string Why)
{
    /// <summary>Number of bytes written.</summary>
    public int Length => New.Length;

    /// <summary>One past the last byte.</summary>
    public ulong End => Address + (ulong)New.Length;

    /// <summary>The poke that undoes this one.</summary>
    public Poke Inverse() => this with { Old = New, New = Old, Why = "revert: " + Why };
}

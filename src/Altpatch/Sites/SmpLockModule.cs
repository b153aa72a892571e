namespace Altpatch.Sites;

/// <summary>
/// A module's lock-prefix table (the kernel's <c>struct smp_alt_module</c>: a name, the module's text
/// range and its <c>.smp_locks</c> entries). Each entry in <see cref="Locks"/> is the address of a
/// <c>lock</c> (0xF0) prefix inside [<see cref="TextStart"/>, <see cref="TextEnd"/>). Data only.
/// </summary>
/// <param name="Name">The module's name, unique in a registry; used in messages.</param>
/// <param name="TextStart">First byte of the module's code.</param>
/// <param name="TextEnd">One past the last byte of the module's code.</param>
/// <param name="Locks">Addresses of the lock prefixes, in table order.</param>
public sealed record SmpLockModule(string Name, ulong TextStart, ulong TextEnd, IReadOnlyList<ulong> Locks)
{
    /// <summary>True when [<paramref name="start"/>, <paramref name="end"/>) intersects this module's text.</summary>
    public bool Overlaps(ulong start, ulong end) => start < TextEnd && TextStart < end;
}

namespace Altpatch.Images;

/// <summary>One non-zero <c>.smp_locks</c> entry: the address of a LOCK prefix (0xf0) that a uniprocessor
/// kernel may turn into a harmless DS prefix (0x3e), and back.</summary>
/// <param name="Index">Entry index in the table (zero padding entries are skipped, so indices may have gaps).</param>
/// <param name="Address">Link-time address of the prefix byte.</param>
public readonly record struct KernelLockSite(int Index, ulong Address);

namespace Altpatch.Text;

/// <summary>What kind of patch site a poke belongs to.</summary>
public enum SiteKind
{
    /// <summary>A raw poke that belongs to no site table.</summary>
    Raw,
    /// <summary>An alternative (the kernel's <c>struct alt_instr</c>).</summary>
    Alternative,
    /// <summary>A paravirt op call site (<c>struct paravirt_patch_site</c>).</summary>
    Paravirt,
    /// <summary>A <c>lock</c> prefix (<c>.smp_locks</c>).</summary>
    Lock,
    /// <summary>A retpoline thunk call or jump (<c>.retpoline_sites</c>).</summary>
    Retpoline,
    /// <summary>A return (<c>.return_sites</c>).</summary>
    Return,
}

/// <summary>
/// Names a site in error messages and reports: its kind, its index in its table, and the table's name.
/// </summary>
/// <param name="Kind">The site kind.</param>
/// <param name="Index">Index of the entry in its table.</param>
/// <param name="Table">The table's name (a module, a section), or null.</param>
public readonly record struct SiteRef(SiteKind Kind, int Index, string? Table = null)
{
    /// <summary>E.g. "alternative site #3 of 'demo'".</summary>
    public override string ToString()
    {
        string kind = Kind switch
        {
            SiteKind.Alternative => "alternative",
            SiteKind.Paravirt => "paravirt",
            SiteKind.Lock => "lock",
            SiteKind.Retpoline => "retpoline",
            SiteKind.Return => "return",
            _ => "raw",
        };
        return Table is null ? $"{kind} site #{Index}" : $"{kind} site #{Index} of '{Table}'";
    }
}

namespace Altpatch.Sites;

/// <summary>
/// What kind of patch site a poke belongs to: a name that messages and reports use ("alternative site #3").
/// The kinds of the site records here are <see cref="Alternative"/>, <see cref="Paravirt"/> and <see cref="Lock"/>,
/// plus <see cref="Raw"/> for pokes of no table; a table defined elsewhere names its own kind next to it (the kernel
/// images' retpoline and return sites: <c>Altpatch.Images.KernelSiteKinds</c>), so this layer knows no kind it has
/// no record for. Two kinds are equal when their names are.
/// </summary>
public readonly record struct SiteKind
{
    private readonly string? name;

    /// <summary>A kind named <paramref name="name"/> (lower case, one word: it reads "NAME site #3").</summary>
    public SiteKind(string name)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        this.name = name;
    }

    /// <summary>The name, e.g. "alternative"; "raw" for <c>default</c>.</summary>
    public string Name => name ?? "raw";

    /// <summary>A raw poke that belongs to no site table (also <c>default(SiteKind)</c>).</summary>
    public static SiteKind Raw { get; } = new("raw");

    /// <summary>An alternative (the kernel's <c>struct alt_instr</c>; <see cref="AlternativeSite"/>).</summary>
    public static SiteKind Alternative { get; } = new("alternative");

    /// <summary>A paravirt op call site (<c>struct paravirt_patch_site</c>; <see cref="ParavirtSite"/>).</summary>
    public static SiteKind Paravirt { get; } = new("paravirt");

    /// <summary>A <c>lock</c> prefix (<c>.smp_locks</c>; <see cref="SmpLockModule"/>).</summary>
    public static SiteKind Lock { get; } = new("lock");

    /// <summary>Equal when the names are.</summary>
    public bool Equals(SiteKind other) => string.Equals(Name, other.Name, StringComparison.Ordinal);

    /// <inheritdoc />
    public override int GetHashCode() => StringComparer.Ordinal.GetHashCode(Name);

    /// <summary>The name.</summary>
    public override string ToString() => Name;
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
    public override string ToString() =>
        Table is null ? $"{Kind.Name} site #{Index}" : $"{Kind.Name} site #{Index} of '{Table}'";
}

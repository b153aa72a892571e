using Altpatch.Code;

namespace Altpatch.Patching;

/// <summary>Options of the alternatives patcher.</summary>
public sealed record AlternativeOptions
{
    /// <summary>The NOPs that pad a replacement to its site's length. Default: today's x86-64 table.</summary>
    public NopTable Nops { get; init; } = NopTable.X86_64;

    /// <summary>Code size of the sites (64 or 32).</summary>
    public int Bitness { get; init; } = 64;

    /// <summary>A name for the site table, used in messages and reports (a module, a section).</summary>
    public string? TableName { get; init; }

    /// <summary>
    /// The debug switch (the kernel's <c>debug-alternative</c>): when set, every site's decision and its
    /// bytes before and after are written here.
    /// </summary>
    public TextWriter? Log { get; init; }

    /// <summary>The defaults.</summary>
    public static AlternativeOptions Default { get; } = new();
}

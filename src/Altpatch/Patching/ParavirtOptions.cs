using Altpatch.Code;

namespace Altpatch.Patching;

/// <summary>Options of the paravirt patcher.</summary>
public sealed record ParavirtOptions
{
    /// <summary>The NOPs that pad a backend's code to its site's length. Default: today's x86-64 table.</summary>
    public NopTable Nops { get; init; } = NopTable.X86_64;

    /// <summary>A name for the site table, used in messages and reports (a module, a section).</summary>
    public string? TableName { get; init; }

    /// <summary>
    /// The kernel's <c>noreplace-paravirt</c> boot option: plan nothing, so every site keeps its
    /// indirect call through the ops table (which still follows the active backend).
    /// </summary>
    public bool NoReplace { get; init; }

    /// <summary>
    /// The debug switch: when set, every site's decision and its bytes before and after are written
    /// here (as <see cref="AlternativeOptions.Log"/> does for alternatives).
    /// </summary>
    public TextWriter? Log { get; init; }

    /// <summary>The defaults.</summary>
    public static ParavirtOptions Default { get; } = new();
}

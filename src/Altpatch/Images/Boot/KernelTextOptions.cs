namespace Altpatch.Images.Boot;

/// <summary>
/// What the boot-time text passes besides <c>alternative_instructions()</c> (jump labels, static calls, ftrace, the
/// preempt mode) need beyond the boot state: the symbols of the image's build. The command line they read (<c>preempt=</c>,
/// <c>ftrace=</c>) is the boot state's (<see cref="KernelBootState.CommandLine"/>), the one the CPU was derived for.
/// </summary>
public sealed record KernelTextOptions
{
    /// <summary>No symbols, the build's defaults.</summary>
    public static KernelTextOptions Default { get; } = new();

    /// <summary>The symbols of the image's build (a System.map); null: the image's own kallsyms. Without any (a kernel
    /// built without kallsyms) the tables are found by scanning, and <c>static_call_init()</c> and the preempt mode
    /// cannot be done (they need <c>__static_call_return0</c> and the PREEMPT_DYNAMIC functions): the result says so.</summary>
    public KernelSymbols? Symbols { get; init; }

    /// <summary>Whether to run the text passes at all (false: only <c>alternative_instructions()</c>'s, as before
    /// whole-text patching existed).</summary>
    public bool Enabled { get; init; } = true;

    /// <summary>The kernel line whose rules to apply (<c>--rules</c>); null: the image's own (<see cref="KernelLines.For"/>).
    /// A line that is not the image's own makes the result carry a warning that it is unverified.</summary>
    public KernelLine? Rules { get; init; }
}

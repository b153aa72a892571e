namespace Altpatch.Patching;

/// <summary>
/// A lock-table module cannot be registered or found: registered twice, its text overlapping another
/// module's, an empty name or range. The message names the module. Lock sites themselves fail with
/// <see cref="Text.PatchException"/>.
/// </summary>
public sealed class SmpLockException : AltpatchException
{
    /// <summary>The module concerned.</summary>
    public string Module { get; }

    /// <summary>Creates the exception for <paramref name="module"/>.</summary>
    public SmpLockException(string module, string problem) : base($"lock module '{module}': {problem}") => Module = module;
}

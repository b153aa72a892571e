namespace Altpatch.Hooks;

/// <summary>
/// A native hook that cannot be created, switched or removed: bad input (an unmapped or non-executable target or
/// detour, a target in the middle of an instruction), a prologue that cannot be moved safely (too short, a branch
/// back into the bytes the jump overwrites, bytes that are not code, a target already hooked), or a live batch
/// that failed. The message names the target and the problem; nothing was written.
/// </summary>
public sealed class HookException : AltpatchException
{
    /// <summary>The hooked function's address.</summary>
    public ulong Target { get; }

    /// <summary>The problem alone, without the "hook of 0xTARGET: " the message starts with.</summary>
    public string Problem { get; }

    /// <summary>Creates the exception: "hook of 0xTARGET: PROBLEM".</summary>
    public HookException(ulong target, string problem) : this(target, problem, null)
    {
    }

    /// <summary>Creates the exception with the error that caused it.</summary>
    public HookException(ulong target, string problem, Exception? inner) : base($"hook of 0x{target:x}: {problem}", inner)
    {
        Target = target;
        Problem = problem;
    }
}

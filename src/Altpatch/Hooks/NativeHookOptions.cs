namespace Altpatch.Hooks;

/// <summary>How a hook writes a target that lies in code Altpatch did not allocate (a library's text).</summary>
public enum ForeignTextMode
{
    /// <summary>
    /// The default, W^X: the target's pages are replaced, once, by a memfd-backed copy mapped read-execute at the
    /// same address plus a read-write alias (<c>Native.ExecutableMemory.AdoptText</c>); the live poker writes
    /// through the alias. No page is ever writable and executable. /proc/self/maps then shows those pages as
    /// <c>/memfd:altpatch-text (deleted)</c> instead of the library (docs/hooks.md).
    /// </summary>
    Remap,

    /// <summary>
    /// The opt-in fallback: the target's pages are made read-write-execute (<c>mprotect</c>) for the batch and
    /// given their protection back afterwards (<c>LivePokerOptions.ForeignCode = WritableExecutable</c>).
    /// </summary>
    WritableExecutable,
}

/// <summary>Which jump a hook writes at its target.</summary>
public enum HookJump
{
    /// <summary>
    /// The default: a 5-byte <c>jmp rel32</c> to a relay within 2 GiB of the target; when no page there is free (the
    /// address space around the target is taken), the 14-byte absolute jump, for a target whose first instructions
    /// cover 14 bytes.
    /// </summary>
    Auto,

    /// <summary>Only the 5-byte <c>jmp rel32</c>: a target with no free page within its reach is refused.</summary>
    Relative,

    /// <summary>
    /// Always the 14-byte absolute jump (<c>jmp qword ptr [rip+0]</c> and the relay's address after it), with the
    /// relay and trampoline anywhere: more of the function is moved, so fewer functions can be hooked this way.
    /// </summary>
    Absolute,
}

/// <summary>Settings of a <see cref="NativeHook"/>.</summary>
public sealed record NativeHookOptions
{
    /// <summary>The defaults: no chaining, W^X remapping of library text, rel32 jump with the absolute one as fallback, 5 s quiescence timeout.</summary>
    public static NativeHookOptions Default { get; } = new();

    /// <summary>
    /// Hook a target that is already hooked (by another <see cref="NativeHook"/>, or by someone else's jump at its
    /// entry): the new hook runs first and its <see cref="NativeHook.Original"/> reaches the earlier one. Without
    /// it such a target is refused.
    /// </summary>
    public bool Chain { get; init; }

    /// <summary>How library text is written (default <see cref="ForeignTextMode.Remap"/>).</summary>
    public ForeignTextMode ForeignText { get; init; } = ForeignTextMode.Remap;

    /// <summary>
    /// Hook one of the C library functions that the C library itself calls with every signal blocked (<c>free</c>,
    /// <c>munmap</c>, <c>madvise</c>, <c>getpagesize</c> on a thread's exit; <c>getpid</c> in <c>pthread_kill</c>;
    /// <c>clone</c> in <c>pthread_create</c>). A thread that reaches a live batch's <c>int3</c> with SIGTRAP blocked
    /// is killed by the kernel, and the process with it, so such targets are refused unless this is set: set it only
    /// when no thread can exit, be created or be signalled that way while the hook is enabled or disabled.
    /// </summary>
    public bool AllowSignalBlockedTargets { get; init; }

    /// <summary>Which jump the hook writes at the target (default <see cref="HookJump.Auto"/>).</summary>
    public HookJump Jump { get; init; } = HookJump.Auto;

    /// <summary>How long a live batch waits for threads stopped inside the bytes it rewrites (the live poker's timeout).</summary>
    public TimeSpan QuiescenceTimeout { get; init; } = TimeSpan.FromSeconds(5);
}

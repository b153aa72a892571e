using System.Runtime.InteropServices;

namespace Altpatch.Hooks;

/// <summary>
/// The C library functions that the C library itself calls with every signal blocked. A thread that reaches a live
/// batch's <c>int3</c> with SIGTRAP blocked is not sent to Altpatch's handler: the kernel (<c>force_sig</c>) resets
/// SIGTRAP to its default action and the whole process dies of it. No handler, probe or retry can catch that, so
/// hooks of these functions are refused unless <see cref="NativeHookOptions.AllowSignalBlockedTargets"/> is set
/// (docs/hooks.md#targets-the-c-library-runs-with-every-signal-blocked).
/// </summary>
/// <remarks>
/// From glibc's code (2.36, the machine's, disassembled; the same in 2.34-2.40): a thread's exit path
/// (<c>start_thread</c>) blocks every signal, then calls <c>getpagesize</c> and <c>madvise</c>
/// (<c>advise_stack_range</c>), <c>free</c> (<c>__nptl_free_tcb</c>, the TLS) and <c>munmap</c> (the stack cache);
/// <c>pthread_kill</c> of another thread blocks every signal around <c>getpid</c> (the .NET runtime suspends threads
/// for its GC that way); <c>pthread_create</c> blocks every signal around <c>clone</c>. Each of these happens in a
/// .NET process all the time.
/// </remarks>
internal static class SignalBlockedTargets
{
    private static readonly (string Function, string Caller)[] Known =
    [
        ("getpagesize", "a thread's exit (start_thread -> advise_stack_range)"),
        ("madvise", "a thread's exit (start_thread -> advise_stack_range)"),
        ("free", "a detached thread's exit (start_thread -> __nptl_free_tcb)"),
        ("munmap", "a thread's exit (start_thread -> __nptl_free_stacks)"),
        ("getpid", "pthread_kill of another thread (the .NET runtime's GC suspension sends its signal that way)"),
        ("clone", "pthread_create (create_thread)"),
    ];

    private static readonly Lazy<(ulong Address, string Function, string Caller)[]> Resolved = new(Resolve);

    /// <summary>Why hooking <paramref name="target"/> could kill the process, or null when it is none of the known functions.</summary>
    public static string? Reason(ulong target)
    {
        foreach (var (address, function, caller) in Resolved.Value)
            if (address == target)
                return $"the target is the C library's {function}, which the C library itself calls with every signal blocked ({caller}): " +
                       "a thread that reaches the live int3 then is killed by the kernel with SIGTRAP, taking the process with it; " +
                       "set NativeHookOptions.AllowSignalBlockedTargets only if no such call can happen while the hook is switched; nothing written";
        return null;
    }

    private static (ulong, string, string)[] Resolve()
    {
        if (!NativeLibrary.TryLoad("libc.so.6", out nint libc)) return [];
        var list = new List<(ulong, string, string)>();
        foreach (var (function, caller) in Known)
            if (NativeLibrary.TryGetExport(libc, function, out nint address))
                list.Add(((ulong)address, function, caller));
        return [.. list];
    }
}

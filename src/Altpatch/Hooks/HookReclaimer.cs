namespace Altpatch.Hooks;

/// <summary>
/// Where the trampolines and relays of removed hooks go. A thread may still be inside a detour when its hook is
/// removed (and call <see cref="NativeHook.Original"/> later), inside the trampoline or the relay, or hold a return
/// address into them; Altpatch does not track threads in a detour, so a retired slot is never given back to the
/// arena: it stays mapped and unchanged (256 bytes per removed hook) for the life of the process. Removing a hook
/// therefore never waits and never frees code a thread can still reach. A counting relay and a probe-based release
/// (docs/hooks.md, "What remains") would let slots be reused.
/// </summary>
internal static class HookReclaimer
{
    private static readonly object Gate = new();
    private static readonly List<HookArena.Slot> Retired = [];

    /// <summary>Slots of removed hooks kept out of use.</summary>
    public static int Quarantined
    {
        get
        {
            lock (Gate) return Retired.Count;
        }
    }

    /// <summary>
    /// Takes a removed hook's slot out of use for good. <paramref name="under"/>, the hook whose relay this one's
    /// trampoline jumps to when they were chained, is retired the same way when it is removed, so the chain stays whole.
    /// </summary>
    public static void Retire(HookArena.Slot slot, NativeHook? under)
    {
        _ = under;
        lock (Gate) Retired.Add(slot);
    }
}

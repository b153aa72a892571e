using Altpatch.Code;

namespace Altpatch.Hooks;

/// <summary>
/// A hook's relay: the code near the target that the target's <c>jmp rel32</c> reaches, which goes on to the
/// detour through an absolute pointer (<c>jmp [rip+destination]</c>), so that any detour address works. Disabling
/// a hook that a later hook chains onto points the relay at the hook's own trampoline instead.
/// </summary>
internal static unsafe class Relays
{
    /// <summary>Writes the relay of <paramref name="slot"/> into its writable bytes <paramref name="w"/>.</summary>
    public static void Write(Span<byte> w, HookArena.Slot slot)
    {
        _ = slot;
        var r = w[HookArena.RelayOffset..];
        r[0] = X86.IndirectBranch;
        r[1] = X86.JmpRipModRm;
        int disp = HookArena.DestinationOffset - (HookArena.RelayOffset + X86.IndirectRipSize);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(r[2..], disp);
    }

    /// <summary>Points the relay at <paramref name="destination"/> (one aligned 8-byte store: a data write, not code).</summary>
    public static void Route(HookArena.Slot slot, ulong destination) =>
        Volatile.Write(ref *(ulong*)(slot.Writable + HookArena.DestinationOffset), destination);
}

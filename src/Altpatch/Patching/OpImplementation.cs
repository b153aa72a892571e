using Altpatch.Sites;

namespace Altpatch.Patching;

/// <summary>How a backend implements an op, which decides the default patch (the seed's <c>paravirt_patch_default</c>).</summary>
public enum OpKind
{
    /// <summary>No implementation: sites become <c>ud2</c> (the kernel's BUG), the slot points at a <c>ud2</c> stub.</summary>
    Missing,
    /// <summary>The op does nothing (the kernel's <c>paravirt_nop</c>): sites become NOPs; the slot points at a <c>ret</c>.</summary>
    Nop,
    /// <summary>An ordinary op: sites become a direct <c>call rel32</c> when the clobbers allow it.</summary>
    Call,
    /// <summary>An op that does not come back to its site (the kernel's iret, irq_enable_sysexit): sites become <c>jmp rel32</c>.</summary>
    Jump,
}

/// <summary>
/// One op's implementation in a backend. <see cref="Target"/> is the function a patched site calls or
/// jumps to directly and <see cref="Clobbers"/> the registers it may change; <see cref="Slot"/> is what
/// the ops table holds for indirect calls. They differ when the direct target clobbers more than some
/// sites allow: the slot then points at a callee-save thunk (the kernel's PV_CALLEE_SAVE) that keeps
/// every caller-saved register but rax, so an indirect call is right for any site.
/// </summary>
/// <param name="Kind">How the op is implemented.</param>
/// <param name="Target">Address of the implementation (0 for <see cref="OpKind.Missing"/>).</param>
/// <param name="Clobbers">Registers <paramref name="Target"/> may change.</param>
/// <param name="Slot">The ops table's pointer for this op (a thunk, the nop <c>ret</c> or the <c>ud2</c> stub).</param>
public readonly record struct OpImplementation(OpKind Kind, ulong Target, Clobbers Clobbers, ulong Slot)
{
    /// <summary>An ordinary op: direct calls go to <paramref name="target"/>, indirect calls to <paramref name="slot"/> (default: the target too).</summary>
    public static OpImplementation Call(ulong target, Clobbers clobbers, ulong slot = 0) =>
        new(OpKind.Call, target, clobbers, slot == 0 ? target : slot);

    /// <summary>A jump op: sites jump to <paramref name="target"/>; the slot holds it too.</summary>
    public static OpImplementation Jump(ulong target) => new(OpKind.Jump, target, Clobbers.Any, target);

    /// <summary>A no-op: sites become NOPs; indirect calls go to <paramref name="ret"/>, a function that only returns.</summary>
    public static OpImplementation Nop(ulong ret) => new(OpKind.Nop, 0, Clobbers.None, ret);

    /// <summary>No implementation: sites become <c>ud2</c>; indirect calls go to <paramref name="bug"/>, a <c>ud2</c> stub.</summary>
    public static OpImplementation Missing(ulong bug) => new(OpKind.Missing, 0, Clobbers.None, bug);
}

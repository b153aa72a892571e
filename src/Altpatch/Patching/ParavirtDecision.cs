namespace Altpatch.Patching;

/// <summary>What a paravirt site became.</summary>
public enum ParavirtStrategy
{
    /// <summary>The indirect call through the ops table stays (clobbers, reach, or the backend's choice).</summary>
    Indirect,
    /// <summary>A direct <c>call rel32</c> to the implementation.</summary>
    DirectCall,
    /// <summary>A <c>jmp rel32</c> to the implementation (jump ops).</summary>
    Jump,
    /// <summary>The backend's instructions copied inline (the kernel's DEF_NATIVE sequences).</summary>
    Inline,
    /// <summary>Nothing: all NOPs (a no-op implementation).</summary>
    Nop,
    /// <summary><c>ud2</c>: the op has no implementation.</summary>
    Ud2,
}

/// <summary>
/// One site's outcome in a paravirt plan, for reports and the debug log: which strategy its bytes
/// are and why (e.g. why an indirect call was kept).
/// </summary>
/// <param name="Index">Index of the site in its table.</param>
/// <param name="Address">The site's address.</param>
/// <param name="Type">The op type.</param>
/// <param name="Strategy">What the site's bytes are.</param>
/// <param name="Used">Bytes of backend code before the NOP padding.</param>
/// <param name="Detail">Why, in words ("direct call to 0x…", "target clobbers rax|rcx|rdx, the site allows rax").</param>
public readonly record struct ParavirtDecision(int Index, ulong Address, int Type, ParavirtStrategy Strategy, int Used, string Detail);

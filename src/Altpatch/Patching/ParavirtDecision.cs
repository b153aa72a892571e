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

/// <summary>Why a paravirt site's bytes are what they are.</summary>
public enum ParavirtReason
{
    /// <summary>The backend's code replaced the indirect call (<see cref="ParavirtDecision.Strategy"/> says how).</summary>
    Patched,
    /// <summary>The site was planned back to its original indirect call (<see cref="Paravirt.PlanRestore"/>).</summary>
    Restored,
    /// <summary>Kept indirect: the implementation clobbers registers the site does not allow.</summary>
    ClobbersNotAllowed,
    /// <summary>Kept indirect: the implementation is beyond rel32 reach of the site.</summary>
    OutOfReach,
    /// <summary>Kept indirect: the backend chose to (its <c>Patch</c> kept the site).</summary>
    BackendChoice,
}

/// <summary>
/// One site's outcome in a paravirt plan, for reports and the debug log: which strategy its bytes
/// are and why (e.g. why an indirect call was kept), as data (<see cref="Reason"/>) and in words.
/// </summary>
/// <param name="Index">Index of the site in its table.</param>
/// <param name="Address">The site's address.</param>
/// <param name="Type">The op type.</param>
/// <param name="Strategy">What the site's bytes are.</param>
/// <param name="Used">Bytes of backend code before the NOP padding.</param>
/// <param name="Detail">What and why, in words ("direct call to 0x…", "indirect call kept: target clobbers rax|rcx|rdx, the site allows rax").</param>
/// <param name="Reason">Why, as data.</param>
/// <param name="Why">The reason in words when the site kept its indirect call ("target clobbers rax|rcx|rdx, the site allows rax"), else empty.</param>
public readonly record struct ParavirtDecision(int Index, ulong Address, int Type, ParavirtStrategy Strategy, int Used, string Detail,
                                               ParavirtReason Reason = ParavirtReason.Patched, string Why = "");

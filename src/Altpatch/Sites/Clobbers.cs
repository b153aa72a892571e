namespace Altpatch.Sites;

/// <summary>
/// The registers a paravirt call site lets the op's implementation change (the kernel's <c>CLBR_*</c>
/// of arch/x86/include/asm/paravirt_types.h, with the same bit numbers): the x86-64 System V
/// caller-saved general registers. A direct call or inline sequence may replace a site only when what
/// it clobbers is a subset of the site's mask. Flags are always clobbered, as by any call.
/// </summary>
[Flags]
public enum Clobbers : ushort
{
    /// <summary>The site lets nothing be clobbered (CLBR_NONE).</summary>
    None = 0,
    /// <summary>rax (CLBR_RAX).</summary>
    Rax = 1 << 0,
    /// <summary>rcx (CLBR_RCX).</summary>
    Rcx = 1 << 1,
    /// <summary>rdx (CLBR_RDX).</summary>
    Rdx = 1 << 2,
    /// <summary>rdi (CLBR_RDI).</summary>
    Rdi = 1 << 3,
    /// <summary>rsi (CLBR_RSI).</summary>
    Rsi = 1 << 4,
    /// <summary>r8 (CLBR_R8).</summary>
    R8 = 1 << 5,
    /// <summary>r9 (CLBR_R9).</summary>
    R9 = 1 << 6,
    /// <summary>r10 (CLBR_R10).</summary>
    R10 = 1 << 7,
    /// <summary>r11 (CLBR_R11).</summary>
    R11 = 1 << 8,
    /// <summary>The argument registers rdi, rsi, rdx, rcx, r8, r9 (CLBR_ARG_REGS).</summary>
    ArgRegs = Rdi | Rsi | Rdx | Rcx | R8 | R9,
    /// <summary>The return register rax (CLBR_RET_REG): what a callee-save op (PVOP_CALLEE) may change.</summary>
    RetReg = Rax,
    /// <summary>Every caller-saved register (CLBR_ANY): what an ordinary C function may change.</summary>
    Any = (1 << 9) - 1,
}

/// <summary>Helpers for <see cref="Clobbers"/>.</summary>
public static class ClobbersExtensions
{
    private static readonly string[] Names = ["rax", "rcx", "rdx", "rdi", "rsi", "r8", "r9", "r10", "r11"];

    /// <summary>True when every register in <paramref name="target"/> is also in <paramref name="site"/>.</summary>
    public static bool FitsIn(this Clobbers target, Clobbers site) => (target & ~site) == 0;

    /// <summary>"any", "none" or the registers joined with '|' ("rax|rdx").</summary>
    public static string ToRegisterList(this Clobbers clobbers)
    {
        if (clobbers == Clobbers.Any) return "any";
        if (clobbers == Clobbers.None) return "none";
        var parts = new List<string>(Names.Length);
        for (int i = 0; i < Names.Length; i++)
            if (((int)clobbers & (1 << i)) != 0) parts.Add(Names[i]);
        if (((int)clobbers & ~(int)Clobbers.Any) != 0) parts.Add($"0x{(int)clobbers & ~(int)Clobbers.Any:x}");
        return string.Join('|', parts);
    }
}

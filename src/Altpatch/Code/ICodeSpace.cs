using Iced.Intel;

namespace Altpatch.Code;

/// <summary>
/// Somewhere to assemble x86-64 code at its final address: what a component that emits functions of its own needs
/// (a paravirt backend's implementations, thunks and shims) without knowing who owns the memory. The owner makes
/// the code visible to instruction fetch before it runs. <c>Altpatch.Emit.CodeBuilder</c> is one.
/// </summary>
public interface ICodeSpace
{
    /// <summary>Pads the code with <c>int3</c> to a multiple of <paramref name="alignment"/> and returns the new position.</summary>
    ulong Align(int alignment);

    /// <summary>Assembles <paramref name="emit"/> at the current position (its own labels, other code by address) and returns its address.</summary>
    ulong Code(Action<Assembler> emit);
}

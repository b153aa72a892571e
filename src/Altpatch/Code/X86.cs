using System.Buffers.Binary;

namespace Altpatch.Code;

/// <summary>
/// The x86 facts patching shares, in one place: the opcodes and sizes of the instructions the patchers and pokers
/// write or recognise (the kernel's <c>arch/x86/include/asm/text-patching.h</c> vocabulary: <c>INT3_INSN_OPCODE</c>,
/// <c>CALL_INSN_SIZE</c>, ...), the longest site (<c>MAX_PATCH_LEN</c>), and the <c>rel32</c> encoding of a branch.
/// Everything else that knows a byte of x86 takes it from here.
/// </summary>
public static class X86
{
    /// <summary>The kernel's <c>MAX_PATCH_LEN</c> (255 − 1): the longest site a patcher assembles and a plan writes in one poke.</summary>
    public const int MaxPatchLength = 254;

    /// <summary>The longest x86 instruction, 15 bytes: how far a decoder may read past an instruction's first byte.</summary>
    public const int MaxInstructionLength = 15;

    /// <summary><c>int3</c> (<c>INT3_INSN_OPCODE</c>): the breakpoint the live poker places on a site's first byte.</summary>
    public const byte Int3 = 0xCC;

    /// <summary><c>ret</c> (<c>RET_INSN_OPCODE</c>).</summary>
    public const byte Ret = 0xC3;

    /// <summary><c>call rel32</c> (<c>CALL_INSN_OPCODE</c>).</summary>
    public const byte Call = 0xE8;

    /// <summary><c>jmp rel32</c> (<c>JMP32_INSN_OPCODE</c>).</summary>
    public const byte Jmp32 = 0xE9;

    /// <summary><c>jmp rel8</c> (<c>JMP8_INSN_OPCODE</c>).</summary>
    public const byte Jmp8 = 0xEB;

    /// <summary>The first byte of <c>jcc rel8</c>: <c>0x70 + cc</c>.</summary>
    public const byte Jcc8 = 0x70;

    /// <summary>The two-byte opcode escape: <c>jcc rel32</c> is <c>0f 80+cc</c>, <c>ud2</c> is <c>0f 0b</c>.</summary>
    public const byte TwoByteEscape = 0x0F;

    /// <summary>The second byte of <c>jcc rel32</c>: <c>0x80 + cc</c>.</summary>
    public const byte Jcc32 = 0x80;

    /// <summary>An indirect call or jump (<c>ff /2</c>, <c>ff /4</c>): its ModRM byte says which and through what.</summary>
    public const byte IndirectBranch = 0xFF;

    /// <summary>The REX prefix with only B set: the ModRM register (or base) is r8..r15.</summary>
    public const byte RexB = 0x41;

    /// <summary>The one-byte <c>nop</c>.</summary>
    public const byte Nop = 0x90;

    /// <summary>The <c>lock</c> prefix.</summary>
    public const byte LockPrefix = 0xF0;

    /// <summary>The DS segment-override prefix: what a <c>lock</c> prefix becomes on a uniprocessor (a no-op in 64-bit code).</summary>
    public const byte DsPrefix = 0x3E;

    /// <summary>The CS segment-override prefix.</summary>
    public const byte CsPrefix = 0x2E;

    /// <summary>The ModRM byte of <c>call qword [rip+disp32]</c> after <c>ff</c> (an indirect call through a table slot).</summary>
    public const byte CallRipModRm = 0x15;

    /// <summary>The ModRM byte of <c>jmp qword [rip+disp32]</c> after <c>ff</c>.</summary>
    public const byte JmpRipModRm = 0x25;

    /// <summary>Size of <c>int3</c> (<c>INT3_INSN_SIZE</c>).</summary>
    public const int Int3Size = 1;

    /// <summary>Size of <c>ret</c> (<c>RET_INSN_SIZE</c>).</summary>
    public const int RetSize = 1;

    /// <summary>Size of <c>call rel32</c> (<c>CALL_INSN_SIZE</c>).</summary>
    public const int CallSize = 5;

    /// <summary>Size of <c>jmp rel32</c> (<c>JMP32_INSN_SIZE</c>).</summary>
    public const int Jmp32Size = 5;

    /// <summary>Size of <c>jmp rel8</c> (<c>JMP8_INSN_SIZE</c>).</summary>
    public const int Jmp8Size = 2;

    /// <summary>Size of <c>call/jmp qword [rip+disp32]</c> (<c>ff 15</c>/<c>ff 25</c> + disp32).</summary>
    public const int IndirectRipSize = 6;

    /// <summary><c>ud2</c>: the instruction that always faults (the kernel's <c>BUG()</c>).</summary>
    public static ReadOnlySpan<byte> Ud2 => [TwoByteEscape, 0x0B];

    /// <summary><c>lfence</c>.</summary>
    public static ReadOnlySpan<byte> Lfence => [TwoByteEscape, 0xAE, 0xE8];

    /// <summary>
    /// The <c>rel32</c> of a branch that ends at <paramref name="next"/> (the address after it) and goes to
    /// <paramref name="target"/>: false when the distance does not fit in 32 bits.
    /// </summary>
    public static bool TryRel32(ulong target, ulong next, out int rel)
    {
        long delta = unchecked((long)(target - next));
        rel = unchecked((int)delta);
        return delta is >= int.MinValue and <= int.MaxValue;
    }

    /// <summary>
    /// The <c>rel32</c> of a branch in 32-bit code: addresses wrap at 4 GiB, so every target is in reach (the
    /// kernel's <c>__text_gen_insn()</c> on i386).
    /// </summary>
    public static int Rel32Wrapped(ulong target, ulong next) => unchecked((int)(uint)(target - next));

    /// <summary>
    /// Writes the 5-byte <c>call rel32</c> or <c>jmp rel32</c> (<paramref name="opcode"/>: <see cref="Call"/> or
    /// <see cref="Jmp32"/>) that, placed at <paramref name="at"/>, goes to <paramref name="target"/>. False (nothing
    /// written) when the target is beyond rel32 reach.
    /// </summary>
    public static bool TryWriteBranch(Span<byte> destination, byte opcode, ulong at, ulong target)
    {
        if (!TryRel32(target, at + CallSize, out int rel))
            return false;
        destination[0] = opcode;
        BinaryPrimitives.WriteInt32LittleEndian(destination[1..], rel);
        return true;
    }

    /// <summary>The target of the <c>rel32</c> branch of <paramref name="size"/> bytes at <paramref name="at"/> whose displacement is <paramref name="rel32"/>.</summary>
    public static ulong Rel32Target(ulong at, int size, ReadOnlySpan<byte> rel32) =>
        unchecked(at + (ulong)size + (ulong)(long)BinaryPrimitives.ReadInt32LittleEndian(rel32));
}

using Altpatch.Code;
using Iced.Intel;

namespace Altpatch.Images.Boot;

/// <summary>
/// One decoded instruction, as much of the kernel's <c>struct insn</c> (<c>insn_decode_kernel()</c>) as the
/// boot-time passes use: length, the first two opcode bytes after the prefixes, and a relative branch's
/// target (address + length + <c>insn.immediate.value</c>).
/// </summary>
/// <param name="Length">Instruction length in bytes; 0 when the bytes do not decode.</param>
/// <param name="Op1">First opcode byte after legacy and REX prefixes (<c>insn.opcode.bytes[0]</c>).</param>
/// <param name="Op2">Second opcode byte (<c>insn.opcode.bytes[1]</c>), or 0.</param>
/// <param name="Target">Target of a relative near branch (call/jmp/jcc), else 0.</param>
internal readonly record struct KernelInsn(int Length, byte Op1, byte Op2, ulong Target)
{
    /// <summary>Whether the bytes decoded.</summary>
    public bool IsValid => Length > 0;

    /// <summary>Jcc with a 32-bit displacement: <c>0f 80</c>…<c>0f 8f</c> (the kernel's <c>is_jcc32()</c>).</summary>
    public bool IsJcc32 => Op1 == X86.TwoByteEscape && (Op2 & 0xf0) == X86.Jcc32;

    /// <summary>Decodes the instruction at the start of <paramref name="code"/> located at <paramref name="ip"/>.</summary>
    public static KernelInsn Decode(ReadOnlySpan<byte> code, ulong ip, int bitness)
    {
        // Fast paths for what nearly every return and retpoline site holds: call/jmp rel32, jcc rel32, ret.
        if (code.Length >= X86.CallSize && code[0] is X86.Call or X86.Jmp32)
            return new KernelInsn(X86.CallSize, code[0], 0, Relative(ip, X86.CallSize, code[1..], bitness));
        if (code.Length >= 6 && code[0] == X86.TwoByteEscape && (code[1] & 0xf0) == X86.Jcc32)
            return new KernelInsn(6, X86.TwoByteEscape, code[1], Relative(ip, 6, code[2..], bitness));
        if (code.Length >= 1 && code[0] == X86.Ret)
            return new KernelInsn(X86.RetSize, X86.Ret, 0, 0);
        var d = DecoderCache.Current.Start(code, ip, bitness);
        d.Decode(out var insn);
        if (insn.IsInvalid || insn.Length > code.Length)
            return default;
        int p = 0;
        while (p < insn.Length - 1 && IsPrefix(code[p], bitness))
            p++;
        byte op1 = code[p];
        byte op2 = p + 1 < insn.Length ? code[p + 1] : (byte)0;
        ulong target = insn.FlowControl is FlowControl.Call or FlowControl.UnconditionalBranch or FlowControl.ConditionalBranch
            && insn.Op0Kind is OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64
            ? insn.NearBranchTarget : 0;
        return new KernelInsn(insn.Length, op1, op2, target);
    }

    /// <summary>The target of a rel32 branch of <paramref name="length"/> bytes at <paramref name="ip"/> (wrapping at 2^32 in 32-bit code).</summary>
    private static ulong Relative(ulong ip, int length, ReadOnlySpan<byte> rel32, int bitness)
    {
        ulong t = X86.Rel32Target(ip, length, rel32);
        return bitness == 64 ? t : t & 0xffff_ffffUL;
    }

    private static bool IsPrefix(byte b, int bitness) => b switch
    {
        0x26 or X86.CsPrefix or 0x36 or X86.DsPrefix or 0x64 or 0x65 or 0x66 or 0x67 or X86.LockPrefix or 0xf2 or 0xf3 => true,
        >= 0x40 and <= 0x4f => bitness == 64,
        _ => false,
    };
}

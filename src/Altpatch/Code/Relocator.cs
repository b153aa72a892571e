using Iced.Intel;

namespace Altpatch.Code;

/// <summary>
/// Moves position-dependent code: instructions assembled to run at one address are re-encoded to run
/// at another with the same effect. Relative branches (call/jmp rel8/rel32, Jcc, loop/jrcxz, xbegin)
/// keep their absolute targets; branches whose target is an instruction of the code itself stay
/// internal; RIP-relative memory operands keep addressing the same bytes. This is the seed's rule
/// made general: offsets are computed against the final address, never against a buffer.
/// Uses Iced's decoder and BlockEncoder.
/// </summary>
public static class Relocator
{
    /// <summary>
    /// True when some instruction of <paramref name="code"/> (decoded at <paramref name="address"/>)
    /// has an operand relative to its own address; false also for undecodable code.
    /// </summary>
    public static bool HasRelativeOperands(ReadOnlySpan<byte> code, ulong address, int bitness = 64)
    {
        var d = DecoderCache.Current.Start(code, address, bitness);
        ulong end = address + (ulong)code.Length;
        while (d.IP < end)
        {
            d.Decode(out var insn);
            if (insn.IsInvalid) return false;
            if (IsRelative(insn)) return true;
        }
        return false;
    }

    /// <summary>
    /// Re-encodes <paramref name="code"/>, which was assembled to run at <paramref name="from"/>, to run at
    /// <paramref name="to"/>, writing at most <c>destination.Length</c> bytes. Returns false with a reason
    /// when it cannot: undecodable bytes, a branch into the middle of an instruction, a target out of reach of <paramref name="to"/>, or a result longer than the destination.
    /// Code without relative operands is copied unchanged. A branch to the end of the code (a label
    /// just past it) is kept pointing just past the relocated code, where the site's NOP padding or
    /// the next instruction follows.
    /// </summary>
    public static bool TryRelocate(ReadOnlySpan<byte> code, ulong from, ulong to, Span<byte> destination,
                                   out int written, out string error, int bitness = 64)
    {
        written = 0;
        var d = DecoderCache.Current.Start(code, from, bitness);
        ulong end = from + (ulong)code.Length;
        bool relative = false;
        List<Instruction>? list = null;
        int count = 0;
        // First pass: decode and find out whether anything is relative.
        while (d.IP < end)
        {
            ulong ip = d.IP;
            d.Decode(out var insn);
            if (insn.IsInvalid || insn.NextIP > end)
            {
                error = $"bytes at +{ip - from} do not decode as a complete instruction";
                return false;
            }
            count++;
            if (IsRelative(insn)) relative = true;
        }
        if (!relative || from == to)
        {
            if (code.Length > destination.Length)
            {
                error = $"code is {code.Length} bytes, only {destination.Length} fit";
                return false;
            }
            code.CopyTo(destination);
            written = code.Length;
            error = "";
            return true;
        }

        list = new List<Instruction>(count);
        bool branchesToEnd = false;
        d = DecoderCache.Current.Start(code, from, bitness);
        while (d.IP < end)
        {
            d.Decode(out var insn);
            list.Add(insn);
        }
        foreach (var insn in list)
        {
            if (!IsBranch(insn)) continue;
            ulong target = insn.NearBranchTarget;
            if (target >= from && target < end && !StartsInstruction(list, target))
            {
                error = $"branch at +{insn.IP - from} targets +{target - from}, inside an instruction";
                return false;
            }
            if (target == end) branchesToEnd = true;
        }

        if (code.Length <= destination.Length && TryShift(code, list, from, to, end, destination, bitness))
        {
            written = code.Length;
            error = "";
            return true;
        }

        if (branchesToEnd)
        {
            // A branch to just past the code ("jz 1f ... 1:") means "continue after it". Give it an
            // instruction to land on: a 1-byte NOP at the end, which becomes part of the padding.
            var nop = Instruction.Create(Iced.Intel.Code.Nopd);
            nop.Length = 1; // Iced keeps NextIP: set the length before the IP
            nop.IP = end;
            list.Add(nop);
        }

        var writer = new ArrayCodeWriter();
        if (!BlockEncoder.TryEncode(bitness, new InstructionBlock(writer, list, to), out var err, out _, BlockEncoderOptions.None))
        {
            error = $"cannot encode at 0x{to:x}: {err}";
            return false;
        }
        var output = writer.Written;

        // Check that every instruction kept its form (BlockEncoder turns out-of-reach branches into
        // longer sequences with data, which would not behave like the original inside a site).
        var check = DecoderCache.Current.Start(output, to, bitness);
        ulong outEnd = to + (ulong)output.Length;
        int i = 0;
        while (check.IP < outEnd)
        {
            check.Decode(out var insn);
            if (i >= list.Count || insn.IsInvalid || insn.Mnemonic != list[i].Mnemonic)
            {
                error = OutOfReach(list, from, to);
                return false;
            }
            if (IsBranch(insn))
            {
                ulong want = list[i].NearBranchTarget;
                bool internalTarget = want >= from && (want < end || (branchesToEnd && want == end));
                if (!internalTarget && insn.NearBranchTarget != want)
                {
                    error = $"branch at +{list[i].IP - from} to 0x{want:x} cannot be encoded at 0x{insn.IP:x}";
                    return false;
                }
            }
            else if (insn.IsIPRelativeMemoryOperand && insn.IPRelativeMemoryAddress != list[i].IPRelativeMemoryAddress)
            {
                error = $"RIP-relative operand at +{list[i].IP - from} (0x{list[i].IPRelativeMemoryAddress:x}) is out of reach from 0x{insn.IP:x}";
                return false;
            }
            i++;
        }
        if (i != list.Count)
        {
            error = OutOfReach(list, from, to);
            return false;
        }
        if (branchesToEnd && output.Length == destination.Length + 1)
            output = output[..^1]; // the landing NOP falls just past the site: the branch already lands on the next instruction
        if (output.Length > destination.Length)
        {
            error = $"relocated code is {output.Length} bytes (was {code.Length}), only {destination.Length} fit";
            return false;
        }
        output.CopyTo(destination);
        written = output.Length;
        error = "";
        return true;
    }

    /// <summary>
    /// The fast path: copy every instruction, re-encoding only the relative ones in their own form
    /// (Iced's Encoder) at their new address, internal targets shifted with the code. Succeeds when
    /// every re-encoded instruction keeps its length, so internal offsets stay valid: the common case
    /// (call/jmp rel32, Jcc, RIP-relative operands). Otherwise the caller uses BlockEncoder, which may
    /// change branch forms.
    /// </summary>
    private static bool TryShift(ReadOnlySpan<byte> code, List<Instruction> list, ulong from, ulong to, ulong end, Span<byte> dest, int bitness)
    {
        var cache = DecoderCache.Current;
        var encoder = cache.Encoder(bitness);
        foreach (var insn in list)
        {
            int off = (int)(insn.IP - from);
            if (!IsRelative(insn))
            {
                code.Slice(off, insn.Length).CopyTo(dest[off..]);
                continue;
            }
            var moved = insn;
            if (IsBranch(moved))
            {
                ulong target = moved.NearBranchTarget;
                if (target >= from && target <= end)
                {
                    ulong shifted = target - from + to;
                    switch (moved.Op0Kind)
                    {
                        case OpKind.NearBranch64: moved.NearBranch64 = shifted; break;
                        case OpKind.NearBranch32: moved.NearBranch32 = (uint)shifted; break;
                        default: moved.NearBranch16 = (ushort)shifted; break;
                    }
                }
            }
            cache.Writer.Clear();
            if (!encoder.TryEncode(moved, to + (ulong)off, out uint len, out _) || len != (uint)insn.Length)
                return false;
            cache.Writer.Written.CopyTo(dest[off..]);
        }
        return true;
    }

    private static bool StartsInstruction(List<Instruction> list, ulong address)
    {
        foreach (var insn in list)
            if (insn.IP == address) return true;
        return false;
    }

    private static string OutOfReach(List<Instruction> list, ulong from, ulong to)
    {
        foreach (var insn in list)
        {
            if (IsBranch(insn))
            {
                if (!X86.TryRel32(insn.NearBranchTarget, to + (insn.IP - from), out _))
                    return $"branch at +{insn.IP - from} to 0x{insn.NearBranchTarget:x} is out of rel32 reach from 0x{to:x}";
            }
        }
        return $"code cannot keep its instruction forms at 0x{to:x} (a target is out of reach)";
    }

    /// <summary>True for near branches (call/jmp/Jcc/loop/jrcxz/xbegin with a relative target).</summary>
    internal static bool IsBranch(in Instruction insn) =>
        insn.Op0Kind is OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64;

    /// <summary>True for instructions whose encoding depends on their own address.</summary>
    internal static bool IsRelative(in Instruction insn) => IsBranch(insn) || insn.IsIPRelativeMemoryOperand;
}

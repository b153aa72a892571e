using Altpatch.Code;
using Iced.Intel;

namespace Altpatch.Hooks;

/// <summary>
/// The first instructions of a function that a hook's <c>jmp rel32</c> overwrites, and what it takes to move them:
/// the checks that refuse what cannot be moved safely, and the trampoline (the instructions re-encoded at another
/// address, then a jump back). Pure: it reads bytes it is given and writes nothing.
/// </summary>
internal sealed class Prologue
{
    /// <summary>How far the scan for branches back into the overwritten bytes follows a function.</summary>
    internal const int ScanWindow = 4096;

    /// <summary>Size of the absolute jump: <c>jmp qword ptr [rip+0]</c> (6 bytes), then the destination (8 bytes).</summary>
    internal const int AbsoluteJumpSize = 14;

    private const int ScanLimit = 20_000;

    private readonly Instruction[] instructions;

    private Prologue(ulong target, Instruction[] instructions, byte[] bytes, bool absolute)
    {
        Target = target;
        Absolute = absolute;
        this.instructions = instructions;
        Bytes = bytes;
    }

    /// <summary>The function's address.</summary>
    public ulong Target { get; }

    /// <summary>True for the 14-byte absolute jump, false for <c>jmp rel32</c>.</summary>
    public bool Absolute { get; }

    /// <summary>The whole instructions the jump overwrites (at least 5 bytes; 14 for the absolute jump).</summary>
    public byte[] Bytes { get; }

    /// <summary>Number of bytes overwritten: whole instructions, at least a <c>jmp rel32</c>.</summary>
    public int Length => Bytes.Length;

    /// <summary>True when the first instruction is a jump (someone's hook, or a thunk): hooking it again is chaining.</summary>
    public bool StartsWithJump => instructions.Length > 0 && IsJump(instructions[0]);

    /// <summary>The instructions' offsets from the target (instruction boundaries of the overwritten bytes).</summary>
    public IEnumerable<int> Boundaries => instructions.Select(i => (int)(i.IP - Target));

    /// <summary>The moved instructions as text ("mov eax, edi; neg eax; ..."), for messages and the demo.</summary>
    public string Text => Disassembler.Text(Bytes, Target);

    /// <summary>
    /// Decodes the instructions at <paramref name="target"/> (<paramref name="code"/> holds what is readable from it)
    /// until they cover a <c>jmp rel32</c> (the 14-byte absolute jump when <paramref name="absolute"/>). Throws <see cref="HookException"/> with the reason for what cannot be
    /// moved: undecodable bytes, <c>int3</c> or <c>ud2</c> (padding, not code), a function that ends (<c>ret</c>, a
    /// jump) before 5 bytes, a jump at the entry (already hooked) unless <paramref name="chain"/>.
    /// </summary>
    public static Prologue Analyse(ReadOnlySpan<byte> code, ulong target, bool chain, bool absolute = false)
    {
        int need = absolute ? AbsoluteJumpSize : X86.Jmp32Size;
        var d = DecoderCache.Current.Start(code, target, 64);
        ulong end = target + (ulong)code.Length;
        var list = new List<Instruction>(4);
        int length = 0;
        while (length < need)
        {
            if (d.IP >= end)
                throw new HookException(target, $"only {length} bytes of code are readable there; the jump needs {need}");
            ulong ip = d.IP;
            d.Decode(out var insn);
            int at = (int)(ip - target);
            if (insn.IsInvalid || insn.NextIP > end)
                throw new HookException(target, $"the bytes at +{at} ({Hex(code, at)}) do not decode as an instruction: not code, or not the start of one");
            if (insn.Mnemonic == Mnemonic.Int3)
                throw new HookException(target, $"+{at} holds int3 (0xCC): padding or a breakpoint, not code to move");
            if (insn.Mnemonic == Mnemonic.Ud2)
                throw new HookException(target, $"+{at} holds ud2: a trap, not code to move");
            if (list.Count == 0 && IsJump(insn) && !chain)
                throw new HookException(target, $"the function starts with a jump ({Disassembler.Text(code[..insn.Length], target)}): it is already hooked (by another NativeHook or someone else) or a thunk; set NativeHookOptions.Chain to hook it anyway");
            list.Add(insn);
            length = (int)(insn.NextIP - target);
            if (length < need && EndsFlow(insn))
                throw new HookException(target, $"the function is only {length} bytes long up to its {insn.Mnemonic.ToString().ToLowerInvariant()} ({Disassembler.Text(code[..length], target)}); the jump needs {need}");
        }
        return new Prologue(target, [.. list], code[..length].ToArray(), absolute);
    }

    /// <summary>
    /// Follows the function from its entry (both ways of every conditional branch, unconditional jumps within
    /// <paramref name="code"/>, up to its returns and tail jumps) and throws <see cref="HookException"/> naming the
    /// first branch from outside the overwritten bytes into them: such a thread would land in the middle of the
    /// jump. Indirect branches (jump tables) cannot be followed.
    /// </summary>
    public void RefuseBranchesInto(ReadOnlySpan<byte> code)
    {
        ulong end = Target + (ulong)code.Length, stolenEnd = Target + (ulong)Length;
        var visited = new HashSet<ulong>();
        var work = new Stack<ulong>();
        work.Push(Target);
        int decoded = 0;
        while (work.Count > 0 && decoded < ScanLimit)
        {
            ulong ip = work.Pop();
            while (ip >= Target && ip < end && visited.Add(ip) && decoded++ < ScanLimit)
            {
                var d = DecoderCache.Current.Start(code[(int)(ip - Target)..], ip, 64);
                d.Decode(out var insn);
                if (insn.IsInvalid || insn.NextIP > end) break;
                if (insn.FlowControl is FlowControl.UnconditionalBranch or FlowControl.ConditionalBranch or FlowControl.Call
                    && insn.Op0Kind is OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64)
                {
                    ulong t = insn.NearBranchTarget;
                    if (t > Target && t < stolenEnd && ip >= stolenEnd)
                        throw new HookException(Target, $"the {Disassembler.Text(code.Slice((int)(ip - Target), insn.Length), ip)} at +{ip - Target} branches to +{t - Target}, inside the {Length} bytes the jump overwrites ({Text}): a thread taking it would land in the middle of the jump");
                    if (insn.FlowControl != FlowControl.Call && t >= Target && t < end) work.Push(t);
                }
                if (EndsFlow(insn)) break;
                ip = insn.NextIP;
            }
        }
    }

    /// <summary>
    /// The trampoline at <paramref name="at"/>: the overwritten instructions re-encoded there (Iced's BlockEncoder:
    /// RIP-relative operands keep their targets, short <c>jcc</c>/<c>jmp</c> grow to near forms, <c>loop</c>/<c>jrcxz</c>
    /// become a short branch over a near jump), then <c>jmp</c> back to the first byte after them. Null with
    /// <paramref name="error"/> when something does not reach from <paramref name="at"/>.
    /// </summary>
    public byte[]? Trampoline(ulong at, out string error)
    {
        var list = new List<Instruction>(instructions) { Instruction.CreateBranch(Iced.Intel.Code.Jmp_rel32_64, Target + (ulong)Length) };
        var writer = new ArrayCodeWriter();
        if (!BlockEncoder.TryEncode(64, new InstructionBlock(writer, list, at), out string? err, out _, BlockEncoderOptions.None))
        {
            error = $"the overwritten instructions ({Text}) cannot be re-encoded at 0x{at:x}: {err}";
            return null;
        }
        error = "";
        return writer.Written.ToArray();
    }

    /// <summary>
    /// The bytes a hook writes over the prologue: <c>jmp rel32</c> to <paramref name="relay"/> (or, when
    /// <see cref="Absolute"/>, <c>jmp qword ptr [rip+0]</c> and the relay's address), then <c>int3</c> up to <see cref="Length"/>.
    /// </summary>
    public byte[] Jump(ulong relay)
    {
        var bytes = new byte[Length];
        bytes.AsSpan().Fill(X86.Int3);
        if (Absolute)
        {
            bytes[0] = X86.IndirectBranch;
            bytes[1] = X86.JmpRipModRm;
            bytes.AsSpan(2, 4).Clear();
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(6), relay);
            return bytes;
        }
        if (!X86.TryWriteBranch(bytes, X86.Jmp32, Target, relay))
            throw new HookException(Target, $"the relay at 0x{relay:x} is beyond rel32 reach");
        return bytes;
    }

    private static bool IsJump(in Instruction insn) =>
        insn.FlowControl is FlowControl.UnconditionalBranch or FlowControl.IndirectBranch;

    private static bool EndsFlow(in Instruction insn) =>
        insn.FlowControl is FlowControl.Return or FlowControl.UnconditionalBranch or FlowControl.IndirectBranch
            or FlowControl.Interrupt or FlowControl.Exception
        || insn.Mnemonic == Mnemonic.Hlt;

    private static string Hex(ReadOnlySpan<byte> code, int at) => Convert.ToHexString(code.Slice(at, Math.Min(4, code.Length - at)));
}

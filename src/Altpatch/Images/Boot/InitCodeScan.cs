using Iced.Intel;

namespace Altpatch.Images.Boot;

/// <summary>
/// A small reader of the image's boot-time (<c>__init</c>) code, for the static-call updates that code makes with
/// constant arguments: it follows a function's instructions in address order, keeps the values of registers loaded with
/// constants (<c>mov reg, imm</c>, <c>lea reg, [rip+d]</c>, <c>xor reg, reg</c>) and with loads from the image's data
/// (<c>mov reg, [rip+d]</c>, <c>mov reg, [reg+d]</c>), applies stores to a private overlay of that data
/// (<c>mov [reg+d], reg</c>), and reports each call (or tail jump) to a function of interest with the argument registers
/// (<c>rdi</c>, <c>rsi</c>, <c>rdx</c>). Direct calls into <c>.init.text</c> are followed (up to a depth); other calls
/// clobber the caller-saved registers. It does not follow branches: a function whose calls of interest depend on a
/// condition is read as if every call were made, which the callers of this class only use on straight-line code or on
/// code whose conditional paths are error paths. x86-64 only.
/// </summary>
internal sealed class InitCodeScan(KernelImage image, int maxDepth = 3)
{
    /// <summary>One call of interest: the callee and the argument registers (null: not a known constant).</summary>
    public readonly record struct Call(ulong Callee, ulong At, ulong? Rdi, ulong? Rsi, ulong? Rdx);

    private readonly Dictionary<ulong, byte[]> overlay = [];
    private readonly HashSet<ulong> unknown = [];
    private readonly ElfFile elf = image.Elf;
    private readonly ElfSection? initText = image.Elf.FindSection(".init.text");

    /// <summary>Why the last scan could not follow the code, or null.</summary>
    public string? Failure { get; private set; }

    /// <summary>A 64-bit value of the image's data as the scanned code left it (its stores applied).</summary>
    public bool TryRead(ulong address, out ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        for (int i = 0; i < 8; i++)
        {
            ulong a = address + (ulong)i;
            if (unknown.Contains(a & ~7UL))
            {
                value = 0;
                return false;
            }
            if (overlay.TryGetValue(a & ~7UL, out var word))
                b[i] = word[(int)(a & 7)];
            else if (elf.TryReadBytes(a, 1, out var one))
                b[i] = one[0];
            else
            {
                value = 0;
                return false;
            }
        }
        value = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(b);
        return true;
    }

    private void Write(ulong address, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        for (int i = 0; i < 8; i++)
        {
            ulong a = address + (ulong)i;
            unknown.Remove(a & ~7UL);
            if (!overlay.TryGetValue(a & ~7UL, out var word))
            {
                word = new byte[8];
                for (int k = 0; k < 8; k++)
                    word[k] = elf.TryReadBytes((a & ~7UL) + (ulong)k, 1, out var one) ? one[0] : (byte)0;
                overlay[a & ~7UL] = word;
            }
            word[(int)(a & 7)] = b[i];
        }
    }

    /// <summary>Scans <paramref name="function"/> (<paramref name="size"/> bytes; 0: up to its first <c>ret</c> or tail
    /// jump, at most 4 KiB) and returns every call to one of <paramref name="interesting"/>, in address order (callees
    /// followed in place). False when an instruction writes a register or memory in a way it cannot follow before a call of
    /// interest (<see cref="Failure"/> says which).</summary>
    public bool Scan(ulong function, int size, IReadOnlySet<ulong> interesting, KernelSymbols? symbols, List<Call> calls)
    {
        Failure = null;
        return Scan(function, size, interesting, symbols, calls, new Dictionary<Register, ulong>(), 0, []);
    }

    private static readonly Register[] CallerSaved =
        [Register.RAX, Register.RCX, Register.RDX, Register.RSI, Register.RDI, Register.R8, Register.R9, Register.R10, Register.R11];

    private bool Scan(ulong function, int size, IReadOnlySet<ulong> interesting, KernelSymbols? symbols, List<Call> calls,
        Dictionary<Register, ulong> regs, int depth, HashSet<ulong> visiting)
    {
        if (!visiting.Add(function))
            return true;
        try
        {
            if (size <= 0 && symbols is not null && symbols.TryFind(function, out _, out ulong off, out ulong symSize) && off == 0 && symSize > 0)
                size = (int)Math.Min(symSize, 0x4000);
            bool toEnd = size > 0;
            if (size <= 0)
                size = 0x1000;
            if (elf.SectionContaining(function) is { } sec)
                size = (int)Math.Min((ulong)size, sec.EndAddress - function);
            if (!elf.TryReadBytes(function, size, out var code))
            {
                Failure = $"0x{function:x}: no bytes in the image";
                return false;
            }
            var decoder = Decoder.Create(64, new ByteArrayCodeReader(code.ToArray()));
            decoder.IP = function;
            ulong end = function + (ulong)size;
            while (decoder.IP < end)
            {
                decoder.Decode(out var insn);
                if (insn.IsInvalid)
                    return toEnd || Fail($"0x{insn.IP:x}: undecodable");
                switch (insn.Mnemonic)
                {
                    case Mnemonic.Call or Mnemonic.Jmp when insn.Op0Kind == OpKind.NearBranch64:
                    {
                        ulong target = insn.NearBranchTarget;
                        bool tail = insn.Mnemonic == Mnemonic.Jmp;
                        if (tail && target >= function && target < end)
                            continue;                       // a branch inside the function: read on in address order
                        if (interesting.Contains(target))
                            calls.Add(new Call(target, insn.IP, Get(regs, Register.RDI), Get(regs, Register.RSI), Get(regs, Register.RDX)));
                        else if (initText is { } it && it.Contains(target) && depth < maxDepth)
                        {
                            if (!Scan(target, 0, interesting, symbols, calls, new Dictionary<Register, ulong>(regs), depth + 1, visiting))
                                return false;
                        }
                        foreach (var r in CallerSaved)
                            regs.Remove(r);
                        if (tail && !toEnd)
                            return true;
                        continue;
                    }
                    case Mnemonic.Ret:
                        if (!toEnd)
                            return true;
                        regs.Clear();
                        continue;
                    case Mnemonic.Mov when insn.Op0Kind == OpKind.Register && insn.Op1Kind is OpKind.Immediate32to64 or OpKind.Immediate64:
                        Set(regs, insn.Op0Register, insn.Op1Kind == OpKind.Immediate64 ? insn.Immediate64 : (ulong)(long)insn.Immediate32to64);
                        continue;
                    case Mnemonic.Mov when insn.Op0Kind == OpKind.Register && insn.Op1Kind == OpKind.Immediate32:
                        Set(regs, insn.Op0Register, insn.Immediate32);
                        continue;
                    case Mnemonic.Xor when insn.Op0Kind == OpKind.Register && insn.Op1Kind == OpKind.Register && insn.Op0Register == insn.Op1Register:
                        Set(regs, insn.Op0Register, 0);
                        continue;
                    case Mnemonic.Lea when insn.IsIPRelativeMemoryOperand:
                        Set(regs, insn.Op0Register, insn.IPRelativeMemoryAddress);
                        continue;
                    case Mnemonic.Mov when insn.Op0Kind == OpKind.Register && insn.Op1Kind == OpKind.Register:
                        if (insn.Op0Register.GetSize() is 8 or 4 && insn.Op1Register.GetSize() == insn.Op0Register.GetSize()
                            && regs.TryGetValue(insn.Op1Register.GetFullRegister(), out ulong v))
                            Set(regs, insn.Op0Register, v);
                        else
                            Clobber(regs, insn.Op0Register);
                        continue;
                    case Mnemonic.Mov when insn.Op0Kind == OpKind.Register && insn.Op1Kind == OpKind.Memory && insn.Op0Register.GetSize() == 8:
                    {
                        ulong? ea = Address(regs, insn);
                        if (ea is { } a && TryRead(a, out ulong value))
                            Set(regs, insn.Op0Register, value);
                        else
                            Clobber(regs, insn.Op0Register);
                        continue;
                    }
                    case Mnemonic.Mov when insn.Op0Kind == OpKind.Memory && insn.Op1Kind == OpKind.Register && insn.Op1Register.GetSize() == 8:
                    {
                        ulong? ea = Address(regs, insn);
                        if (ea is { } a && Get(regs, insn.Op1Register) is { } stored)
                        {
                            // only stores to the image's data are followed (the stack and per-CPU data are not the image's)
                            if (elf.SectionContaining(a) is { IsAllocated: true, IsExecutable: false })
                                Write(a, stored);
                        }
                        else if (ea is { } b)
                        {
                            unknown.Add(b & ~7UL);                  // a value it cannot follow: later reads there are unknown
                            unknown.Add((b + 7) & ~7UL);
                        }
                        continue;
                    }
                    default:
                        if (insn.Op0Kind == OpKind.Register && insn.OpCount > 0 && insn.Mnemonic is not (Mnemonic.Cmp or Mnemonic.Test or Mnemonic.Push))
                            Clobber(regs, insn.Op0Register);
                        if (insn.Mnemonic is Mnemonic.Pop && insn.Op0Kind == OpKind.Register)
                            Clobber(regs, insn.Op0Register);
                        continue;
                }
            }
            return true;
        }
        finally
        {
            visiting.Remove(function);
        }
    }

    private bool Fail(string why)
    {
        Failure = why;
        return false;
    }

    private static ulong? Get(Dictionary<Register, ulong> regs, Register r) =>
        r.GetSize() == 8 && regs.TryGetValue(r.GetFullRegister(), out ulong v) ? v : null;

    private static void Set(Dictionary<Register, ulong> regs, Register r, ulong v)
    {
        var full = r.GetFullRegister();
        if (full == Register.None)
            return;
        // a 32-bit write zero-extends; narrower writes keep the rest, which this reader does not follow
        if (r.GetSize() == 8)
            regs[full] = v;
        else if (r.GetSize() == 4)
            regs[full] = (uint)v;
        else
            regs.Remove(full);
    }

    private static void Clobber(Dictionary<Register, ulong> regs, Register r)
    {
        if (r.GetFullRegister() is var f && f != Register.None)
            regs.Remove(f);
    }

    private static ulong? Address(Dictionary<Register, ulong> regs, in Instruction insn)
    {
        if (insn.IsIPRelativeMemoryOperand)
            return insn.IPRelativeMemoryAddress;
        if (insn.MemoryIndex != Register.None || insn.MemoryBase == Register.None || insn.MemorySegment is Register.GS or Register.FS)
            return null;
        return regs.TryGetValue(insn.MemoryBase.GetFullRegister(), out ulong b) ? unchecked(b + insn.MemoryDisplacement64) : null;
    }
}

using Altpatch.Code;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Code;

public class RelocatorTests
{
    private static byte[] Asm(ulong rip, Action<Assembler> emit)
    {
        var a = new Assembler(64);
        emit(a);
        var w = new MemoryWriter();
        a.Assemble(w, rip);
        return w.ToArray();
    }

    private sealed class MemoryWriter : CodeWriter
    {
        private readonly List<byte> bytes = [];
        public override void WriteByte(byte value) => bytes.Add(value);
        public byte[] ToArray() => [.. bytes];
    }

    private static List<Instruction> Decode(ReadOnlySpan<byte> code, ulong ip)
    {
        var d = Decoder.Create(64, new ByteArrayCodeReader(code.ToArray()), ip);
        var list = new List<Instruction>();
        while (d.IP < ip + (ulong)code.Length) { d.Decode(out var i); list.Add(i); }
        return list;
    }

    [Fact]
    public void Code_without_relative_operands_is_copied_unchanged()
    {
        var code = Asm(0x1000, a => { a.popcnt(eax, edi); a.add(eax, 1); });
        var dest = new byte[16];
        Assert.True(Relocator.TryRelocate(code, 0x1000, 0x7000_0000, dest, out int n, out var err), err);
        Assert.Equal(code, dest[..n]);
        Assert.False(Relocator.HasRelativeOperands(code, 0x1000));
    }

    [Fact]
    public void Call_rel32_keeps_its_target_from_the_final_address()
    {
        const ulong from = 0x10_0000, to = 0x20_0000, target = 0x15_0000;
        var code = Asm(from, a => a.call(target));
        var dest = new byte[5];
        Assert.True(Relocator.TryRelocate(code, from, to, dest, out int n, out var err), err);
        Assert.Equal(5, n);
        Assert.Equal(0xE8, dest[0]);
        Assert.Equal(unchecked((int)(target - (to + 5))), BitConverter.ToInt32(dest, 1));
        Assert.Equal(target, Decode(dest, to)[0].NearBranchTarget);
        // the bytes differ from the unrelocated copy: encoding against the buffer/source address would be wrong
        Assert.NotEqual(code, dest);
    }

    [Fact]
    public void Rip_relative_operand_keeps_addressing_the_same_bytes()
    {
        const ulong from = 0x40_0000, to = 0x41_2345, data = 0x40_8000;
        var insn = Instruction.Create(Iced.Intel.Code.Mov_r32_rm32, Register.EAX, new MemoryOperand(Register.RIP, (long)data));
        var code = Asm(from, a => a.AddInstruction(insn));
        var dest = new byte[6];
        Assert.True(Relocator.TryRelocate(code, from, to, dest, out int n, out var err), err);
        Assert.Equal(6, n);
        Assert.Equal(data, Decode(dest, to)[0].IPRelativeMemoryAddress);
    }

    [Fact]
    public void Internal_branches_stay_internal_and_branches_to_the_end_land_after_the_code()
    {
        const ulong from = 0x1000, to = 0x9000_0000;
        var code = Asm(from, a =>
        {
            var l = a.CreateLabel();
            var end = a.CreateLabel();
            a.test(edi, edi);
            a.jz(l);
            a.mov(eax, 1);
            a.jmp(end);
            a.Label(ref l);
            a.mov(eax, 2);
            a.Label(ref end);
            a.nop(); // gives the end label an instruction; relocated code drops nothing
        });
        var dest = new byte[code.Length + 4];
        Assert.True(Relocator.TryRelocate(code, from, to, dest, out int n, out var err), err);
        Assert.Equal(code.Length, n);
        var insns = Decode(dest.AsSpan(0, n), to);
        Assert.Equal(insns[4].IP, insns[1].NearBranchTarget);
        Assert.Equal(insns[5].IP, insns[3].NearBranchTarget);
    }

    [Fact]
    public void A_branch_to_just_past_the_code_points_just_past_the_relocated_code()
    {
        const ulong from = 0x1000, to = 0x5000;
        // jz +5 skips "mov eax,1" (5 bytes) and lands exactly at the end of the code
        byte[] code = [0x85, 0xFF, 0x74, 0x05, 0xB8, 0x01, 0x00, 0x00, 0x00];
        var dest = new byte[12];
        Assert.True(Relocator.TryRelocate(code, from, to, dest, out int n, out var err), err);
        var insns = Decode(dest.AsSpan(0, n), to);
        Assert.Equal(to + (ulong)code.Length, insns[1].NearBranchTarget);
        // exactly-fitting destination: the landing pad falls outside, the branch targets the site's end
        var exact = new byte[code.Length];
        Assert.True(Relocator.TryRelocate(code, from, to, exact, out n, out err), err);
        Assert.Equal(code.Length, n);
        Assert.Equal(to + (ulong)code.Length, Decode(exact, to)[1].NearBranchTarget);
    }

    [Fact]
    public void A_short_branch_that_must_grow_is_reported_when_it_does_not_fit()
    {
        const ulong from = 0x1000, to = 0x10_0000;
        // jz to an external target 0x1050: reachable with rel8 from 0x1000, needs rel32 from 0x100000
        var code = Asm(from, a => a.jz(0x1050UL));
        Assert.Equal(2, code.Length);
        var dest = new byte[2];
        Assert.False(Relocator.TryRelocate(code, from, to, dest, out _, out var err));
        Assert.Contains("only 2 fit", err);
        var roomy = new byte[6];
        Assert.True(Relocator.TryRelocate(code, from, to, roomy, out int n, out err), err);
        Assert.Equal(6, n);
        Assert.Equal(0x1050UL, Decode(roomy, to)[0].NearBranchTarget);
    }

    [Fact]
    public void A_target_beyond_rel32_reach_is_an_error()
    {
        const ulong from = 0x1000, to = 0x7fff_0000_0000;
        var code = Asm(from, a => a.call(0x2000UL));
        var dest = new byte[32];
        Assert.False(Relocator.TryRelocate(code, from, to, dest, out _, out var err));
        Assert.Contains("out of", err);
    }

    [Fact]
    public void A_branch_into_the_middle_of_an_instruction_is_an_error()
    {
        // jmp +1 into the imm32 of the following mov
        byte[] code = [0xEB, 0x01, 0xB8, 0x90, 0x90, 0x90, 0x90];
        var dest = new byte[16];
        Assert.False(Relocator.TryRelocate(code, 0x1000, 0x2000, dest, out _, out var err));
        Assert.Contains("inside an instruction", err);
    }

    [Fact]
    public void Undecodable_bytes_are_an_error()
    {
        byte[] code = [0x0F, 0x0B, 0x0F]; // ud2, then a truncated opcode
        var dest = new byte[16];
        Assert.False(Relocator.TryRelocate(code, 0x1000, 0x2000, dest, out _, out var err));
        Assert.Contains("do not decode", err);
    }
}

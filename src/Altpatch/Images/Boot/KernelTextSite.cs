using System.Collections.Immutable;

namespace Altpatch.Images.Boot;

/// <summary>How a legal state of a dynamic site is matched against bytes (<see cref="KernelTextState"/>).</summary>
public enum KernelTextStateForm
{
    /// <summary>Exactly <see cref="KernelTextState.Bytes"/> (a NOP, <c>ret; int3…</c>, <c>xor5rax</c>, …).</summary>
    Bytes,
    /// <summary><see cref="KernelTextState.Bytes"/> is an opcode, followed by a displacement (rel8 for a 2-byte site,
    /// else rel32) to <see cref="KernelTextState.Target"/>, a fixed address (e.g. <c>call ftrace_caller</c>).</summary>
    BranchToAddress,
    /// <summary>The opcode and a displacement to the site's own <see cref="KernelTextSite.Target"/> (a jump label's
    /// <c>jmp</c>).</summary>
    BranchToSiteTarget,
    /// <summary>The opcode (<c>e8</c>, <c>e9</c>, <c>0f 8x</c>) and a rel32 to the start of any function of the kernel (what
    /// <c>static_call_update()</c> may point a static call at).</summary>
    BranchToFunction,
    /// <summary>The opcode (<c>e8</c>) and a rel32 to <see cref="KernelTextState.Target"/> bytes before the start of any
    /// function of the kernel that call depth tracking does not skip: its accounting thunk in the function's padding,
    /// where 6.12's <c>callthunks_translate_call_dest()</c> aims a static call (<c>retbleed=stuff</c>).</summary>
    BranchToFunctionThunk,
    /// <summary>The opcode (<c>e8</c>) and a rel32 to a trampoline the running kernel allocated (an ftrace_ops or
    /// direct-call trampoline, outside the image's text).</summary>
    BranchToTrampoline,
    /// <summary>A value the kernel computed from a boot-time allocation or the memory size (6.12's dentry hash runtime
    /// constants): an 8-byte kernel-half address, or a 1-byte shift of 1..31; <c>Bytes</c> gives only the length.</summary>
    BootValue,
}

/// <summary>One state a dynamic site may legally be in at run time.</summary>
/// <param name="Name">What the state is, e.g. "nop", "jmp target", "call ftrace_caller", "call any function".</param>
/// <param name="Form">How <paramref name="Bytes"/> is matched.</param>
/// <param name="Bytes">The whole site's bytes (<see cref="KernelTextStateForm.Bytes"/>), or the opcode before the displacement.</param>
/// <param name="Target">For <see cref="KernelTextStateForm.BranchToAddress"/>: the address; for
/// <see cref="KernelTextStateForm.BranchToFunctionThunk"/>: the thunk's size (how far before the function it is); else 0.</param>
public readonly record struct KernelTextState(string Name, KernelTextStateForm Form, ReadOnlyMemory<byte> Bytes, ulong Target = 0)
{
    /// <summary>Whether <paramref name="code"/>, the bytes of <paramref name="site"/> found at <paramref name="address"/>
    /// (the site's address, or where a relocated kernel has it), is in this state. For the forms that allow any
    /// function or a run-time trampoline only the opcode is checked here: what the target may be is the caller's to
    /// decide (<see cref="BranchTarget"/>).</summary>
    public bool Matches(ReadOnlySpan<byte> code, KernelTextSite site, ulong address, int bitness)
    {
        if (Form == KernelTextStateForm.Bytes)
            return code.SequenceEqual(Bytes.Span);
        if (Form == KernelTextStateForm.BootValue)
        {
            return code.Length == Bytes.Length && code.Length switch
            {
                8 => System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(code) >= 0xff00_0000_0000_0000UL,   // the kernel half with 5-level paging (4-level: 0xffff8...)
                1 => code[0] is >= 1 and <= 31,
                _ => false,
            };
        }
        if (code.Length <= Bytes.Length || !code.StartsWith(Bytes.Span))
            return false;
        return Form switch
        {
            KernelTextStateForm.BranchToAddress => BranchTarget(code, address, bitness) == Target,
            KernelTextStateForm.BranchToSiteTarget => BranchTarget(code, address, bitness) == site.Target,
            _ => code.Length == Bytes.Length + 4,
        };
    }

    /// <summary>The target of the branch <paramref name="code"/> placed at <paramref name="address"/>: rel8 when one byte
    /// follows the opcode, else rel32 (32-bit code wraps at 4 GiB when <paramref name="bitness"/> is 32).</summary>
    public ulong BranchTarget(ReadOnlySpan<byte> code, ulong address, int bitness)
    {
        var disp = code[Bytes.Length..];
        long d = disp.Length == 1 ? (sbyte)disp[0] : System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(disp);
        ulong t = unchecked(address + (ulong)code.Length + (ulong)d);
        return bitness == 64 ? t : t & 0xffff_ffffUL;
    }
}

/// <summary>
/// One site of a boot-time text writer other than the patch tables (ftrace, jump labels, static calls and their
/// trampolines) after patching: its bytes before and after, and whether the running kernel decides its state after
/// boot (<see cref="Dynamic"/>), with the states it may then legally be in.
/// </summary>
/// <param name="Kind"><see cref="KernelSiteKind.Mcount"/>, <see cref="KernelSiteKind.JumpLabel"/>, <see cref="KernelSiteKind.StaticCall"/>
/// or <see cref="KernelSiteKind.StaticCallTrampoline"/>.</param>
/// <param name="Index">Entry index in its table.</param>
/// <param name="Address">Link-time address.</param>
/// <param name="Length">Bytes of the site (5 for ftrace and trampolines, 2 or 5 for jump labels, 5 or 6 for static calls).</param>
/// <param name="Before">The bytes in the original image.</param>
/// <param name="After">The bytes after every pass (what the booted kernel holds unless it changed a dynamic site).</param>
/// <param name="Dynamic">Whether the running kernel may change the site after boot (a key flipped, a static call updated, a
/// function traced); false for a site it never touches again (e.g. in <c>.exit.text</c>).</param>
/// <param name="States">The legal states of a dynamic site (empty when not dynamic: then only <paramref name="After"/> is
/// right). Sites of one kind and length share one array.</param>
/// <param name="Writers">The passes that changed at least one of its bytes.</param>
/// <param name="Target">A jump label's target (where its <c>jmp</c> goes); 0 for the other kinds.</param>
/// <param name="Detail">What the site is, e.g. "key 0xffffffff82a5d100 disabled, branch 0", "cond_resched, tail call".</param>
public sealed record KernelTextSite(KernelSiteKind Kind, int Index, ulong Address, int Length, ReadOnlyMemory<byte> Before,
    ReadOnlyMemory<byte> After, bool Dynamic, ImmutableArray<KernelTextState> States, ImmutableArray<BootPass> Writers, ulong Target, string Detail)
{
    /// <summary>Whether the bytes changed.</summary>
    public bool Changed => !Before.Span.SequenceEqual(After.Span);
}
